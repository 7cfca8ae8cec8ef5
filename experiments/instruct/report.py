"""Tables and plot of the instruct study (experiment=instruct over seeds: SmolLM2-135M-Instruct + LoRA on
ShareGPT, IFBench by its official checkers).

`python -m experiments.instruct.report outputs/studies/instruct --out experiments/instruct` writes results.md,
results.json, instruct.png and copies seed 0's token heatmaps. Every policy answers the same IFBench prompts,
so comparisons are paired twice: over seeds (paired t on the per-seed accuracy) and over prompts (an exact
McNemar test on prompt-level pass/fail and a bootstrap over prompts of the instruction-level difference per seed;
pooled over seeds by averaging each prompt over the seeds and bootstrapping over prompts).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from densepath.sweeps.stats import holm, mcnemar, paired_bootstrap, seed_sort_key
from experiments.report_common import (
    by_seed,
    compare_md,
    compare_pairs,
    fmt,
    fmt_ci,
    fmt_p,
    load_jobs,
    make_fig,
    report_cli,
    seeds_of,
    summary,
    wall_hours,
    write_outputs,
)

POLICIES = ("base", "sft", "dpr", "continued_sft", "dft", "sft_lowlr")
LABEL = {
    "base": "base model (untrained)",
    "sft": "SFT",
    "dpr": "DPR (last checkpoint)",
    "continued_sft": "continued SFT (seen)",
    "dft": "DFT (seen)",
    "sft_lowlr": "low-LR SFT",
}
MEASURES = ("prompt_loose", "prompt_strict", "instruction_loose", "instruction_strict")
CONTROLS = ("sft", "continued_sft", "dft", "sft_lowlr", "base")
PROBE_FORMS = (
    "configured",
    "logprob",
    "log_ratio@0.50",
    "log_ratio@base",
    "log_ratio@uniform",
    "soft_bellman",
)


def results_of(job: dict, policy: str) -> dict[str, dict] | None:
    """{prompt key: checker results} of one policy in one job (`evalset/<policy>/results.jsonl`)."""
    path = Path(job["dir"]) / "evalset" / policy / "results.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return {r["key"]: r for r in rows}


def paired_outcomes(a: dict, b: dict, mode: str) -> dict[str, tuple[float, float, float, float, int]]:
    """{prompt key: (a passed, b passed, a's instruction pass rate, b's, scorable instructions)} over the
    prompts both could score."""
    out = {}
    for key in sorted(set(a) & set(b)):
        ra, rb = a[key], b[key]
        if ra[f"prompt_{mode}"] is None or rb[f"prompt_{mode}"] is None:
            continue
        pairs = [(float(x), float(y)) for x, y in zip(ra[mode], rb[mode]) if x is not None and y is not None]
        n = len(pairs)
        out[key] = (
            float(ra[f"prompt_{mode}"]),
            float(rb[f"prompt_{mode}"]),
            sum(x for x, _ in pairs) / max(1, n),
            sum(y for _, y in pairs) / max(1, n),
            n,
        )
    return out


def by_prompt(jobs: list[dict], target: str, ref: str, mode: str) -> list[dict]:
    """target vs ref paired by prompt. Per seed: exact McNemar on prompt pass/fail, and the instruction-level
    difference bootstrapped over prompts (a prompt's instructions resampled together). Pooled: each prompt's
    pass (and instruction pass rate) averaged over the seeds, then bootstrapped over prompts: the prompts are
    the independent units, the seeds' answers to one prompt are not."""
    rows, per_prompt = [], {}
    for j in sorted(jobs, key=lambda j: seed_sort_key(j["seed"])):
        a, b = results_of(j, target), results_of(j, ref)
        if a is None or b is None:
            continue
        out = paired_outcomes(a, b, mode)
        for k, v in out.items():
            per_prompt.setdefault(k, []).append(v)
        v = list(out.values())
        seed = int(j["seed"]) if str(j["seed"]).isdigit() else 0
        rows.append(
            {
                "seed": str(j["seed"]),
                "prompt": mcnemar([x[0] > 0.5 for x in v], [x[1] > 0.5 for x in v]),
                "instruction": paired_bootstrap(
                    [x[2] for x in v], [x[3] for x in v], seed=seed, weights=[x[4] for x in v]
                ),
            }
        )
    if len(rows) > 1:
        means = [np.mean(np.asarray(vs, dtype=float), axis=0) for vs in per_prompt.values()]  # per prompt
        pooled_prompt = paired_bootstrap([m[0] for m in means], [m[1] for m in means])
        rows.append(
            {
                "seed": "pooled",
                "prompt": {
                    "n": len(means),
                    "a_only": None,
                    "b_only": None,
                    "diff": pooled_prompt["mean"],
                    "p": pooled_prompt["p"],
                    "lo": pooled_prompt["lo"],
                    "hi": pooled_prompt["hi"],
                    "test": "bootstrap over prompts",
                },
                "instruction": paired_bootstrap(
                    [m[2] for m in means], [m[3] for m in means], weights=[m[4] for m in means]
                ),
            }
        )
    return rows


def report_instruct(sweep: Path, out: Path) -> None:
    jobs, others = load_jobs(sweep)
    policies = [p for p in POLICIES if by_seed(jobs, f"evalset/{p}/ifbench/prompt_loose")]
    decoded = sorted(
        {
            k.split("/")[1]
            for j in jobs
            for k in j["metrics"]
            if k.startswith("evalset/") and "@" in k.split("/")[1]
        }
    )
    n_prompts = by_seed(jobs, "evalset/sft/ifbench/prompt_loose_n")
    n_instr = by_seed(jobs, "evalset/sft/ifbench/instruction_loose_n")
    md = [
        "# Instruct study (SmolLM2-135M-Instruct + LoRA on ShareGPT, IFBench): results",
        "",
        f"n = {len(jobs)} seeds ({seeds_of(jobs)}); IFBench's fixed CPU subset: "
        f"{fmt(np.mean(list(n_prompts.values())), 0) if n_prompts else '-'} scorable prompts, "
        f"{fmt(np.mean(list(n_instr.values())), 0) if n_instr else '-'} scorable instructions per seed "
        "(the same prompts for every policy and seed); greedy decoding unless `@decoder`. Accuracy in %, "
        f"mean ± 95% t-interval over seeds. Wall time: {wall_hours(jobs):.2f} h summed over the jobs.",
        "",
        "## IFBench accuracy (%)",
        "",
        "| policy | n | prompt loose | prompt strict | instruction loose | instruction strict | truncated | "
        "cost / answer |",
        "|---|---:|---|---|---|---|---|---:|",
    ]
    acc: dict[str, dict[str, dict[str, float]]] = {}
    for p in [*policies, *decoded]:
        acc[p] = {
            m: {s: 100 * v for s, v in by_seed(jobs, f"evalset/{p}/ifbench/{m}").items()} for m in MEASURES
        }
        trunc = summary([100 * v for v in by_seed(jobs, f"evalset/{p}/ifbench/truncated").values()])
        cost = summary(by_seed(jobs, f"evalset/{p}/ifbench/cost").values())
        cells = " | ".join(fmt_ci(summary(acc[p][m].values()), 1) for m in MEASURES)
        md.append(
            f"| {LABEL.get(p, p)} | {len(acc[p]['prompt_loose'])} | {cells} | {fmt(trunc['mean'], 0)}% | "
            f"{fmt(cost['mean'], 0)} |"
        )
    # over seeds
    comps = {}
    for m in ("prompt_loose", "instruction_loose"):
        rows = {p: acc[p][m] for p in acc}
        comps[m] = compare_pairs(rows, [("dpr", c) for c in CONTROLS if c in rows])
        md += ["", f"### DPR − each control, paired over seeds: {m.replace('_', ' ')} (points of %)", ""]
        md += compare_md(comps[m], None, "points")
    # over prompts
    md += [
        "",
        "## DPR − each control, paired by prompt",
        "",
        "Per seed, prompt level: exact McNemar test on pass/fail (`DPR only` / `ctrl only` = prompts only one of "
        "the two passes). Instruction level: the pass-rate difference over instructions, bootstrapped over "
        "prompts (10,000 resamples; a prompt's instructions stay together). `pooled`: each prompt's pass "
        "averaged over the seeds, bootstrapped over prompts (the prompts are the independent units; one "
        "prompt's answers across seeds are not); its p is the bootstrap p. p (Holm) is adjusted over the "
        "controls within each seed row. Loose: every seed and pooled; strict: pooled.",
    ]
    prompt_tests = {}
    for mode in ("loose", "strict"):
        md += [
            "",
            f"### {mode}",
            "",
            "| vs | seed | prompts | DPR only | ctrl only | prompt diff (pts) | McNemar p (pooled: bootstrap) | p (Holm) | "
            "instr. diff (pts) [95% CI] | bootstrap p |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        table = {c: by_prompt(jobs, "dpr", c, mode) for c in CONTROLS if c in policies and "dpr" in policies}
        prompt_tests[mode] = table
        seeds = sorted({r["seed"] for rows in table.values() for r in rows}, key=lambda s: (s == "pooled", s))
        adj = {}
        for s in seeds:
            entries = [(c, r) for c, rows in table.items() for r in rows if r["seed"] == s]
            for (c, _), pv in zip(entries, holm([r["prompt"]["p"] for _, r in entries])):
                adj[c, s] = pv
        for c, rows in table.items():
            for r in (
                rows
                if mode == "loose"
                else [r for r in rows if r["seed"] in ("pooled", rows[-1]["seed"])][-1:]
            ):
                pt, it = r["prompt"], r["instruction"]
                only = (
                    "- | -" if pt["a_only"] is None else f"{pt['a_only']} | {pt['b_only']}"
                )  # pooled: no McNemar counts
                diff = fmt(100 * pt["diff"], 1) + (
                    f" [{fmt(100 * pt['lo'], 1)}, {fmt(100 * pt['hi'], 1)}]" if "lo" in pt else ""
                )
                md.append(
                    f"| {c} | {r['seed']} | {pt['n']} | {only} | {diff} | "
                    f"{fmt_p(pt['p'])} | {fmt_p(adj[c, r['seed']])} | {fmt(100 * it['mean'], 1)} "
                    f"[{fmt(100 * it['lo'], 1)}, {fmt(100 * it['hi'], 1)}] | {fmt_p(it['p'])} |"
                )
    # held-out NLL of the demonstrators' answers
    nll = {p: by_seed(jobs, f"{p}/eval/nll") for p in policies if by_seed(jobs, f"{p}/eval/nll")}
    md += [
        "",
        "## Held-out NLL of the demonstrators' answers (eval split, nats per token; lower is better)",
        "",
        "| policy | n | NLL (mean ± 95% CI) | per seed |",
        "|---|---:|---|---|",
    ]
    for p, v in nll.items():
        per = ", ".join(fmt(v[s]) for s in sorted(v, key=seed_sort_key))
        md.append(f"| {LABEL.get(p, p)} | {len(v)} | {fmt_ci(summary(v.values()))} | {per} |")
    comps["nll"] = compare_pairs(nll, [("dpr", c) for c in CONTROLS if c in nll])
    md += ["", "DPR − each control, paired over seeds (nats per token):", ""]
    md += compare_md(comps["nll"], None, "nats/token", nd=4)
    # frontier: SFT's decoders vs DPR decoded once
    md += frontier_section(jobs, acc, decoded)
    # the probe on real text
    md += [
        "",
        "## Recovered reward on real text: the token-corruption probe (held-out answers)",
        "",
        "One answer token replaced by a random token (`random`) or by one drawn from π_base (`sampled`); "
        "detection = the replaced token has its answer's lowest reward; chance = 1 / answer length.",
        "",
        "| formulation | random: detection | random: token AUROC | sampled: detection | sampled: token AUROC |",
        "|---|---|---|---|---|",
    ]
    probe = {}
    for f in PROBE_FORMS:
        cells = []
        for kind in ("random", "sampled"):
            for what in ("detection_rate", "token_auroc"):
                s = summary(by_seed(jobs, f"recover/{f}/probe/{kind}/{what}").values())
                probe[f"{f}/{kind}/{what}"] = s
                cells.append(fmt_ci(s))
        if any(c != "-" for c in cells):
            md.append(f"| {f} | " + " | ".join(cells) + " |")
    chance = summary(by_seed(jobs, "recover/configured/probe/chance").values())
    fid = summary(by_seed(jobs, "evalset/sft/ifbench/seq_reward_auroc").values())
    md += [
        "",
        f"Chance detection rate: {fmt_ci(chance)}. Recovered sequence reward of SFT's IFBench answers, passing vs "
        f"failing (AUROC, 0.5 = no signal): {fmt_ci(fid)} (n = {fid['n']} seeds with both classes).",
    ]
    heat = [Path(j["dir"]) / "recover" / "heatmap.html" for j in jobs]
    heat = [h for h in heat if h.exists()][:3]
    if heat:
        (out / "heatmaps").mkdir(parents=True, exist_ok=True)
        names = []
        for h in heat:
            name = f"{h.parent.parent.name}.html"
            shutil.copyfile(h, out / "heatmaps" / name)
            names.append(f"[{name}](heatmaps/{name})")
        md += [
            "",
            "Token heatmaps of the configured reward on held-out answers (open in a browser): "
            + ", ".join(names),
        ]
    if others:
        md += [
            "",
            "Jobs not counted: " + ", ".join(f"`{Path(j['dir']).name}` ({j['status']})" for j in others),
        ]
    plot(out, jobs, acc, nll, decoded)
    md += ["", "![instruct](instruct.png)"]
    write_outputs(
        out,
        md,
        {"accuracy": acc, "comparisons": comps, "by_prompt": prompt_tests, "nll": nll, "probe": probe},
    )


def identical_share(jobs, a: str, b: str) -> tuple[int, int, list[str]]:
    """How many of policy `a`'s IFBench answers are identical to policy `b`'s, over the prompts both answered
    (`evalset/<policy>/responses.jsonl`), summed over jobs: (identical, compared, per-seed "k/n")."""
    same = total = 0
    per_seed = []
    for j in jobs:
        answers = []
        for p in (a, b):
            path = Path(j["dir"]) / "evalset" / p / "responses.jsonl"
            rows = (
                [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
            )
            answers.append({r["prompt"]: r["response"] for r in rows})
        common = sorted(set(answers[0]) & set(answers[1]))
        if common:
            k = sum(answers[0][q] == answers[1][q] for q in common)
            same, total = same + k, total + len(common)
            per_seed.append(f"{k}/{len(common)}")
    return same, total, per_seed


def frontier_section(jobs, acc, decoded) -> list[str]:
    """SFT greedy and its decoders (cost, prompt-loose accuracy) against DPR decoded once (greedy)."""
    if not decoded or "dpr" not in acc:
        return []
    rows = []
    for p in ["sft", *decoded]:
        if p.split("@")[0] != "sft":
            continue
        cost = summary(by_seed(jobs, f"evalset/{p}/ifbench/cost").values())["mean"]
        rows.append((p, cost, summary(acc[p]["prompt_loose"].values())))
    rows.sort(key=lambda r: r[1])
    dpr = summary(acc["dpr"]["prompt_loose"].values())
    dpr_cost = summary(by_seed(jobs, "evalset/dpr/ifbench/cost").values())["mean"]
    md = [
        "",
        "## Score against inference cost: SFT's decoders vs DPR decoded once (greedy)",
        "",
        "| decoder | cost / answer | prompt loose (%) | ≥ DPR? |",
        "|---|---:|---|---|",
    ]
    for p, cost, s in rows:
        md.append(
            f"| {p} | {fmt(cost, 0)} | {fmt_ci(s, 1)} | {'yes' if s['mean'] >= dpr['mean'] else 'no'} |"
        )
    md.append(f"| **dpr greedy** | {fmt(dpr_cost, 0)} | {fmt_ci(dpr, 1)} | |")
    match = next(((p, c) for p, c, s in rows if s["mean"] >= dpr["mean"]), None)
    md += [
        "",
        f"SFT's decoders first match DPR at cost {fmt(match[1], 0)} per answer ({match[0]})."
        if match
        else "None of SFT's decoders reaches DPR's mean.",
    ]
    beams = sorted((int(p.split("@beam")[1]), p) for p in decoded if p.startswith("sft@beam"))
    if beams:
        widest = beams[-1][1]
        same, total, per_seed = identical_share(jobs, "dpr", widest)
        if total:
            md.append(
                f"DPR's greedy answers identical to SFT's widest beam (`{widest}`): {same} of {total} "
                f"({100 * same / total:.0f}%; per seed {', '.join(per_seed)})."
            )
    return md


def plot(out: Path, jobs, acc, nll, decoded) -> None:
    fig = make_fig(17, 4.6)
    ax = fig.add_subplot(1, 3, 1)
    names = [p for p in acc if "@" not in p]
    width = 0.8 / len(MEASURES)
    xs = np.arange(len(names))
    for i, m in enumerate(MEASURES):
        st = [summary(acc[p][m].values()) for p in names]
        ax.bar(
            xs + (i - (len(MEASURES) - 1) / 2) * width,
            [s["mean"] for s in st],
            width,
            yerr=[s["ci95"] if math.isfinite(s["ci95"]) else 0 for s in st],
            capsize=2,
            label=m.replace("_", " "),
        )
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("IFBench accuracy (%)")
    ax.set_title(f"IFBench, n={len(jobs)} seeds, 95% CI over seeds", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax2 = fig.add_subplot(1, 3, 2)
    for i, p in enumerate(acc):
        cost = summary(by_seed(jobs, f"evalset/{p}/ifbench/cost").values())
        s = summary(acc[p]["prompt_loose"].values())
        if cost["n"] and s["n"]:
            ax2.errorbar(
                cost["mean"],
                s["mean"],
                yerr=s["ci95"] if math.isfinite(s["ci95"]) else 0,
                fmt="s" if "@" in p else "o",
                color=f"C{i % 10}",
                capsize=3,
                label=p,
            )
    ax2.set_xscale("log")
    ax2.set_xlabel("inference cost per answer (token positions, log)")
    ax2.set_ylabel("prompt loose (%)")
    ax2.set_title("score vs inference cost", fontsize=10)
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    ax3 = fig.add_subplot(1, 3, 3)
    ps = list(nll)
    st = [summary(nll[p].values()) for p in ps]
    ax3.bar(
        range(len(ps)),
        [s["mean"] for s in st],
        yerr=[s["ci95"] if math.isfinite(s["ci95"]) else 0 for s in st],
    )
    ax3.set_xticks(range(len(ps)))
    ax3.set_xticklabels(ps, rotation=30, ha="right", fontsize=8)
    lo = min((s["mean"] for s in st), default=0)
    ax3.set_ylim(bottom=max(0.0, lo - 0.2))
    ax3.set_ylabel("eval NLL (nats/token)")
    ax3.set_title("held-out NLL of the demonstrators' answers", fontsize=10)
    ax3.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "instruct.png", dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    return report_cli(report_instruct, "instruct", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
