"""Reward-recovery probes: does the recovered dense reward find errors and track true returns?

* **corruption probes**: one token of a demonstration is altered; a good dense reward puts its
  minimum on it (``detection_rate``) and scores altered tokens below clean ones (``corrupted_token_auroc``);
* **fidelity**: on a known-reward task, recovered sequence returns should correlate with the true
  returns *within* each policy's samples (the headline; pooled correlation is inflated by
  between-policy differences).

All (B, T) inputs are per-token tensors aligned with a response ``mask`` (1 on real tokens);
everything is computed in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import rankdata


def _check_bt(rewards: torch.Tensor, mask: torch.Tensor, name: str = "rewards") -> None:
    """Raise naming the argument when a (B, T) reward tensor does not match its mask."""
    if rewards.dim() != 2:
        raise ValueError(
            f"{name} must be (B, T) but has shape {tuple(rewards.shape)}; pass one row per response."
        )
    if rewards.shape != mask.shape:
        raise ValueError(
            f"{name} has shape {tuple(rewards.shape)} but its mask has shape {tuple(mask.shape)}; "
            "pass the response mask aligned with the per-token rewards."
        )


def _check_positions(positions: torch.Tensor, mask: torch.Tensor, name: str) -> torch.Tensor:
    """Validate one altered-token index per row that points at a real token; return it as long."""
    positions = torch.as_tensor(positions).reshape(-1).long()
    B, T = mask.shape
    if positions.numel() != B:
        raise ValueError(
            f"positions has {positions.numel()} entries but {name} has {B} rows; pass one index per row."
        )
    if (outside := (positions < 0) | (positions >= T)).any():
        bad = int(torch.nonzero(outside)[0])
        raise ValueError(
            f"positions[{bad}] = {int(positions[bad])} is outside [0, {T}); index the response block."
        )
    if not (on_real := mask.bool()[torch.arange(B), positions]).all():
        bad = int(torch.nonzero(~on_real)[0])
        raise ValueError(
            f"positions[{bad}] = {int(positions[bad])} points at a padded token of {name} row {bad}; "
            "the altered token must be a real (mask == 1) response token."
        )
    return positions


def detection_rate(rewards: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> dict[str, float]:
    """Fraction of corrupted responses whose lowest-reward real token is the altered one.

    Ties: the argmin is the FIRST real token at the row minimum. ``chance`` is the rate of a
    uniformly random argmin: mean over rows of ``1 / len_i``.
    """
    _check_bt(rewards, mask)
    m = mask.bool()  # (B, T)
    lengths = m.sum(dim=1)  # (B,)
    if (lengths == 0).any():
        bad = int(torch.nonzero(lengths == 0)[0])
        raise ValueError(f"row {bad} of mask has no real tokens; drop empty responses before probing.")
    positions = _check_positions(positions, mask, "rewards")
    r = torch.where(m, rewards.detach().to(torch.float64), math.inf)  # padding is never the minimum
    hits = (torch.argmin(r, dim=1) == positions).to(torch.float64)  # (B,); argmin: first minimal index
    return {"detection_rate": float(hits.mean()), "chance": float((1.0 / lengths.to(torch.float64)).mean())}


def _as_1d_finite(x: np.ndarray, name: str) -> np.ndarray:
    """1-D float64 copy of ``x``; rank metrics are meaningless with NaN, so reject it early."""
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if np.isnan(a).any():
        raise ValueError(
            f"{name} contains NaN at index {int(np.flatnonzero(np.isnan(a))[0])}; drop or fix those scores."
        )
    return a


def auroc(neg_scores: np.ndarray, pos_scores: np.ndarray) -> float:
    """P(random positive scores LOWER than random negative), ties count 1/2: the Mann-Whitney U of the
    negatives over n_neg * n_pos. Positives are corrupted tokens (low reward = detected); 0.5 = chance."""
    neg, pos = _as_1d_finite(neg_scores, "neg_scores"), _as_1d_finite(pos_scores, "pos_scores")
    if neg.size == 0 or pos.size == 0:
        raise ValueError(
            f"auroc needs at least one score of each kind, got {neg.size} negatives and {pos.size} positives."
        )
    ranks = rankdata(np.concatenate([neg, pos]))
    u_neg = ranks[: neg.size].sum() - neg.size * (neg.size + 1) / 2.0  # pairs with neg > pos, ties 1/2
    return float(u_neg / (neg.size * pos.size))


def corrupted_token_auroc(
    rewards_clean: torch.Tensor,
    mask_clean: torch.Tensor,
    rewards_corrupt: torch.Tensor,
    mask_corrupt: torch.Tensor,
    positions: torch.Tensor,
) -> float:
    """AUROC separating altered tokens (positives) from every real token of clean responses (negatives)."""
    _check_bt(rewards_clean, mask_clean, "rewards_clean")
    _check_bt(rewards_corrupt, mask_corrupt, "rewards_corrupt")
    positions = _check_positions(positions, mask_corrupt, "rewards_corrupt")
    rc = rewards_corrupt.detach().to(torch.float64)
    pos = rc[torch.arange(rc.shape[0]), positions]  # (B,)
    neg = rewards_clean.detach().to(torch.float64)[mask_clean.bool()]  # (N_real,)
    return auroc(neg.cpu().numpy(), pos.cpu().numpy())


def _resample_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n): how often each of n items is drawn in each of n_boot resamples with replacement."""
    flat = rng.integers(0, n, (n_boot, n)) + n * np.arange(n_boot)[:, None]  # (n_boot, n) offset per resample
    return np.bincount(flat.ravel(), minlength=n * n_boot).reshape(n_boot, n)


