"""Tests for the known-reward MDP: exact expert vs brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from densepath.data.known_reward import KnownRewardMDP, from_text, to_text
from densepath.data.known_reward_prompts import make_splits


def all_complete_episodes(n_tokens: int, horizon: int) -> list[list[int]]:
    """Every complete episode: k symbols then EOS (k < H), or H symbols (truncated)."""
    eos = n_tokens
    out: list[list[int]] = []
    for k in range(horizon):
        out += [list(p) + [eos] for p in itertools.product(range(n_tokens), repeat=k)]
    out += [list(p) for p in itertools.product(range(n_tokens), repeat=horizon)]
    return out


def ref_return(R: torch.Tensor, seq: list[int], bos: int) -> float:
    """Slow float64 reference: sum of R[prev, next] along the sequence."""
    total, prev = 0.0, bos
    for a in seq:
        total += float(R[prev, a])
        prev = a
    return total


@pytest.fixture(scope="module")
def tiny() -> tuple[KnownRewardMDP, list[list[int]], list[float]]:
    mdp = KnownRewardMDP(n_tokens=3, horizon=3, seed=7)
    eps = all_complete_episodes(3, 3)
    rets = [ref_return(mdp.R, y, mdp.bos) for y in eps]
    return mdp, eps, rets


def test_enumeration_count(tiny) -> None:
    _, eps, _ = tiny
    # 1 + 3 + 9 EOS-terminated, plus 27 truncated
    assert len(eps) == 1 + 3 + 9 + 27


def test_shapes_and_dtype() -> None:
    mdp = KnownRewardMDP()
    V, logpi = mdp.soft_values()
    assert mdp.R.shape == (9, 9) and mdp.R.dtype == torch.float64
    assert V.shape == (9, 9) and logpi.shape == (8, 9, 9)
    assert torch.all(V[-1] == 0)
    torch.testing.assert_close(logpi.exp().sum(-1), torch.ones(8, 9, dtype=torch.float64), rtol=0, atol=1e-12)


def test_true_return_matches_reference(tiny) -> None:
    mdp, eps, rets = tiny
    got = mdp.true_return(eps)
    torch.testing.assert_close(got, torch.tensor(rets, dtype=torch.float64), rtol=0, atol=1e-12)


def test_expert_matches_enumeration(tiny) -> None:
    mdp, eps, rets = tiny
    log_z = math.log(sum(math.exp(r) for r in rets))
    ref = torch.tensor([r - log_z for r in rets], dtype=torch.float64)
    got = mdp.expert_logprob(eps)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    assert abs(float(got.exp().sum()) - 1.0) < 1e-12
    assert abs(mdp.V0() - log_z) < 1e-10


def test_logprob_identity(tiny) -> None:
    mdp, eps, rets = tiny
    diff = mdp.expert_logprob(eps) - (torch.tensor(rets, dtype=torch.float64) - mdp.V0())
    assert float(diff.abs().max()) < 1e-10


def test_logprob_identity_default_samples() -> None:
    mdp = KnownRewardMDP()
    seqs = mdp.sample_expert(500, torch.Generator().manual_seed(3))
    diff = mdp.expert_logprob(seqs) - (mdp.true_return(seqs) - mdp.V0())
    assert float(diff.abs().max()) < 1e-10


def test_mean_and_best_return(tiny) -> None:
    mdp, eps, rets = tiny
    p = [math.exp(lp) for lp in mdp.expert_logprob(eps).tolist()]
    exp_ret = sum(pi * r for pi, r in zip(p, rets))
    assert abs(mdp.expert_mean_return() - exp_ret) < 1e-10
    assert abs(mdp.best_return() - max(rets)) < 1e-12
    assert abs(mdp.worst_return() - min(rets)) < 1e-12  # the strict-evaluation penalty, by enumeration
    # soft-optimal expert is below the hard max, and V0 bounds it from above: V0 >= E[R] + H(pi) >= E[R]
    assert mdp.expert_mean_return() < mdp.best_return() <= mdp.V0()


def test_uniform_policy(tiny) -> None:
    mdp, eps, rets = tiny
    lp = mdp.uniform_logprob(eps)
    # each complete episode has prob (1/4)^len
    ref = torch.tensor([-len(y) * math.log(4) for y in eps], dtype=torch.float64)
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-12)
    assert abs(float(lp.exp().sum()) - 1.0) < 1e-12
    exp_ret = sum(math.exp(lq) * r for lq, r in zip(lp.tolist(), rets))
    assert abs(mdp.uniform_mean_return() - exp_ret) < 1e-10
    assert mdp.uniform_mean_return() < mdp.expert_mean_return()


def test_sampling_frequencies_tiny(tiny) -> None:
    mdp, eps, _ = tiny
    n = 20000
    seqs = mdp.sample_expert(n, torch.Generator().manual_seed(11))
    counts: dict[tuple[int, ...], int] = {}
    for s in seqs:
        counts[tuple(s)] = counts.get(tuple(s), 0) + 1
    assert set(counts) <= {tuple(y) for y in eps}  # only complete episodes are produced
    probs = mdp.expert_logprob(eps).exp().tolist()
    for y, p in zip(eps, probs):
        se = math.sqrt(p * (1 - p) / n)
        assert abs(counts.get(tuple(y), 0) / n - p) < 5 * se + 1e-4, y


def test_monte_carlo_mean_return() -> None:
    mdp = KnownRewardMDP()
    seqs = mdp.sample_expert(20000, torch.Generator().manual_seed(0))
    for s in seqs[:200]:
        assert (s and s[-1] == mdp.eos) or len(s) == mdp.horizon
        assert len(s) <= mdp.horizon and mdp.eos not in s[:-1]
    r = mdp.true_return(seqs)
    se = float(r.std()) / math.sqrt(len(seqs))
    assert abs(float(r.mean()) - mdp.expert_mean_return()) < 4 * se
    u = mdp.true_return(mdp.sample_uniform(20000, torch.Generator().manual_seed(0)))
    su = float(u.std()) / math.sqrt(len(u))
    assert abs(float(u.mean()) - mdp.uniform_mean_return()) < 4 * su


def test_determinism_by_seed() -> None:
    a, b, c = KnownRewardMDP(seed=1), KnownRewardMDP(seed=1), KnownRewardMDP(seed=2)
    assert torch.equal(a.R, b.R) and not torch.equal(a.R, c.R)
    s1 = a.sample_expert(50, torch.Generator().manual_seed(5))
    s2 = b.sample_expert(50, torch.Generator().manual_seed(5))
    s3 = a.sample_expert(50, torch.Generator().manual_seed(6))
    assert s1 == s2 and s1 != s3


def test_text_round_trip() -> None:
    mdp = KnownRewardMDP()
    for s in mdp.sample_expert(100, torch.Generator().manual_seed(2)):
        text = to_text(s)
        body = s[:-1] if s and s[-1] == mdp.eos else s
        assert from_text(text) == body
        assert mdp.episode_from_text(text) == s
    assert to_text([0, 2, 7, 8]) == "A C H"
    assert from_text("") == [] and from_text("A Z") is None and from_text("AB") is None
    assert from_text("D", n_tokens=3) is None


def test_score_texts() -> None:
    mdp = KnownRewardMDP(n_tokens=3, horizon=3, seed=7)
    ret, valid = mdp.score_texts(["A B", "", "A A A A", "X"])
    # strict: a malformed answer scores the worst possible return, never NaN (dropped from a mean)
    assert valid.tolist() == [True, True, True, False] and float(ret[3]) == mdp.worst_return()
    R = mdp.R
    assert abs(float(ret[0]) - float(R[3, 0] + R[0, 1] + R[1, 3])) < 1e-12
    assert abs(float(ret[1]) - float(R[3, 3])) < 1e-12
    assert abs(float(ret[2]) - float(R[3, 0] + R[0, 0] + R[0, 0])) < 1e-12  # truncated at H, no EOS reward


def test_bad_sequences_raise() -> None:
    mdp = KnownRewardMDP(n_tokens=3, horizon=3)
    with pytest.raises(ValueError, match="horizon"):
        mdp.true_return([[0, 0, 0, 0]])
    with pytest.raises(ValueError, match="EOS before"):
        mdp.expert_logprob([[3, 0]])
    with pytest.raises(ValueError, match="outside"):
        mdp.true_return([[5]])
    with pytest.raises(ValueError, match="n_tokens"):
        KnownRewardMDP(n_tokens=0)


def test_make_splits() -> None:
    sizes = {"sft": 30, "rl": 10, "val": 5, "eval": 8}
    a = make_splits(0, sizes, reward_seed=3)
    b = make_splits(0, sizes, reward_seed=3)
    assert a == b
    assert {k: len(v) for k, v in a.items()} == sizes
    mdp = KnownRewardMDP(seed=3)
    for row in a["sft"]:
        assert row["family"] == "known_reward" and row["prompt"] == ""
        toks = row["meta"]["tokens"]
        assert row["response"] == to_text(toks)
        assert abs(row["meta"]["true_return"] - float(mdp.true_return([toks])[0])) < 1e-12
    # resizing one split leaves the others unchanged; another seed changes the samples
    c = make_splits(0, {**sizes, "sft": 40}, reward_seed=3)
    assert c["eval"] == a["eval"] and c["rl"] == a["rl"] and len(c["sft"]) == 40
    d = make_splits(1, sizes, reward_seed=3)
    assert [r["meta"]["tokens"] for r in d["sft"]] != [r["meta"]["tokens"] for r in a["sft"]]
    with pytest.raises(ValueError, match="split"):
        make_splits(0, {"train": 3})
