"""`densepath-aggregate`: turn a Hydra multirun directory into per-configuration means and 95% CIs.

Why: a single seed of an RL fine-tune says little; the claim "DPR beats SFT" needs the mean over
seeds with an interval, and comparisons between configurations are far tighter when paired by
seed (same data order and init). This module reads every job dir under a sweep, groups jobs by
their configuration (the Hydra overrides minus the seed), and writes

    <out>/jobs.csv       one row per job dir: configuration, seed, status, error, metric(s)
    <out>/summary.md     per-configuration table (n, seeds, mean, 95% t-interval, failed counts)
                         and, with a reference configuration, a table of paired differences
    <out>/summary.csv    the per-configuration numbers, machine-readable
    <out>/headline.png   the metric per configuration with 95% CI error bars

A job dir is any directory holding ``.hydra/overrides.yaml``. Its status is ``failed`` when it
has ``error.json`` (even when a partial ``metrics.json`` exists: metrics are flushed after every
stage, so a crash in a later stage leaves both), ``finished`` when it has ``metrics.json`` only,
and ``unfinished`` otherwise. Only finished jobs are aggregated.

The general statistics of seed sweeps live here too (t-intervals, paired differences with a
paired-t p-value, Holm's correction, the smallest detectable paired effect), on ``scipy.stats``;
the study reports under ``experiments/`` import them.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_METRIC = "eval/success"
DEFAULT_SEED_KEY = "seed"
CI_LEVEL = 0.95
DEFAULT_CONFIG = "(default)"
UNREADABLE_CONFIG = "(unreadable overrides)"
# Overrides that never define a configuration: Hydra's own settings and run bookkeeping.
_IGNORED_KEYS = ("parent_run", "resume")
_IGNORED_PREFIXES = ("hydra.", "hydra/")

STATUS_FINISHED = "finished"
STATUS_FAILED = "failed"
STATUS_UNFINISHED = "unfinished"


class AggregateError(ValueError):
    """The sweep dir cannot be aggregated (missing, empty, nothing finished, unknown reference)."""


# ----------------------------------------------------------------------------- statistics (general)


def student_t_ppf(p: float, df: float) -> float:
    """Quantile of Student's t: the t with P(T <= t) = p (``scipy.stats.t.ppf``).

    The arguments are checked first: scipy answers NaN or +-inf for p or df out of range, which
    would pass silently into a table.
    """
    from scipy import stats  # imported here so that `--help` stays fast

    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile level p must be in (0, 1), got p={p}")
    if df <= 0:
        raise ValueError(f"Student t needs df > 0 (df = n - 1 for n >= 2 values), got df={df}")
    return float(stats.t.ppf(p, df))


def t_interval(values: Sequence[float], level: float = CI_LEVEL) -> tuple[float, float]:
    """(mean, half-width) of the two-sided Student-t interval for the mean of `values`.

    The half-width is t_{(1+level)/2, n-1} * sd(ddof=1) / sqrt(n); it is NaN for n < 2 (one
    seed gives no spread estimate) and the mean is NaN for n = 0.
    """
    x = np.asarray(values, dtype=np.float64)  # (n,)
    n = x.size
    if n == 0:
        return math.nan, math.nan
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan
    sd = float(x.std(ddof=1))
    return mean, student_t_ppf(0.5 * (1.0 + level), n - 1) * sd / math.sqrt(n)


def seed_sort_key(seed: str | None) -> tuple[int, float, str]:
    """Seeds sort numerically when they are numbers, else as strings; a missing seed goes last."""
    if seed is None:
        return (2, 0.0, "")
    try:
        return (0, float(seed), seed)
    except ValueError:
        return (1, 0.0, seed)


def paired_differences(
    a: Mapping[str, float], b: Mapping[str, float], level: float = CI_LEVEL
) -> dict[str, Any]:
    """a - b over the seeds present in both: n, seeds, mean, t-interval (ci95 half-width, lo, hi),
    the two-sided paired-t p-value and the sd of the differences.

    Pairing by seed removes the seed-to-seed variance both runs share, which is usually most of it.
    Seeds whose value is not finite on either side are listed in ``seeds`` but not counted in n.
    """
    seeds = sorted(set(a) & set(b), key=seed_sort_key)
    d = np.array([a[s] - b[s] for s in seeds if math.isfinite(a[s]) and math.isfinite(b[s])])  # (n,)
    n = len(d)
    mean, half = t_interval(d, level)
    out = {"n": n, "seeds": seeds, "mean": mean, "ci95": half, "lo": mean - half, "hi": mean + half}
    if n < 2:
        return {**out, "p": math.nan, "sd": math.nan}
    from scipy import stats

    sd = float(d.std(ddof=1))
    if sd == 0:
        p = 0.0 if mean != 0 else 1.0
    else:
        p = min(1.0, 2.0 * float(stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1)))
    return {**out, "p": p, "sd": sd}


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


# ----------------------------------------------------------------------------- job discovery


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Every directory under `sweep_dir` (itself included) holding ``.hydra/overrides.yaml``."""
    found = []
    for root, dirs, _files in os.walk(sweep_dir):
        if os.path.isfile(os.path.join(root, ".hydra", "overrides.yaml")):
            found.append(Path(root))
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # never descend into .hydra, .git, ...
    return sorted(found, key=lambda p: _natural_key(p.relative_to(sweep_dir).as_posix()))


