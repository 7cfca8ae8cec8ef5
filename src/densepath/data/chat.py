"""The `data=jsonl` and `data=hf` options (and the base of every chat source): chat demonstrations
without a verifier.

Rows are conversations whose LAST assistant turn is the demonstration; everything before it is the
prompt (`meta["messages"]`; records are validated by `densepath.data.chat_records`). Splits are
carved deterministically, disjoint by prompt conversation.
Every validation error names the source (file + line, or dataset + row + column) and the fix.

Two run-level filters belong to every chat source (`_ChatTask`):
- `data.decontaminate: ifbench` drops `sft` and `rl` rows whose user turns share a 13-word n-gram with
  an IFBench prompt (`ngram_index` / `shares_ngram`); null turns it off.
- `data.overlong: drop | truncate | error` fits the splits to `data.max_prompt_len` /
  `data.max_response_len` (in tokens) once the run's tokenizer is known (`fit_lengths`, called by
  `RunContext.set_tokenizer`), so SFT, continued SFT, evaluation and RL all see the same rows.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from densepath.data.chat_records import parse_record, read_jsonl
from densepath.data.decontaminate import (
    DECONTAMINATE,
    NGRAM_WORDS,
    _benchmark_prompts,
    decontaminate_rows,
    ngram_index,
)
from densepath.data.formatting import encode_many, prompt_ids_many
from densepath.data.sources import _cache_dir
from densepath.data.task import Task
from densepath.models.tokenizer import tokenizer_hash, train_bpe_tokenizer

log = logging.getLogger(__name__)

SPLITS = ("sft", "rl", "val", "eval")


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


# -- length limits: every stage sees the same rows ------------------------------------

OVERLONG = ("drop", "truncate", "error")


def fit_split(
    rows: list[dict], tokenizer, max_prompt_len: int, max_response_len: int, mode: str
) -> tuple[list[dict], dict[str, int]]:
    """One split fitted to the length limits (lengths as `encode_rows` counts them: the response with EOS).

    `drop`: rows whose prompt or response is too long go. `truncate`: rows whose prompt is too long go
    (a prompt cannot be cut without changing the task); a too-long response is cut to `max_response_len`
    tokens WITHOUT EOS (the model must not learn to stop there): the row's text becomes the decoded cut
    and `meta["truncated"]` tells `encode_rows` to drop the EOS.
    """
    counts = {"rows_in": len(rows), "dropped_prompt": 0, "dropped_response": 0, "truncated": 0}
    # prompts first: only rows whose prompt fits are tokenized with their response (ShareGPT: ~1/3)
    p_ids = prompt_ids_many(tokenizer, [r["meta"]["messages"] for r in rows])
    fits = [i for i, p in enumerate(p_ids) if len(p) <= max_prompt_len]
    counts["dropped_prompt"] = len(rows) - len(fits)
    rows = [rows[i] for i in fits]
    enc = encode_many(
        tokenizer, [(r["meta"]["messages"], r["response"]) for r in rows], [p_ids[i] for i in fits]
    )
    eos, out = tokenizer.eos_token_id, []
    for r, e in zip(rows, enc):
        if len(e.response_ids) <= max_response_len:
            out.append(r)
        elif mode == "drop":
            counts["dropped_response"] += 1
        else:
            content = e.response_ids[:-1] if e.response_ids and e.response_ids[-1] == eos else e.response_ids
            cut = max_response_len
            text = tokenizer.decode(content[:cut], skip_special_tokens=False)
            while cut > 1 and text.endswith("\ufffd"):  # never end on half a UTF-8 character
                cut -= 1
                text = tokenizer.decode(content[:cut], skip_special_tokens=False)
            meta = {**r["meta"], "truncated": {"response_tokens": cut, "original_tokens": len(content)}}
            out.append({**r, "response": text, "meta": meta})
            counts["truncated"] += 1
    return out, {**counts, "rows_out": len(out)}


@dataclass
class _ChatTask(Task):
    """The Task of chat sources (subclasses implement `_load_rows` and `_source`); no verifier: the headline
    is held-out NLL."""

    name, headline, higher_is_better, verifiable, recovery_probe = (
        "chat",
        "nll",
        False,
        False,
        "corruption_tokens",
    )
    seed: int = 0
    val_fraction: float = 0.05
    eval_fraction: float = 0.1
    rl_fraction: float = 0.2
    sizes: dict | None = None  # optional per-split caps (set by debug presets)
    cache_dir: str | None = None
    vocab_size: int = 1024
    max_prompt_len: int = 256
    max_response_len: int = 256
    overlong: str = "drop"  # drop | truncate | error (see `fit_split`)
    decontaminate: str | None = None  # "ifbench": drop sft/rl rows sharing a 13-gram with its prompts
    _raw: dict | None = field(default=None, init=False, repr=False)  # carved + decontaminated
    _splits: dict | None = field(default=None, init=False, repr=False)  # _raw fitted to the lengths
    _fitted_for: str | None = field(default=None, init=False, repr=False)  # tokenizer hash of the fit
    _stats: dict = field(default_factory=dict, init=False, repr=False)  # what the manifest records

    def __post_init__(self) -> None:
        if self.overlong not in OVERLONG:
            raise ValueError(f"data.overlong={self.overlong!r} is unknown; use one of {list(OVERLONG)}")
        if self.decontaminate is not None and self.decontaminate not in DECONTAMINATE:
            raise ValueError(
                f"data.decontaminate={self.decontaminate!r} is unknown; use one of {list(DECONTAMINATE)} "
                "or null (off)"
            )

    def _raw_splits(self) -> dict[str, list[dict]]:
        """Carved and decontaminated splits, before any length fitting (the tokenizer's corpus)."""
        if self._raw is None:
            fractions = {"val": self.val_fraction, "eval": self.eval_fraction, "rl": self.rl_fraction}
            # uncapped: the caps (`sizes`) apply after the length fit, so a cap is a row count that fits
            raw = carve_splits(self._load_rows(), self.seed, fractions, self._source())
            if self.decontaminate is not None:
                index = ngram_index(_benchmark_prompts(self.decontaminate))
                dropped = {}
                for name in ("sft", "rl"):
                    raw[name], dropped[name] = decontaminate_rows(raw[name], index)
                    if not raw[name]:
                        raise ValueError(
                            f"{self._source()}: decontamination against {self.decontaminate} removed every "
                            f"row of the `{name}` split; use more data or data.decontaminate=null"
                        )
                log.info(
                    "%s: dropped %s rows sharing a %d-word n-gram with %s prompts",
                    self._source(),
                    dropped,
                    NGRAM_WORDS,
                    self.decontaminate,
                )
                self._stats["decontaminated"] = {
                    "against": self.decontaminate,
                    "ngram_words": NGRAM_WORDS,
                    "dropped": dropped,
                }
            self._raw = raw
        return self._raw

    def _capped(self, splits: dict[str, list[dict]]) -> dict[str, list[dict]]:
        """Each split cut to its `data.sizes` cap (the first rows: the carve order is already shuffled)."""
        caps = {k: int(v) for k, v in dict(self.sizes or {}).items() if v is not None}
        return {k: rows[: caps[k]] if k in caps else rows for k, rows in splits.items()}

    def splits(self) -> dict[str, list[dict]]:
        """The splits, capped to `data.sizes`; fitted to the length limits (before the caps) once
        `fit_lengths` ran (the run context calls it)."""
        return self._splits if self._splits is not None else self._capped(self._raw_splits())

    def fit_lengths(self, tokenizer) -> None:
        """Apply `data.overlong` to every split, once per tokenizer (later calls with it do nothing).

        Called by `RunContext.set_tokenizer`, so every stage (SFT, continued SFT, evaluation, RL prompts)
        reads the same fitted rows. `error` leaves the rows as they are (`encode_rows` refuses long ones).
        """
        key = tokenizer_hash(tokenizer)
        if self._fitted_for == key:
            return
        raw = self._raw_splits()
        if self.overlong == "error":
            self._splits, self._fitted_for = self._capped(raw), key
            self._stats.pop("overlong", None)
            return
        fitted, counts = {}, {}
        for name in SPLITS:
            fitted[name], counts[name] = fit_split(
                raw[name], tokenizer, self.max_prompt_len, self.max_response_len, self.overlong
            )
        limits = f"data.max_prompt_len={self.max_prompt_len} / data.max_response_len={self.max_response_len}"
        if not any(fitted.values()):
            fix = "raise them" + ("" if self.overlong == "truncate" else ", or set data.overlong=truncate")
            raise ValueError(
                f"{self._source()}: every row is over {limits} tokens (data.overlong={self.overlong}, "
                f"{ {k: c['dropped_prompt'] for k, c in counts.items()} } rows with a too-long prompt per "
                f"split); {fix}"
            )
        if empty := [k for k in SPLITS if not fitted[k]]:
            raise ValueError(
                f"{self._source()}: data.overlong={self.overlong} emptied the split(s) {empty} "
                f"({ {k: counts[k] for k in empty} }); raise {limits} or add rows"
            )
        log.info("%s: data.overlong=%s per split: %s", self._source(), self.overlong, counts)
        self._splits, self._fitted_for = self._capped(fitted), key
        self._stats["overlong"] = {
            "mode": self.overlong,
            "max_prompt_len": self.max_prompt_len,
            "max_response_len": self.max_response_len,
            "splits": counts,
        }

    def describe(self) -> dict:
        """The source and what loading, decontamination and length fitting removed (known so far)."""
        return {"source": self._source(), **{k: v for k, v in self._stats.items()}}

    def messages(self, row: dict) -> list[dict]:
        return row["meta"]["messages"]

    def corpus(self) -> list[str]:
        rows = [r for split in self._raw_splits().values() for r in split]
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
