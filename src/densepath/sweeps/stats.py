"""The general statistics of seed sweeps, on ``scipy.stats``: Student-t intervals, paired
differences with a paired-t p-value, Holm's correction and the smallest detectable paired effect.

`densepath-aggregate` (:mod:`densepath.sweeps.aggregate`) and the study reports under
``experiments/`` use them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CI_LEVEL = 0.95


def student_t_ppf(p: float, df: float) -> float:
    """Quantile of Student's t: the t with P(T <= t) = p (``scipy.stats.t.ppf``).

    The arguments are checked first: scipy answers NaN or +-inf for p or df out of range, which
    would pass silently into a table.
    """
    from scipy import stats  # imported here so that `densepath-aggregate --help` stays fast

    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile level p must be in (0, 1), got p={p}")
    if df <= 0:
        raise ValueError(f"Student t needs df > 0 (df = n - 1 for n >= 2 values), got df={df}")
    return float(stats.t.ppf(p, df))


def t_interval(values: Sequence[float], level: float = CI_LEVEL) -> tuple[float, float]:
    """(mean, half-width) of the two-sided Student-t interval for the mean of `values`; the half-width
    is NaN for n < 2 (one seed gives no spread estimate) and the mean is NaN for n = 0."""
    x = np.asarray(values, dtype=np.float64)  # (n,)
    n = x.size
    if n == 0:
        return math.nan, math.nan
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan
    return mean, student_t_ppf(0.5 * (1.0 + level), n - 1) * float(x.std(ddof=1)) / math.sqrt(n)


def seed_sort_key(seed: str | None) -> tuple[int, float, str]:
    """Seeds sort numerically when they are numbers, else as strings; a missing seed goes last."""
    if seed is None:
        return (2, 0.0, "")
    try:
        return (0, float(seed), seed)
    except ValueError:
        return (1, 0.0, seed)


def paired_differences(
    a: Mapping[str, float], b: Mapping[str, float], level: float = CI_LEVEL
) -> dict[str, Any]:
    """a - b over the seeds present in both: n, seeds, mean, t-interval (ci95 half-width, lo, hi),
    the two-sided paired-t p-value and the sd of the differences.

    Pairing by seed removes the seed-to-seed variance both runs share, which is usually most of it.
    Seeds whose value is not finite on either side are listed in ``seeds`` but not counted in n.
    """
    seeds = sorted(set(a) & set(b), key=seed_sort_key)
    d = np.array([a[s] - b[s] for s in seeds if math.isfinite(a[s]) and math.isfinite(b[s])])  # (n,)
    n = len(d)
    mean, half = t_interval(d, level)
    out = {"n": n, "seeds": seeds, "mean": mean, "ci95": half, "lo": mean - half, "hi": mean + half}
    if n < 2:
        return {**out, "p": math.nan, "sd": math.nan}
    from scipy import stats

    sd = float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(mean)):  # every seed gives the same difference (up to float rounding):
        # a t-test has nothing to say (no p-value)
        return {**out, "p": math.nan, "sd": 0.0, "zero_variance": True}
    else:
        p = min(1.0, 2.0 * float(stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1)))
    return {**out, "p": p, "sd": sd, "zero_variance": False}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (NaN stays NaN; monotone; capped at 1)."""
    order = sorted((i for i, p in enumerate(pvalues) if math.isfinite(p)), key=lambda i: pvalues[i])
    adj, running = [math.nan] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[i]))
        adj[i] = running
    return adj


def min_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest paired mean difference a two-sided paired t-test with n pairs detects with the given
    power, for the observed sd of the differences (noncentral t approximated by a shifted central t)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    df = n - 1
    return (student_t_ppf(1 - alpha / 2, df) + student_t_ppf(power, df)) * sd / math.sqrt(n)


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar test of paired binary outcomes (e.g. one prompt passed by policy a, by policy b):
    n pairs, the discordant counts (a only, b only), the difference of pass rates a - b, and the two-sided
    p-value of the binomial test of the discordant pairs against 1/2 (no discordant pair: p = 1)."""
    if len(a) != len(b):
        raise ValueError(f"mcnemar: {len(a)} outcomes for a but {len(b)} for b; pair them by prompt first")
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    a_only, b_only = int((x & ~y).sum()), int((~x & y).sum())
    n = len(x)
    diff = (a_only - b_only) / n if n else math.nan
    if a_only + b_only == 0:
        return {"n": n, "a_only": a_only, "b_only": b_only, "diff": diff, "p": 1.0}
    from scipy import stats

    p = float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue)
    return {"n": n, "a_only": a_only, "b_only": b_only, "diff": diff, "p": min(1.0, p)}


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = CI_LEVEL,
    weights: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Paired bootstrap over items (e.g. prompts, each scored by two policies) of the weighted mean difference
    sum(w (a - b)) / sum(w) (w = 1: the plain mean): the difference, its percentile interval, and the
    two-sided bootstrap p-value (twice the smaller share of resampled differences on either side of 0, at
    least 1/n_boot).

    With a = per-prompt pass rates over its instructions and w = its instruction count, this is the
    instruction-level accuracy difference, resampled by prompt: instructions of one prompt stay together
    (they are not independent), which a bootstrap over single instructions would ignore."""
    if len(a) != len(b) or (weights is not None and len(weights) != len(a)):
        raise ValueError(
            f"paired_bootstrap: {len(a)} values for a, {len(b)} for b"
            + ("" if weights is None else f", {len(weights)} weights")
            + "; pair them first"
        )
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)  # (n,)
    w = np.ones_like(d) if weights is None else np.asarray(weights, dtype=np.float64)  # (n,)
    n = len(d)
    if n == 0 or w.sum() <= 0:
        return {"n": n, "mean": math.nan, "lo": math.nan, "hi": math.nan, "p": math.nan}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))  # (n_boot, n)
    wi = w[idx]
    means = (wi * d[idx]).sum(axis=1) / np.maximum(wi.sum(axis=1), 1e-300)  # (n_boot,)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    if np.all(d == 0):
        p = 1.0
    else:
        p = min(1.0, max(2.0 * min(float((means <= 0).mean()), float((means >= 0).mean())), 1.0 / n_boot))
    return {"n": n, "mean": float((w * d).sum() / w.sum()), "lo": float(lo), "hi": float(hi), "p": p}