def _natural_key(s: str) -> list[Any]:
    """Sort key so that job dirs 2 < 10 (Hydra numbers jobs without zero padding)."""
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", s) if tok]


def _override_key(override: str) -> str:
    """The key of `+a.b=1` / `~a.b` / `a.b=1` without Hydra's add/delete prefixes."""
    return override.split("=", 1)[0].lstrip("+~").strip()


def split_overrides(overrides: Sequence[str], seed_key: str) -> tuple[str, str | None]:
    """(canonical configuration string, seed value or None) for one job's override list.

    The configuration drops the seed and bookkeeping overrides (``hydra.*``, ``parent_run``,
    ``resume``), so that jobs differing only in seed (or run plumbing) group together.
    """
    seed = None
    kept = []
    for ov in overrides:
        ov = str(ov).strip()
        key = _override_key(ov)
        if key == seed_key:
            seed = ov.split("=", 1)[1].strip() if "=" in ov else None
        elif key in _IGNORED_KEYS or key == "hydra" or key.startswith(_IGNORED_PREFIXES):
            continue
        else:
            kept.append(ov)
    return canonical_config(kept), seed


def canonical_config(overrides: Sequence[str]) -> str:
    """Overrides sorted by key and joined with commas; ``(default)`` when there are none."""
    items = sorted((str(o).strip() for o in overrides if str(o).strip()), key=lambda o: (_override_key(o), o))
    return ",".join(items) if items else DEFAULT_CONFIG


def parse_config_string(spec: str, seed_key: str = DEFAULT_SEED_KEY) -> str:
    """Canonical form of a user-written configuration like ``reward=log_ratio,baseline=sft_half``.

    Splits on commas outside brackets/quotes (so ``a=[1,2]`` stays whole), drops the seed key,
    and sorts, so the order the user typed does not matter.
    """
    spec = spec.strip()
    if spec in ("", DEFAULT_CONFIG):
        return DEFAULT_CONFIG
    parts, depth, quote, cur = [], 0, "", []
    for ch in spec:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return split_overrides([p for p in parts if p.strip()], seed_key)[0]


def _first_line(text: Any) -> str:
    lines = str(text).strip().splitlines()
    return lines[0].strip() if lines else ""


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _as_float(v: Any) -> float:
    """A metric value as float; NaN for null, non-numbers and missing keys."""
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _has_done_markers(sweep_dir: Path) -> bool:
    """Sweeps written by the densepath CLI mark finished jobs with a DONE file."""
    return any(sweep_dir.glob("*/DONE"))


def _split_canonical(cfg: str) -> list[str]:
    return [] if cfg in (DEFAULT_CONFIG, UNREADABLE_CONFIG) else parse_config_string(cfg).split(",")


