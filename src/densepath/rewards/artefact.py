"""The reward artefact: recovered dense rewards on responses, as one Parquet file plus a manifest.

Why a file: reward recovery is a stage of its own; later stages (probes, heatmaps, training
from a fixed reward) read this instead of re-scoring with the models.

Schema (``SCHEMA``), one row per response: ``prompt_ids`` list<int32>; ``response_ids``
list<int32> (incl. EOS if generated); ``rewards`` list<float32>, the dense per-token reward
aligned with ``response_ids``; ``source`` string, the policy that produced the response ("demo",
"corrupted", "expert", "sft", "dpr", ...); ``family`` string; ``sequence_reward`` float32, the
sum of ``rewards`` (accumulated in float64). Writes are atomic (:func:`atomic_write`): a crashed
run never leaves a half-written artefact under the final name.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("prompt_ids", pa.list_(pa.int32())),
        pa.field("response_ids", pa.list_(pa.int32())),
        pa.field("rewards", pa.list_(pa.float32())),
        pa.field("source", pa.string()),
        pa.field("family", pa.string()),
        pa.field("sequence_reward", pa.float32()),
    ]
)


def atomic_write(path: Path, write: Callable[[str], Any]) -> Path:
    """Run ``write(tmp_path)`` then rename over ``path``; remove the tmp file on any failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _validate(response_ids: list[list[int]], others: dict[str, list]) -> None:
    """Raise naming the column or row that is misaligned or holds a non-finite reward."""
    n = len(response_ids)
    for name, col in others.items():
        if len(col) != n:
            raise ValueError(
                f"{name} has {len(col)} rows but response_ids has {n}; pass one entry per response."
            )
    for i, (ids, rew) in enumerate(zip(response_ids, others["rewards"])):
        if len(ids) != len(rew):
            raise ValueError(
                f"row {i}: response_ids has {len(ids)} tokens but rewards has {len(rew)}; "
                "rewards must be aligned one to one with response tokens (drop padding first)."
            )
        if not all(math.isfinite(float(v)) for v in rew):
            raise ValueError(
                f"row {i}: rewards contain a non-finite value; mask padded tokens before writing."
            )


def write_reward_parquet(
    path: str | os.PathLike,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    rewards: list[list[float]],
    source: list[str],
    family: list[str],
) -> Path:
    """Validate and atomically write the reward artefact (see module docstring for the schema)."""
    others = {"prompt_ids": prompt_ids, "rewards": rewards, "source": source, "family": family}
    _validate(response_ids, others)
    columns = {
        "prompt_ids": [[int(t) for t in p] for p in prompt_ids],
        "response_ids": [[int(t) for t in r] for r in response_ids],
        "rewards": [[float(v) for v in r] for r in rewards],
        "source": [str(s) for s in source],
        "family": [str(f) for f in family],
        "sequence_reward": [float(np.sum(np.asarray(r, dtype=np.float64))) for r in rewards],
    }
    table = pa.table(columns, schema=SCHEMA)
    out = atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))
    log.info("wrote %d reward rows to %s", table.num_rows, out)
    return out


def read_reward_parquet(path: str | os.PathLike) -> pa.Table:
    """Read a reward artefact, cast to ``SCHEMA`` so callers can rely on the column types."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"reward artefact {path} does not exist; run the reward-recovery stage first."
        )
    table = pq.read_table(path)
    missing = [f.name for f in SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; it was not written by write_reward_parquet.")
    return table.select(SCHEMA.names).cast(SCHEMA)


def _json_default(obj: Any) -> Any:
    """Make paths and numpy scalars/arrays JSON-serialisable; refuse anything else loudly."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    raise TypeError(
        f"manifest value of type {type(obj).__name__} is not JSON-serialisable; convert it first."
    )


def write_manifest(path: str | os.PathLike, info: dict) -> Path:
    text = json.dumps(info, sort_keys=True, indent=2, default=_json_default) + "\n"
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
