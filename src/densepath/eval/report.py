"""The end-of-run comparison table (one row per policy-producing stage)."""

from __future__ import annotations

import math


def fmt(v) -> str:
    """A table cell: 3 decimals, `-` for a missing or NaN value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}"


def final_table(
    metrics: dict, stages: list[str], headline: str, decode: str = "decode", info: dict | None = None
) -> str:
    """One row per policy stage in `stages` that reported `eval` results; with the `decode` stage's
    manifest `info`, the decoder it chose on val for each policy, its eval score and cost per answer."""
    rows = [s for s in stages if f"{s}/eval/sampled/{headline}" in metrics]
    if not rows:
        return ""
    chosen = (info or {}).get("chosen", {})
    n = (info or {}).get("sizes", {}).get("eval")
    best_cols = f" best decoder (val) | eval at best (95% CI, n={n}) | cost / answer |" if chosen else ""
    lines = [
        f"| policy | eval {headline} sampled (95% CI) | greedy |{best_cols} recovered reward | "
        "KL to SFT (measured) | length |",
        "|---|---|---|" + "---|---|---|" * bool(chosen) + "---|---|---|",
    ]
    for s in rows:
        g = lambda k, s=s: metrics.get(f"{s}/eval/{k}")  # noqa: E731
        b = lambda k, s=s: metrics.get(f"{decode}/{s}/best/{k}")  # noqa: E731
        ci = f"[{fmt(g(f'sampled/{headline}_lo'))}, {fmt(g(f'sampled/{headline}_hi'))}]"
        best = ""
        if chosen:
            bci = f"[{fmt(b(f'{headline}_lo'))}, {fmt(b(f'{headline}_hi'))}]"
            cost = b("cost")
            best = f" {chosen.get(s, '-')} | {fmt(b(headline))} {bci} | {'-' if cost is None else f'{cost:.1f}'} |"
        lines.append(
            f"| {s} | {fmt(g(f'sampled/{headline}'))} {ci} | {fmt(g(f'greedy/{headline}'))} |{best} "
            f"{fmt(g('sampled/reward'))} | {fmt(g('sampled/kl_exact'))} | {fmt(g('sampled/length'))} |"
        )
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