def _drop_common_overrides(jobs: list[dict[str, Any]]) -> None:
    """A configuration is named by the overrides that VARY across the sweep: those shared by every
    job (debug=tiny, data paths, ...) say nothing about which arm a job belongs to."""
    parts = [set(_split_canonical(j["config"])) for j in jobs if j["config"] != UNREADABLE_CONFIG]
    if len(parts) < 2:
        return
    common = set.intersection(*parts)
    for j in jobs:
        if j["config"] != UNREADABLE_CONFIG:
            j["config"] = canonical_config([o for o in _split_canonical(j["config"]) if o not in common])


def _match_reference(ref: str, by_cfg: dict[str, Any]) -> str:
    """Exact match, else the unique configuration whose overrides include all of the reference's."""
    if ref in by_cfg:
        return ref
    want = set(_split_canonical(ref))
    hits = [c for c in by_cfg if want and want <= set(_split_canonical(c))]
    return hits[0] if len(hits) == 1 else ref


def read_job(job_dir: Path, seed_key: str) -> dict[str, Any]:
    """One job's configuration, seed, status, first error line and raw metrics dict."""
    import yaml  # PyYAML ships with omegaconf; imported here so `--help` stays fast

    job: dict[str, Any] = {"dir": job_dir, "error": "", "metrics": {}}
    ov_path = job_dir / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(ov_path.read_text(encoding="utf-8")) or []
        if not isinstance(overrides, list):
            raise ValueError(f"expected a YAML list of override strings, got {type(overrides).__name__}")
        job["config"], job["seed"] = split_overrides(overrides, seed_key)
    except (OSError, ValueError, yaml.YAMLError) as e:
        log.warning("cannot read %s (%s); grouping the job under %s", ov_path, e, UNREADABLE_CONFIG)
        job["config"], job["seed"] = UNREADABLE_CONFIG, None

    err_path, met_path = job_dir / "error.json", job_dir / "metrics.json"
    if met_path.is_file():
        try:
            metrics = _read_json(met_path)
            if not isinstance(metrics, dict):
                raise ValueError(f"expected a JSON object, got {type(metrics).__name__}")
            job["metrics"] = metrics
        except (OSError, ValueError) as e:
            job["status"], job["error"] = STATUS_FAILED, f"unreadable metrics.json: {e}"
            return job
    if err_path.is_file():
        job["status"] = STATUS_FAILED
        try:
            err = _read_json(err_path)
            if isinstance(err, dict):
                # The traceback's last line is the exception; its first is the useless "Traceback (...)".
                tb_lines = str(err.get("traceback") or "").strip().splitlines()
                msg = err.get("error") or (tb_lines[-1] if tb_lines else "")
            else:
                msg = err
            job["error"] = _first_line(msg) or "error.json without an error message"
        except (OSError, ValueError) as e:
            job["error"] = f"unreadable error.json: {e}"
    elif met_path.is_file() and ((job_dir / "DONE").is_file() or not _has_done_markers(job_dir.parent)):
        # densepath writes DONE after the last stage; metrics.json alone may be a partial run
        job["status"] = STATUS_FINISHED
    else:
        job["status"] = STATUS_UNFINISHED
    return job


# ----------------------------------------------------------------------------- per-configuration statistics


def _values_by_seed(jobs: Sequence[dict[str, Any]], metric: str) -> dict[str, float]:
    """seed -> metric for finished jobs with a seed; duplicates of a seed are averaged."""
    acc: dict[str, list[float]] = {}
    for j in jobs:
        v = j["values"][metric]
        if j["seed"] is not None and math.isfinite(v):
            acc.setdefault(j["seed"], []).append(v)
    for seed, vs in acc.items():
        if len(vs) > 1:
            log.warning(
                "seed %s appears in %d finished jobs of one configuration; pairing uses their mean",
                seed,
                len(vs),
            )
    return {s: float(np.mean(vs)) for s, vs in acc.items()}


