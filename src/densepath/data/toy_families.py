"""The task families of `data=toy` (overview in :mod:`densepath.data.toy`) and their registry.

A family draws the fields of one example (`draw`); the shared base (:mod:`densepath.data.toy_base`)
picks a prompt and a response phrasing at random, checks a response without ever raising (`verify`),
and replaces ONE checked payload character by a different one of the same class (`corrupt`).

Every family also grades a response in [0, 1] (`grade`); for the binary families here that is `verify`
as 0/1. The opt-in `path` family (:mod:`densepath.data.toy_paths`) is graded: many answers are valid,
and an answer's quality is a number, so a policy can improve on its demonstrator.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable

from densepath.data.toy_base import (
    _DIGIT_RUN,
    _DIGITS,
    _LOWER,
    _LOWER_RUN,
    _UPPER,
    _UPPER_RUN,
    TaskFamily,
    _Family,
    _pick_run,
    _spaced,
)
from densepath.data.toy_paths import PathFamily


def _chars(rng: random.Random, pool: str, lo: int, hi: int) -> str:
    """A string of rng.randint(lo, hi) characters drawn from `pool` (the length is drawn first)."""
    return "".join(rng.choice(pool) for _ in range(rng.randint(lo, hi)))


# The phrasings of the binary families: each example draws one prompt and one response template.
_PROMPTS: dict[str, tuple[str, ...]] = {
    "add": (
        "Add the reversed numbers: {a} + {b}",
        "Reversed digits, add: {a} + {b}",
        "Sum the reversed numbers {a} and {b}.",
    ),
    "sort": (
        "Sort ascending: {d}",
        "Sort these digits from low to high: {d}",
        "Put in increasing order: {d}",
    ),
    "reverse": ("Reverse the letters: {s}", "Write backwards: {s}", "Reverse this sequence: {s}"),
    "count": (
        "How many times does {c} occur in: {s}?",
        "Count the letter {c} in: {s}",
        "In {s}, how often is {c}?",
    ),
    "upper": ("Write in uppercase: {s}", "Capitalise every letter: {s}", "Copy in capitals: {s}"),
    "words": (
        "Describe {topic} in exactly {n} words, using only: {ws}",
        "Answer in exactly {n} words about {topic}. Allowed words: {ws}",
        "Use {n} words from {ws} to talk about {topic}.",
    ),
    "json": (
        'Reply as JSON with key "{k}" and value "{v}".',
        "Return a JSON object: key {k}, value {v}.",
        'Give JSON where "{k}" maps to "{v}".',
    ),
}
_ANSWER_TEMPLATES = ("{p}", "Answer: {p}", "The answer is {p}.", "Result = {p}")
_RESPONSES: dict[str, tuple[str, ...]] = {
    "add": _ANSWER_TEMPLATES + ("Sum: {p}",),
    "sort": _ANSWER_TEMPLATES + ("Sorted: {p}",),
    "reverse": _ANSWER_TEMPLATES + ("Reversed: {p}",),
    "count": _ANSWER_TEMPLATES + ("{c} occurs {p} times.",),
    "upper": _ANSWER_TEMPLATES + ("Uppercase: {p}",),
    "words": ("{p}", "{p}.", "Answer: {p}", "Here: {p}"),
    "json": ("{j}", "JSON: {j}", "Here is the JSON: {j}", "Sure: {j}"),
}


class _BinaryFamily(_Family):
    """A family graded 0/1 (the base's `grade`, i.e. `verify`), phrased by its entries in the tables above."""

    @property
    def prompt_templates(self) -> tuple[str, ...]:
        return _PROMPTS[self.name]

    @property
    def response_templates(self) -> tuple[str, ...]:
        return _RESPONSES[self.name]


class _RunFamily(_BinaryFamily):
    """Families whose answer is one run of space-separated single chars compared exactly; they define
    `draw_answer(rng)` -> (template fields, meta with the unspaced payload as 'answer')."""

    run_pattern: re.Pattern = _DIGIT_RUN
    prefer_long: bool = False

    def draw(self, rng: random.Random) -> tuple[dict, dict, dict]:
        fields, meta = self.draw_answer(rng)
        return fields, {"p": _spaced(meta["answer"]), **fields}, meta

    def _match(self, response: str) -> re.Match | None:
        return _pick_run(self.run_pattern, response, self.prefer_long)

    def check(self, meta: dict, response: str) -> bool:
        m = self._match(response)
        return m is not None and "".join(m.group(0).split()) == meta["answer"]

    def corrupt_at(self, meta: dict, response: str, rng: random.Random) -> tuple[int, set[str]]:
        m = self._match(response)
        return rng.choice([m.start() + i for i, c in enumerate(m.group(0)) if not c.isspace()]), set()


class AddFamily(_RunFamily):
    """3-digit addition, all numbers written least-significant digit first (learnable carry order)."""

    name = "add"

    def draw_answer(self, rng: random.Random) -> tuple[dict, dict]:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        ra, rb, rs = str(a)[::-1], str(b)[::-1], str(a + b)[::-1]
        return {"a": _spaced(ra), "b": _spaced(rb)}, {"a": a, "b": b, "answer": rs}


class SortFamily(_RunFamily):
    name = "sort"

    def draw_answer(self, rng: random.Random) -> tuple[dict, dict]:
        digits = _chars(rng, _DIGITS, 5, 6)
        return {"d": _spaced(digits)}, {"digits": digits, "answer": "".join(sorted(digits))}


class CountFamily(_RunFamily):
    """Count a letter's occurrences; counts are kept to 0..9 so the answer is one digit token."""

    name = "count"

    def draw_answer(self, rng: random.Random) -> tuple[dict, dict]:
        c = rng.choice(_LOWER)
        # bias toward the target letter so counts are not almost always 0
        s = "".join(c if rng.random() < 0.3 else rng.choice(_LOWER) for _ in range(rng.randint(6, 10)))
        if s.count(c) > 9:
            s = s[:-1]
        return {"c": c, "s": _spaced(s)}, {"letter": c, "text": s, "answer": str(s.count(c))}


class LettersFamily(_RunFamily):
    """A random lower-case string {s} to be written out transformed (reversed, upper-cased)."""

    prefer_long = True

    def __init__(
        self, name: str, lengths: tuple[int, int], transform: Callable[[str], str], run_pattern: re.Pattern
    ) -> None:
        self.name, self.lengths, self.transform, self.run_pattern = name, lengths, transform, run_pattern

    def draw_answer(self, rng: random.Random) -> tuple[dict, dict]:
        s = _chars(rng, _LOWER, *self.lengths)
        return {"s": _spaced(s)}, {"text": s, "answer": self.transform(s)}


_TOPICS: dict[str, tuple[str, ...]] = {
    topic: tuple(words.split())
    for topic, words in {
        "the sea": "wave salt blue deep fish sand tide shell foam reef boat gull",
        "a forest": "tree leaf moss root bark fern owl pine deer oak shade trail",
        "a city": "road car tower crowd noise light bus shop bridge park street train",
        "space": "star moon orbit comet dark planet rocket void sun galaxy dust cold",
        "winter": "snow ice cold frost wind white sled scarf fire storm hail quiet",
        "food": "bread rice soup apple cheese salt honey pie bean corn milk egg",
    }.items()
}
_WORD_TOKEN = re.compile(r"\S+")
_STRIP = ".,;!?\"'()[]"


class WordsFamily(_BinaryFamily):
    """Multi-answer family: exactly N words, each from the listed allowed words (any order, any choice).

    The allowed list makes a one-letter corruption well defined (the word leaves the list) and
    gives a large prompt space (subsets x orders) so splits can be disjoint."""

    name = "words"

    def draw(self, rng: random.Random) -> tuple[dict, dict, dict]:
        topic = rng.choice(sorted(_TOPICS))
        allowed = rng.sample(_TOPICS[topic], 6)
        n = rng.randint(3, 6)
        words = rng.sample(allowed, n)
        meta = {"topic": topic, "n": n, "allowed": allowed}
        return {"topic": topic, "n": n, "ws": " ".join(allowed)}, {"p": " ".join(words)}, meta

    @staticmethod
    def _content(response: str) -> list[re.Match]:
        """Word chunks after the last ':' (the wording before a colon is framing, not content)."""
        start = response.rfind(":") + 1
        return [m for m in _WORD_TOKEN.finditer(response, start) if m.group(0).strip(_STRIP)]

    def check(self, meta: dict, response: str) -> bool:
        allowed = {w.lower() for w in meta["allowed"]}
        words = [m.group(0).strip(_STRIP).lower() for m in self._content(response)]
        return len(words) == int(meta["n"]) and all(w in allowed for w in words)

    def corrupt_at(self, meta: dict, response: str, rng: random.Random) -> tuple[int, set[str]]:
        allowed = {w.lower() for w in meta["allowed"]}
        m = rng.choice(self._content(response))
        idx = rng.choice([m.start() + i for i, c in enumerate(m.group(0)) if c.isalpha()])
        off, w = idx - m.start(), m.group(0)
        # forbid replacements that would turn the word into another allowed word
        avoid = {c for c in _LOWER + _UPPER if (w[:off] + c + w[off + 1 :]).strip(_STRIP).lower() in allowed}
        return idx, avoid


_JSON_KEYS = ("name", "color", "city", "code", "word", "tag", "label", "pet")
_JSON_VALUE = re.compile(r':\s*"([^"\\]*)"')


class JsonFamily(_BinaryFamily):
    """Reply as a one-key JSON object; the value's letters are space-separated (one token each)."""

    name = "json"

    def draw(self, rng: random.Random) -> tuple[dict, dict, dict]:
        k = rng.choice(_JSON_KEYS)
        letters = _chars(rng, _LOWER, 3, 6)
        v = _spaced(letters)
        return {"k": k, "v": v}, {"j": json.dumps({k: v})}, {"key": k, "value": letters}

    def check(self, meta: dict, response: str) -> bool:
        i, j = response.find("{"), response.rfind("}")
        obj = json.loads(response[i : j + 1])  # no "{...}" in the response: raises, so `verify` says False
        if not isinstance(obj, dict) or list(obj) != [meta["key"]]:
            return False
        value = obj[meta["key"]]
        return isinstance(value, str) and value in (meta["value"], _spaced(meta["value"]))

    def corrupt_at(self, meta: dict, response: str, rng: random.Random) -> tuple[int, set[str]]:
        m = list(_JSON_VALUE.finditer(response))[-1]
        return rng.choice([m.start(1) + i for i, c in enumerate(m.group(1)) if c.isalpha()]), set()


# Every family by name, the opt-in ones (`path`) included: look families up here.
FAMILIES: dict[str, TaskFamily] = {
    f.name: f
    for f in (
        AddFamily(),
        SortFamily(),
        LettersFamily("reverse", (5, 8), lambda s: s[::-1], _LOWER_RUN),
        CountFamily(),
        WordsFamily(),
        JsonFamily(),
        LettersFamily("upper", (4, 7), str.upper, _UPPER_RUN),
        PathFamily(),
    )
}
# `data=toy`'s families (`families: null`) in the round-robin order of `make_splits`: changing the
# list or its order changes every split.
DEFAULT_FAMILIES: tuple[str, ...] = ("add", "sort", "reverse", "count", "words", "json", "upper")
