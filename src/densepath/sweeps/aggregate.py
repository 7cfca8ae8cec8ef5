"""`densepath-aggregate`: turn a Hydra multirun directory into per-configuration means and 95% CIs.

Why: one seed of an RL fine-tune says little; "DPR beats SFT" needs the mean over seeds with an
interval, and comparisons are far tighter when paired by seed. Jobs (read by
:mod:`densepath.sweeps.jobs`) are grouped by configuration (the Hydra overrides minus the seed);
finished ones are aggregated (:mod:`densepath.sweeps.stats`) and written by
:mod:`densepath.sweeps.render` as ``<out>/jobs.csv`` (one row per job dir), ``summary.md`` (per
configuration, plus paired differences against a reference), ``summary.csv`` and ``headline.png``.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from densepath.sweeps.jobs import (
    DEFAULT_SEED_KEY,
    STATUS_FAILED,
    STATUS_FINISHED,
    STATUS_UNFINISHED,
    as_float,
    drop_common_overrides,
    find_job_dirs,
    parse_config_string,
    read_job,
    split_canonical,
)
from densepath.sweeps.render import plot_headline, render_summary_md, write_jobs_csv, write_summary_csv
from densepath.sweeps.stats import paired_differences, seed_sort_key, t_interval

log = logging.getLogger(__name__)

DEFAULT_METRIC = "eval/success"
_WHICH_DIR = "pass the Hydra multirun dir (the one holding 0/, 1/, ...)"


class AggregateError(ValueError):
    """The sweep dir cannot be aggregated (missing, empty, nothing finished, unknown reference)."""


def _values_by_seed(jobs: Sequence[dict[str, Any]], metric: str) -> dict[str, float]:
    """seed -> metric for finished jobs with a seed; duplicates of a seed are averaged."""
    acc: dict[str, list[float]] = {}
    for j in jobs:
        v = j["values"][metric]
        if j["seed"] is not None and math.isfinite(v):
            acc.setdefault(j["seed"], []).append(v)
    for seed, vs in acc.items():
        if len(vs) > 1:
            msg = "seed %s appears in %d finished jobs of one configuration; pairing uses their mean"
            log.warning(msg, seed, len(vs))
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
    out = {"n_pairs": d["n"], "seeds": d["seeds"], "diffs": [cfg_v[s] - ref_v[s] for s in d["seeds"]]}
    return {**out, "mean_diff": d["mean"], "ci95": d["ci95"], "lo": d["lo"], "hi": d["hi"]}


def _match_reference(ref: str, by_cfg: dict[str, Any]) -> str:
    """Exact match, else the unique configuration whose overrides include all of the reference's."""
    if ref in by_cfg:
        return ref
    want = set(split_canonical(ref))
    hits = [c for c in by_cfg if want and want <= set(split_canonical(c))]
    return hits[0] if len(hits) == 1 else ref


def _read_jobs(sweep_dir: Path, seed_key: str, metric: str, all_metrics: list[str]) -> list[dict[str, Any]]:
    """Every job of the sweep with its metric ``values``; raises when none is finished with `metric`."""
    if not (job_dirs := find_job_dirs(sweep_dir)):
        raise AggregateError(
            f"no job dirs under {sweep_dir}: none contains .hydra/overrides.yaml; {_WHICH_DIR}"
        )
    jobs = [read_job(d, seed_key) for d in job_dirs]
    drop_common_overrides(jobs)
    for j in jobs:
        j["values"] = {m: as_float(j["metrics"].get(m)) for m in all_metrics}

    finished = [j for j in jobs if j["status"] == STATUS_FINISHED]
    if not finished:
        n_fail = sum(j["status"] == STATUS_FAILED for j in jobs)
        raise AggregateError(
            f"no finished jobs under {sweep_dir} ({len(jobs)} job dirs found: {n_fail} failed, "
            f"{len(jobs) - n_fail} unfinished); nothing to aggregate"
        )
    if not any(math.isfinite(j["values"][metric]) for j in finished):
        keys = sorted({k for j in finished for k in j["metrics"]})
        raise AggregateError(
            f"metric {metric!r} is missing or null in all {len(finished)} finished jobs under "
            f"{sweep_dir}; pick one with --metric, available keys: {', '.join(keys) or 'none'}"
        )
    return jobs


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
        raise AggregateError(f"sweep dir {sweep_dir} does not exist or is not a directory; {_WHICH_DIR}")
    extra = [m for m in dict.fromkeys(m.strip() for m in metrics if m.strip()) if m != metric]
    all_metrics = [metric, *extra]
    jobs = _read_jobs(sweep_dir, seed_key, metric, all_metrics)

    by_cfg = {c: [j for j in jobs if j["config"] == c] for c in sorted({j["config"] for j in jobs})}
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
    summary_md = render_summary_md(stats, jobs, sweep_dir, metric, extra, ref)
    (out_dir / "summary.md").write_text(summary_md, encoding="utf-8")
    plot_headline(out_dir / "headline.png", stats, metric, ref)
    msg = "aggregated %d finished of %d jobs into %d configurations; wrote %s"
    log.info(msg, sum(j["status"] == STATUS_FINISHED for j in jobs), len(jobs), len(stats), out_dir)
    return stats


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="densepath-aggregate",
        description="Per-configuration mean and 95%% t-interval of a metric over the seeds of a Hydra "
        "multirun dir, plus paired differences against a reference configuration.",
    )
    add = p.add_argument
    add("sweep_dir", help="Hydra multirun dir (every dir below it with .hydra/overrides.yaml is a job)")
    add("--metric", default=DEFAULT_METRIC, help="metrics.json key to aggregate (default: %(default)s)")
    add("--seed-key", default=DEFAULT_SEED_KEY, help="override that names the seed (default: %(default)s)")
    add("--reference", help='configuration to pair against, e.g. "reward=log_ratio,baseline=sft_half"')
    add("--out", help="output dir (default: SWEEP_DIR/aggregate)")
    add("--metrics", default="", help="comma-separated extra metrics for the tables, e.g. sft/eval/success")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: aggregate, print summary.md to stdout; exit 2 with a message on stderr when impossible."""
    args = _build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:  # aggregate() strips and drops the empty names of --metrics
        aggregate(
            args.sweep_dir, args.metric, args.seed_key, args.reference, args.out, args.metrics.split(",")
        )
    except AggregateError as e:
        sys.stderr.write(f"densepath-aggregate: {e}\n")
        return 2
    out_dir = Path(args.out) if args.out is not None else Path(args.sweep_dir) / "aggregate"
    sys.stdout.write((out_dir / "summary.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
