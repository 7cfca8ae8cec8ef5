"""The `data=jsonl` and `data=hf` options: plain chat demonstrations without a verifier.

Rows are conversations whose LAST assistant turn is the demonstration; everything before it is the
prompt (`meta["messages"]`). Splits are carved deterministically, disjoint by prompt conversation.
Every validation error names the source (file + line, or dataset + row + column) and the fix.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from densepath.data.sources import _cache_dir
from densepath.data.task import Task
from densepath.models.tokenizer import train_bpe_tokenizer

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
SPLITS = ("sft", "rl", "val", "eval")
ROW_HINT = 'each row needs "messages" or "prompt"+"response"'


def _check_messages(value: Any, where: str, col: str) -> list[dict]:
    """A well-formed conversation ending with a non-empty assistant answer, or a named error."""
    if not isinstance(value, list) or not value:
        raise ValueError(
            f'{where}: "{col}" must be a non-empty list of {{"role", "content"}} objects, '
            f"got {type(value).__name__}"
        )
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            raise ValueError(
                f'{where}: "{col}"[{j}] must be an object with "role" and "content", got {type(m).__name__}'
            )
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f'{where}: "{col}"[{j}].role is {role!r}; use one of {list(ROLES)}')
        if not isinstance(content, str):
            raise ValueError(f'{where}: "{col}"[{j}].content must be a string, got {type(content).__name__}')
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "assistant":
        raise ValueError(
            f'{where}: the last message of "{col}" is from {out[-1]["role"]!r}; the last message must be '
            "the assistant's answer (drop trailing turns or append the answer)"
        )
    if not out[-1]["content"].strip():
        raise ValueError(
            f'{where}: the assistant answer is empty (last message of "{col}"); drop the row or fill in the answer'
        )
    if len(out) == 1:
        raise ValueError(
            f'{where}: "{col}" holds only the assistant answer, so the prompt is empty; add the user turn before it'
        )
    return out


def _check_str(obj: dict, where: str, col: str, what: str) -> str:
    if not isinstance(value := obj.get(col), str):
        raise ValueError(f'{where}: "{col}" must be a string, got {type(value).__name__}')
    if not value.strip():
        raise ValueError(f'{where}: {what} is empty ("{col}"); drop the row or fill in {what}')
    return value


def parse_record(obj: Any, where: str, columns: dict[str, str] | None = None) -> dict:
    """One raw record -> a task row `{"family", "prompt", "response", "meta": {"messages", "source"}}`.

    `columns` maps the logical fields (`messages`, or `prompt` + `response`; optional `family`) to the
    record's keys; None picks the style from the keys present (the JSONL convention).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}; {ROW_HINT}")
    if columns is None:
        pair = "prompt" in obj or "response" in obj
        if "messages" in obj and pair:
            raise ValueError(f'{where}: has both "messages" and "prompt"/"response"; keep one style per row')
        keys = ("prompt", "response") if pair else ("messages",)
        if missing := [k for k in keys if k not in obj]:
            hint = "" if pair else f" (keys found: {sorted(obj)})"
            raise ValueError(f'{where}: "{missing[0]}" is missing; {ROW_HINT}{hint}')
        columns = {k: k for k in (*keys, "family")}
    if "messages" in columns:
        conv = _check_messages(obj.get(columns["messages"]), where, columns["messages"])
        prompt_msgs, response = conv[:-1], conv[-1]["content"]
    else:
        prompt_msgs = [{"role": "user", "content": _check_str(obj, where, columns["prompt"], "the prompt")}]
        response = _check_str(obj, where, columns["response"], "the assistant answer")
    fam_col = columns.get("family")
    family = obj.get(fam_col) if fam_col else None
    family = "chat" if family is None else family
    if not isinstance(family, str) or not family:
        raise ValueError(f'{where}: "{fam_col}" must be a non-empty string, got {family!r}')
    users = [m["content"] for m in prompt_msgs if m["role"] == "user"]
    return {
        "family": family,
        "prompt": users[-1] if users else prompt_msgs[-1]["content"],  # for display only
        "response": response,
        "meta": {"messages": prompt_msgs, "source": where},
    }


