"""Dense per-token reward formulations (method.md, section 3).

All functions are pure, vectorised maps on (B, T) tensors laid out like the response block
of a scored batch (RIGHT-padded; ``mask`` is 1 on real response tokens including EOS). Every
output is exactly 0 where ``mask == 0``; masking uses ``torch.where`` so that non-finite values
at padded positions (e.g. -inf log-probs of pad tokens) never leak as NaN.

| name           | per-token reward                               |
|----------------|------------------------------------------------|
| ``log_ratio``  | log pi_SFT - log pi_base  (paper Eq. 5)        |
| ``logprob``    | log pi_SFT  (no baseline)                      |
| ``soft_bellman`` | Q(s_t, a_t) - V(s_{t+1}) from the SFT logits |
| ``sparse``     | the sequence sum of a dense reward on the last real token |

The classes at the end (`LogRatio`, `LogProb`, `SoftBellman`, `Sparse(inner)`) are what the
`reward=` config group builds with `_target_`: each says what it reads (a baseline, the values V)
and applies the post-processing (scale, clip).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from densepath.models.logprobs import check_right_padded


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` where ``mask`` is set, exact 0 elsewhere (no NaN from inf * 0)."""
    return torch.where(mask != 0, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _check_same_shape(mask: torch.Tensor, **tensors: torch.Tensor) -> None:
    """Raise naming the offending argument when a (B, T) input does not match ``mask``."""
    for name, t in tensors.items():
        if t.shape != mask.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but mask has shape {tuple(mask.shape)}; "
                "pass per-token (B, T) tensors aligned with the response mask."
            )


