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


def build_on_shared_base(reward_cfg, baseline_cfg, sft_dir: Path, tokenizer, device, cfg_model, mode: str):
    """DPR's policy and reward on one frozen base (models.adapters), or None where it cannot share
    (`mode=auto`) -> (SharedBase, DenseReward). The base has one dtype (`model.base_dtype`); an explicit
    `reward.dtype` that differs from it is an error rather than a silent cast."""
    from densepath.models.adapters import shared_base_for

    formulation = instantiate(reward_cfg)
    baseline = instantiate(baseline_cfg) if formulation.uses_baseline else None
    source, why = None, None
    if baseline is not None and baseline.n_models > 0:
        source, why = baseline.shared_source(sft_dir)
    shared = shared_base_for(sft_dir, cfg_model, device, source, mode, unsupported=why)
    if shared is None:
        return None
    base_dtype = str(shared.dtype).removeprefix("torch.")
    if formulation.dtype not in (None, base_dtype):
        raise ValueError(
            f"reward.dtype={formulation.dtype} but the shared base (the policy's and both scorers' weights) is "
            f"{base_dtype}: set reward.dtype=null (follow the base), model.base_dtype={formulation.dtype}, or "
            "dpr.shared_base=false (separate scorer copies in their own dtype)"
        )
    return shared, DenseReward.on_shared_base(formulation, baseline, sft_dir, tokenizer, shared)