def config_stats(jobs: Sequence[dict[str, Any]], metric: str, extra: Sequence[str]) -> dict[str, Any]:
    """Per-configuration numbers: n, seeds, mean, 95% CI and status counts."""
    finished = [j for j in jobs if j["status"] == STATUS_FINISHED]
    with_value = [j for j in finished if math.isfinite(j["values"][metric])]
    values = [j["values"][metric] for j in with_value]
    mean, half = t_interval(values)
    stats: dict[str, Any] = {
        "n": len(values),
        "seeds": sorted((j["seed"] for j in with_value if j["seed"] is not None), key=seed_sort_key),
        "values": values,
        "mean": mean,
        "ci95": half,
        "lo": mean - half,
        "hi": mean + half,
        "finished": len(finished),
        "missing": len(finished) - len(with_value),
        "failed": sum(j["status"] == STATUS_FAILED for j in jobs),
        "unfinished": sum(j["status"] == STATUS_UNFINISHED for j in jobs),
        "errors": [j["error"] for j in jobs if j["status"] == STATUS_FAILED],
        "extra": {},
        "paired": None,
    }
    for m in extra:
        vals = [j["values"][m] for j in finished if math.isfinite(j["values"][m])]
        m_mean, m_half = t_interval(vals)
        stats["extra"][m] = {"n": len(vals), "mean": m_mean, "ci95": m_half}
    return stats


def paired_stats(
    cfg_jobs: Sequence[dict[str, Any]], ref_jobs: Sequence[dict[str, Any]], metric: str
) -> dict[str, Any]:
    """Mean and t-interval of (config - reference) over the seeds both have a finished value for."""
    cfg_v, ref_v = _values_by_seed(cfg_jobs, metric), _values_by_seed(ref_jobs, metric)
    d = paired_differences(cfg_v, ref_v)
    return {
        "n_pairs": d["n"],
        "seeds": d["seeds"],
        "diffs": [cfg_v[s] - ref_v[s] for s in d["seeds"]],
        "mean_diff": d["mean"],
        "ci95": d["ci95"],
        "lo": d["lo"],
        "hi": d["hi"],
    }


# ----------------------------------------------------------------------------- writers


def _fmt(x: float) -> str:
    """Compact human number: fixed 4 decimals in the usual range, else 4 significant digits."""
    if not math.isfinite(x):
        return "n/a"
    if x == 0 or 1e-3 <= abs(x) < 1e4:
        return f"{x:.4f}"
    return f"{x:.4g}"


def _csv_num(x: float) -> str:
    return "" if not math.isfinite(x) else repr(float(x))


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def write_jobs_csv(
    path: Path, jobs: Sequence[dict[str, Any]], sweep_dir: Path, metrics: Sequence[str]
) -> None:
    """One row per job dir, failed and unfinished ones included, so nothing silently disappears."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["job_dir", "configuration", "seed", "status", "error", *metrics])
        for j in jobs:
            rel = j["dir"].relative_to(sweep_dir).as_posix()
            w.writerow(
                [
                    rel,
                    j["config"],
                    j["seed"] or "",
                    j["status"],
                    j["error"],
                    *(_csv_num(j["values"][m]) for m in metrics),
                ]
            )


def write_summary_csv(
    path: Path, stats: dict[str, dict[str, Any]], metric: str, extra: Sequence[str]
) -> None:
    """The per-configuration numbers at full precision (empty cell = not defined)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        header = [
            "configuration",
            "metric",
            "n",
            "seeds",
            "mean",
            "ci95_halfwidth",
            "ci_lo",
            "ci_hi",
            "failed",
            "unfinished",
            "missing_metric",
        ]
        header += [f"{m}_{s}" for m in extra for s in ("n", "mean", "ci95_halfwidth")]
        header += ["paired_n", "paired_mean_diff", "paired_ci95_halfwidth", "paired_lo", "paired_hi"]
        w.writerow(header)
        for cfg, s in stats.items():
            row = [
                cfg,
                metric,
                s["n"],
                " ".join(s["seeds"]),
                _csv_num(s["mean"]),
                _csv_num(s["ci95"]),
                _csv_num(s["lo"]),
                _csv_num(s["hi"]),
                s["failed"],
                s["unfinished"],
                s["missing"],
            ]
            for m in extra:
                e = s["extra"][m]
                row += [e["n"], _csv_num(e["mean"]), _csv_num(e["ci95"])]
            p = s["paired"]
            row += (
                [
                    p["n_pairs"],
                    _csv_num(p["mean_diff"]),
                    _csv_num(p["ci95"]),
                    _csv_num(p["lo"]),
                    _csv_num(p["hi"]),
                ]
                if p
                else ["", "", "", "", ""]
            )
            w.writerow(row)


