"""Tables and plot of the beyond-the-demonstrator study (known-reward MDP, 5 seeds).

`python -m experiments.beyond.report outputs/studies/beyond --out experiments/beyond` writes results.md,
results.json and beyond.png; see :mod:`experiments.report_common` for the statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from experiments.report_common import (
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

FIDELITY = (
    "logprob",
    "soft_bellman",
    "log_ratio@0.10",
    "log_ratio@0.25",
    "log_ratio@0.50",
    "log_ratio@0.75",
    "log_ratio@0.90",
    "log_ratio@base",
    "log_ratio@uniform",
)


def report_beyond(sweep: Path, out: Path) -> None:
    jobs, others = load_jobs(sweep)
    head = "true_return"
    m0 = jobs[0]["metrics"]
    ref = {
        k: m0.get(f"sft/eval/{k}") for k in ("expert_true_return", "best_true_return", "uniform_true_return")
    }
    md = [
        "# Beyond the demonstrator (known-reward MDP): results",
        "",
        f"n = {len(jobs)} seeds ({seeds_of(jobs)}); `eval` split (512 prompts); mean ± 95% t-interval over seeds. "
        "The MDP (reward table, expert) is the same for every seed; seeds change SFT data order, init and RL.",
        "",
        f"Reference points (exact, from the MDP): expert (soft-optimal, sampled) mean true return "
        f"{fmt(ref['expert_true_return'])}; best possible {fmt(ref['best_true_return'])}; uniform policy "
        f"{fmt(ref['uniform_true_return'])}.",
        "",
        "## Fidelity of the recovered reward",
        "",
        "Correlation of the recovered sequence return with the true return over 512 samples of each policy "
        "(expert, SFT, the baseline snapshot, uniform): `within` = mean of the per-policy correlations; "
        "`pooled` = all samples together.",
        "",
        "| reward | within Pearson | within Spearman | pooled Pearson | pooled Spearman | expert-samples Pearson |",
        "|---|---|---|---|---|---|",
    ]
    fid = {}
    for name in FIDELITY:
        cells = []
        for key in (
            "within/pearson_mean",
            "within/spearman_mean",
            "pooled/pearson",
            "pooled/spearman",
            "expert/pearson",
        ):
            s = summary(by_seed(jobs, f"recover/{name}/fidelity/{key}").values())
            fid[f"{name}/{key}"] = s
            cells.append(fmt_ci(s))
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    rows = policy_rows(jobs, head, ("sft", "dpr", "continued_sft"))
    md += [
        "",
        "## True return",
        "",
        "| policy / decoding | n | true return (mean ± 95% CI) | entropy per token (T=1 samples) |",
        "|---|---:|---|---|",
    ]
    stats = {}
    for name, vals in rows.items():
        stats[name] = summary(vals.values())
        p = name.split()[0]
        ent = (
            fmt_ci(summary(by_seed(jobs, f"{p}/eval/sampled/entropy_est").values())) if "T=1" in name else ""
        )
        md.append(f"| {name} | {stats[name]['n']} | {fmt_ci(stats[name])} | {ent} |")
    md.append(f"| expert (sampled) | - | {fmt(ref['expert_true_return'])} | |")
    md.append(f"| best possible | - | {fmt(ref['best_true_return'])} | 0 |")
    md += [
        "",
        "Decoders chosen on `val` per seed: "
        + "; ".join(f"{p}: {chosen_decoders(jobs, p)}" for p in ("sft", "dpr", "continued_sft")),
    ]
    comps = {}
    for refname in ("sft best decoder (val)", "sft greedy", "sft sampled T=1"):
        names = [n for n in rows if n.startswith(("dpr", "continued_sft"))]
        comps[refname] = compare_rows(rows, refname, names)
        md += ["", f"### Paired differences vs `{refname}` (Holm over {len(comps[refname])} rows)", ""]
        md += compare_md(comps[refname], refname, "true return")
    expert = ref["expert_true_return"]
    if expert is not None:
        ex = {n: summary([v - expert for v in rows[n].values()]) for n in rows}
        md += [
            "",
            "### Against the expert's mean true return (one-sample, over seeds)",
            "",
            "| policy / decoding | mean − expert | 95% CI |",
            "|---|---:|---|",
        ]
        for n, s in ex.items():
            md.append(f"| {n} | {fmt(s['mean'])} | [{fmt(s['lo'])}, {fmt(s['hi'])}] |")
    md += failures_md(others)
    fig = make_fig(11, 4.2)
    ax = fig.add_subplot(1, 2, 1)
    names = list(rows)
    bar_ci(
        ax,
        names,
        [stats[n] for n in names],
        [list(rows[n].values()) for n in names],
        title=f"eval true return, n={len(jobs)} seeds",
        ylabel="true return",
    )
    for y, lab, c in (
        (ref["expert_true_return"], "expert", "tab:red"),
        (ref["best_true_return"], "best possible", "tab:green"),
    ):
        if y is not None:
            ax.axhline(y, color=c, ls="--", lw=1, label=lab)
    ax.legend(fontsize=7)
    ax2 = fig.add_subplot(1, 2, 2)
    names2 = list(FIDELITY)
    bar_ci(
        ax2,
        names2,
        [fid[f"{n}/within/pearson_mean"] for n in names2],
        title="fidelity: within-policy Pearson (recovered vs true return)",
        ylabel="Pearson r",
    )
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "beyond.png", dpi=120)
    md += ["", "![beyond](beyond.png)"]
    write_outputs(
        out, md, {"rows": rows, "stats": stats, "fidelity": fid, "comparisons": comps, "reference": ref}
    )


def main(argv: Sequence[str] | None = None) -> int:
    return report_cli(report_beyond, "beyond", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
