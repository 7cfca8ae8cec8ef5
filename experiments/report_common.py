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


def wall_hours(jobs) -> float:
    """Summed wall-clock hours of the jobs' stages (`<stage>/time_s`), all jobs together."""
    return (
        sum(
            float(v)
            for j in jobs
            for k, v in j["metrics"].items()
            if k.count("/") == 1 and k.endswith("/time_s")
        )
        / 3600.0
    )


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
    return _holm_set(
        [dict(name=n, **paired_differences(rows[n], rows[ref])) for n in names if n != ref and n in rows]
    )


def _holm_set(comps: list[dict]) -> list[dict]:
    """Holm-adjusted p-values, the strictest Holm level alpha / m and the MDE at it, over one set."""
    m = max(1, len(comps))
    for c, padj in zip(comps, holm([c["p"] for c in comps])):
        c["p_holm"] = padj
        c["alpha_holm"] = 0.05 / m
        c["mde"] = min_detectable_effect(c["sd"], c["n"], alpha=0.05 / m)
    return comps


def compare_pairs(rows: dict[str, dict[str, float]], pairs: Sequence[tuple[str, str]]) -> list[dict]:
    """Paired differences a - b for each (a, b) in `pairs` present in `rows`, Holm-adjusted over the set,
    as :func:`compare_rows` (each entry's `name` is "a − b")."""
    return _holm_set(
        [
            dict(name=f"{a} − {b}", **paired_differences(rows[a], rows[b]))
            for a, b in pairs
            if a in rows and b in rows
        ]
    )


def test_cells(c: dict, nd: int = 3, unadjusted: bool = False) -> str:
    """The table cells of one paired comparison after its difference: `[p (paired t) |] p (Holm) | MDE`. A
    p-value over zero-variance differences is not significance: where every seed gives the same
    difference, say so and test nothing."""
    if c.get("zero_variance"):
        return "every seed gives this difference: no test | -" + (" | -" if unadjusted else "")
    ps = (f"{fmt_p(c['p'])} | " if unadjusted else "") + fmt_p(c["p_holm"])
    return f"{ps} | {fmt(c['mde'], nd)}"


