"""Shared pieces of the study reports in ``experiments/<study>/report.py``: job loading, per-seed
values, formatting, Holm-adjusted comparison tables, bar plots and the results.md/.json writer.

A report reads the finished job dirs of a Hydra multirun (one per seed, or per configuration and
seed) and writes `results.md` (every table: n, the seeds, mean and 95% t-interval, paired
differences with Holm-adjusted p-values), `results.json` and the plots. Only finished jobs (DONE
marker) count; failed and unfinished ones are listed.

Statistics: per seed the metric is one number (an eval-split mean over 512-600 prompts); the
interval is over seeds (Student t, df = n - 1), so it covers seed-to-seed variation of the
whole pipeline. Paired differences pair runs of the same seed. Holm's step-down correction is
applied over the comparisons of one table. The statistics themselves are the general ones of
:mod:`densepath.sweeps.aggregate`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from densepath.sweeps.jobs import STATUS_FINISHED, find_job_dirs, read_job
from densepath.sweeps.stats import holm, min_detectable_effect, paired_differences, seed_sort_key, t_interval

# --------------------------------------------------------------------------- statistics and formatting


def summary(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, 95% half-width, lo, hi of the finite values."""
    x = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    mean, half = t_interval(x)
    return {"n": len(x), "mean": mean, "ci95": half, "lo": mean - half, "hi": mean + half}


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
    return ", ".join(sorted({str(j["seed"]) for j in jobs}, key=seed_sort_key))


def failures_md(others: list[dict[str, Any]]) -> list[str]:
    if not others:
        return []
    lines = ["", "Jobs not counted:", ""]
    for j in others:
        lines.append(f"- `{j['dir'].name}` ({j['status']}): {j['error'] or '-'}")
    return lines


def make_fig(w: float, h: float):
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
    """Paired differences of `names` against `ref`, Holm-adjusted over this set.

    `mde`: the smallest mean difference detectable with 80% power at the Holm-adjusted level, taken as the
    strictest Holm step, alpha / m (m = comparisons in the set): a conservative planning figure, since a
    comparison's actual Holm level depends on where its p-value ranks. Zero-variance differences (every
    seed the same) get no p-value: `zero_variance` says so."""
    comps = [dict(name=n, **paired_differences(rows[n], rows[ref])) for n in names if n != ref and n in rows]
    m = max(1, len(comps))
    for c, padj in zip(comps, holm([c["p"] for c in comps])):
        c["p_holm"] = padj
        c["alpha_holm"] = 0.05 / m
        c["mde"] = min_detectable_effect(c["sd"], c["n"], alpha=0.05 / m)
    return comps


def compare_md(comps: list[dict], ref: str, unit: str) -> list[str]:
    lines = [
        f"| vs `{ref}` | n pairs | mean diff ({unit}) | 95% CI | p (paired t) | p (Holm) | smallest detectable "
        "(80% power, level 0.05/m) |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for c in comps:
        if c.get("zero_variance"):
            p_cells, mde = "every seed gives this difference: no test", "-"
            p_cells = f"{p_cells} | -"
        else:
            p_cells, mde = f"{fmt_p(c['p'])} | {fmt_p(c['p_holm'])}", fmt(c["mde"])
        lines.append(
            f"| {c['name']} | {c['n']} | {fmt(c['mean'])} | [{fmt(c['lo'])}, {fmt(c['hi'])}] | {p_cells} | {mde} |"
        )
    return lines


# --------------------------------------------------------------------------- policies (main, beyond)

POLICIES = ("sft", "dpr", "continued_sft", "rloo")


def policy_rows(jobs, head: str, policies=POLICIES) -> dict[str, dict[str, float]]:
    """{"<policy> <decoding>": {seed: eval value}} for sampled T=1, greedy and the decoder chosen on val
    by the `decode` stage."""
    rows = {}
    for p in policies:
        rows[f"{p} sampled T=1"] = by_seed(jobs, f"{p}/eval/sampled/{head}")
        rows[f"{p} greedy"] = by_seed(jobs, f"{p}/eval/greedy/{head}")
        rows[f"{p} best decoder (val)"] = by_seed(jobs, f"decode/{p}/best/{head}")
        rows[f"{p} last ckpt, T=1"] = by_seed(jobs, f"{p}/eval_last/sampled/{head}")
        rows[f"{p} last ckpt, greedy"] = by_seed(jobs, f"{p}/eval_last/greedy/{head}")
    return {k: v for k, v in rows.items() if v}


def chosen_decoders(jobs, p: str) -> str:
    """The decoder the `decode` stage chose on val for policy `p`, per job (from its manifest)."""
    out = []
    for j in jobs:
        man = Path(j["dir"]) / "decode" / "manifest.json"
        if man.exists():
            out.append(json.loads(man.read_text()).get("chosen", {}).get(p))
    return ", ".join(d for d in out if d) or "-"


# --------------------------------------------------------------------------- command line


def report_cli(
    report: Callable[..., None],
    study: str,
    doc: str | None,
    argv: Sequence[str] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """``python -m experiments.<study>.report <sweep dir> --out experiments/<study> [...]``: parse the
    arguments and call ``report(sweep_dir, out, **extra arguments)``."""
    p = argparse.ArgumentParser(
        prog=f"python -m experiments.{study}.report", description=(doc or "").strip().split("\n")[0]
    )
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    if extra is not None:
        extra(p)
    a = vars(p.parse_args(argv))
    report(a.pop("sweep_dir"), a.pop("out"), **a)
    return 0
