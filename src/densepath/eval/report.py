"""The end-of-run comparison table (one row per policy-producing stage)."""

from __future__ import annotations

import math

POLICY_STAGES = ("sft", "dpr", "continued_sft", "rloo")


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}"


def final_table(metrics: dict, stages: list[str], headline: str) -> str:
    rows = [s for s in stages if s in POLICY_STAGES and f"{s}/eval/sampled/{headline}" in metrics]
    if not rows:
        return ""
    lines = [
        f"| policy | eval {headline} sampled (95% CI) | greedy | recovered reward | KL to SFT | length |",
        "|---|---|---|---|---|---|",
    ]
    for s in rows:
        g = lambda k, s=s: metrics.get(f"{s}/eval/{k}")  # noqa: E731
        ci = f"[{_fmt(g(f'sampled/{headline}_lo'))}, {_fmt(g(f'sampled/{headline}_hi'))}]"
        lines.append(
            f"| {s} | {_fmt(g(f'sampled/{headline}'))} {ci} | {_fmt(g(f'greedy/{headline}'))} | "
            f"{_fmt(g('sampled/reward'))} | {_fmt(g('sampled/kl_to_sft'))} | {_fmt(g('sampled/length'))} |"
        )
    ref = metrics.get("sft/eval/expert_true_return")
    if ref is not None:
        lines.append(
            f"\nexpert true return: {ref:.3f}; best possible: {_fmt(metrics.get('sft/eval/best_true_return'))}"
        )
    return "\n".join(lines)


def print_final_table(ctx, stages: list[str]) -> None:
    table = final_table(ctx.metrics, stages, ctx.task.headline)
    if table:
        print(
            "\n## Final comparison on `eval` (held out)\n\n" + table + f"\n\nrun dir: {ctx.run_dir}\n",
            flush=True,
        )
