"""End to end: wall time per stage of a finished ``densepath`` run (the default ``make demo``).

Run: ``densepath hydra.run.dir=outputs/bench_e2e`` (about 5 minutes), then
``python -m benchmarks e2e outputs/bench_e2e [--check]``.

Reads ``<run>/metrics.json``: each stage records ``<stage>/time_s`` (the whole stage, evaluation
included) and ``<stage>/train/time_s`` (its ``trainer.fit`` only). Prints a table in pipeline order
and the sum. The target is the issue's: about 5 minutes, at most 6 (install excluded). Process start,
imports and data generation before the first stage are not inside any ``time_s``; the report says
so, and ``--overhead-s`` adds a measured figure for them if you have one.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import md_table, target_line

logger = logging.getLogger(__name__)

MAX_TOTAL_S = 360.0  # target: the default demo takes at most 6 minutes
STAGE_ORDER: tuple[str, ...] = ("sft", "recover", "dpr", "rloo", "continued_sft")


def stage_times(metrics: dict[str, float]) -> dict[str, tuple[float, float | None]]:
    """{stage: (time_s, train/time_s or None)} in pipeline order, from a run's flat metrics."""
    stages = [k.removesuffix("/time_s") for k in metrics if k.count("/") == 1 and k.endswith("/time_s")]
    order = [s for s in STAGE_ORDER if s in stages] + sorted(s for s in stages if s not in STAGE_ORDER)
    return {s: (float(metrics[f"{s}/time_s"]), metrics.get(f"{s}/train/time_s")) for s in order}


def load_metrics(run_dir: Path) -> dict[str, float]:
    """``<run_dir>/metrics.json``; a clear error when the run did not finish."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: pass the directory of a finished run, e.g. run "
            "`densepath hydra.run.dir=outputs/bench_e2e` first."
        )
    return json.loads(path.read_text())


def main(argv: Sequence[str] | None = None) -> int:
    """Print the per-stage table; with ``--check`` return 1 when the total exceeds 6 minutes."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m benchmarks e2e", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--overhead-s", type=float, default=0.0, help="start-up time outside the stages, if measured"
    )
    p.add_argument("--check", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    times = stage_times(load_metrics(args.run_dir))
    if not times:
        logger.error("%s/metrics.json has no `<stage>/time_s` keys; is it a densepath run?", args.run_dir)
        return 2
    total = sum(t for t, _ in times.values()) + args.overhead_s
    rows = [[s, t, tr if tr is not None else "", t / total] for s, (t, tr) in times.items()]
    if args.overhead_s:
        rows.append(["start-up (given)", args.overhead_s, "", args.overhead_s / total])
    rows.append(["total", total, "", 1.0])
    line, ok = target_line("demo wall time (s)", total, MAX_TOTAL_S)
    sys.stdout.write(
        f"## End to end: {args.run_dir}\n\n"
        + md_table(["stage", "time_s", "train/time_s", "share"], rows)
        + f"\n\ntotal {total / 60:.2f} min (stages only unless --overhead-s)\n{line}\n"
    )
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
