"""The job dirs of a Hydra multirun: finding them, reading them, and naming their configuration.

A job dir is any directory holding ``.hydra/overrides.yaml``. Its status is ``failed`` when it
has ``error.json`` (even when a partial ``metrics.json`` exists: metrics are flushed after every
stage, so a crash in a later stage leaves both), ``finished`` when it has ``metrics.json`` only
(and its ``DONE`` marker, in sweeps whose jobs write one), and ``unfinished`` otherwise. The
configuration of a job is its overrides minus the seed and run bookkeeping, in canonical order.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_SEED_KEY = "seed"
DEFAULT_CONFIG = "(default)"
UNREADABLE_CONFIG = "(unreadable overrides)"
# Overrides that never define a configuration: Hydra's own settings and run bookkeeping.
_IGNORED_KEYS = ("parent_run", "resume", "threads")  # bookkeeping: they do not change what a job computes
_IGNORED_PREFIXES = ("hydra.", "hydra/")

STATUS_FINISHED = "finished"
STATUS_FAILED = "failed"
STATUS_UNFINISHED = "unfinished"
STATUSES = (STATUS_FINISHED, STATUS_FAILED, STATUS_UNFINISHED)


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
    """(canonical configuration, seed or None) of one job's overrides: jobs differing only in seed or
    bookkeeping (``hydra.*``, ``parent_run``, ``resume``) get the same configuration."""
    seed, kept = None, []
    for ov in overrides:
        ov = str(ov).strip()
        key = _override_key(ov)
        if key == seed_key:
            seed = ov.split("=", 1)[1].strip() if "=" in ov else None
        elif not (key in _IGNORED_KEYS or key == "hydra" or key.startswith(_IGNORED_PREFIXES)):
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


def split_canonical(cfg: str) -> list[str]:
    """The overrides of a canonical configuration string (none for the default/unreadable ones)."""
    return [] if cfg in (DEFAULT_CONFIG, UNREADABLE_CONFIG) else parse_config_string(cfg).split(",")


def drop_common_overrides(jobs: list[dict[str, Any]]) -> None:
    """A configuration is named by the overrides that VARY across the sweep: those shared by every
    job (debug=tiny, data paths, ...) say nothing about which arm a job belongs to."""
    parts = [set(split_canonical(j["config"])) for j in jobs if j["config"] != UNREADABLE_CONFIG]
    if len(parts) < 2:
        return
    common = set.intersection(*parts)
    for j in jobs:
        if j["config"] != UNREADABLE_CONFIG:
            j["config"] = canonical_config([o for o in split_canonical(j["config"]) if o not in common])


def as_float(v: Any) -> float:
    """A metric value as float; NaN for null, non-numbers and missing keys."""
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _error_message(err: Any) -> str:
    """The first line of an error.json's message (a bare value counts as the message)."""
    if isinstance(err, dict):
        # The traceback's last line is the exception; its first is the useless "Traceback (...)".
        tb_lines = str(err.get("traceback") or "").strip().splitlines()
        err = err.get("error") or (tb_lines[-1] if tb_lines else "")
    lines = str(err).strip().splitlines()
    return lines[0].strip() if lines else ""


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
            metrics = json.loads(met_path.read_text(encoding="utf-8"))
            if not isinstance(metrics, dict):
                raise ValueError(f"expected a JSON object, got {type(metrics).__name__}")
            job["metrics"] = metrics
        except (OSError, ValueError) as e:
            job["status"], job["error"] = STATUS_FAILED, f"unreadable metrics.json: {e}"
            return job
    if err_path.is_file():
        job["status"] = STATUS_FAILED
        try:
            err = json.loads(err_path.read_text(encoding="utf-8"))
            job["error"] = _error_message(err) or "error.json without an error message"
        except (OSError, ValueError) as e:
            job["error"] = f"unreadable error.json: {e}"
    elif met_path.is_file() and ((job_dir / "DONE").is_file() or not any(job_dir.parent.glob("*/DONE"))):
        job["status"] = STATUS_FINISHED  # DONE: see the module docstring
    else:
        job["status"] = STATUS_UNFINISHED
    return job
