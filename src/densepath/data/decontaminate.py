"""Decontamination of demonstrations against a benchmark's prompts: a row goes when one of its user
turns shares a long word n-gram with a benchmark prompt (pure functions; `data.decontaminate`)."""

from __future__ import annotations

import re
from collections.abc import Iterable

NGRAM_WORDS = 13  # the GPT-3 paper's contamination n-gram; long enough that only copied text matches
DECONTAMINATE = ("ifbench",)
_WORD = re.compile(r"\w+")


def word_tokens(text: str) -> list[str]:
    """Lowercase word tokens (runs of regex word characters: letters, digits, underscore; the rest ignored)."""
    return _WORD.findall(text.lower())


def ngram_index(texts: Iterable[str], n: int = NGRAM_WORDS) -> dict[int, frozenset[tuple[str, ...]]]:
    """{gram length: grams} of the benchmark texts: every n-gram of each text's lowercase words.

    A text shorter than n words contributes one gram of all its words (so no benchmark prompt is exempt;
    IFBench's shortest prompts have 11 words); a text without words contributes nothing.
    """
    if n < 1:
        raise ValueError(f"n-gram length must be >= 1, got {n}")
    grams: dict[int, set[tuple[str, ...]]] = {}
    for text in texts:
        words = word_tokens(text)
        k = min(n, len(words))
        if k:
            grams.setdefault(k, set()).update(zip(*(words[i:] for i in range(k))))
    return {k: frozenset(v) for k, v in grams.items()}


def shares_ngram(text: str, index: dict[int, frozenset[tuple[str, ...]]]) -> bool:
    """True when `text` contains, as consecutive lowercase words, any gram of `index` (`ngram_index`)."""
    words = word_tokens(text)
    # zip builds every k-gram in C: ~3.5M words of ShareGPT user turns take ~4 s on one core
    return any(not grams.isdisjoint(zip(*(words[i:] for i in range(k)))) for k, grams in index.items())


def _benchmark_prompts(name: str) -> list[str]:
    """The prompts of `data.decontaminate=<name>` (imported lazily: only runs that decontaminate need them)."""
    if name == "ifbench":
        from densepath.data.ifbench_data import ifbench_records

        return [r["prompt"] for r in ifbench_records()]
    raise ValueError(
        f"data.decontaminate={name!r} is unknown; use one of {list(DECONTAMINATE)} or null (off)"
    )


def decontaminate_rows(
    rows: list[dict], index: dict[int, frozenset[tuple[str, ...]]]
) -> tuple[list[dict], int]:
    """Rows whose user turns share no gram of `index`, and how many were dropped (grams never span turns)."""
    kept = [
        r
        for r in rows
        if not any(m["role"] == "user" and shares_ngram(m["content"], index) for m in r["meta"]["messages"])
    ]
    return kept, len(rows) - len(kept)


# -- over-long rows: drop, truncate or error, in tokens -------------------------------------------------
