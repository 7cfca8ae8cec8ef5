"""The outputs of `densepath-aggregate`: jobs.csv, summary.csv, summary.md and headline.png.

``stats`` below is the ``{configuration: stats}`` dict that :func:`densepath.sweeps.aggregate.aggregate`
returns; ``jobs`` are the job dicts of :func:`densepath.sweeps.jobs.read_job` with their ``values``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from densepath.sweeps.jobs import STATUS_FAILED, STATUS_FINISHED, STATUS_UNFINISHED, STATUSES

_INTERVAL = ("ci95", "lo", "hi")  # the interval keys of a stats / paired dict, after the mean


def _fmt(x: float) -> str:
    """Compact human number: fixed 4 decimals in the usual range, else 4 significant digits."""
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.4f}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.4g}"


def _csv_num(x: float) -> str:
    return "" if not math.isfinite(x) else repr(float(x))


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _ci(s: dict[str, Any]) -> str:
    """The interval of a stats / paired dict as ``[lo, hi]``; n/a without a half-width."""
    return f"[{_fmt(s['lo'])}, {_fmt(s['hi'])}]" if math.isfinite(s["ci95"]) else "n/a"


def write_jobs_csv(
    path: Path, jobs: Sequence[dict[str, Any]], sweep_dir: Path, metrics: Sequence[str]
) -> None:
    """One row per job dir, failed and unfinished ones included, so nothing silently disappears."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["job_dir", "configuration", "seed", "status", "error", *metrics])
        for j in jobs:
            rel = j["dir"].relative_to(sweep_dir).as_posix()
            values = (_csv_num(j["values"][m]) for m in metrics)
            w.writerow([rel, j["config"], j["seed"] or "", j["status"], j["error"], *values])