def compare_md(comps: list[dict], ref: str | None, unit: str, nd: int = 3) -> list[str]:
    """The table of :func:`compare_rows` (`ref` names the reference) or :func:`compare_pairs` (ref None)."""
    lines = [
        f"| {'comparison' if ref is None else f'vs `{ref}`'} | n pairs | mean diff ({unit}) | 95% CI | p (paired t) | p (Holm) | smallest detectable "
        "(80% power, level 0.05/m) |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for c in comps:
        lines.append(
            f"| {c['name']} | {c['n']} | {fmt(c['mean'], nd)} | [{fmt(c['lo'], nd)}, {fmt(c['hi'], nd)}] | "
            f"{test_cells(c, nd, unadjusted=True)} |"
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


# --------------------------------------------------------------------------- decoders and their cost


def is_single(decoder: str) -> bool:
    return decoder == "greedy" or (decoder.startswith("T") and decoder[1:].replace(".", "", 1).isdigit())


def decoders_of(jobs, p: str, head: str) -> list[str]:
    """The `decode` stage's decoders of policy `p` with an eval `head` in some job, in first-seen order."""
    out: dict[str, None] = {}
    pre = f"decode/{p}/eval/"
    for j in jobs:
        for k in j["metrics"]:
            if k.startswith(pre) and k.endswith(f"/{head}") and k.count("/") == 4:
                out.setdefault(k[len(pre) : -len(head) - 1])
    return list(out)


def once_choice(
    jobs, p: str, head: str, higher_is_better: bool = True
) -> dict[str, tuple[str, float, float]]:
    """{seed: (decoder, eval `head`, eval cost)} of policy `p` decoded once: the single decode (greedy or a
    temperature) with the best `val` score in that seed; ties go to the cheaper on `val`, then to the first in
    the `decode` stage's order (greedy, then temperatures ascending), exactly as the stage's `choose`."""
    from densepath.stages.decode import choose

    out = {}
    for j in jobs:
        m, pre = j["metrics"], f"decode/{p}"
        decs = [d for d in decoders_of([j], p, head) if is_single(d) and f"{pre}/val/{d}/{head}" in m]
        if not decs:
            continue
        decs.sort(key=lambda d: (d != "greedy", float(d[1:]) if d != "greedy" else 0.0))  # the stage's order
        val = {d: float(m[f"{pre}/val/{d}/{head}"]) for d in decs}
        cost = {d: float(m.get(f"{pre}/val/{d}/cost", math.inf)) for d in decs}
        best = choose(val, cost, higher_is_better)
        out[str(j["seed"])] = (
            best,
            float(m[f"{pre}/eval/{best}/{head}"]),
            float(m.get(f"{pre}/eval/{best}/cost", math.nan)),
        )
    return out


def once_rows(jobs, p: str, head: str, higher_is_better: bool = True) -> dict[str, float]:
    """{seed: eval `head`} of policy `p` decoded once (:func:`once_choice`)."""
    return {s: v for s, (_, v, _) in once_choice(jobs, p, head, higher_is_better).items()}


def frontier(jobs, p: str, head: str) -> list[dict]:
    """Every decoder of policy `p` over seeds: {decoder, cost (mean eval cost per answer), stats (mean and
    95% interval over seeds of the eval `head`), per_seed}, cheapest first."""
    rows = []
    for d in decoders_of(jobs, p, head):
        vals = by_seed(jobs, f"decode/{p}/eval/{d}/{head}")
        costs = list(by_seed(jobs, f"decode/{p}/eval/{d}/cost").values())
        rows.append(
            {
                "decoder": d,
                "cost": float(np.mean(costs)) if costs else math.nan,
                "stats": summary(vals.values()),
                "per_seed": vals,
            }
        )
    return sorted(rows, key=lambda r: (r["cost"], r["decoder"]))


def cost_to_match(front: list[dict], target: float, higher_is_better: bool = True) -> dict | None:
    """The cheapest decoder of `front` whose mean eval score is at least `target` (at most, when lower is
    better): what a decoder needs, without training, to reach that score. None: no decoder reaches it."""
    sign = 1.0 if higher_is_better else -1.0
    for r in front:  # cheapest first
        if sign * (r["stats"]["mean"] - target) >= 0:
            return r
    return None


def frontier_md(
    jobs, head: str, target: str = "dpr", reference: str = "sft", others: Sequence[str] = (), unit: str = ""
) -> tuple[list[str], dict]:
    """The score-vs-inference-cost section: `reference`'s decoders (cost, eval mean ± CI) against `target`
    decoded once, the cost at which they first match it, and the share of `target`'s greedy answers
    identical to `reference`'s widest-beam answer."""
    unit = unit or head
    front = frontier(jobs, reference, head)
    chosen = once_choice(jobs, target, head)
    once = summary([v for _, v, _ in chosen.values()])
    once_cost = summary([c for _, _, c in chosen.values()])
    match = cost_to_match(front, once["mean"]) if once["n"] else None
    same = summary(by_seed(jobs, f"decode/{target}/greedy_same_as_mode").values())
    md = [
        "",
        f"## Score against inference cost: `{reference}`'s decoders vs `{target}` decoded once",
        "",
        f"Cost = token positions run through a model per answer (prompt excluded), mean over seeds of the eval "
        f"mean. `{target}` decoded once = its single decode (greedy or a temperature) best on `val` in each seed.",
        "",
        f"| decoder | cost / answer | eval {unit} (mean ± 95% CI over seeds) | ≥ `{target}` once? |",
        "|---|---:|---|---|",
    ]
    for r in front:
        ok = "yes" if once["n"] and r["stats"]["mean"] >= once["mean"] else "no"
        md.append(f"| {reference} {r['decoder']} | {fmt(r['cost'], 1)} | {fmt_ci(r['stats'])} | {ok} |")
    decs = ", ".join(d for d, _, _ in chosen.values())
    md.append(f"| **{target} once (val)**: {decs} | {fmt(once_cost['mean'], 1)} | {fmt_ci(once)} | |")
    for o in others:
        ch = once_choice(jobs, o, head)
        if ch:
            st, cost = summary([v for _, v, _ in ch.values()]), float(np.mean([c for _, _, c in ch.values()]))
            md.append(f"| {o} once (val) | {fmt(cost, 1)} | {fmt_ci(st)} | |")
    if match is None:
        best = max(front, key=lambda r: r["stats"]["mean"]) if front else None
        line = (
            f"**No decoder of `{reference}` reaches `{target}` decoded once** (the best: "
            f"{best['decoder']}, {fmt(best['stats']['mean'])} at cost {fmt(best['cost'], 1)})."
            if best
            else f"`{reference}` has no decoder rows."
        )
    else:
        ratio = match["cost"] / once_cost["mean"]
        line = (
            f"**`{reference}`'s decoders first match `{target}` decoded once at cost {fmt(match['cost'], 1)} "
            f"per answer** ({match['decoder']}: {fmt(match['stats']['mean'])} ≥ {fmt(once['mean'])}), "
            f"{fmt(ratio, 1)}× `{target}`'s cost"
            + (
                f": a decode of `{reference}` at no extra cost already scores as well, so `{target}` saves nothing "
                "at inference."
                if ratio <= 1.05
                else f": that is what `{target}` saves at inference."
            )
        )
    md += [
        "",
        line,
        "",
        f"Share of `{target}`'s greedy eval answers identical to `{reference}`'s widest-beam answer: "
        f"{fmt_ci(same)} (n = {same['n']} seeds).",
    ]
    return md, {"frontier": front, "once": once, "once_cost": once_cost, "match": match, "same_as_mode": same}


def plot_frontier(ax, jobs, head: str, policies: Sequence[str], ylabel: str = "") -> None:
    """Eval score (mean over seeds, 95% CI bars) against cost per answer (log x): every decoder of each
    policy, its single decodes filled, the rest hollow; each policy's line is its frontier, the best mean
    score at or below each cost."""
    drawn = 0
    for i, p in enumerate(policies):
        front = frontier(jobs, p, head)
        if not front:
            continue
        drawn += 1
        c = f"C{i % 10}"
        xs = [r["cost"] for r in front]
        ys = [r["stats"]["mean"] for r in front]
        err = [r["stats"]["ci95"] if math.isfinite(r["stats"]["ci95"]) else 0.0 for r in front]
        envelope = np.maximum.accumulate(ys)  # the frontier: the best mean score at or below each cost
        ax.step(xs, envelope, where="post", color=c, lw=1, alpha=0.6)
        for r, x, y, e in zip(front, xs, ys, err):
            single = is_single(r["decoder"])
            ax.errorbar(
                x,
                y,
                yerr=e,
                fmt="o" if single else "s",
                color=c,
                mfc=c if single else "white",
                capsize=2,
                ms=5,
            )
        ax.plot([], [], "o-", color=c, label=p)
    ax.set_xscale("log")
    ax.set_xlabel("inference cost per answer (token positions, log)")
    ax.set_ylabel(ylabel or head)
    ax.set_title("score vs inference cost (filled: decoded once)", fontsize=10)
    if drawn:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


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
