"""The end-of-run comparison table (one row per policy-producing stage)."""

from __future__ import annotations

import math


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def fmt(v) -> str:
    """A table cell: 3 decimals, `-` for a missing or non-finite value."""
    return f"{v:.3f}" if _finite(v) else "-"


def ci(lo, hi) -> str:
    """` [lo, hi]`, or nothing when the interval does not apply (never `[nan, nan]`)."""
    return f" [{lo:.3f}, {hi:.3f}]" if _finite(lo) and _finite(hi) else ""


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Markdown lines; a column whose every cell is `-` or empty is left out (it does not apply)."""
    keep = [j for j in range(len(header)) if j == 0 or any(r[j] not in ("-", "") for r in rows)]
    out = ["| " + " | ".join(header[j] for j in keep) + " |", "|" + "---|" * len(keep)]
    out += ["| " + " | ".join(r[j] for j in keep) + " |" for r in rows]
    return out


def final_table(
    metrics: dict, stages: list[str], headline: str, decode: str = "decode", info: dict | None = None
) -> str:
    """One row per policy stage in `stages` that reported `eval` results; with the `decode` stage's
    manifest `info`, the decoder it chose on val for each policy, its eval score and cost per answer.
    Columns that apply to no policy (e.g. greedy scores on chat data, judged by held-out NLL) are left out."""
    rows = [s for s in stages if f"{s}/eval/sampled/{headline}" in metrics]
    if not rows:
        return ""
    chosen = (info or {}).get("chosen", {})
    n = (info or {}).get("sizes", {}).get("eval")
    decoded = any(f"{s}/eval/greedy/{headline}" in metrics for s in rows)
    head = f"eval {headline} sampled (95% CI)" if decoded else f"eval held-out {headline}"
    header = ["policy", head, "greedy"]
    if chosen:
        header += ["best decoder (val)", f"eval at best (95% CI, n={n})", "cost / answer"]
    header += ["recovered reward", "KL to SFT (measured)", "length"]
    body = []
    for s in rows:
        g = lambda k, s=s: metrics.get(f"{s}/eval/{k}")  # noqa: E731
        b = lambda k, s=s: metrics.get(f"{decode}/{s}/best/{k}")  # noqa: E731
        cells = [
            s,
            fmt(g(f"sampled/{headline}")) + ci(g(f"sampled/{headline}_lo"), g(f"sampled/{headline}_hi")),
        ]
        cells.append(fmt(g(f"greedy/{headline}")))
        if chosen:
            cost = b("cost")
            cells += [
                chosen.get(s, "-"),
                fmt(b(headline)) + ci(b(f"{headline}_lo"), b(f"{headline}_hi")),
                f"{cost:.1f}" if _finite(cost) else "-",
            ]
        cells += [fmt(g("sampled/reward")), fmt(g("sampled/kl_exact")), fmt(g("sampled/length"))]
        body.append(cells)
    lines = markdown_table(header, body)
    ref = metrics.get("sft/eval/expert_true_return")
    if ref is not None:
        lines.append(
            f"\nexpert true return: {ref:.3f}; best possible: {fmt(metrics.get('sft/eval/best_true_return'))}"
        )
    return "\n".join(lines)


def print_final_table(
    metrics: dict, stages: list[str], headline: str, run_dir, decode: str = "decode", info: dict | None = None
) -> None:
    table = final_table(metrics, stages, headline, decode, info)
    if table:
        print(
            "\n## Final comparison on `eval` (held out)\n\n" + table + f"\n\nrun dir: {run_dir}\n",
            flush=True,
        )
