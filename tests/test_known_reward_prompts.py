"""The helpers the known-reward split introduced: grouping prompts by reward table, per-episode arguments."""

from __future__ import annotations

import pytest
import torch

from densepath.data.known_reward import KnownRewardMDP
from densepath.data.known_reward_prompts import Prompt, by_table


def test_by_table_groups_in_table_order_and_skips_unnamed_tables() -> None:
    mdps = [KnownRewardMDP(3, 3, seed=s) for s in (0, 1, 2)]
    prompts = [Prompt(2, 0, 3), Prompt(0, 3, 2), Prompt(2, 1, 1), Prompt(0, 2, 3)]
    got = list(by_table(mdps, prompts))
    assert [g[0] for g in got] == [mdps[0], mdps[2]]  # table 1 has no prompt: skipped
    assert [g[1:] for g in got] == [([1, 3], [3, 2], [2, 3]), ([0, 2], [0, 1], [3, 1])]
    assert list(by_table(mdps, [])) == []


def test_per_episode_defaults_and_rejects_a_wrong_count() -> None:
    mdp = KnownRewardMDP(3, 4, seed=0)
    starts, hs = mdp._per_episode(None, 2, 3)
    assert starts.tolist() == [3, 3, 3] and hs.tolist() == [2, 2, 2]  # BOS = n_tokens
    starts, hs = mdp._per_episode([0, 1], None, 2)
    assert starts.tolist() == [0, 1] and hs.tolist() == [4, 4] and hs.dtype == torch.long
    with pytest.raises(ValueError, match="start has 2 entries for 3 episodes"):
        mdp._per_episode([0, 1], None, 3)
