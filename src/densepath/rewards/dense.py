"""DenseReward: the frozen scorer r_t(prompt, response) built from the `reward` and `baseline` groups.

Used by the reward-recovery callback and by the RL stages. One batched forward per frozen model,
on the scorer's device, no per-token Python loops. The scorers always run at temperature 1,
whatever temperature the response was sampled at (method.md section 3).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from densepath.rewards import formulations as F
from densepath.rewards.baselines import Baseline, _describe, load_frozen
from densepath.rewards.logprobs import response_logprobs

log = logging.getLogger(__name__)


@dataclass
class RewardSpec:
    """`reward=`: the formulation name and its post-processing (scale, per-token clip)."""

    name: str = "log_ratio"
    uses_baseline: bool = True
    scale: float = 1.0
    clip: float | None = None
    dtype: str = "float32"  # the frozen scorers' precision (e.g. bfloat16 on GPU: half the memory)

    def __post_init__(self):
        if self.name not in F.FORMULATION_NAMES:
            raise ValueError(f"reward.name={self.name!r}: choose one of {list(F.FORMULATION_NAMES)}")


@dataclass
class RewardOut:
    rewards: torch.Tensor  # (B, T) post-processed, 0 on padding
    logp_sft: torch.Tensor  # (B, T) log pi_SFT(y_t|s_t) at T=1 (reused as the KL reference)
    raw: torch.Tensor  # (B, T) before scale/clip


class DenseReward:
    def __init__(
        self,
        spec: RewardSpec,
        sft_model,
        baseline: Baseline | None,
        sft_path: Path | None = None,
        chunk_size: int | None = None,
    ):
        self.spec = spec
        self.sft = sft_model
        self.sft.eval()
        for p in self.sft.parameters():
            p.requires_grad_(False)
        self.baseline = baseline if spec.uses_baseline else None
        self.sft_path = sft_path
        self.chunk_size = chunk_size

    @classmethod
    def from_sft_dir(
        cls,
        spec: RewardSpec,
        baseline: Baseline | None,
        sft_dir: Path,
        tokenizer,
        device,
        dtype=torch.float32,
    ):
        sft = load_frozen(Path(sft_dir) / "policy", tokenizer, "pi_SFT", dtype).to(device)
        if spec.uses_baseline:
            if baseline is None:
                raise ValueError(
                    f"reward={spec.name} needs a baseline (baseline=sft_half|sft_fraction|base|uniform|ensemble)"
                )
            baseline.load(sft_dir, tokenizer, device, dtype)
        else:
            log.info(
                "reward=%s uses no baseline: the `baseline` choice is ignored (recorded as baseline: none)",
                spec.name,
            )
        return cls(spec, sft, baseline, Path(sft_dir) / "policy")

    @property
    def baseline_name(self) -> str:
        return self.baseline.name if self.baseline is not None else "none"

    def describe(self) -> dict:
        return {
            "formulation": self.spec.name,
            "scale": self.spec.scale,
            "clip": self.spec.clip,
            "baseline": self.baseline.describe() if self.baseline is not None else "none",
            "sft": _describe(self.sft_path) if self.sft_path else None,
        }

    @torch.no_grad()
    def score_full(self, prompt_ids, prompt_mask, response_ids, response_mask) -> RewardOut:
        name = self.spec.name
        out = response_logprobs(
            self.sft,
            prompt_ids,
            prompt_mask,
            response_ids,
            response_mask,
            return_values=(name == "soft_bellman"),
            chunk_size=self.chunk_size,
        )
        mask = response_mask
        if name == "logprob":
            raw = F.logprob(out.logp, mask)
        elif name == "soft_bellman":
            raw = F.soft_bellman(out.logp, out.values, mask)
        else:  # log_ratio and sparse
            lb = self.baseline.logp(prompt_ids, prompt_mask, response_ids, response_mask).to(out.logp.dtype)
            raw = F.log_ratio(out.logp, lb, mask)
            if name == "sparse":
                raw = F.sparse(raw, mask)
        r = F.postprocess(raw, mask, self.spec.scale, self.spec.clip)
        return RewardOut(rewards=r, logp_sft=out.logp, raw=raw)

    def score(self, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        """(B, T) rewards aligned with the response tokens, 0 on padding."""
        return self.score_full(prompt_ids, prompt_mask, response_ids, response_mask).rewards