def _decode_utf8(raw: bytes, name: str) -> str:
    """Decode, naming the first bad byte: an encoding problem must not surface as a JSON error."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{name} is not valid UTF-8: byte offset {e.start} (line {line}) is {raw[e.start : e.start + 1]!r} "
            f"({e.reason}); re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.jsonl > out.jsonl`"
        ) from None


def read_jsonl(path: str | Path) -> list[dict]:
    """Validate a chat JSONL file line by line and return its task rows (file order, blank lines skipped)."""
    p, name = Path(path).expanduser(), f"data.path={path}"
    if not p.exists():
        raise FileNotFoundError(
            f"{name} does not exist (relative paths resolve against {Path.cwd()}); "
            "pass data.path=/absolute/path/to/file.jsonl"
        )
    if p.is_dir():
        raise IsADirectoryError(
            f"{name} is a directory; pass the .jsonl file itself (or use data=hf for a saved dataset)"
        )
    raw = p.read_bytes()
    if not raw:
        raise ValueError(f"{name} is empty; it needs one JSON object per line ({ROW_HINT})")
    text = _decode_utf8(raw, name)
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name} line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{where}: invalid JSON ({e.msg} at column {e.colno}); write one JSON object per line"
            ) from None
        rows.append(parse_record(obj, where))
    if not rows:
        raise ValueError(
            f"{name} has no rows (only blank lines); it needs one JSON object per line ({ROW_HINT})"
        )
    return rows


def split_counts(n_groups: int, fractions: dict[str, float], source: str) -> dict[str, int]:
    """Prompt groups per split: each held-out split gets round(fraction * n) but at least 1; sft the rest."""
    for k, f in fractions.items():
        if not 0.0 < float(f) < 1.0:
            raise ValueError(f"data.{k}_fraction={f} must be in (0, 1): every split needs at least one row")
    if sum(fractions.values()) >= 1.0:
        raise ValueError(
            f"data.val_fraction + data.eval_fraction + data.rl_fraction = {sum(fractions.values()):.3f} leaves "
            "nothing for sft; lower them so they sum below 1"
        )
    counts = {k: max(1, int(round(float(f) * n_groups))) for k, f in fractions.items()}
    counts["sft"] = n_groups - sum(counts.values())
    if counts["sft"] < 1:
        raise ValueError(
            f"{source} has {n_groups} distinct prompt(s), too few for non-empty sft/rl/val/eval splits "
            f"(need at least {sum(counts.values()) - counts['sft'] + 1}); add rows or lower the data.*_fraction values"
        )
    return counts


def carve_splits(
    rows: list[dict], seed: int, fractions: dict[str, float], source: str, sizes: dict | None = None
) -> dict[str, list[dict]]:
    """Deterministic splits, disjoint by prompt conversation (all rows of one prompt share a split).

    `fractions` holds the val/eval/rl fractions; `sizes` optionally caps each split (e.g. the debug
    presets); caps apply after carving so the held-out prompts never depend on the cap.
    """
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(json.dumps(r["meta"]["messages"], sort_keys=True, ensure_ascii=False), []).append(r)
    keys = sorted(groups)  # independent of file order's hash randomisation; shuffled below
    random.Random(seed).shuffle(keys)
    counts = split_counts(len(keys), fractions, source)
    out, start = {}, 0
    for name in ("val", "eval", "rl", "sft"):
        out[name] = [r for k in keys[start : start + counts[name]] for r in groups[k]]
        start += counts[name]
    for name, cap in dict(sizes or {}).items():
        if name in out and cap is not None:
            out[name] = out[name][: int(cap)]
    log.info("%s: %s rows per split (%d distinct prompts)", source, {k: len(out[k]) for k in out}, len(keys))
    return {k: out[k] for k in SPLITS}


@dataclass
class _ChatTask(Task):
    """The Task of chat sources (subclasses implement `_load_rows`); no verifier: the headline is held-out NLL."""

    name, headline, higher_is_better, verifiable, recovery_probe = "chat", "nll", False, False, "demos"
    seed: int = 0
    val_fraction: float = 0.05
    eval_fraction: float = 0.1
    rl_fraction: float = 0.2
    sizes: dict | None = None  # optional per-split caps (set by debug presets)
    cache_dir: str | None = None
    vocab_size: int = 1024
    max_prompt_len: int = 256
    max_response_len: int = 256
    _splits: dict | None = field(default=None, init=False, repr=False)

    def splits(self) -> dict[str, list[dict]]:
        if self._splits is None:
            fractions = {"val": self.val_fraction, "eval": self.eval_fraction, "rl": self.rl_fraction}
            self._splits = carve_splits(self._load_rows(), self.seed, fractions, self._source(), self.sizes)
        return self._splits

    def messages(self, row: dict) -> list[dict]:
        return row["meta"]["messages"]

    def corpus(self) -> list[str]:
        rows = [r for split in self.splits().values() for r in split]
        return [m["content"] for r in rows for m in r["meta"]["messages"]] + [r["response"] for r in rows]

    def build_tokenizer(self):
        return train_bpe_tokenizer(self.corpus(), self.vocab_size, _cache_dir(self.cache_dir) / "tokenizers")

    def score(self, rows: list[dict], texts: list[str]) -> dict[str, np.ndarray]:
        return {}  # no verifier: the headline is held-out NLL, computed elsewhere

    def fresh_demonstrations(self, n: int, seed: int) -> list[dict]:
        """n demonstrations drawn from the sft split (with replacement only when n exceeds it)."""
        pool = self.splits()["sft"]
        rng = random.Random(seed)
        return rng.sample(pool, n) if n <= len(pool) else rng.choices(pool, k=n)


@dataclass
class JsonlTask(_ChatTask):
    """`data=jsonl`: a local JSONL file of `{"messages": [...]}` or `{"prompt", "response"}` rows."""

    path: str = "???"
    name: str = "jsonl"

    def _source(self) -> str:
        return f"data.path={self.path}"

    def _load_rows(self) -> list[dict]:
        return read_jsonl(self.path)


@dataclass
class HFDatasetTask(_ChatTask):
    """`data=hf`: a hub dataset or a local `save_to_disk` directory, columns mapped to messages or prompt/response."""

    name_or_path: str = "???"
    split: str = "train"
    columns: dict = field(default_factory=lambda: {"messages": "messages"})
    max_rows: int | None = None
    name: str = "hf"

    def _source(self) -> str:
        return f"data.name_or_path={self.name_or_path} (split {self.split})"

    def _load_dataset(self):
        import datasets

        local = Path(self.name_or_path).expanduser()
        if local.exists():
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict) and self.split not in ds:
                raise ValueError(
                    f"data.name_or_path={self.name_or_path} has no split {self.split!r}; "
                    f"set data.split to one of {sorted(ds)}"
                )
            return ds[self.split] if isinstance(ds, datasets.DatasetDict) else ds
        try:
            return datasets.load_dataset(self.name_or_path, split=self.split)
        except Exception as e:
            raise RuntimeError(
                f"data.name_or_path={self.name_or_path}: not a local directory and loading it from the hub "
                f"failed ({type(e).__name__}: {e}); check the name/split, or save it with "
                "`Dataset.save_to_disk` and pass that directory"
            ) from e

    def _column_map(self, available: list[str]) -> dict[str, str]:
        cols = dict(self.columns or {})
        if set(cols) - {"family"} not in ({"messages"}, {"prompt", "response"}):
            raise ValueError(
                f"data.columns={cols} must map either `messages` or both `prompt` and `response` "
                "(plus optional `family`); to replace the default mapping on the command line use "
                "`~data.columns '+data.columns={prompt: q, response: a}'`"
            )
        for k, c in cols.items():
            if c not in available:
                raise ValueError(
                    f"{self._source()}: column {c!r} (data.columns.{k}) does not exist; available columns: "
                    f"{available}; set data.columns.{k} to one of them"
                )
        return cols

    def _load_rows(self) -> list[dict]:
        ds = self._load_dataset()
        cols = self._column_map(list(ds.column_names))
        if self.max_rows is not None:
            ds = ds.select(range(min(int(self.max_rows), len(ds))))
        if len(ds) == 0:
            raise ValueError(f"{self._source()} has no rows; pick another split or dataset")
        records = ds.select_columns(sorted(set(cols.values()))).to_list()
        src = f"data.name_or_path={self.name_or_path}"
        return [parse_record(rec, f"{src} row {i}", cols) for i, rec in enumerate(records)]