def render_summary_md(
    stats: dict[str, dict[str, Any]],
    jobs: Sequence[dict[str, Any]],
    sweep_dir: Path,
    metric: str,
    extra: Sequence[str],
    reference: str | None,
) -> str:
    """Markdown: per-configuration table, failed jobs with their errors, paired-difference table."""
    counts = {
        st: sum(j["status"] == st for j in jobs) for st in (STATUS_FINISHED, STATUS_FAILED, STATUS_UNFINISHED)
    }
    lines = [
        f"# Sweep summary: `{metric}`",
        "",
        f"Sweep: `{sweep_dir}`: {len(jobs)} job dirs, {counts[STATUS_FINISHED]} finished, "
        f"{counts[STATUS_FAILED]} failed, {counts[STATUS_UNFINISHED]} unfinished. "
        f"95% CI = mean ± t(0.975, n-1)·sd/√n over seeds.",
        "",
        "| configuration | n | seeds | mean | ±95% CI | 95% CI | failed | unfinished |"
        + "".join(f" {_md_cell(m)} |" for m in extra),
        "|---|---:|---|---:|---:|---|---:|---:|" + "---:|" * len(extra),
    ]
    for cfg, s in stats.items():
        ci = f"[{_fmt(s['lo'])}, {_fmt(s['hi'])}]" if math.isfinite(s["ci95"]) else "n/a"
        cells = [
            f"`{_md_cell(cfg)}`",
            str(s["n"]),
            ", ".join(s["seeds"]) or "-",
            _fmt(s["mean"]),
            _fmt(s["ci95"]),
            ci,
            str(s["failed"]),
            str(s["unfinished"]),
        ]
        for m in extra:
            e = s["extra"][m]
            cells.append(_fmt(e["mean"]) + (f" ± {_fmt(e['ci95'])}" if math.isfinite(e["ci95"]) else ""))
        lines.append("| " + " | ".join(cells) + " |")
    no_metric = {cfg: s["missing"] for cfg, s in stats.items() if s["missing"]}
    if no_metric:
        lines += [
            "",
            "Finished jobs without a finite `"
            + metric
            + "` (not in n): "
            + "; ".join(f"`{_md_cell(c)}`: {k}" for c, k in no_metric.items()),
        ]

    failed = [j for j in jobs if j["status"] == STATUS_FAILED]
    if failed:
        lines += ["", "## Failed jobs", "", "| job dir | configuration | seed | error |", "|---|---|---|---|"]
        for j in failed:
            rel = j["dir"].relative_to(sweep_dir).as_posix()
            lines.append(
                f"| `{_md_cell(rel)}` | `{_md_cell(j['config'])}` | {j['seed'] or '-'} | "
                f"{_md_cell(j['error'])} |"
            )

    if reference is not None:
        lines += [
            "",
            f"## Paired differences vs reference `{_md_cell(reference)}`",
            "",
            "Difference = configuration − reference, per seed present in both; 95% t-interval of the "
            "paired differences (df = pairs − 1).",
            "",
            "| configuration | n pairs | seeds | mean diff | ±95% CI | 95% CI | note |",
            "|---|---:|---|---:|---:|---|---|",
        ]
        for cfg, s in stats.items():
            p = s["paired"]
            if cfg == reference or p is None:
                continue
            if p["n_pairs"] == 0:
                note = "shares no seed with the reference"
            elif p["n_pairs"] == 1:
                note = "one pair: no interval"
            else:
                lo_pos, hi_neg = p["lo"] > 0, p["hi"] < 0
                note = "CI excludes 0 (better)" if lo_pos else "CI excludes 0 (worse)" if hi_neg else ""
            ci = f"[{_fmt(p['lo'])}, {_fmt(p['hi'])}]" if math.isfinite(p["ci95"]) else "n/a"
            lines.append(
                f"| `{_md_cell(cfg)}` | {p['n_pairs']} | {', '.join(p['seeds']) or '-'} | "
                f"{_fmt(p['mean_diff'])} | {_fmt(p['ci95'])} | {ci} | {note} |"
            )
    return "\n".join(lines) + "\n"


