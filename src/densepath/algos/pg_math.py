"""Policy-gradient maths of Dense-Path REINFORCE (method.md section 4).

Pure, vectorised functions of ``(B, T)`` tensors plus a ``mask (B, T)`` (1 = a real generated token, EOS
included). Rows are prompt-major: row ``i`` is prompt ``i // k``, sample ``i % k``. Outputs are exactly 0 on
masked positions and masked inputs never leak (they are replaced by 0 with ``torch.where`` first, so even
``inf``/``nan`` at padding gets an exactly-zero gradient); no host synchronisation, so the functions are
safe in a compiled / DDP step; only shape and argument checks raise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from densepath.algos.pg_checks import check_loo, check_loss_args, check_same_shape

ADVANTAGE_KINDS = ("none", "batch_mean", "loo", "whiten")
NORMS = ("seq_mean", "token_mean")

# Block length of the two-level discounted scan: a (C, C) matrix inside each
# block, a (T/C, T/C) matrix across blocks. Memory stays O(B*T + C^2 + (T/C)^2).
_DISCOUNT_BLOCK = 512


def _bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """Accept bool / int / float masks; anything nonzero is a real token."""
    return mask if mask.dtype == torch.bool else mask != 0


def _masked(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x on real tokens, exactly 0 elsewhere (and a zero gradient there)."""
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _discount_matrix(n: int, base: float, device: torch.device) -> torch.Tensor:
    """D[t, j] = base^(j - t) for j >= t else 0, in float64. # (n, n)

    Built from exp((j - t) * log base) so no power is ever formed as a ratio of two tiny numbers (that is
    what overflows/underflows in the naive "cumsum of r_j * gamma^j / gamma^t" trick for long T).
    """
    idx = torch.arange(n, device=device, dtype=torch.float64)
    lag = idx[None, :] - idx[:, None]  # (n, n), j - t
    if base == 0.0:
        return (lag == 0).to(torch.float64)
    d = torch.exp(lag.clamp_min(0.0) * math.log(base))
    return torch.where(lag >= 0, d, torch.zeros((), dtype=torch.float64, device=device))


def _discounted_reverse_cumsum(r: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_{j>=t} gamma^(j-t) r_j for float64 r of shape (B, T), no token loop.

    Two-level scan: a triangular matmul inside blocks of C tokens, then the same trick over the T/C
    block-start values with discount gamma^C. For T <= C this is a single (T, T) matmul.
    """
    bsz, t_len = r.shape
    c = min(_DISCOUNT_BLOCK, t_len)
    n_blocks = -(-t_len // c)
    pad = n_blocks * c - t_len
    if pad:
        r = torch.nn.functional.pad(r, (0, pad))
    rb = r.view(bsz, n_blocks, c)  # (B, nb, C)
    d_in = _discount_matrix(c, gamma, r.device)  # (C, C)
    g_in = rb @ d_in.T  # (B, nb, C): returns that stop at the block end
    if n_blocks > 1:
        # Full return at each block start: H_b = S_b + gamma^C * H_{b+1}.
        d_out = _discount_matrix(n_blocks, gamma**c, r.device)  # (nb, nb)
        h = g_in[:, :, 0] @ d_out.T  # (B, nb)
        # Carry from the next block's start into every position of this block:
        # gamma^(C - s) * H_{b+1} for offset s in [0, C).
        h_next = torch.nn.functional.pad(h[:, 1:], (0, 1))  # (B, nb)
        offs = torch.arange(c, 0, -1, device=r.device, dtype=torch.float64)  # (C,), C - s
        carry_w = torch.exp(offs * math.log(gamma)) if gamma > 0 else torch.zeros_like(offs)
        g_in = g_in + h_next[:, :, None] * carry_w[None, None, :]
    return g_in.reshape(bsz, n_blocks * c)[:, :t_len]


def reward_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Per-token return G_t = sum_{j>=t} gamma^(j-t) r_j over real tokens. # (B, T)

    Why: REINFORCE with causality only credits a token with the rewards that come after it (earlier rewards
    are baseline noise). Masked rewards are treated as 0, so the return of the last real token is just its
    reward and G is 0 on padding. gamma = 1 (the default) is the only value the theory covers; gamma < 1 is
    an ablation. The discount exponent is the position gap j - t (masks are a contiguous prefix per row in
    DPR).

    Computed in float64 and cast back to ``rewards.dtype``: a reversed cumsum for gamma == 1, a blocked
    triangular matmul for gamma < 1 (stable for any T; no gamma^-t factors).
    """
    check_same_shape("mask", mask, rewards=rewards)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}; use gamma=1.0 for the undiscounted return")
    m = _bool_mask(mask)
    r = _masked(rewards, m).to(torch.float64)  # (B, T)
    if rewards.shape[1] == 0:
        return torch.zeros_like(rewards)
    if gamma == 1.0:
        g = torch.flip(torch.cumsum(torch.flip(r, dims=[1]), dim=1), dims=[1])  # (B, T)
    else:
        g = _discounted_reverse_cumsum(r, float(gamma))  # (B, T)
    return _masked(g, m).to(rewards.dtype)


def whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    eps: float = 1e-8,
    reduce_fn: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """(x - mean) / std over real tokens only; 0 on padding. # (B, T)

    Why: puts advantages on a fixed scale so the learning rate does not have to track the reward scale. The
    statistics are the population mean / std over every real token of the batch (not per row).

    ``reduce_fn`` (default None) is the DDP hook: it is called once with a float64 tensor
    ``[sum, sum_sq, count]`` (shape (3,)) and must return the globally reduced tensor, or None after
    reducing in place (so ``torch.distributed.all_reduce`` can be passed directly). Note: whitening uses
    the sample's own value in its mean, so it is a (slightly) biased baseline; the DPR default is
    ``advantages(kind="loo")``.
    """
    check_same_shape("mask", mask, x=x)
    m = _bool_mask(mask)
    xd = _masked(x, m).to(torch.float64)  # (B, T)
    stats = torch.stack([xd.sum(), (xd * xd).sum(), m.sum().to(torch.float64)])  # (3,)
    if reduce_fn is not None and (out := reduce_fn(stats)) is not None:
        stats = out
    if stats.shape != (3,):
        raise ValueError(
            f"reduce_fn must return a tensor of shape (3,) = [sum, sum_sq, count], got {tuple(stats.shape)}"
        )
    count = stats[2].clamp_min(1.0)
    mean = stats[0] / count
    var = (stats[1] / count - mean * mean).clamp_min(0.0)
    y = (xd - mean) * torch.rsqrt(var + eps)  # (B, T)
    return _masked(y, m).to(x.dtype)