def sequence_auroc(
    scores: np.ndarray, passed: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """(AUROC, lo, hi): P(a passing response scores HIGHER than a failing one), ties 1/2, with a 95%
    stratified percentile bootstrap interval (``n_boot`` resamples of the passing and the failing
    responses separately, so every resample keeps both classes; seeded, so deterministic).

    Why: does the recovered sequence reward rank responses a verifier passes above those it fails
    (e.g. IFBench)? 0.5 = no signal. Each resample's AUROC is computed from weighted counts against
    the sorted failing scores: O(n_boot * n) memory, no n_pass x n_fail matrix.
    """
    s = _as_1d_finite(scores, "scores")
    p = np.asarray(passed).reshape(-1)
    if p.size != s.size:
        raise ValueError(
            f"sequence_auroc: {s.size} scores but {p.size} passed flags; pass one flag per response."
        )
    if p.dtype != bool:
        if not np.isin(p, (0, 1)).all():
            bad = int(np.flatnonzero(~np.isin(p, (0, 1)))[0])
            raise ValueError(
                f"passed[{bad}] = {p[bad].item()!r} is not a pass/fail flag; pass booleans or 0/1 "
                "(threshold a graded score first, e.g. passed = score == 1)."
            )
        p = p.astype(bool)
    n_boot = int(n_boot)
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot} must be >= 1 (bootstrap resamples for the interval).")
    pos, neg = s[p], s[~p]
    if pos.size == 0 or neg.size == 0:
        raise ValueError(
            f"sequence_auroc needs at least one passing and one failing response, got {pos.size} passing "
            f"and {neg.size} failing; the AUROC is undefined otherwise."
        )
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")  # (n_pos,) failing scores strictly lower
    upto = np.searchsorted(neg_sorted, pos, side="right")  # (n_pos,) ... lower or tied
    point = float((below + upto).sum() / (2.0 * pos.size * neg.size))  # below + ties / 2

    rng = np.random.default_rng(seed)
    order = np.argsort(neg, kind="stable")  # resample counts of the failing scores, in sorted order
    w_neg, w_pos = _resample_counts(rng, neg.size, n_boot), _resample_counts(rng, pos.size, n_boot)
    cum = np.concatenate(
        [np.zeros((n_boot, 1)), np.cumsum(w_neg[:, order], axis=1)], axis=1
    )  # (n_boot, n_neg+1)
    wins = cum[:, below] + cum[:, upto]  # (n_boot, n_pos): 2 x (lower + ties / 2) weighted failing counts
    boot = (w_pos * wins).sum(axis=1) / (2.0 * pos.size * neg.size)  # (n_boot,)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return point, float(lo), float(hi)


