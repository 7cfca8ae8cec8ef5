"""DenseReward: the frozen scorer r_t(prompt, response); `rewards.builder` composes it from config.

Used by the reward-recovery callback and by the RL stages. One batched forward per frozen model,
on the scorer's device, no per-token Python loops. The scorers always run at temperature 1,
whatever temperature the response was sampled at (method.md section 3).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from densepath.models.logprobs import response_logprobs
from densepath.rewards.baselines import Baseline, _describe, freeze, load_frozen
from densepath.rewards.formulations import Formulation

log = logging.getLogger(__name__)


@dataclass
class RewardOut:
    rewards: torch.Tensor  # (B, T) post-processed, 0 on padding
    logp_sft: torch.Tensor  # (B, T) log pi_SFT(y_t|s_t) at T=1 (reused as the KL reference)


def _group_kwarg(baseline, group: int) -> dict:
    """`group=` for baselines whose `logp` takes it (prefix sharing); user baselines written before it
    (``logp(prompt_ids, prompt_mask, response_ids, response_mask)``) are called as before."""
    if group <= 1:
        return {}
    return {"group": group} if "group" in inspect.signature(baseline.logp).parameters else {}


class DenseReward:
    """Frozen pi_SFT (and pi_base when the formulation reads one) plus a formulation."""

    def __init__(
        self,
        formulation: Formulation,
        sft_model,
        baseline: Baseline | None,
        sft_path: Path | None = None,
        chunk_size: int | None = None,
        shared=None,
    ):
        self.formulation = formulation
        self.shared = shared  # a models.adapters.SharedBase: both scorers are adapters on the policy's base
        self.sft = freeze(sft_model) if shared is None else None
        self.baseline = baseline if formulation.uses_baseline else None
        self.sft_path = sft_path
        self.chunk_size = chunk_size

    @classmethod
    def on_shared_base(
        cls, formulation: Formulation, baseline: Baseline | None, sft_dir: Path, tokenizer, shared
    ) -> DenseReward:
        """The reward whose pi_SFT and pi_base are adapters of `shared` (models.adapters). The baseline
        must have been resolved with `baseline.shared_source(sft_dir)` (which sets what it reports)."""
        if formulation.uses_baseline and baseline is not None and baseline.n_models == 0:
            baseline.load(sft_dir, tokenizer, None)  # e.g. uniform: no model
        return cls(formulation, None, baseline, Path(sft_dir) / "policy", shared=shared)

    @classmethod
    def load(
        cls,
        formulation: Formulation,
        baseline: Baseline | None,
        sft_dir: Path,
        tokenizer,
        device,
        *,
        sft_model=None,
    ) -> DenseReward:
        """Load pi_SFT (unless `sft_model` is given: e.g. a live copy) and the baseline from an SFT
        stage dir, in the formulation's scorer dtype."""
        dtype = getattr(torch, formulation.dtype or "float32")
        if sft_model is None:
            sft_model = load_frozen(Path(sft_dir) / "policy", tokenizer, "pi_SFT", dtype).to(device)
        if formulation.uses_baseline:
            if baseline is None:
                raise ValueError(
                    f"reward={formulation.name} needs a baseline "
                    "(baseline=sft_half|sft_fraction|base|uniform|ensemble)"
                )
            baseline.load(sft_dir, tokenizer, device, dtype)
        else:
            log.info("reward=%s uses no baseline: recorded as baseline: none", formulation.name)
        return cls(formulation, sft_model, baseline, Path(sft_dir) / "policy")

    def sft_model(self) -> tuple[object, str | None]:
        """(model, adapter name) that computes pi_SFT: the frozen copy, or the shared base's `sft` adapter."""
        if self.shared is not None:
            from densepath.models.adapters import SFT

            return self.shared.model, SFT
        return self.sft, None

    @property
    def n_models(self) -> int:
        """Frozen models run per scored token: pi_SFT plus the baseline's."""
        return 1 + (self.baseline.n_models if self.baseline is not None else 0)

    @property
    def baseline_name(self) -> str:
        return self.baseline.name if self.baseline is not None else "none"

    def describe(self) -> dict:
        return {
            **self.formulation.describe(),
            "baseline": self.baseline.describe() if self.baseline is not None else "none",
            "sft": _describe(self.sft_path) if self.sft_path else None,
        }

    @torch.no_grad()
    def score_full(self, prompt_ids, prompt_mask, response_ids, response_mask, group: int = 1) -> RewardOut:
        """Rewards and log pi_SFT of a batch; ``group`` > 1: rows are prompt-major groups of ``group``
        samples of one prompt, whose prompt each scorer runs once (prefix sharing, models.prefix)."""
        f = self.formulation
        batch = (prompt_ids, prompt_mask, response_ids, response_mask)
        if self.shared is not None:
            return self._score_shared(batch, group)
        out = response_logprobs(
            self.sft, *batch, return_values=f.needs_values, chunk_size=self.chunk_size, group=group
        )
        lb = None
        if self.baseline is not None:
            lb = self.baseline.logp(*batch, **_group_kwarg(self.baseline, group))
        r = f(out.logp, response_mask, out.values, lb)
        return RewardOut(rewards=r, logp_sft=out.logp)

    def _score_shared(self, batch, group: int) -> RewardOut:
        """pi_SFT and pi_base rows stacked in one forward of the shared base, one adapter per row."""
        f, model, B = self.formulation, self.shared.model, batch[0].shape[0]
        with_base = self.baseline is not None and self.baseline.n_models > 0
        was_training = model.training
        model.eval()
        try:
            stacked = tuple(torch.cat([x, x]) for x in batch) if with_base else batch
            out = response_logprobs(
                model,
                *stacked,
                return_values=f.needs_values,
                chunk_size=self.chunk_size,
                group=group,
                adapter_names=self.shared.scorer_rows(B, with_base),
            )
        finally:
            model.train(was_training)
        logp, values = out.logp[:B], (out.values[:B] if out.values is not None else None)
        if with_base:
            lb = out.logp[B:]
        elif self.baseline is not None:
            lb = self.baseline.logp(*batch)
        else:
            lb = None
        return RewardOut(rewards=f(logp, batch[3], values, lb), logp_sft=logp)

    def score(self, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        """(B, T) rewards aligned with the response tokens, 0 on padding."""
        return self.score_full(prompt_ids, prompt_mask, response_ids, response_mask).rewards