def advantages(returns: torch.Tensor, mask: torch.Tensor, k: int, kind: str = "loo") -> torch.Tensor:
    """Subtract a baseline from the per-token returns. # (B, T); 0 on padding

    Why: a baseline that does not depend on the sample's own action keeps the policy gradient unbiased and
    cuts its variance.

    Convention for all group/batch baselines: at each position t, a row whose position t is padding counts
    as G = 0 (its episode is over and its remaining return is 0). The baseline for row i at t therefore
    never looks at row i's own tokens.

    kinds:
      - ``"none"``: A = G.
      - ``"loo"`` (DPR default): per prompt group of k rows and per position t,
        A_{i,t} = G_{i,t} - 1/(k-1) * sum_{j != i in group} G_{j,t}. Unbiased; needs k >= 2 and B
        divisible by k (prompt-major rows).
      - ``"batch_mean"``: A_{i,t} = G_{i,t} - 1/B * sum_{all rows j} G_{j,t} (row i included, so the
        expected gradient shrinks by (B-1)/B; a cheap option for k == 1).
      - ``"whiten"``: ``whiten(G, mask)`` over the batch (scale-free, biased like batch_mean). To whiten
        LOO advantages call ``whiten`` on the output of ``kind="loo"`` instead.
    """
    check_same_shape("mask", mask, returns=returns)
    if kind not in ADVANTAGE_KINDS:
        raise ValueError(f"unknown advantage kind {kind!r}; choose one of {ADVANTAGE_KINDS}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (samples per prompt) must be a positive int, got {k!r}")
    m = _bool_mask(mask)
    g = _masked(returns, m)  # (B, T)
    bsz, t_len = g.shape
    if kind == "none":
        return g
    if kind == "whiten":
        return whiten(g, m)
    if kind == "batch_mean":
        base = g.mean(dim=0, keepdim=True)  # (1, T)
        return _masked(g - base, m)
    check_loo(bsz, k)
    gg = g.view(bsz // k, k, t_len)  # (P, k, T)
    others = gg.sum(dim=1, keepdim=True) - gg  # (P, k, T): sum over j != i
    a = gg - others / (k - 1)  # (P, k, T)
    return _masked(a.reshape(bsz, t_len), m)


def kl_k1(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log ref, per token. # (B, T)

    Why: with a ~ pi its expectation is KL(pi || ref); unbiased but can be negative, so it belongs in the
    reward (``k1_in_reward``), not the loss.
    """
    check_same_shape("logp", logp, logp_ref=logp_ref)
    return logp - logp_ref


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 = exp(d) - d - 1 with d = log ref - log pi, per token. # (B, T)

    Why: >= 0 pointwise and unbiased for KL(pi || ref) under a ~ pi, with lower variance than k1; it is the
    KL term we put in the loss. Written as expm1(d) - d for accuracy when pi ~ ref.
    """
    check_same_shape("logp", logp, logp_ref=logp_ref)
    d = logp_ref - logp
    return torch.expm1(d) - d


def k1_in_reward(
    rewards: torch.Tensor,
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    kl_coef: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The "k1 in the reward" KL option: r' = r - kl_coef * (log pi - log ref). # (B, T)

    Why: folding the KL into the reward makes the return-to-go carry it, so the score-function gradient of
    E[r'] optimises the KL-regularised objective. The KL term is detached (rewards never carry gradient in
    REINFORCE). If ``mask`` is given, the result is 0 on padding.
    """
    check_same_shape("rewards", rewards, logp=logp, logp_ref=logp_ref, mask=mask)
    out = rewards - kl_coef * kl_k1(logp.detach(), logp_ref.detach())
    return out if mask is None else _masked(out, _bool_mask(mask))


def policy_gradient_loss(
    logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    n_seqs: int | None = None,
    norm: str = "seq_mean",
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    old_logp: torch.Tensor | None = None,
    clip_eps: float | None = None,
    token_count: int | float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPR loss L = -(1/N) sum_i sum_t A_{i,t} log pi(y_{i,t}) [+ kl_coef/N sum kl]. -> (scalar, stats)

    Why each piece:
      - ``adv`` is detached: it is a weight, not a function of theta.
      - ``norm="seq_mean"``: N = number of sequences (``n_seqs`` overrides B, e.g. the global count
        under DDP). Unbiased for grad E[return]. ``norm="token_mean"``: N = number of real tokens
        (``token_count`` overrides mask.sum(), e.g. all-reduced under DDP); biased when lengths vary.
      - ``kl`` (e.g. ``kl_k3(logp, logp_ref)``) is added as ``kl_coef * sum(kl * mask) / N`` with the
        same N; it carries gradient through logp. ``kl_coef != 0`` without ``kl`` is an error. (``kl`` is
        built outside, so if logp is inf/nan at padding, mask logp before ``kl_k3`` or its backward
        yields nan there.)
      - trust region (only when both ``old_logp`` and ``clip_eps`` are given): ratio = exp(logp - old_logp),
        per-token surrogate -min(ratio * A, clip(ratio, 1-eps, 1+eps) * A) replaces -A * logp. At
        logp == old_logp its gradient equals the REINFORCE gradient.
      - masked positions (padding, after EOS) contribute nothing and get exactly zero gradient, even if
        logp there is inf/nan.
      - ``logp`` must be computed at the sampling temperature (tempered log-softmax) so the update stays
        on-policy; that is the caller's job.

    stats (all detached scalar tensors, no host sync): loss, pg_loss, kl_loss (sum(kl)/N, when kl is
    given), kl_mean (per real token), adv_mean, logp_mean, n_tokens, normaliser, and with old_logp:
    ratio_mean, approx_kl_old (k3 of old vs new, per token), clip_frac. Token means in stats are over
    this call's tokens (local under DDP).
    """
    check_same_shape("mask", mask, logp=logp, adv=adv, kl=kl, old_logp=old_logp)
    check_loss_args(norm, NORMS, kl is not None, kl_coef, old_logp is not None, clip_eps, n_seqs)

    m = _bool_mask(mask)
    lp = _masked(logp, m)  # (B, T)
    a = _masked(adv.detach().to(logp.dtype), m)  # (B, T)
    n_tok_local = m.sum()
    denom = n_tok_local.clamp_min(1).to(logp.dtype)  # token means in stats

    if norm == "seq_mean":
        normaliser = torch.as_tensor(
            float(n_seqs if n_seqs is not None else logp.shape[0]), dtype=logp.dtype, device=logp.device
        )
    else:
        tc = n_tok_local if token_count is None else token_count
        normaliser = torch.as_tensor(tc, device=logp.device).to(logp.dtype).clamp_min(1.0)

    stats: dict[str, torch.Tensor] = {}
    if old_logp is not None:
        olp = _masked(old_logp.detach().to(logp.dtype), m)  # (B, T)
        log_ratio = lp - olp  # (B, T), 0 on padding
        ratio = torch.exp(log_ratio)
        with torch.no_grad():
            stats["ratio_mean"] = _masked(ratio, m).sum() / denom
            stats["approx_kl_old"] = _masked(torch.expm1(log_ratio) - log_ratio, m).sum() / denom
    if old_logp is not None and clip_eps is not None:
        per_tok = -torch.minimum(ratio * a, torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * a)  # (B, T)
        with torch.no_grad():
            is_clipped = m & ((ratio - 1.0).abs() > clip_eps)
            stats["clip_frac"] = is_clipped.sum().to(logp.dtype) / denom
    else:
        per_tok = -a * lp  # (B, T)

    pg_loss = _masked(per_tok, m).sum() / normaliser
    loss = pg_loss
    if kl is not None:
        kl_m = _masked(kl, m)  # (B, T)
        kl_loss = kl_m.sum() / normaliser
        if kl_coef != 0.0:
            loss = loss + kl_coef * kl_loss
        stats["kl_loss"] = kl_loss.detach()
        stats["kl_mean"] = kl_m.detach().sum() / denom

    with torch.no_grad():
        stats["loss"] = loss.detach()
        stats["pg_loss"] = pg_loss.detach()
        stats["adv_mean"] = a.sum() / denom
        stats["logp_mean"] = lp.detach().sum() / denom
        stats["n_tokens"] = n_tok_local.detach().to(logp.dtype)
        stats["normaliser"] = normaliser.detach()
    return loss, stats