def write_summary_csv(
    path: Path, stats: dict[str, dict[str, Any]], metric: str, extra: Sequence[str]
) -> None:
    """The per-configuration numbers at full precision (empty cell = not defined)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        header = ["configuration", "metric", "n", "seeds", "mean", "ci95_halfwidth", "ci_lo", "ci_hi"]
        header += ["failed", "unfinished", "missing_metric"]
        header += [f"{m}_{s}" for m in extra for s in ("n", "mean", "ci95_halfwidth")]
        header += ["paired_n", "paired_mean_diff", "paired_ci95_halfwidth", "paired_lo", "paired_hi"]
        w.writerow(header)
        for cfg, s in stats.items():
            row = [cfg, metric, s["n"], " ".join(s["seeds"]), *(_csv_num(s[k]) for k in ("mean", *_INTERVAL))]
            row += [s["failed"], s["unfinished"], s["missing"]]
            for m in extra:
                e = s["extra"][m]
                row += [e["n"], _csv_num(e["mean"]), _csv_num(e["ci95"])]
            p = s["paired"]
            row += [p["n_pairs"], *(_csv_num(p[k]) for k in ("mean_diff", *_INTERVAL))] if p else [""] * 5
            w.writerow(row)


def _paired_md(stats: dict[str, dict[str, Any]], reference: str) -> list[str]:
    lines = [
        "",
        f"## Paired differences vs reference `{_md_cell(reference)}`",
        "",
        "Difference = configuration − reference, per seed present in both; 95% t-interval of the "
        "paired differences (df = pairs − 1).",
        "",
        "| configuration | n pairs | seeds | mean diff | ±95% CI | 95% CI | note |",
        "|---|---:|---|---:|---:|---|---|",
    ]
    for cfg, s in stats.items():
        p = s["paired"]
        if cfg == reference or p is None:
            continue
        note = {0: "shares no seed with the reference", 1: "one pair: no interval"}.get(p["n_pairs"])
        if note is None:
            note = "CI excludes 0 (better)" if p["lo"] > 0 else "CI excludes 0 (worse)" if p["hi"] < 0 else ""
        lines.append(
            f"| `{_md_cell(cfg)}` | {p['n_pairs']} | {', '.join(p['seeds']) or '-'} | "
            f"{_fmt(p['mean_diff'])} | {_fmt(p['ci95'])} | {_ci(p)} | {note} |"
        )
    return lines


def render_summary_md(
    stats: dict[str, dict[str, Any]],
    jobs: Sequence[dict[str, Any]],
    sweep_dir: Path,
    metric: str,
    extra: Sequence[str],
    reference: str | None,
) -> str:
    """Markdown: per-configuration table, failed jobs with their errors, paired-difference table."""
    counts = {st: sum(j["status"] == st for j in jobs) for st in STATUSES}
    lines = [
        f"# Sweep summary: `{metric}`",
        "",
        f"Sweep: `{sweep_dir}`: {len(jobs)} job dirs, {counts[STATUS_FINISHED]} finished, "
        f"{counts[STATUS_FAILED]} failed, {counts[STATUS_UNFINISHED]} unfinished. "
        f"95% CI = mean ± t(0.975, n-1)·sd/√n over seeds.",
        "",
        "| configuration | n | seeds | mean | ±95% CI | 95% CI | failed | unfinished |"
        + "".join(f" {_md_cell(m)} |" for m in extra),
        "|---|---:|---|---:|---:|---|---:|---:|" + "---:|" * len(extra),
    ]
    for cfg, s in stats.items():
        cells = [f"`{_md_cell(cfg)}`", str(s["n"]), ", ".join(s["seeds"]) or "-", _fmt(s["mean"])]
        cells += [_fmt(s["ci95"]), _ci(s), str(s["failed"]), str(s["unfinished"])]
        for m in extra:
            e = s["extra"][m]
            cells.append(_fmt(e["mean"]) + (f" ± {_fmt(e['ci95'])}" if math.isfinite(e["ci95"]) else ""))
        lines.append("| " + " | ".join(cells) + " |")
    if no_metric := "; ".join(f"`{_md_cell(c)}`: {s['missing']}" for c, s in stats.items() if s["missing"]):
        lines += ["", f"Finished jobs without a finite `{metric}` (not in n): {no_metric}"]

    if failed := [j for j in jobs if j["status"] == STATUS_FAILED]:
        lines += ["", "## Failed jobs", "", "| job dir | configuration | seed | error |", "|---|---|---|---|"]
        for j in failed:
            rel = j["dir"].relative_to(sweep_dir).as_posix()
            lines.append(
                f"| `{_md_cell(rel)}` | `{_md_cell(j['config'])}` | {j['seed'] or '-'} | "
                f"{_md_cell(j['error'])} |"
            )
    if reference is not None:
        lines += _paired_md(stats, reference)
    return "\n".join(lines) + "\n"


def plot_headline(path: Path, stats: dict[str, dict[str, Any]], metric: str, reference: str | None) -> None:
    """Mean per configuration with 95% CI error bars, and each seed as a faint dot (Figure + Agg
    canvas: no display needed, and the pyplot backend of the importing process is left alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cfgs = [c for c, s in stats.items() if s["n"] > 0]
    fig = Figure(figsize=(max(4.0, 0.9 * len(cfgs) + 2.0), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = np.arange(len(cfgs))  # (C,)
    means = np.array([stats[c]["mean"] for c in cfgs], dtype=np.float64)  # (C,)
    halves = np.array([stats[c]["ci95"] for c in cfgs], dtype=np.float64)  # (C,)
    colors = ["tab:orange" if c == reference else "tab:blue" for c in cfgs]
    for x, vals in zip(xs, (stats[c]["values"] for c in cfgs)):
        ax.scatter(np.full(len(vals), x) + 0.12, vals, s=12, color="grey", alpha=0.6, zorder=2)
    yerr = np.where(np.isfinite(halves), halves, 0.0)
    ax.errorbar(xs, means, yerr=yerr, fmt="none", ecolor="black", capsize=5, zorder=3)
    ax.scatter(xs, means, s=45, c=colors, zorder=4)
    ax.set_xticks(xs)
    labels = [c if len(c) <= 60 else c[:57] + "..." for c in cfgs]
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(cfgs) - 0.4)
    ax.set(ylabel=metric, title=metric)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
