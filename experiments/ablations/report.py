"""Table and plots of the ablations (DPR on the broadened known-reward benchmark, one axis at a time, from each
seed's SFT of experiments/beyond's `soft` condition), with k1 vs k3 compared at equal measured KL.

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
    load_jobs,
    make_fig,
    report_cli,
    seeds_of,
    summary,
    test_cells,
    wall_hours,
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


def _override(config: str, key: str) -> str | None:
    return next((o.split("=", 1)[1] for o in config.split(",") if o.startswith(f"{key}=")), None)


def _diff_cells(c: dict | None) -> str:
    """`diff [CI] | p (Holm) | MDE at 80% power and the Holm level 0.05/m`; no test where every seed gives the
    same difference."""
    if not c:
        return "- | - | -"
    return f"{fmt(c['mean'])} [{fmt(c['lo'])}, {fmt(c['hi'])}] | {test_cells(c)}"


def kl_section(groups: dict[str, list], metrics: dict) -> tuple[list[str], dict[str, list]]:
    """k1 vs k3 at equal measured KL: for each configuration with `dpr.module.kl` k1 / k3 and a `kl_coef` (the
    reward and baseline of the reference), the last checkpoint's measured KL and true return (mean ± CI over
    seeds). The last checkpoint, because the best-`val` one may be step 0 at large β."""
    pts: dict[str, list] = {}
    for c, js in groups.items():
        kind, coef = _override(c, "dpr.module.kl"), _override(c, "dpr.module.kl_coef")
        if kind not in ("k1", "k3") or coef is None or _override(c, "reward") or _override(c, "baseline"):
            continue
        kl_s, ret_s = by_seed(js, metrics["kl_last"]), by_seed(js, metrics["last"])
        kx, ky = summary(kl_s.values()), summary(ret_s.values())
        if kx["n"] and ky["n"]:
            per_seed = [(kl_s[s], ret_s[s]) for s in sorted(set(kl_s) & set(ret_s))]
            pts.setdefault(kind, []).append((float(coef), kx, ky, per_seed))
    if not pts:
        return [], {}
    md = [
        "",
        "## k1 vs k3 at equal measured KL (last checkpoint)",
        "",
        "k1 puts the KL in the reward (the objective's reverse KL); k3 adds the unbiased KL estimate to the loss "
        "(its gradient is the forward KL at visited states). Compare true return where the measured KL is "
        "about the same, not at the same β. The measured KL is skewed (one drifting seed can hold most of the "
        "mean), so its median and the per-seed pairs (KL, return) are listed too; the plot shows every seed.",
        "",
        "| estimator | β | n | measured KL (nats/answer) | median KL | true return (last ckpt, T=1) "
        "| per seed: (KL, return) |",
        "|---|---:|---:|---|---:|---|---|",
    ]
    for kind in sorted(pts):
        for coef, kx, ky, per_seed in sorted(pts[kind], key=lambda t: t[0]):
            med = float(np.median([k for k, _ in per_seed])) if per_seed else float("nan")
            pairs = ", ".join(f"({k:.2f}, {r:.2f})" for k, r in per_seed)
            md.append(
                f"| {kind} | {coef:g} | {ky['n']} | {fmt_ci(kx)} | {fmt(med, 2)} | {fmt_ci(ky)} | {pairs or '-'} |"
            )
    return md, pts


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
        "kl": "dpr/eval/sampled/kl_exact",
        "kl_last": "dpr/eval_last/sampled/kl_exact",
    }
    md = [
        "# Ablations (known-reward MDP, DPR from each seed's SFT of `experiment=beyond`): results",
        "",
        "Reference = the paper's setting: `log_ratio` against the half-way snapshot, gamma 1, sampling T 1, no KL, "
        "100 steps x 16 prompts x 8 samples, lr 1e-3. Each row changes one thing. `eval` true return of the "
        "best-`val` checkpoint, sampled at T=1 and greedy; mean ± 95% t-interval over seeds. Paired differences "
        "are against the reference (same seeds), Holm-adjusted over all rows; `smallest detectable` is the "
        "difference a paired t-test would detect with 80% power at the strictest Holm level, 0.05/m. "
        f"Wall time: {wall_hours(jobs):.2f} h summed over the jobs.",
        "",
    ]
    if sft:
        s_s = summary([m[f"sft/eval/sampled/{head}"] for m in sft.values()])
        s_g = summary([m[f"sft/eval/greedy/{head}"] for m in sft.values()])
        # each seed has its own reward table: the reference lines are means over the seeds
        ex = summary([m.get("sft/eval/expert_true_return", math.nan) for m in sft.values()])["mean"]
        best = summary([m.get("sft/eval/best_true_return", math.nan) for m in sft.values()])["mean"]
        md += [
            f"SFT (the starting point): sampled {fmt_ci(s_s)}, greedy {fmt_ci(s_g)}; expert {fmt(ex)}; best possible "
            f"{fmt(best)} (means over the seeds' reward tables).",
            "",
        ]
    md += [
        "| configuration | n | seeds | sampled true return | greedy true return | entropy/token | recovered return "
        "| last ckpt: sampled true return | last ckpt: entropy/token | best-val steps "
        "| diff vs reference (best-val, sampled) | p (Holm) | smallest detectable | diff vs reference (last, sampled) "
        "| p (Holm) | smallest detectable |",
        "|---|---:|---|---|---|---|---|---|---|---|---|---:|---:|---|---:|---:|",
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
        cp, cl = cmap.get(c), cmap_last.get(c)
        md.append(
            f"| `{c}` | {st['sampled']['n']} | {seeds_of(js)} | {fmt_ci(st['sampled'])} | {fmt_ci(st['greedy'])} | "
            f"{fmt_ci(st['entropy'])} | {fmt_ci(st['reward'])} | {fmt_ci(st['last'])} | {fmt_ci(st['last_entropy'])} | "
            f"{', '.join(str(int(v)) for v in by_seed(js, metrics['best_step']).values())} | "
            f"{_diff_cells(cp)} | {_diff_cells(cl)} |"
        )
    at_zero = [
        c
        for c in order
        if (st := list(by_seed(groups[c], metrics["best_step"]).values()))
        and sum(v == 0 for v in st) > len(st) / 2
    ]
    if at_zero:
        md += [
            "",
            "**Best-`val` checkpoint = step 0 (SFT itself) in most seeds** for "
            + ", ".join(f"`{c}`" for c in at_zero)
            + ": their best-`val` columns compare SFT with SFT, so they cannot show whether the axis matters; "
            "read their last-checkpoint columns instead.",
        ]
    kl_md, kl_pts = kl_section(groups, metrics)
    md += kl_md
    md += failures_md(others)
    fig = make_fig(max(8, 0.7 * len(order) + 3) + 6, 5.0)
    ax = fig.add_subplot(1, 2, 1)
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
    ax2 = fig.add_subplot(1, 2, 2)
    for (kind, pts), color in zip(sorted(kl_pts.items()), ("tab:blue", "tab:orange", "tab:green")):
        pts = sorted(pts, key=lambda t: t[0])
        for _coef, _kx, _ky, per_seed in pts:  # every seed's (KL, return): the means hide a drifting seed
            ax2.scatter([k for k, _ in per_seed], [r for _, r in per_seed], s=10, color=color, alpha=0.5)
        ax2.plot(
            [q[1]["mean"] for q in pts],
            [q[2]["mean"] for q in pts],
            "o-",
            color=color,
            ms=7,
            label=f"{kind} (mean)",
        )
        for coef, kx, ky, _ in pts:
            ax2.annotate(
                f"β={coef:g}", (kx["mean"], ky["mean"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
    ax2.set_xscale("symlog", linthresh=0.1)
    ax2.set_xlabel("measured KL(π || π_SFT) on eval samples (nats per answer, symlog); dots: seeds")
    ax2.set_ylabel("eval true return (last checkpoint, T=1)")
    ax2.set_title("k1 vs k3 over a β grid: true return at equal measured KL", fontsize=10)
    ax2.grid(alpha=0.3)
    if kl_pts:
        ax2.legend(fontsize=7)
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
