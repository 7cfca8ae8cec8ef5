"""Tables and plots of the four studies in `experiments/` (main, beyond, ablations, hacking).

`python -m densepath.sweeps.studies <study> <sweep dir> --out experiments/<study>` reads the finished
job dirs of a Hydra multirun (one per seed, or per configuration and seed) and writes
`results.md` (every table: n, the seeds, mean and 95% t-interval, paired differences with Holm-
adjusted p-values), `results.json` and the plots. Only finished jobs (DONE marker) count; failed
and unfinished ones are listed.

Statistics: per seed the metric is one number (an eval-split mean over 512-600 prompts); the
interval is over seeds (Student t, df = n - 1), so it covers seed-to-seed variation of the
whole pipeline. Paired differences pair runs of the same seed. Holm's step-down correction is
applied over the comparisons of one table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from densepath.sweeps.aggregate import (
    STATUS_FINISHED,
    find_job_dirs,
    read_job,
    student_t_ppf,
    student_t_sf,
    t_interval,
)

# --------------------------------------------------------------------------- statistics


def summary(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, 95% half-width, lo, hi of the finite values."""
    x = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    mean, half = t_interval(x)
    return {"n": len(x), "mean": mean, "ci95": half, "lo": mean - half, "hi": mean + half}


def paired(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    """a - b over the seeds present in both: mean, 95% CI, two-sided paired-t p-value."""
    seeds = sorted(set(a) & set(b), key=_seed_key)
    d = np.array([a[s] - b[s] for s in seeds if math.isfinite(a[s]) and math.isfinite(b[s])])
    n = len(d)
    out: dict[str, Any] = {"n": n, "seeds": seeds, "mean": float(d.mean()) if n else math.nan}
    if n < 2:
        return {**out, "ci95": math.nan, "lo": math.nan, "hi": math.nan, "p": math.nan, "sd": math.nan}
    sd = float(d.std(ddof=1))
    half = student_t_ppf(0.975, n - 1) * sd / math.sqrt(n)
    if sd == 0:
        p = 0.0 if out["mean"] != 0 else 1.0
    else:
        p = min(1.0, 2.0 * student_t_sf(abs(out["mean"]) / (sd / math.sqrt(n)), n - 1))
    return {**out, "ci95": half, "lo": out["mean"] - half, "hi": out["mean"] + half, "p": p, "sd": sd}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (NaN stays NaN; monotone; capped at 1)."""
    idx = [i for i, p in enumerate(pvalues) if math.isfinite(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    adj = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adj[i] = running
    return adj


def min_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest paired mean difference a two-sided paired t-test with n pairs detects with the given
    power, for the observed sd of the differences (noncentral t approximated by a shifted central t)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    df = n - 1
    return (student_t_ppf(1 - alpha / 2, df) + student_t_ppf(power, df)) * sd / math.sqrt(n)


def _seed_key(s: str) -> tuple[int, float, str]:
    try:
        return (0, float(s), s)
    except (TypeError, ValueError):
        return (1, 0.0, str(s))


def fmt(x: float, nd: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


def fmt_ci(s: dict[str, Any], nd: int = 3) -> str:
    if not s["n"]:
        return "-"
    if not math.isfinite(s["ci95"]):
        return fmt(s["mean"], nd)
    return f"{fmt(s['mean'], nd)} ± {fmt(s['ci95'], nd)}"


def fmt_p(p: float) -> str:
    return "-" if not math.isfinite(p) else ("<0.001" if p < 1e-3 else f"{p:.3f}")


# --------------------------------------------------------------------------- jobs


def load_jobs(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(finished jobs, the others). Each job: dir, config (overrides minus the seed), seed, metrics."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SystemExit(f"sweep dir {sweep_dir} does not exist: run the study's run.sh first")
    jobs = [read_job(d, "seed") for d in find_job_dirs(sweep_dir)]
    for j in jobs:
        j["config"] = (
            ",".join(o for o in j["config"].split(",") if o and not o.startswith(("experiment=", "resume=")))
            or "(reference)"
        )
    done = [j for j in jobs if j["status"] == STATUS_FINISHED]
    if not done:
        raise SystemExit(f"no finished jobs under {sweep_dir} ({len(jobs)} job dirs)")
    return done, [j for j in jobs if j["status"] != STATUS_FINISHED]


def by_seed(jobs: list[dict[str, Any]], key: str) -> dict[str, float]:
    out = {}
    for j in jobs:
        v = j["metrics"].get(key)
        if v is not None:
            out[str(j["seed"])] = float(v)
    return out


def seeds_of(jobs) -> str:
    return ", ".join(sorted({str(j["seed"]) for j in jobs}, key=_seed_key))


def failures_md(others: list[dict[str, Any]]) -> list[str]:
    if not others:
        return []
    lines = ["", "Jobs not counted:", ""]
    for j in others:
        lines.append(f"- `{j['dir'].name}` ({j['status']}): {j['error'] or '-'}")
    return lines


def _fig(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def bar_ci(ax, labels, stats, per_seed=None, color="tab:blue", title="", ylabel=""):
    xs = np.arange(len(labels))
    means = np.array([s["mean"] for s in stats], dtype=float)
    halves = np.array([s["ci95"] if math.isfinite(s["ci95"]) else 0.0 for s in stats], dtype=float)
    ax.bar(xs, means, yerr=halves, capsize=4, color=color, alpha=0.75)
    if per_seed is not None:
        for i, vals in enumerate(per_seed):
            ax.scatter(np.full(len(vals), xs[i]), vals, s=10, color="black", zorder=3)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def write_outputs(out: Path, md: list[str], data: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    sys.stdout.write("\n".join(md) + "\n")


def compare_rows(rows: dict[str, dict[str, float]], ref: str, names: Sequence[str]) -> list[dict]:
    """Paired differences of `names` against `ref`, Holm-adjusted over this set."""
    comps = [dict(name=n, **paired(rows[n], rows[ref])) for n in names if n != ref and n in rows]
    for c, padj in zip(comps, holm([c["p"] for c in comps])):
        c["p_holm"] = padj
        c["mde"] = min_detectable_effect(c["sd"], c["n"])
    return comps


def compare_md(comps: list[dict], ref: str, unit: str) -> list[str]:
    lines = [
        f"| vs `{ref}` | n pairs | mean diff ({unit}) | 95% CI | p (paired t) | p (Holm) | smallest detectable (80% power) |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for c in comps:
        lines.append(
            f"| {c['name']} | {c['n']} | {fmt(c['mean'])} | [{fmt(c['lo'])}, {fmt(c['hi'])}] | {fmt_p(c['p'])} | "
            f"{fmt_p(c['p_holm'])} | {fmt(c['mde'])} |"
        )
    return lines


# --------------------------------------------------------------------------- main study

POLICIES = ("sft", "dpr", "continued_sft", "rloo")


def policy_rows(jobs, head: str, policies=POLICIES) -> dict[str, dict[str, float]]:
    """{"<policy> <decoding>": {seed: eval value}} for sampled T=1, greedy and the val-chosen T."""
    rows = {}
    for p in policies:
        rows[f"{p} sampled T=1"] = by_seed(jobs, f"{p}/eval/sampled/{head}")
        rows[f"{p} greedy"] = by_seed(jobs, f"{p}/eval/greedy/{head}")
        rows[f"{p} best T (val)"] = by_seed(jobs, f"temperature/{p}/eval/{head}")
        rows[f"{p} last ckpt, T=1"] = by_seed(jobs, f"{p}/eval_last/sampled/{head}")
        rows[f"{p} last ckpt, greedy"] = by_seed(jobs, f"{p}/eval_last/greedy/{head}")
    return {k: v for k, v in rows.items() if v}


def chosen_temps(jobs, p: str) -> str:
    ts = [j["metrics"].get(f"temperature/{p}/best_temperature") for j in jobs]
    return ", ".join("greedy" if t == 0 else f"{t:g}" for t in ts if t is not None) or "-"


def report_main(sweep: Path, out: Path) -> None:
    jobs, others = load_jobs(sweep)
    head = "success"
    rows = policy_rows(jobs, head)
    md = [
        "# Main study: results",
        "",
        f"Built-in tasks, `eval` split (600 held-out prompts per seed), n = {len(jobs)} seeds ({seeds_of(jobs)}); "
        "mean ± 95% t-interval over seeds. DPR, RLOO and continued SFT report their best-`val` checkpoint. "
        "`best T (val)` = the decoding setting (greedy or T in 0.25/0.5/0.75/1) with the best `val` success, "
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
        per = ", ".join(fmt(vals[s]) for s in sorted(vals, key=_seed_key))
        md.append(f"| {name} | {stats[name]['n']} | {fmt_ci(stats[name])} | {per} |")
    md += [
        "",
        "Temperatures chosen on `val` per seed: "
        + "; ".join(f"{p}: {chosen_temps(jobs, p)}" for p in POLICIES),
        "",
        "Best-`val` step per seed (0 = the SFT policy itself was best on `val`): "
        + "; ".join(
            f"{p}: " + ", ".join(f"{int(v)}" for v in by_seed(jobs, f"{p}/val/best_step").values())
            for p in ("dpr", "continued_sft", "rloo")
        ),
    ]
    # paired comparisons: each trained policy against SFT at T=1 and against SFT's best decoding
    comps = {}
    for ref in ("sft sampled T=1", "sft best T (val)", "sft greedy", "continued_sft best T (val)"):
        if ref not in rows:
            continue
        names = [n for n in rows if not n.startswith("sft ")]
        if ref.startswith("continued_sft"):
            names = [n for n in names if n.startswith(("dpr", "rloo")) and n.endswith("best T (val)")]
        elif ref == "sft sampled T=1":
            names = [n for n in names if n.endswith("T=1")]
        elif ref == "sft greedy":
            names = [n for n in names if n.endswith("greedy")]
        else:
            names = [n for n in names if n.endswith("best T (val)")]
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
    fig = _fig(16, 4.4)
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
                diffs.append((f"{p} {dec}", paired(rows[f"{p} {dec}"], rows[ref])))
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


# --------------------------------------------------------------------------- beyond the demonstrator

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
        "Temperatures chosen on `val` per seed: "
        + "; ".join(f"{p}: {chosen_temps(jobs, p)}" for p in ("sft", "dpr", "continued_sft")),
    ]
    comps = {}
    for refname in ("sft best T (val)", "sft greedy", "sft sampled T=1"):
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
    fig = _fig(11, 4.2)
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


# --------------------------------------------------------------------------- ablations


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
    fig = _fig(max(8, 0.7 * len(order) + 3), 5.0)
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


# --------------------------------------------------------------------------- reward-hacking watch


def read_curves(job_dir: Path, stage: str = "dpr") -> dict[str, np.ndarray]:
    """Per-step training curves from the stage's CSV log: step, recovered reward, verifier success."""
    path = job_dir / stage / "csv" / "metrics.csv"
    if not path.exists():
        return {}
    cols: dict[str, list] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            if not row.get("train/reward"):
                continue
            for k in (
                "step",
                "train/reward",
                "train/true_success",
                "train/kl_to_sft",
                "train/true_true_return",
            ):
                v = row.get(k)
                cols.setdefault(k, []).append(float(v) if v not in (None, "") else math.nan)
    return {k: np.asarray(v) for k, v in cols.items()}


def report_hacking(
    sweep: Path, out: Path, main_dir: Path | None = None, ablations_dir: Path | None = None
) -> None:
    jobs, others = load_jobs(sweep)
    settings: dict[str, list] = {}
    for j in jobs:
        settings.setdefault(j["config"], []).append(j)
    if main_dir is not None and Path(main_dir).is_dir():
        mj, _ = load_jobs(Path(main_dir))
        settings["main study DPR (log_ratio, k3 KL 1.0, lr 1e-5, 50 steps)"] = mj
    truth = {name: ("train/true_success", 0.05, "verifier success") for name in settings}
    if ablations_dir is not None and Path(ablations_dir).is_dir():
        aj, _ = load_jobs(Path(ablations_dir))
        for cfg, label in (("(reference)", "log_ratio"), ("reward=logprob", "logprob")):
            name = f"known-reward MDP, {label}, no KL, lr 1e-3 (ablations)"
            settings[name] = [j for j in aj if j["config"] == cfg]
            truth[name] = ("train/true_true_return", 0.5, "true return")
    md = [
        "# Reward-hacking watch: results",
        "",
        "Per training step, the recovered return of the policy's own samples (what DPR maximises) next to the "
        "verifier success of the same samples (what we want), mean over seeds with a 95% band. Setting: "
        "DPR from each seed's SFT of the main study, lr 1e-4, no KL, 60 steps x 16 prompts x 8 samples; "
        "the main study's own DPR run (k3 KL 1.0, lr 1e-5) for comparison. The plot shows 5-step moving "
        "averages, mean over seeds with a 95% band.",
        "",
        "| setting | n | seeds | recovered return: first fifth of training → last fifth | verifier success (true return): first fifth → last fifth | step where it (smoothed) first falls 0.05 (0.5) below its start | best-val ckpt: eval success (true return) | last ckpt: eval success (true return) |",
        "|---|---:|---|---|---|---|---|---|",
    ]
    panels = []
    for name, js in settings.items():
        curves = [read_curves(j["dir"]) for j in js]
        curves = [c for c in curves if c and len(c.get("step", []))]
        if not curves:
            continue
        L = min(len(c["step"]) for c in curves)
        steps = curves[0]["step"][:L]
        R = np.stack([c["train/reward"][:L] for c in curves])
        key, thresh, _ = truth[name]
        S = np.stack([c[key][:L] for c in curves])
        w = max(1, L // 5)  # first / last fifth of the logged points
        r0, r1 = R[:, :w].mean(1), R[:, -w:].mean(1)
        s0, s1 = S[:, :w].mean(1), S[:, -w:].mean(1)
        smooth = np.array([np.convolve(s, np.ones(w) / w, mode="valid") for s in S]).mean(0)
        drop = np.nonzero(smooth < smooth[0] - thresh)[0]
        where = f"{int(steps[drop[0] + w // 2])}" if len(drop) else "never"
        ev = summary(by_seed(js, "dpr/eval/sampled/" + key.split("/true_", 1)[1]).values())
        ev_last = summary(by_seed(js, "dpr/eval_last/sampled/" + key.split("/true_", 1)[1]).values())
        md.append(
            f"| `{name}` | {len(curves)} | {seeds_of(js)} | {fmt_ci(summary(r0))} → {fmt_ci(summary(r1))} | "
            f"{fmt_ci(summary(s0))} → {fmt_ci(summary(s1))} | {where} | {fmt_ci(ev)} | {fmt_ci(ev_last)} |"
        )
        panels.append((name, steps, R, S, truth[name][2]))
    md += failures_md(others)
    ncol = min(3, max(1, len(panels)))
    nrow = max(1, math.ceil(len(panels) / ncol))
    fig = _fig(4.6 * ncol, 3.6 * nrow)
    for i, (name, steps, R, S, truth_label) in enumerate(panels):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        w = 5 if len(steps) >= 20 else 1  # moving average over 5 steps (each step: 16 prompts only)
        sm = lambda x, w=w: np.array([np.convolve(r, np.ones(w) / w, mode="valid") for r in x])  # noqa: E731
        steps_s = steps[w - 1 :]
        for arr, color, label, axis in (
            (sm(R), "tab:blue", "recovered return", ax),
            (sm(S), "tab:red", truth_label, None),
        ):
            a = axis if axis is not None else ax.twinx()
            m = arr.mean(0)
            h = (
                student_t_ppf(0.975, arr.shape[0] - 1) * arr.std(0, ddof=1) / math.sqrt(arr.shape[0])
                if arr.shape[0] > 1
                else np.zeros_like(m)
            )
            a.plot(steps_s, m, color=color, label=label)
            a.fill_between(steps_s, m - h, m + h, color=color, alpha=0.2)
            a.set_ylabel(label + (f" ({w}-step mean)" if w > 1 else ""), color=color, fontsize=8)
        ax.set_xlabel("RL step")
        ax.set_title(name if len(name) < 60 else name[:57] + "...", fontsize=8)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "hacking.png", dpi=120)
    md += ["", "![hacking](hacking.png)"]
    write_outputs(out, md, {"settings": list(settings)})


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m densepath.sweeps.studies", description=__doc__.split("\n")[0])
    p.add_argument("study", choices=["main", "beyond", "ablations", "hacking"])
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--main", type=Path, default=None, help="hacking: the main study's sweep dir (its DPR curves)"
    )
    p.add_argument(
        "--ablations", type=Path, default=None, help="hacking: the ablations' sweep dir (known-reward curves)"
    )
    a = p.parse_args(argv)
    if a.study == "main":
        report_main(a.sweep_dir, a.out)
    elif a.study == "beyond":
        report_beyond(a.sweep_dir, a.out)
    elif a.study == "ablations":
        report_ablations(a.sweep_dir, a.out)
    else:
        report_hacking(a.sweep_dir, a.out, a.main, a.ablations)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
