"""Input checks of the policy-gradient maths in :mod:`densepath.algos.pg_math`.

Only shapes and argument values are checked (never tensor contents), so the checks need no host
synchronisation; every error names the bad argument and the fix.
"""

from __future__ import annotations

import torch


def check_2d(name: str, x: torch.Tensor) -> None:
    """Fail early with a readable message: every input here is (B, T)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, T), got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(
            f"{name} must have shape (B, T) (batch, generated tokens), got shape {tuple(x.shape)}; "
            "flatten extra leading dims into B first"
        )


def check_same_shape(ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    """All (B, T) inputs of one call must line up with the mask."""
    check_2d(ref_name, ref)
    for name, x in others.items():
        if x is None:
            continue
        check_2d(name, x)
        if x.shape != ref.shape:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)} but {ref_name} has shape {tuple(ref.shape)}; "
                f"pass {name} for exactly the same (B, T) tokens as {ref_name}"
            )


def check_loo(bsz: int, k: int) -> None:
    """Leave-one-out baselines need k >= 2 samples per prompt and prompt-major rows."""
    if k < 2:
        raise ValueError(
            f"advantage kind 'loo' needs k >= 2 samples per prompt, got k={k}; "
            "sample more responses per prompt or use kind='batch_mean' / 'none'"
        )
    if bsz % k != 0:
        raise ValueError(
            f"batch size B={bsz} is not a multiple of k={k}; rows must be prompt-major "
            "(row i = prompt i // k, sample i % k) with exactly k samples per prompt"
        )


def check_loss_args(
    norm: str,
    norms: tuple[str, ...],
    kl_given: bool,
    kl_coef: float,
    old_logp_given: bool,
    clip_eps: float | None,
    n_seqs: int | None,
) -> None:
    """The non-tensor arguments of ``policy_gradient_loss`` (see there)."""
    if norm not in norms:
        raise ValueError(f"unknown norm {norm!r}; choose one of {norms}")
    if kl_coef != 0.0 and not kl_given:
        raise ValueError(
            f"kl_coef={kl_coef} but kl is None; pass kl=kl_k3(logp, logp_ref) or set kl_coef=0.0"
        )
    if clip_eps is not None and not old_logp_given:
        raise ValueError(
            f"clip_eps={clip_eps} needs old_logp (log-probs of the sampling policy); "
            "pass old_logp or set clip_eps=None for plain REINFORCE"
        )
    if clip_eps is not None and not clip_eps > 0.0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    if n_seqs is not None and n_seqs < 1:
        raise ValueError(f"n_seqs must be >= 1 (number of sequences in the global batch), got {n_seqs}")
