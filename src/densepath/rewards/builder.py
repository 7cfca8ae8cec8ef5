"""The one place a reward is built: the `reward=` and `baseline=` groups plus an SFT stage dir."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate

from densepath.rewards.dense import DenseReward


def build_reward(
    reward_cfg, baseline_cfg, sft_dir: Path, tokenizer, device, *, sft_model=None
) -> DenseReward:
    """Instantiate the formulation (and the baseline, only when the formulation reads one) and load
    the frozen scorers from `sft_dir` (`<run>/sft`). `sft_model` reuses an already loaded pi_SFT."""
    formulation = instantiate(reward_cfg)
    baseline = instantiate(baseline_cfg) if formulation.uses_baseline else None
    return DenseReward.load(formulation, baseline, sft_dir, tokenizer, device, sft_model=sft_model)