def plot_headline(path: Path, stats: dict[str, dict[str, Any]], metric: str, reference: str | None) -> None:
    """Mean per configuration with 95% CI error bars, and each seed as a faint dot.

    Uses the object-oriented Figure + Agg canvas, so it neither needs a display nor changes the
    pyplot backend of a process that imported us.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cfgs = [c for c, s in stats.items() if s["n"] > 0]
    fig = Figure(figsize=(max(4.0, 0.9 * len(cfgs) + 2.0), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = np.arange(len(cfgs))  # (C,)
    means = np.array([stats[c]["mean"] for c in cfgs], dtype=np.float64)  # (C,)
    halves = np.array([stats[c]["ci95"] for c in cfgs], dtype=np.float64)  # (C,)
    colors = ["tab:orange" if c == reference else "tab:blue" for c in cfgs]
    for i, c in enumerate(cfgs):
        vals = stats[c]["values"]
        ax.scatter(np.full(len(vals), xs[i]) + 0.12, vals, s=12, color="grey", alpha=0.6, zorder=2)
    ax.errorbar(
        xs,
        means,
        yerr=np.where(np.isfinite(halves), halves, 0.0),
        fmt="none",
        ecolor="black",
        capsize=5,
        zorder=3,
    )
    ax.scatter(xs, means, s=45, c=colors, zorder=4)
    ax.set_xticks(xs)
    ax.set_xticklabels(
        [c if len(c) <= 60 else c[:57] + "..." for c in cfgs], rotation=30, ha="right", fontsize=8
    )
    ax.set_xlim(-0.6, len(cfgs) - 0.4)
    ax.set_ylabel(metric)
    ax.set_title(metric)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ----------------------------------------------------------------------------- entry points


def aggregate(
    sweep_dir: str | Path,
    metric: str = DEFAULT_METRIC,
    seed_key: str = DEFAULT_SEED_KEY,
    reference: str | None = None,
    out: str | Path | None = None,
    metrics: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """Aggregate a Hydra multirun dir; write jobs.csv, summary.md/.csv, headline.png under `out`.

    Returns ``{configuration: stats}`` where stats has n, seeds, values, mean, ci95 (half-width),
    lo, hi, failed, unfinished, missing, errors, extra ({metric: {n, mean, ci95}}) and paired
    (``None`` without a reference; else n_pairs, seeds, diffs, mean_diff, ci95, lo, hi).
    Raises AggregateError when there is nothing to aggregate or the reference is unknown.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise AggregateError(
            f"sweep dir {sweep_dir} does not exist or is not a directory; "
            "pass the Hydra multirun dir (the one holding 0/, 1/, ...)"
        )
    extra = [m for m in dict.fromkeys(m.strip() for m in metrics if m.strip()) if m != metric]
    all_metrics = [metric, *extra]
    job_dirs = find_job_dirs(sweep_dir)
    if not job_dirs:
        raise AggregateError(
            f"no job dirs under {sweep_dir}: none contains .hydra/overrides.yaml; "
            "pass the Hydra multirun dir (the one holding 0/, 1/, ...)"
        )
    jobs = [read_job(d, seed_key) for d in job_dirs]
    _drop_common_overrides(jobs)
    for j in jobs:
        j["values"] = {m: _as_float(j["metrics"].get(m)) for m in all_metrics}

    n_fin = sum(j["status"] == STATUS_FINISHED for j in jobs)
    n_fail = sum(j["status"] == STATUS_FAILED for j in jobs)
    n_unf = sum(j["status"] == STATUS_UNFINISHED for j in jobs)
    if n_fin == 0:
        raise AggregateError(
            f"no finished jobs under {sweep_dir} ({len(jobs)} job dirs found: {n_fail} failed, "
            f"{n_unf} unfinished); nothing to aggregate"
        )
    if not any(math.isfinite(j["values"][metric]) for j in jobs if j["status"] == STATUS_FINISHED):
        keys = sorted({k for j in jobs if j["status"] == STATUS_FINISHED for k in j["metrics"]})
        raise AggregateError(
            f"metric {metric!r} is missing or null in all {n_fin} finished jobs under "
            f"{sweep_dir}; pick one with --metric, available keys: {', '.join(keys) or 'none'}"
        )

    by_cfg: dict[str, list[dict[str, Any]]] = {}
    for j in jobs:
        by_cfg.setdefault(j["config"], []).append(j)
    by_cfg = dict(sorted(by_cfg.items()))
    stats = {cfg: config_stats(js, metric, extra) for cfg, js in by_cfg.items()}

    ref = None
    if reference is not None:
        ref = _match_reference(parse_config_string(reference, seed_key), by_cfg)
        if ref not in by_cfg:
            raise AggregateError(
                f"--reference {reference!r} (canonical {ref!r}) matches no configuration; "
                f"choose one of: {'; '.join(by_cfg)}"
            )
        for cfg, js in by_cfg.items():
            if cfg != ref:
                stats[cfg]["paired"] = paired_stats(js, by_cfg[ref], metric)

    out_dir = Path(out) if out is not None else sweep_dir / "aggregate"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jobs_csv(out_dir / "jobs.csv", jobs, sweep_dir, all_metrics)
    write_summary_csv(out_dir / "summary.csv", stats, metric, extra)
    (out_dir / "summary.md").write_text(
        render_summary_md(stats, jobs, sweep_dir, metric, extra, ref), encoding="utf-8"
    )
    plot_headline(out_dir / "headline.png", stats, metric, ref)
    log.info(
        "aggregated %d finished of %d jobs into %d configurations; wrote %s",
        n_fin,
        len(jobs),
        len(stats),
        out_dir,
    )
    return stats


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="densepath-aggregate",
        description="Per-configuration mean and 95%% t-interval of a metric over the seeds of a Hydra "
        "multirun dir, plus paired differences against a reference configuration.",
    )
    p.add_argument(
        "sweep_dir", help="Hydra multirun dir (every dir below it with .hydra/overrides.yaml is a job)"
    )
    p.add_argument(
        "--metric", default=DEFAULT_METRIC, help="metrics.json key to aggregate (default: %(default)s)"
    )
    p.add_argument(
        "--seed-key", default=DEFAULT_SEED_KEY, help="override that names the seed (default: %(default)s)"
    )
    p.add_argument(
        "--reference",
        default=None,
        help='configuration to pair against, e.g. "reward=log_ratio,baseline=sft_half"',
    )
    p.add_argument("--out", default=None, help="output dir (default: SWEEP_DIR/aggregate)")
    p.add_argument(
        "--metrics", default="", help="comma-separated extra metrics for the tables, e.g. sft/eval/success"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: aggregate, print summary.md to stdout; exit 2 with a message on stderr when impossible."""
    args = _build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    extra = [m for m in args.metrics.split(",") if m.strip()]
    try:
        aggregate(
            args.sweep_dir,
            metric=args.metric,
            seed_key=args.seed_key,
            reference=args.reference,
            out=args.out,
            metrics=extra,
        )
    except AggregateError as e:
        sys.stderr.write(f"densepath-aggregate: {e}\n")
        return 2
    out_dir = Path(args.out) if args.out is not None else Path(args.sweep_dir) / "aggregate"
    sys.stdout.write((out_dir / "summary.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
