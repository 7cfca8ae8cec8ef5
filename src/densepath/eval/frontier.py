"""The decode stage's report: eval score against inference cost per answer, every policy and decoder.

A row is one (policy, decoder): {"policy", "decoder", "kind", "val", "eval", "lo", "hi", "cost",
"malformed", "chosen"}; `cost` is the mean eval inference cost per answer (token positions run
through a model, prompt excluded), `chosen` marks the decoder picked on `val` for that policy.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from densepath.eval.report import fmt

COLUMNS = ("policy", "decoder", "kind", "val", "eval", "lo", "hi", "cost", "malformed", "chosen")


def frontier_table(rows: list[dict], head: str) -> str:
    """Every setting on `eval`, cheapest first within each policy; the `val` choice is starred."""
    strict = any(r["malformed"] is not None for r in rows)  # the task scores malformed answers
    lines = [
        f"| policy | decoder | cost / answer | val {head} | eval {head} (95% CI) |" + " malformed |" * strict,
        "|---|---|---|---|---|" + "---|" * strict,
    ]
    for r in sorted(rows, key=lambda r: (r["policy_order"], r["cost"], r["decoder"])):
        star = " (chosen on val)" if r["chosen"] else ""
        bad = f" {r['malformed'] or 0:.0f} |" if strict else ""
        lines.append(
            f"| {r['policy']} | {r['decoder']}{star} | {r['cost']:.1f} | {fmt(r['val'])} | "
            f"{fmt(r['eval'])} [{fmt(r['lo'])}, {fmt(r['hi'])}] |{bad}"
        )
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def plot_frontier(path: Path, rows: list[dict], head: str, title: str = "") -> Path:
    """Eval score (95% CI bars) against cost per answer (log x); one colour per policy, one marker per
    decoder kind; each policy's line is its frontier (the best eval score at or below each cost)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    markers = {"greedy": "o", "temperature": "v", "beam": "s", "best_of_n": "D"}
    policies = sorted(
        {r["policy"] for r in rows}, key=lambda p: min(r["policy_order"] for r in rows if r["policy"] == p)
    )
    for i, p in enumerate(policies):
        colour = f"C{i % 10}"
        mine = sorted((r for r in rows if r["policy"] == p), key=lambda r: r["cost"])
        best, xs, ys = float("-inf"), [], []
        for r in mine:
            best = max(best, r["eval"])
            xs.append(r["cost"])
            ys.append(best)
        ax.step(xs, ys, where="post", color=colour, alpha=0.5, label=f"{p} (frontier)")
        for r in mine:
            lo, hi = (v if math.isfinite(v) else r["eval"] for v in (r["lo"], r["hi"]))
            err = [[r["eval"] - lo], [hi - r["eval"]]]
            ax.errorbar(
                r["cost"],
                r["eval"],
                yerr=err,
                color=colour,
                marker=markers.get(r["kind"], "x"),
                markersize=9 if r["chosen"] else 6,
                markeredgecolor="black" if r["chosen"] else colour,
                capsize=2,
                linestyle="none",
            )
    for kind, m in markers.items():
        ax.plot([], [], marker=m, color="grey", linestyle="none", label=kind)
    ax.set_xscale("log")
    ax.set_xlabel("inference cost per answer (token positions run through a model, prompt excluded)")
    ax.set_ylabel(f"eval {head}")
    ax.set_title(
        title or "Eval score against inference cost (black edge: the decoder chosen on val)", fontsize=9
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
