"""Tables and plot of the main study (5 seeds of the full pipeline on the built-in tasks).

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
    POLICIES,
    bar_ci,
    by_seed,
    chosen_decoders,
    compare_md,
    compare_rows,
    failures_md,
    fmt,
    fmt_ci,
    load_jobs,
    make_fig,
    policy_rows,
    report_cli,
    seeds_of,
    summary,
    write_outputs,
)


def report_main(sweep: Path, out: Path) -> None:
    jobs, others = load_jobs(sweep)
    head = "success"
    rows = policy_rows(jobs, head)
    md = [
        "# Main study: results",
        "",
        f"Built-in tasks, `eval` split (600 held-out prompts per seed), n = {len(jobs)} seeds ({seeds_of(jobs)}); "
        "mean ± 95% t-interval over seeds. DPR, RLOO and continued SFT report their best-`val` checkpoint. "
        "`best decoder (val)` = the `decode` stage's setting (greedy, a temperature, a beam or best-of-N) with the best `val` success, "
        "evaluated once on `eval`.",
        "",
        "## Overall verifier success",
        "",
        "| policy / decoding | n | success (mean ± 95% CI) | per seed |",
        "|---|---:|---|---|",
    ]
    stats = {}
    for name, vals in rows.items():
        stats[name] = summary(vals.values())
        per = ", ".join(fmt(vals[s]) for s in sorted(vals, key=seed_sort_key))
        md.append(f"| {name} | {stats[name]['n']} | {fmt_ci(stats[name])} | {per} |")
    md += [
        "",
        "Decoders chosen on `val` per seed: "
        + "; ".join(f"{p}: {chosen_decoders(jobs, p)}" for p in POLICIES),
        "",
        "Best-`val` step per seed (0 = the SFT policy itself was best on `val`): "
        + "; ".join(
            f"{p}: " + ", ".join(f"{int(v)}" for v in by_seed(jobs, f"{p}/val/best_step").values())
            for p in ("dpr", "continued_sft", "rloo")
        ),
    ]
    # paired comparisons: each trained policy against SFT at T=1 and against SFT's best decoding
    comps = {}
    for ref in (
        "sft sampled T=1",
        "sft best decoder (val)",
        "sft greedy",
        "continued_sft best decoder (val)",
    ):
        if ref not in rows:
            continue
        names = [n for n in rows if not n.startswith("sft ")]
        if ref.startswith("continued_sft"):
            names = [n for n in names if n.startswith(("dpr", "rloo")) and n.endswith("best decoder (val)")]
        elif ref == "sft sampled T=1":
            names = [n for n in names if n.endswith("T=1")]
        elif ref == "sft greedy":
            names = [n for n in names if n.endswith("greedy")]
        else:
            names = [n for n in names if n.endswith("best decoder (val)")]
        comps[ref] = compare_rows(rows, ref, names)
        md += ["", f"### Paired differences vs `{ref}` (Holm over the {len(comps[ref])} rows)", ""]
        md += compare_md(comps[ref], ref, "success")
    # per family
    fams = sorted(
        {
            k.split("/")[3]
            for j in jobs
            for k in j["metrics"]
            if k.startswith("sft/eval/sampled/") and k.count("/") == 4
        }
    )
    md += ["", "## Per family (eval, mean ± 95% CI over seeds)", ""]
    for mode in ("sampled", "greedy"):
        md += [
            f"### {mode}",
            "",
            "| family | " + " | ".join(POLICIES) + " |",
            "|---|" + "---|" * len(POLICIES),
        ]
        for fam in fams:
            cells = [
                fmt_ci(summary(by_seed(jobs, f"{p}/eval/{mode}/{fam}/{head}").values())) for p in POLICIES
            ]
            md.append(f"| {fam} | " + " | ".join(cells) + " |")
        md.append("")
    md += [
        "## Recovered reward, KL and length of each policy's samples (eval, T=1)",
        "",
        "| policy | recovered reward | KL to SFT (nats/seq) | length | steps | trained tokens |",
        "|---|---|---|---|---|---|",
    ]
    for p in POLICIES:
        cells = [
            fmt_ci(summary(by_seed(jobs, f"{p}/eval/sampled/{m}").values()))
            for m in ("reward", "kl_to_sft", "length")
        ]
        steps = fmt_ci(summary(by_seed(jobs, f"{p}/train/steps").values()), 0)
        tokens = fmt_ci(summary(by_seed(jobs, f"{p}/train/trained_tokens").values()), 0)
        md.append(f"| {p} | " + " | ".join(cells) + f" | {steps} | {tokens} |")
    md += failures_md(others)
    # plot: overall success per policy and decoding
    fig = make_fig(16, 4.4)
    ax = fig.add_subplot(1, 3, 1)
    names = list(rows)
    colors = [
        "tab:grey"
        if n.startswith("sft")
        else "tab:blue"
        if n.startswith("dpr")
        else "tab:green"
        if n.startswith("continued")
        else "tab:orange"
        for n in names
    ]
    bar_ci(
        ax,
        names,
        [stats[n] for n in names],
        [list(rows[n].values()) for n in names],
        colors,
        title=f"eval success, n={len(jobs)} seeds, 95% CI",
        ylabel="verifier success",
    )
    ax3 = fig.add_subplot(1, 3, 3)
    diffs = []
    for p in ("dpr", "continued_sft", "rloo"):
        for dec, ref in (("sampled T=1", "sft sampled T=1"), ("greedy", "sft greedy")):
            if f"{p} {dec}" in rows and ref in rows:
                diffs.append((f"{p} {dec}", paired_differences(rows[f"{p} {dec}"], rows[ref])))
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
        ax3.set_yticklabels([n for n, _ in diffs], fontsize=8)
        ax3.set_title("paired difference vs SFT at the same decoding, 95% CI", fontsize=10)
        ax3.set_xlabel("success difference")
        ax3.grid(axis="x", alpha=0.3)
    ax2 = fig.add_subplot(1, 3, 2)
    width = 0.2
    xs = np.arange(len(fams))
    for i, p in enumerate(POLICIES):
        st = [summary(by_seed(jobs, f"{p}/eval/sampled/{f}/{head}").values()) for f in fams]
        ax2.bar(
            xs + (i - 1.5) * width,
            [s["mean"] for s in st],
            width,
            yerr=[s["ci95"] if math.isfinite(s["ci95"]) else 0 for s in st],
            capsize=2,
            label=p,
        )
    ax2.set_xticks(xs)
    ax2.set_xticklabels(fams, rotation=30, ha="right", fontsize=8)
    ax2.set_title("per family, sampled T=1", fontsize=10)
    ax2.legend(fontsize=7)
    ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "main.png", dpi=120)
    md += ["", "![main](main.png)"]
    write_outputs(out, md, {"rows": rows, "stats": stats, "comparisons": comps})


def main(argv: Sequence[str] | None = None) -> int:
    return report_cli(report_main, "main", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