def _pair(x: np.ndarray, y: np.ndarray, what: str, finite: bool) -> tuple[np.ndarray, np.ndarray]:
    as_1d = _as_1d_finite if finite else lambda v, _: np.asarray(v, dtype=np.float64).reshape(-1)
    a, b = as_1d(x, "x"), as_1d(y, "y")
    if a.size != b.size:
        raise ValueError(
            f"{what} needs equal lengths, got {a.size} and {b.size}; pair the samples one to one."
        )
    return a, b


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation in float64; NaN when n < 2 or either side has zero variance."""
    a, b = _pair(x, y, "pearson", finite=False)
    if a.size < 2:
        return float("nan")
    da, db = a - a.mean(), b - b.mean()
    sa, sb = math.sqrt(float(np.dot(da, da))), math.sqrt(float(np.dot(db, db)))
    if sa == 0.0 or sb == 0.0:
        return float("nan")
    return max(-1.0, min(1.0, float(np.dot(da, db)) / (sa * sb)))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (Pearson of average ranks); NaN when n < 2 or a side is constant."""
    a, b = _pair(x, y, "spearman", finite=True)
    return pearson(rankdata(a), rankdata(b)) if a.size >= 2 else float("nan")


def _nanmean(values: list[float]) -> float:
    """Mean of the non-NaN values, NaN (without a numpy warning) when there are none."""
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


def _centre(x: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """x minus its group's mean (no-op without groups)."""
    if groups is None:
        return x
    out = x.copy()
    for g in np.unique(groups):
        sel = groups == g
        out[sel] = x[sel] - x[sel].mean()
    return out


def fidelity(
    recovered: dict[str, np.ndarray], true: dict[str, np.ndarray], groups: dict[str, np.ndarray] | None = None
) -> dict[str, float]:
    """Correlation of recovered vs true sequence returns, per policy, pooled and averaged within.

    ``groups`` (name -> a prompt id per answer) centres both returns within each prompt first (per
    policy, and over the pooled answers for ``pooled``): the correlation then measures how well the
    recovered reward ranks answers to the same prompt. ``within/*_mean`` averages the per-policy
    values, skipping NaN ones (a policy with constant returns); it is NaN if every policy is NaN.
    """
    if set(recovered) != set(true):
        raise ValueError(
            f"recovered has policies {sorted(recovered)} but true has {sorted(true)}; pass the same policy names."
        )
    if not recovered:
        raise ValueError("fidelity needs at least one policy; pass {name: returns} dicts.")
    out: dict[str, float] = {}
    rec_all, true_all = [], []
    for name in sorted(recovered):
        r, t = (np.asarray(d[name], dtype=np.float64).reshape(-1) for d in (recovered, true))
        if r.size != t.size:
            raise ValueError(
                f"policy {name!r}: {r.size} recovered returns but {t.size} true returns; pair them one to one."
            )
        g = None if groups is None else np.asarray(groups[name]).reshape(-1)
        if g is not None and g.size != r.size:
            raise ValueError(
                f"policy {name!r}: {g.size} group ids for {r.size} returns; give one per answer."
            )
        rc, tc = _centre(r, g), _centre(t, g)
        out[f"{name}/pearson"], out[f"{name}/spearman"] = pearson(rc, tc), spearman(rc, tc)
        rec_all.append(r)
        true_all.append(t)
    rec_cat, true_cat = np.concatenate(rec_all), np.concatenate(true_all)
    if groups is not None:
        g_cat = np.concatenate([np.asarray(groups[n]).reshape(-1) for n in sorted(recovered)])
        rec_cat, true_cat = _centre(rec_cat, g_cat), _centre(true_cat, g_cat)
    out["pooled/pearson"], out["pooled/spearman"] = pearson(rec_cat, true_cat), spearman(rec_cat, true_cat)
    for corr in ("pearson", "spearman"):
        out[f"within/{corr}_mean"] = _nanmean([out[f"{n}/{corr}"] for n in sorted(recovered)])
    return out


def reward_stats(rewards: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Token-level and sequence-sum summary over real tokens (population std), to spot scale drift
    and length bias."""
    _check_bt(rewards, mask)
    m = mask.bool()
    r = rewards.detach().to(torch.float64)
    tok = r[m]  # (N_real,)
    if tok.numel() == 0:
        raise ValueError("mask has no real tokens; reward_stats needs at least one response token.")
    seq = torch.where(m, r, 0.0).sum(dim=1)  # (B,)
    return {
        "token_mean": float(tok.mean()),
        "token_std": float(tok.std(correction=0)),
        "token_min": float(tok.min()),
        "token_max": float(tok.max()),
        "seq_sum_mean": float(seq.mean()),
        "seq_sum_std": float(seq.std(correction=0)),
        "n_tokens": float(tok.numel()),
        "n_sequences": float(seq.numel()),
    }