def log_ratio(logp_sft: torch.Tensor, logp_base: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi_SFT(y_t|s_t) - log pi_base(y_t|s_t), (B, T).

    Why: the paper's Eq. 5; summed over a response it is exactly the sequence log-ratio, with
    no leftover potential terms, and its expectation under pi_SFT is KL(pi_SFT || pi_base) >= 0.
    """
    _check_same_shape(mask, logp_sft=logp_sft, logp_base=logp_base)
    return _masked(logp_sft - logp_base, mask)


def logprob(logp_sft: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi_SFT(y_t|s_t), (B, T): the no-baseline reward (a potential-shaped soft_bellman)."""
    _check_same_shape(mask, logp_sft=logp_sft)
    return _masked(logp_sft, mask)


def next_values(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """V(s_{t+1}) for every t, (B, T), with V = 0 after the last real token (terminal).

    Why: EOS and truncation at max length both end the episode, and method.md sets
    V(terminal) = 0; with right padding, shifting the masked values left by one does exactly that.
    """
    _check_same_shape(mask, values=values)
    check_right_padded(mask, "mask")
    v = _masked(values, mask)  # (B, T)
    return torch.cat([v[:, 1:], v.new_zeros(v.shape[0], 1)], dim=1)  # (B, T)


def soft_bellman(logp_sft: torch.Tensor, values_sft: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Inverse soft Bellman reward Q(s_t,a_t) - V(s_{t+1}) = logp_t + V_t - V_{t+1}, (B, T).

    Why: this is the reward IQ-Learn recovers from an SFT model; it differs from ``logprob`` by
    the potential V(s_t) - V(s_{t+1}), so both sum to the same return up to V(s_0).
    ``values_sft`` is V(s_t) = logsumexp of the SFT logits at each response position.
    """
    _check_same_shape(mask, logp_sft=logp_sft, values_sft=values_sft)
    r = logp_sft + values_sft - next_values(values_sft, mask)
    return _masked(r, mask)


def sparse(dense: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The row sum of ``dense`` placed on the last real token, 0 elsewhere, (B, T).

    Why: the sequence-level control (RLOO/GRPO-style) with the same return as the dense reward,
    so dense vs sparse isolates credit assignment. Rows with no real token stay all zero.
    """
    _check_same_shape(mask, dense=dense)
    check_right_padded(mask, "mask")
    total = _masked(dense, mask).sum(dim=1)  # (B,)
    lengths = (mask != 0).sum(dim=1)  # (B,)
    last = (lengths - 1).clamp(min=0)  # (B,)
    cols = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)  # (1, T)
    at_last = (cols == last.unsqueeze(1)) & (lengths > 0).unsqueeze(1)  # (B, T)
    return torch.where(
        at_last, total.unsqueeze(1).expand_as(dense), torch.zeros((), dtype=dense.dtype, device=dense.device)
    )


def postprocess(
    r: torch.Tensor, mask: torch.Tensor, scale: float = 1.0, clip: float | None = None
) -> torch.Tensor:
    """``r * scale`` clamped to [-clip, clip] (``clip=None``: no clipping), 0 on padding, (B, T).

    Why: the paper fixes neither; our defaults (scale 1, no clip) keep the exact identities.
    """
    _check_same_shape(mask, r=r)
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}; use None to disable clipping.")
    out = r * scale
    if clip is not None:
        out = out.clamp(min=-clip, max=clip)
    return _masked(out, mask)


def uniform_logp(mask: torch.Tensor, vocab_size: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """-log|V| on real tokens, 0 elsewhere, (B, T): log-probs of the uniform baseline policy.

    Why: with this baseline ``log_ratio`` becomes log pi_SFT + log|V|, removing the
    short-answer bias of raw log-probs by a constant per token.
    """
    if int(vocab_size) < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}; pass the tokenizer's vocabulary size.")
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    full = torch.full(mask.shape, -math.log(int(vocab_size)), dtype=dtype, device=mask.device)
    return _masked(full, mask)


def ensemble_logp(
    full_logprobs: Sequence[torch.Tensor], response_ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Normalised geometric mean of several policies, evaluated at the taken action, (B, T).

    log softmax_a( mean_i log pi_i(a|s) ) gathered at ``response_ids``. Why normalised: a raw mean
    of log-probs is not a distribution, and the KL >= 0 property of ``log_ratio`` needs one.
    Each element of ``full_logprobs`` is a (B, T, V) log-softmax (see
    ``full_distribution_logprobs``).
    """
    if len(full_logprobs) == 0:
        raise ValueError("full_logprobs is empty; pass at least one (B, T, V) log-prob tensor.")
    _check_same_shape(mask, response_ids=response_ids)
    for i, lp in enumerate(full_logprobs):
        if lp.dim() != 3 or lp.shape[:2] != mask.shape or lp.shape != full_logprobs[0].shape:
            raise ValueError(
                f"full_logprobs[{i}] has shape {tuple(lp.shape)}; every entry must be (B, T, V) = "
                f"{tuple(mask.shape)} + (V,) with the same V."
            )
    mean = torch.stack(list(full_logprobs), dim=0).mean(dim=0)  # (B, T, V)
    logp = torch.log_softmax(mean, dim=-1)  # (B, T, V)
    picked = logp.gather(-1, response_ids.long().unsqueeze(-1)).squeeze(-1)  # (B, T)
    return _masked(picked, mask)


@dataclass
class Formulation:
    """`reward=`: one per-token formulation and its post-processing (our defaults: scale 1, no clip).

    `dtype` is the precision the frozen scorers run in (e.g. bfloat16 on GPU halves their memory); None:
    float32 for separate scorer copies, the base's dtype on a shared base (models.adapters).
    """

    scale: float = 1.0
    clip: float | None = None
    dtype: str | None = None
    name: ClassVar[str] = "formulation"
    uses_baseline: ClassVar[bool] = False  # reads log pi_base (the `baseline` group)
    needs_values: ClassVar[bool] = False  # reads V(s) = logsumexp of the SFT logits

    def raw(self, logp_sft, mask, values_sft=None, logp_base=None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, logp_sft, mask, values_sft=None, logp_base=None) -> torch.Tensor:
        """Post-processed per-token rewards, 0 on padding. (B, T)"""
        return postprocess(self.raw(logp_sft, mask, values_sft, logp_base), mask, self.scale, self.clip)

    def describe(self) -> dict:
        return {"formulation": self.name, "scale": self.scale, "clip": self.clip}


@dataclass
class LogRatio(Formulation):
    name: ClassVar[str] = "log_ratio"
    uses_baseline: ClassVar[bool] = True

    def raw(self, logp_sft, mask, values_sft=None, logp_base=None):
        return log_ratio(logp_sft, logp_base.to(logp_sft.dtype), mask)


@dataclass
class LogProb(Formulation):
    name: ClassVar[str] = "logprob"

    def raw(self, logp_sft, mask, values_sft=None, logp_base=None):
        return logprob(logp_sft, mask)


@dataclass
class SoftBellman(Formulation):
    name: ClassVar[str] = "soft_bellman"
    needs_values: ClassVar[bool] = True

    def raw(self, logp_sft, mask, values_sft=None, logp_base=None):
        return soft_bellman(logp_sft, values_sft, mask)


@dataclass
class Sparse(Formulation):
    """The sequence sum of `inner` (default `log_ratio`) on the last real token."""

    inner: Formulation = field(default_factory=LogRatio)
    name: ClassVar[str] = "sparse"

    @property
    def uses_baseline(self) -> bool:  # type: ignore[override]
        return self.inner.uses_baseline

    @property
    def needs_values(self) -> bool:  # type: ignore[override]
        return self.inner.needs_values

    def raw(self, logp_sft, mask, values_sft=None, logp_base=None):
        return sparse(self.inner.raw(logp_sft, mask, values_sft, logp_base), mask)

    def describe(self) -> dict:
        return {**super().describe(), "inner": self.inner.name}
