"""Table and plot of the ablations (DPR on the known-reward MDP, one axis at a time).

`python -m experiments.ablations.report outputs/studies/ablations --out experiments/ablations` writes
results.md, results.json and ablations.png; see :mod:`experiments.report_common` for the statistics.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.report_common import (
    by_seed,
    compare_rows,
    failures_md,
    fmt,
    fmt_ci,
    fmt_p,
    load_jobs,
    make_fig,
    report_cli,
    seeds_of,
    summary,
    write_outputs,
)


def _parent_metrics(job) -> dict:
    """metrics.json of the job's parent_run (relative paths are relative to the current dir)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        parent = OmegaConf.load(job["dir"] / ".hydra" / "config.yaml").get("parent_run")  # resolves ${seed}
        return json.loads((Path(parent) / "metrics.json").read_text()) if parent else {}
    except (OSError, ValueError, TypeError, OmegaConfBaseException):
        return {}


def report_ablations(sweep: Path, out: Path) -> None:
    jobs, others = load_jobs(sweep)
    head = "true_return"
    groups: dict[str, list] = {}
    for j in jobs:
        groups.setdefault(j["config"], []).append(j)
    ref = "(reference)"
    sft = {}
    for j in jobs:
        pm = _parent_metrics(j)
        if f"sft/eval/sampled/{head}" in pm:
            sft[str(j["seed"])] = pm
    metrics = {
        "sampled": f"dpr/eval/sampled/{head}",
        "greedy": f"dpr/eval/greedy/{head}",
        "val": "dpr/val/best",
        "entropy": "dpr/eval/sampled/entropy_est",
        "reward": "dpr/eval/sampled/reward",
        "last": f"dpr/eval_last/sampled/{head}",
        "last_entropy": "dpr/eval_last/sampled/entropy_est",
        "best_step": "dpr/val/best_step",
    }
    md = [
        "# Ablations (known-reward MDP, DPR from each seed's SFT of `experiment=beyond`): results",
        "",
        "Reference = the paper's setting: `log_ratio` against the half-way snapshot, gamma 1, sampling T 1, no KL, "
        "100 steps x 16 prompts x 8 samples, lr 1e-3. Each row changes one thing. `eval` true return of the "
        "best-`val` checkpoint, sampled at T=1 and greedy; mean ± 95% t-interval over seeds. Paired differences "
        "are against the reference (same seeds), Holm-adjusted over all rows.",
        "",
    ]
    if sft:
        s_s = summary([m[f"sft/eval/sampled/{head}"] for m in sft.values()])
        s_g = summary([m[f"sft/eval/greedy/{head}"] for m in sft.values()])
        ex = next(iter(sft.values())).get("sft/eval/expert_true_return")
        best = next(iter(sft.values())).get("sft/eval/best_true_return")
        md += [
            f"SFT (the starting point): sampled {fmt_ci(s_s)}, greedy {fmt_ci(s_g)}; expert {fmt(ex)}; best possible {fmt(best)}.",
            "",
        ]
    md += [
        "| configuration | n | seeds | sampled true return | greedy true return | entropy/token | recovered return "
        "| last ckpt: sampled true return | last ckpt: entropy/token | best-val steps "
        "| diff vs reference (best-val, sampled) | p (Holm) | diff vs reference (last, sampled) | p (Holm) |",
        "|---|---:|---|---|---|---|---|---|---|---|---|---:|---|---:|",
    ]
    rows = {c: by_seed(js, metrics["sampled"]) for c, js in groups.items()}
    comps = compare_rows(rows, ref, list(rows)) if ref in rows else []
    cmap = {c["name"]: c for c in comps}
    rows_last = {c: by_seed(js, metrics["last"]) for c, js in groups.items()}
    comps_last = compare_rows(rows_last, ref, list(rows_last)) if ref in rows_last else []
    cmap_last = {c["name"]: c for c in comps_last}
    stats = {}
    order = sorted(groups, key=lambda c: (c != ref, c))
    for c in order:
        js = groups[c]
        st = {k: summary(by_seed(js, m).values()) for k, m in metrics.items()}
        stats[c] = st
        cp = cmap.get(c)
        diff = f"{fmt(cp['mean'])} [{fmt(cp['lo'])}, {fmt(cp['hi'])}]" if cp else "-"
        cl = cmap_last.get(c)
        diff_last = f"{fmt(cl['mean'])} [{fmt(cl['lo'])}, {fmt(cl['hi'])}]" if cl else "-"
        md.append(
            f"| `{c}` | {st['sampled']['n']} | {seeds_of(js)} | {fmt_ci(st['sampled'])} | {fmt_ci(st['greedy'])} | "
            f"{fmt_ci(st['entropy'])} | {fmt_ci(st['reward'])} | {fmt_ci(st['last'])} | {fmt_ci(st['last_entropy'])} | "
            f"{', '.join(str(int(v)) for v in by_seed(js, metrics['best_step']).values())} | "
            f"{diff} | {fmt_p(cp['p_holm']) if cp else '-'} | {diff_last} | {fmt_p(cl['p_holm']) if cl else '-'} |"
        )
    md += failures_md(others)
    fig = make_fig(max(8, 0.7 * len(order) + 3), 5.0)
    ax = fig.add_subplot(1, 1, 1)
    xs = np.arange(len(order))
    for off, key, rws, color, label in (
        (-0.2, "sampled", rows, "tab:blue", "best-val checkpoint"),
        (0.2, "last", rows_last, "tab:purple", "last checkpoint"),
    ):
        st = [stats[c][key] for c in order]
        ax.bar(
            xs + off,
            [x["mean"] for x in st],
            0.4,
            color=color,
            alpha=0.75,
            label=label,
            yerr=[x["ci95"] if math.isfinite(x["ci95"]) else 0 for x in st],
            capsize=3,
        )
        for i, c in enumerate(order):
            v = list(rws[c].values())
            ax.scatter(np.full(len(v), xs[i] + off), v, s=8, color="black", zorder=3)
    ax.set_xticks(xs)
    ax.set_xticklabels(order, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("eval true return (sampled, T=1)")
    ax.set_title("DPR ablations on the known-reward MDP: 95% CI over seeds", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if sft:
        ax.axhline(s_s["mean"], color="tab:grey", ls="--", lw=1, label="SFT sampled")
        ax.axhline(s_g["mean"], color="black", ls=":", lw=1, label="SFT greedy")
        if ex is not None:
            ax.axhline(ex, color="tab:red", ls="--", lw=1, label="expert")
        if best is not None:
            ax.axhline(best, color="tab:green", ls="--", lw=1, label="best possible")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "ablations.png", dpi=120)
    md += ["", "![ablations](ablations.png)"]
    write_outputs(
        out,
        md,
        {
            "rows": rows,
            "rows_last": rows_last,
            "stats": stats,
            "comparisons": comps,
            "comparisons_last": comps_last,
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    return report_cli(report_ablations, "ablations", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
