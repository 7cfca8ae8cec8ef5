"""Tables and plot of the beyond-the-demonstrator study (the broadened known-reward benchmark).

`python -m experiments.beyond.report outputs/studies/beyond --out experiments/beyond` reads every condition
under the study dir (`<cond>/seed<k>`: experiment=beyond; `<cond>/ratio/...`: experiment=beyond_ratio) and
writes results.md, results.json and beyond.png; see :mod:`experiments.report_common` for the statistics.
Each seed draws its own hidden reward table, so the expert's return differs by seed: every comparison is
paired by seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.report_common import (
    by_seed,
    compare_md,
    compare_pairs,
    fmt,
    fmt_ci,
    frontier_md,
    load_jobs,
    make_fig,
    once_rows,
    plot_frontier,
    report_cli,
    seeds_of,
    summary,
    wall_hours,
    write_outputs,
)

HEAD = "true_return"
CONDITIONS = {  # the conditions of run.sh, in its order (others found under the study dir follow)
    "soft": "soft-optimal expert (τ 1, ε 0), 20k demonstrations",
    "tempered": "tempered expert (τ 2)",
    "noisy": "ε-noisy expert (ε 0.2)",
    "demos1000": "1000 demonstrations",
    "underfit": "underfit SFT (100 of 1200 steps)",
}
RATIO = {"sft_half": "dpr log_ratio@sft_half", "half_data": "dpr log_ratio@half_data"}
FIDELITY = ("logprob", "soft_bellman", "log_ratio@0.50", "log_ratio@base", "log_ratio@uniform")


def load_condition(cond_dir: Path) -> tuple[list[dict], dict[str, list[dict]], list[dict]]:
    """(experiment=beyond jobs, {baseline: experiment=beyond_ratio jobs}, unfinished jobs) of one condition."""
    jobs, others = load_jobs(cond_dir)
    parents = [j for j in jobs if "ratio" not in Path(j["dir"]).relative_to(cond_dir).parts]
    ratio: dict[str, list[dict]] = {}
    for j in jobs:
        if j not in parents:
            base = next(
                (o.split("=", 1)[1] for o in j["config"].split(",") if o.startswith("baseline=")), "?"
            )
            ratio.setdefault(base, []).append(j)
    return parents, ratio, others


def condition_rows(parents: list[dict], ratio: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """{row name: {seed: eval true return}}: each policy decoded once (chosen on val), SFT's best decoder,
    the expert's and the best possible return of that seed's table."""
    rows = {
        "expert (sampled)": by_seed(parents, "sft/eval/expert_true_return"),
        "best possible": by_seed(parents, "sft/eval/best_true_return"),
        "sft once (val)": once_rows(parents, "sft", HEAD),
        "sft best decoder (val)": by_seed(parents, f"decode/sft/best/{HEAD}"),
        "dpr logprob once (val)": once_rows(parents, "dpr", HEAD),
        "continued_sft fresh once (val)": once_rows(parents, "continued_sft", HEAD),
        "continued_sft seen once (val)": once_rows(parents, "continued_sft_seen", HEAD),
    }
    for base, name in RATIO.items():
        rows[f"{name} once (val)"] = once_rows(ratio.get(base, []), "dpr", HEAD)
    rows["dpr logprob, last ckpt, greedy"] = by_seed(parents, f"dpr/eval_last/greedy/{HEAD}")
    for base, name in RATIO.items():
        rows[f"{name}, last ckpt, greedy"] = by_seed(ratio.get(base, []), f"dpr/eval_last/greedy/{HEAD}")
    return {k: v for k, v in rows.items() if v}


def best_steps(parents: list[dict], ratio: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """{DPR arm: {seed: best-`val` step}} (0 = the SFT policy itself was best on `val`)."""
    out = {"dpr logprob": by_seed(parents, "dpr/val/best_step")}
    for base, name in RATIO.items():
        out[name] = by_seed(ratio.get(base, []), "dpr/val/best_step")
    return {k: v for k, v in out.items() if v}


def report_beyond(study: Path, out: Path) -> None:
    study = Path(study)
    if not study.is_dir():
        raise SystemExit(f"study dir {study} does not exist: run experiments/beyond/run.sh first")
    found = [d.name for d in sorted(study.iterdir()) if d.is_dir() and any(d.glob("seed*/DONE"))]
    conds = [c for c in CONDITIONS if c in found] + [c for c in found if c not in CONDITIONS]
    if not conds:
        raise SystemExit(f"no finished experiment=beyond jobs under {study}/<condition>/seed<k>")
    data, md_cond, hours = {}, [], 0.0
    summary_rows = []
    for c in conds:
        parents, ratio, others = load_condition(study / c)
        hours += wall_hours(parents) + sum(wall_hours(js) for js in ratio.values())
        rows = condition_rows(parents, ratio)
        stats = {n: summary(v.values()) for n, v in rows.items()}
        md_cond += [
            "",
            f"## Condition `{c}`: {CONDITIONS.get(c, c)}",
            "",
            f"n = {len(parents)} seeds ({seeds_of(parents)}); log_ratio runs: "
            + ", ".join(f"{b} {len(js)}" for b, js in sorted(ratio.items()))
            + ".",
            "",
            "| policy / decoding | n | eval true return (mean ± 95% CI over seeds) | − expert (paired, 95% CI) |",
            "|---|---:|---|---|",
        ]
        expert = rows.get("expert (sampled)", {})
        for n, v in rows.items():
            gap = summary([v[s] - expert[s] for s in v if s in expert]) if n != "expert (sampled)" else None
            md_cond.append(
                f"| {n} | {stats[n]['n']} | {fmt_ci(stats[n])} | "
                + (f"{fmt(gap['mean'])} [{fmt(gap['lo'])}, {fmt(gap['hi'])}]" if gap and gap["n"] else "")
                + " |"
            )
        steps = best_steps(parents, ratio)
        md_cond += [
            "",
            "Best-`val` step per seed (0 = SFT itself was best on `val`; of 100): "
            + "; ".join(f"{a}: " + ", ".join(str(int(v)) for v in st.values()) for a, st in steps.items()),
        ]
        zero = [a for a, st in steps.items() if sum(v == 0 for v in st.values()) > len(st) / 2]
        if zero:
            md_cond.append(
                f"**Step 0 was best on `val` in most seeds for {', '.join(zero)}**: their `once (val)` rows are SFT "
                "itself (an SFT-vs-SFT comparison); their `last ckpt` rows show where the training went."
            )
        pairs = [
            ("dpr logprob once (val)", "sft once (val)"),
            ("dpr logprob once (val)", "sft best decoder (val)"),
            ("dpr logprob once (val)", "continued_sft fresh once (val)"),
            ("dpr logprob once (val)", "continued_sft seen once (val)"),
        ] + [(f"{name} once (val)", "sft once (val)") for name in RATIO.values()]
        comps = compare_pairs(rows, pairs)
        md_cond += ["", f"Paired differences (Holm over {len(comps)}):", ""]
        md_cond += compare_md(comps, None, "true return")
        sec, front = frontier_md(
            parents, HEAD, others=["continued_sft", "continued_sft_seen"], unit="true return"
        )
        md_cond += [line.replace("## ", "### ", 1) if line.startswith("## ") else line for line in sec]
        fid = {}
        if any(k.startswith("recover/logprob/") for j in parents for k in j["metrics"]):
            md_cond += [
                "",
                "Fidelity of the recovered reward: within-policy Pearson correlation of the recovered with the "
                "true sequence return (mean of the per-policy correlations over expert, SFT, baseline and "
                "uniform samples):",
                "",
                "| " + " | ".join(FIDELITY) + " |",
                "|" + "---|" * len(FIDELITY),
            ]
            for name in FIDELITY:
                fid[name] = summary(by_seed(parents, f"recover/{name}/fidelity/within/pearson_mean").values())
            md_cond.append("| " + " | ".join(fmt_ci(fid[n]) for n in FIDELITY) + " |")
        if others:
            md_cond += ["", "Jobs not counted: " + ", ".join(f"`{Path(j['dir']).name}`" for j in others)]
        match = front["match"]
        d_sft = next((x for x in comps if x["name"] == "dpr logprob once (val) − sft once (val)"), None)
        summary_rows.append(
            {
                "condition": c,
                "n": len(parents),
                "expert": stats.get("expert (sampled)"),
                "sft": stats.get("sft once (val)"),
                "dpr": stats.get("dpr logprob once (val)"),
                "d_sft": d_sft,
                "d_ratio": {
                    b: next((x for x in comps if x["name"] == f"{name} once (val) − sft once (val)"), None)
                    for b, name in RATIO.items()
                },
                "match": None if match is None else {"decoder": match["decoder"], "cost": match["cost"]},
                "dpr_cost": front["once_cost"]["mean"],
                "step0": zero,
            }
        )
        data[c] = {
            "rows": rows,
            "stats": stats,
            "comparisons": comps,
            "frontier": front,
            "fidelity": fid,
            "best_steps": steps,
        }

    def diff_cell(d):
        if not d:
            return "-"
        return f"{fmt(d['mean'])} [{fmt(d['lo'])}, {fmt(d['hi'])}]"

    md = [
        "# Beyond the demonstrator (the broadened known-reward benchmark): results",
        "",
        "Each condition: experiment=beyond over seeds (each seed its own hidden reward table; 45 prompts per "
        "table: 9 start states × horizons 4..8; `eval` = 540 rows on held-out prompts); mean ± 95% t-interval "
        "over seeds; every difference paired by seed. `once (val)`: the single decode (greedy or one "
        "temperature) best on `val`. DPR on `logprob` (no KL) in the parent run; on `log_ratio` against the "
        f"half-way snapshot (`sft_half`) and the half-data SFT (`half_data`) from the same SFT. Wall time: "
        f"{hours:.2f} h summed over the jobs.",
        "",
        "## Summary",
        "",
        "| condition | n | expert | SFT once | DPR logprob once | DPR − SFT (95% CI) | log_ratio@sft_half − SFT | "
        "log_ratio@half_data − SFT | SFT decoder matching DPR (cost vs DPR's) |",
        "|---|---:|---|---|---|---|---|---|---|",
    ]
    for r in summary_rows:
        m = r["match"]
        cost = (
            f"{m['decoder']} ({fmt(m['cost'], 1)} vs {fmt(r['dpr_cost'], 1)})"
            if m
            else "none of SFT's decoders"
        )
        md.append(
            f"| {r['condition']} | {r['n']} | {fmt_ci(r['expert'])} | {fmt_ci(r['sft'])} | {fmt_ci(r['dpr'])} | "
            f"{diff_cell(r['d_sft'])} | {diff_cell(r['d_ratio']['sft_half'])} | "
            f"{diff_cell(r['d_ratio']['half_data'])} | {cost} |"
        )
    md += md_cond
    nc = len(conds)  # top: the paired differences; bottom: one score-vs-cost frontier per condition
    fig = make_fig(max(15, 4 * nc), 9.6)
    ax = fig.add_subplot(2, 1, 1)
    labels = ["DPR logprob", "log_ratio@sft_half", "log_ratio@half_data"]
    width = 0.8 / len(labels)
    xs = np.arange(len(summary_rows))
    for i, lab in enumerate(labels):
        ds = [r["d_sft"] if i == 0 else r["d_ratio"][("sft_half", "half_data")[i - 1]] for r in summary_rows]
        ax.bar(
            xs + (i - 1) * width,
            [d["mean"] if d else 0 for d in ds],
            width,
            yerr=[d["ci95"] if d and math.isfinite(d["ci95"]) else 0 for d in ds],
            capsize=3,
            label=lab,
        )
    ax.axhline(0, color="black", lw=1)
    ax.set_xticks(xs)
    ax.set_xticklabels([r["condition"] for r in summary_rows], fontsize=8)
    ax.set_ylabel("eval true return − SFT once (paired)")
    ax.set_title("DPR decoded once minus SFT's best single decode, 95% CI", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    for k, c in enumerate(conds):
        parents_c, _, _ = load_condition(study / c)
        plot_frontier(
            fig.add_subplot(2, nc, nc + k + 1),
            parents_c,
            HEAD,
            ["sft", "dpr", "continued_sft", "continued_sft_seen"],
            ylabel=f"eval true return ({c})",
        )
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "beyond.png", dpi=110)
    md += ["", "![beyond](beyond.png)"]
    write_outputs(out, md, {"conditions": data, "summary": summary_rows})


def main(argv: Sequence[str] | None = None) -> int:
    return report_cli(report_beyond, "beyond", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
