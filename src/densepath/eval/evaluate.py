"""Evaluate a policy on a prompt split: verifier success (or true return) per family, greedy and sampled.

Metric keys (flat, documented in the README):
  `<split>/<mode>/<metric>`            overall, mode in {greedy, sampled}; metric e.g. success, true_return
  `<split>/<mode>/<metric>_lo|_hi`     Wilson 95% interval (0/1 metrics: success on binary tasks, malformed,
                                       optimal, valid) or mean +- 1.96 SE (others, graded success included)
  `<split>/<mode>/<family>/<metric>`   per family (verifiable tasks)
  `<split>/<mode>/length`              mean response length in tokens (EOS included)
  `<split>/<metric>`                   the headline: sampled at T=1 (e.g. `eval/success`)
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from densepath.data.formatting import answer_text, encode_prompt

log = logging.getLogger(__name__)
_PROPORTIONS = ("success", "malformed", "optimal", "valid")  # 0/1 per answer, except graded success


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well behaved at 0 and 1, unlike Wald)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _summ(values: np.ndarray, is_binary: bool) -> tuple[float, float, float]:
    values = values[~np.isnan(values)]
    n = len(values)
    if n == 0:
        return (float("nan"),) * 3
    mean = float(values.mean())
    if is_binary:
        lo, hi = wilson_interval(values.sum(), n)
    else:
        se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        lo, hi = mean - 1.96 * se, mean + 1.96 * se
    return mean, lo, hi


def evaluate_policy(
    model,
    tokenizer,
    task,
    rows: list[dict],
    sampler,
    *,
    split: str = "eval",
    modes: tuple[str, ...] = ("greedy", "sampled"),
    temperature: float = 1.0,
    extra: Callable | None = None,
) -> tuple[dict[str, float], dict]:
    """Returns (flat metrics, details) where details holds per-mode texts and per-sample scores.

    `extra(batch) -> dict[str, np.ndarray]` adds per-sample metrics (e.g. recovered reward, KL).
    """
    metrics: dict[str, float] = {}
    details: dict = {}
    prompts = [encode_prompt(tokenizer, task.messages(r)) for r in rows]
    for mode in modes:
        batch = sampler.generate(model, prompts, k=1, greedy=(mode == "greedy"), temperature=temperature)
        m, details[mode] = score_answers(tokenizer, task, rows, batch, f"{split}/{mode}", extra)
        metrics.update(m)
    headline = task.headline
    if f"{split}/sampled/{headline}" in metrics:
        metrics[f"{split}/{headline}"] = metrics[f"{split}/sampled/{headline}"]
    metrics[f"{split}/n"] = float(len(rows))
    return metrics, details


def score_answers(
    tokenizer, task, rows: list[dict], batch, prefix: str, extra: Callable | None = None
) -> tuple[dict[str, float], dict]:
    """Judge one answer per row (`batch`, k = 1): (`<prefix>/<metric>` metrics, {"texts", "scores"})."""
    metrics: dict[str, float] = {}
    ids, mask = batch.response_ids.cpu(), batch.response_mask.cpu().bool()
    texts = [answer_text(tokenizer, row[m].tolist()) for row, m in zip(ids, mask)]
    scores = task.score(rows, texts)
    scores["length"] = batch.response_mask.sum(-1).float().cpu().numpy()
    if extra is not None:
        scores.update(extra(batch))
    for name, vals in scores.items():
        vals = np.asarray(vals, dtype=np.float64)
        mean, lo, hi = _summ(vals, name in _PROPORTIONS and bool(np.isin(vals, (0.0, 1.0)).all()))
        metrics[f"{prefix}/{name}"] = mean
        if name not in ("length", "cost"):
            metrics[f"{prefix}/{name}_lo"], metrics[f"{prefix}/{name}_hi"] = lo, hi
    if "malformed" in scores:  # strict evaluation: how many answers scored the task's penalty
        metrics[f"{prefix}/malformed_count"] = float(np.sum(scores["malformed"]))
    by_family = defaultdict(list)
    for i, r in enumerate(rows):
        by_family[r["family"]].append(i)
    if len(by_family) > 1:
        for fam, idx in by_family.items():
            for name in (n for n in scores if n not in ("length", "cost")):
                vals = np.asarray(scores[name], dtype=np.float64)[idx]  # idx is never empty
                metrics[f"{prefix}/{fam}/{name}"] = float(np.nanmean(vals))
    return metrics, {"texts": texts, "scores": scores}


def format_table(
    metrics: dict[str, float], split: str, headline: str, families: list[str], title: str = ""
) -> str:
    """A markdown table: one row per family plus `all`, greedy and sampled columns. A cell that does not
    apply is left out, never printed as `nan` (on chat data the headline is held-out NLL: neither
    greedy nor sampled, so it gets its own column with the per-sequence NLL beside it)."""
    from densepath.eval.report import ci, fmt, markdown_table

    get = lambda key: metrics.get(f"{split}/{key}", float("nan"))  # noqa: E731
    n = int(metrics.get(f"{split}/n", 0))
    lines = [f"### {title}"] if title else []
    decoded = f"{split}/greedy/{headline}" in metrics
    if not decoded:  # held-out likelihood of the demonstrations (no verifier)
        header = ["split", f"held-out {headline} / token", f"{headline} / sequence", "sampled length", "n"]
        row = [split, fmt(get(headline)), fmt(get(f"seq_{headline}")), fmt(get("sampled/length")), str(n)]
        return "\n".join(lines + markdown_table(header, [row]))
    header = ["family", f"greedy {headline}", f"sampled {headline} (95% CI)"]
    body = [
        [fam, fmt(get(f"greedy/{fam}/{headline}")), fmt(get(f"sampled/{fam}/{headline}"))] for fam in families
    ]
    body.append(
        [
            f"**all** (n={n})",
            fmt(get(f"greedy/{headline}")),
            fmt(get(f"sampled/{headline}"))
            + ci(get(f"sampled/{headline}_lo"), get(f"sampled/{headline}_hi")),
        ]
    )
    return "\n".join(lines + markdown_table(header, body))
