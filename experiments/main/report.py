"""Tables and plot of the main study (5 seeds of the full pipeline on the built-in tasks, or on the graded
path task: `outputs/studies/main_paths`): DPR decoded once against SFT's best single decode, continued SFT
on fresh and on seen demonstrations, RLOO, and the score-vs-inference-cost frontier of SFT's decoders.

`python -m experiments.main.report outputs/studies/main --out experiments/main` writes results.md,
results.json and main.png; see :mod:`experiments.report_common` for the statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from densepath.sweeps.stats import paired_differences, seed_sort_key
from experiments.report_common import (
    bar_ci,
    by_seed,
    chosen_decoders,
    compare_md,
    compare_pairs,
    compare_rows,
    decoders_of,
    failures_md,
    fmt,
    fmt_ci,
    frontier_md,
    is_single,
    load_jobs,
    make_fig,
    once_rows,
    plot_frontier,
    policy_rows,
    report_cli,
    seeds_of,
    summary,
    wall_hours,
    write_outputs,
)

MAIN_POLICIES = ("sft", "dpr", "continued_sft", "continued_sft_seen", "rloo")
LABEL = {"continued_sft": "continued SFT fresh", "continued_sft_seen": "continued SFT seen"}


def report_main(sweep: Path, out: Path) -> None:
    jobs, others = load_jobs(sweep)
    head = "success"
    policies = [p for p in MAIN_POLICIES if by_seed(jobs, f"{p}/eval/sampled/{head}")]
    rows = {}
    for p in policies:
        once = once_rows(jobs, p, head)
        if once:
            rows[f"{p} once (val)"] = once
    searched = {p for p in policies if any(not is_single(d) for d in decoders_of(jobs, p, head))}
    rows.update(
        {  # "best decoder (val)" only where beams / best-of-N ran; elsewhere it is the `once` row
            k: v
            for k, v in policy_rows(jobs, head, policies).items()
            if not k.endswith("best decoder (val)") or k.split()[0] in searched
        }
    )
    fams = sorted(
        {
            k.split("/")[3]
            for j in jobs
            for k in j["metrics"]
            if k.startswith("sft/eval/sampled/") and k.count("/") == 4
        }
    )
    graded = fams == ["path"] or any("sft/eval/sampled/optimal" in j["metrics"] for j in jobs)  # data=paths
    task = "the graded path task (`data=paths`, score in [0, 1])" if graded else "the built-in tasks"
    md = [
        f"# Main study{' (graded family)' if graded else ''}: results",
        "",
        f"{task[0].upper() + task[1:]}, held-out `eval` split, n = {len(jobs)} seeds ({seeds_of(jobs)}); "
        "mean ± 95% t-interval over seeds. DPR, RLOO and both continued-SFT controls report their best-`val` "
        "checkpoint. `once (val)` = the single decode (greedy or one sample at a temperature) with the best "
        "`val` score in that seed; `best decoder (val)` = any of the `decode` stage's settings (beams and "
        f"best-of-N included) chosen on `val`. Wall time: {wall_hours(jobs):.2f} h summed over the jobs.",
        "",
        "## Every policy and decoding (eval)",
        "",
        f"| policy / decoding | n | {head} (mean ± 95% CI) | per seed |",
        "|---|---:|---|---|",
    ]
    stats = {}
    for name, vals in rows.items():
        stats[name] = summary(vals.values())
        per = ", ".join(fmt(vals[s]) for s in sorted(vals, key=seed_sort_key))
        md.append(f"| {name} | {stats[name]['n']} | {fmt_ci(stats[name])} | {per} |")
    md += [
        "",
        "Decoders chosen on `val` per seed (any cost): "
        + "; ".join(f"{p}: {chosen_decoders(jobs, p)}" for p in policies),
        "",
    ]
    steps = {p: by_seed(jobs, f"{p}/val/best_step") for p in policies if p != "sft"}
    md.append(
        "Best-`val` step per seed (0 = the SFT policy itself was best on `val`, i.e. the row compares SFT "
        "with SFT): "
        + "; ".join(f"{p}: " + ", ".join(f"{int(v)}" for v in s.values()) for p, s in steps.items())
    )
    at_zero = [p for p, s in steps.items() if s and sum(v == 0 for v in s.values()) > len(s) / 2]
    if at_zero:
        md.append(
            "",
        )
        md.append(
            f"**Step 0 was best on `val` in most seeds for {', '.join(at_zero)}**: those rows are SFT itself; "
            "the `last ckpt` rows show where the training went."
        )
    # the question: DPR decoded once against SFT's best single decode and the controls decoded once
    comps = {}
    pairs = [("dpr once (val)", f"{p} once (val)") for p in policies if p != "dpr"]
    comps["dpr once"] = compare_pairs(rows, pairs)
    md += [
        "",
        "## The question: DPR decoded once against SFT's best single decode and the controls (paired by seed, "
        f"Holm over {len(comps['dpr once'])})",
        "",
    ]
    md += compare_md(comps["dpr once"], None, head)
    sec, front = frontier_md(jobs, head, others=[p for p in policies if p not in ("sft", "dpr")])
    md += sec
    # each trained policy against SFT at the same decoding
    for ref in ("sft sampled T=1", "sft greedy", "sft best decoder (val)"):
        if ref not in rows:
            continue
        dec = ref.removeprefix("sft ")
        names = [f"{p} {dec}" for p in policies if p != "sft" and f"{p} {dec}" in rows]
        what = "same decoding"
        if not names:  # SFT alone ran beams: the others decoded once against SFT's best decoder at any cost
            names, what = (
                [f"{p} once (val)" for p in policies if p != "sft" and f"{p} once (val)" in rows],
                "any cost",
            )
        if not names:
            continue
        comps[ref] = compare_rows(rows, ref, names)
        md += ["", f"### Paired differences vs `{ref}` ({what}; Holm over {len(comps[ref])})", ""]
        md += compare_md(comps[ref], ref, head)
    if fams:
        md += ["", "## Per family (eval, mean ± 95% CI over seeds)", ""]
    for mode in ("sampled", "greedy") if fams else ():
        md += [
            f"### {mode}",
            "",
            "| family | " + " | ".join(LABEL.get(p, p) for p in policies) + " |",
            "|---|" + "---|" * len(policies),
        ]
        for fam in fams:
            cells = [
                fmt_ci(summary(by_seed(jobs, f"{p}/eval/{mode}/{fam}/{head}").values())) for p in policies
            ]
            md.append(f"| {fam} | " + " | ".join(cells) + " |")
        md.append("")
    md += [
        "## Recovered reward, KL and length of each policy's samples (eval, T=1)",
        "",
        "| policy | recovered reward | KL to SFT (nats/seq) | length | steps | trained tokens |",
        "|---|---|---|---|---|---|",
    ]
    for p in policies:
        cells = [
            fmt_ci(summary(by_seed(jobs, f"{p}/eval/sampled/{m}").values()))
            for m in ("reward", "kl_to_sft", "length")
        ]
        st = fmt_ci(summary(by_seed(jobs, f"{p}/train/steps").values()), 0)
        tokens = fmt_ci(summary(by_seed(jobs, f"{p}/train/trained_tokens").values()), 0)
        md.append(f"| {p} | " + " | ".join(cells) + f" | {st} | {tokens} |")
    md += failures_md(others)
    fig = make_fig(18, 8.5)
    ax = fig.add_subplot(2, 2, 1)
    names = [n for n in rows if n.endswith(("once (val)", "best decoder (val)", "sampled T=1"))]
    colors = [f"C{policies.index(n.split()[0]) % 10}" for n in names]
    bar_ci(
        ax,
        names,
        [stats[n] for n in names],
        [list(rows[n].values()) for n in names],
        colors,
        title=f"eval {head}, n={len(jobs)} seeds, 95% CI",
        ylabel=head,
    )
    plot_frontier(fig.add_subplot(2, 2, 2), jobs, head, policies, ylabel=f"eval {head}")
    ax3 = fig.add_subplot(2, 2, 3)
    diffs = [(c["name"], c) for c in comps["dpr once"]]
    for p in policies:
        if p != "sft" and f"{p} sampled T=1" in rows:
            diffs.append(
                (f"{p} T=1 − sft T=1", paired_differences(rows[f"{p} sampled T=1"], rows["sft sampled T=1"]))
            )
    if diffs:
        ys = np.arange(len(diffs))
        ax3.errorbar(
            [d["mean"] for _, d in diffs],
            ys,
            xerr=[d["ci95"] if math.isfinite(d["ci95"]) else 0 for _, d in diffs],
            fmt="o",
            capsize=4,
        )
        ax3.axvline(0, color="black", lw=1)
        ax3.set_yticks(ys)
        ax3.set_yticklabels([n for n, _ in diffs], fontsize=7)
        ax3.set_title("paired differences over seeds, 95% CI", fontsize=10)
        ax3.set_xlabel(f"{head} difference")
        ax3.grid(axis="x", alpha=0.3)
    ax2 = fig.add_subplot(2, 2, 4)
    width = 0.8 / max(1, len(policies))
    xs = np.arange(len(fams))
    for i, p in enumerate(policies):
        st = [summary(by_seed(jobs, f"{p}/eval/sampled/{f}/{head}").values()) for f in fams]
        ax2.bar(
            xs + (i - (len(policies) - 1) / 2) * width,
            [s["mean"] for s in st],
            width,
            yerr=[s["ci95"] if math.isfinite(s["ci95"]) else 0 for s in st],
            capsize=2,
            label=LABEL.get(p, p),
            color=f"C{i % 10}",
        )
    ax2.set_xticks(xs)
    ax2.set_xticklabels(fams, rotation=30, ha="right", fontsize=8)
    ax2.set_title("per family, sampled T=1", fontsize=10)
    ax2.legend(fontsize=7)
    ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "main.png", dpi=110)
    md += ["", "![main](main.png)"]
    write_outputs(out, md, {"rows": rows, "stats": stats, "comparisons": comps, "frontier": front})


def main(argv: Sequence[str] | None = None) -> int:
    return report_cli(report_main, "main", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
