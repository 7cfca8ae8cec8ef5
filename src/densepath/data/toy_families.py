"""The task families of `data=toy` (overview in :mod:`densepath.data.toy`).

A family draws the fields of one example (`draw`); the shared base picks a prompt and a response
phrasing at random from the tables below, checks a response without ever raising (`verify`), and
replaces ONE checked payload character by a different one of the same class (`corrupt`).

Every family also grades a response in [0, 1] (`grade`); for the binary families that is `verify` as
0/1. The opt-in `path` family is graded: many answers are valid, and how good one is (its path sum
between the worst and the best valid path) is a number, so a policy can improve on its demonstrator.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

_LOWER = "abcdefghijklmnopqrstuvwxyz"
_UPPER = _LOWER.upper()
_DIGITS = "0123456789"


@dataclass(frozen=True)
class Example:
    family: str  # e.g. "add"
    prompt: str  # the user message text
    response: str  # one expert demonstration (a phrasing chosen at random)
    meta: dict  # the ground truth the verifier needs, JSON-serialisable


class TaskFamily(Protocol):
    name: str
    graded: bool  # grade takes values strictly between 0 and 1 (False: grade == float(verify))
    tokenizer_texts: tuple[str, ...]  # extra tokenizer corpus: characters `corrupt` writes stay one token

    def sample(self, rng: random.Random) -> Example: ...
    def verify(self, meta: dict, response: str) -> bool: ...
    def grade(self, meta: dict, response: str) -> float: ...  # in [0, 1]; `_Family`: float(verify)
    def corrupt(self, meta: dict, response: str, rng: random.Random) -> tuple[str, int]: ...


def _spaced(chars: str) -> str:
    """'abc' -> 'a b c': one payload character per whitespace chunk, hence per token."""
    return " ".join(chars)


def _chars(rng: random.Random, pool: str, lo: int, hi: int) -> str:
    """A string of rng.randint(lo, hi) characters drawn from `pool` (the length is drawn first)."""
    return "".join(rng.choice(pool) for _ in range(rng.randint(lo, hi)))


def _swap_char(c: str, rng: random.Random, avoid: set[str] = frozenset()) -> str:
    """A different character of the same class as `c` (digit/lower/upper), not in `avoid`."""
    pool = _DIGITS if c.isdigit() else _LOWER if c.islower() else _UPPER
    return rng.choice([x for x in pool if x != c and x not in avoid])


def _pick_run(pattern: re.Pattern, text: str, prefer_long: bool) -> re.Match | None:
    """The answer is the LAST run of space-separated single characters; letter families prefer
    runs of >= 2 chars so that a stray article ('a', 'I') in the wording is not taken as the answer."""
    runs = list(pattern.finditer(text))
    if prefer_long:
        runs = [m for m in runs if len(m.group(0).split()) >= 2] or runs
    return runs[-1] if runs else None


_DIGIT_RUN = re.compile(r"(?<![0-9A-Za-z])[0-9](?: +[0-9])*(?![0-9A-Za-z])")
_LOWER_RUN = re.compile(r"(?<![0-9A-Za-z])[a-z](?: +[a-z])*(?![0-9A-Za-z])")
_UPPER_RUN = re.compile(r"(?<![0-9A-Za-z])[A-Z](?: +[A-Z])*(?![0-9A-Za-z])")

# The phrasings of every family: each example draws one prompt and one response template.
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
    "path": (
        "Pick one row per column, moving at most one row each step, to maximise the sum. {g}",
        "Grid {g}. Choose a row in every column, up or down by at most one per step, for the largest total.",
        "Find the best path through {g}: one row letter per column, neighbouring rows only.",
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
    "path": ("{p}", "Path: {p}", "Best path: {p}", "Rows: {p}"),
}


class _Family:
    """What every family shares: phrasing, the never-raising verifier and the corruption.

    A family defines `draw(rng)` -> (prompt template fields, response template fields, meta),
    `check(meta, response)` -> bool (may raise on garbage: `verify` turns that into False) and
    `corrupt_at(meta, response, rng)` -> (index of the payload char to replace, chars it must not become).
    """

    name: str = ""
    graded: bool = False
    tokenizer_texts: tuple[str, ...] = ()

    def sample(self, rng: random.Random) -> Example:
        prompt_fields, response_fields, meta = self.draw(rng)
        prompt = rng.choice(_PROMPTS[self.name]).format(**prompt_fields)
        response = rng.choice(_RESPONSES[self.name]).format(**response_fields)
        return Example(self.name, prompt, response, meta)

    def verify(self, meta: dict, response: str) -> bool:
        try:
            return self.check(meta, response)
        except Exception:  # garbage in -> not a success, never a crash
            return False

    def grade(self, meta: dict, response: str) -> float:
        """The answer's quality in [0, 1]; binary families: 1.0 exactly when it verifies."""
        return float(self.verify(meta, response))

    def corrupt(self, meta: dict, response: str, rng: random.Random) -> tuple[str, int]:
        if not self.verify(meta, response):
            raise ValueError(
                f"{self.name}.corrupt: response {response!r} does not verify; corrupt a correct one"
            )
        idx, avoid = self.corrupt_at(meta, response, rng)
        return response[:idx] + _swap_char(response[idx], rng, avoid) + response[idx + 1 :], idx


class _RunFamily(_Family):
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


class WordsFamily(_Family):
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


class JsonFamily(_Family):
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


def path_bounds(grid: list[list[int]]) -> tuple[int, int]:
    """(best, worst) sum over the valid paths of a K x L grid (one row per column, moves of at most
    one row), by dynamic programming over the columns: O(K L), where enumerating is O(3^L)."""
    hi = lo = [row[0] for row in grid]
    for j in range(1, len(grid[0])):
        hi = [row[j] + max(hi[max(r - 1, 0) : r + 2]) for r, row in enumerate(grid)]
        lo = [row[j] + min(lo[max(r - 1, 0) : r + 2]) for r, row in enumerate(grid)]
    return max(hi), min(lo)


def _boltzmann_step(
    grid: list[list[int]], j: int, prev: int | None, tau: float
) -> tuple[list[int], list[float]]:
    """The myopic expert's choices in column j after row `prev` (None: the first column, any row)
    and their probabilities, proportional to exp(value / tau)."""
    rows = range(len(grid)) if prev is None else range(max(prev - 1, 0), min(prev + 2, len(grid)))
    top = max(grid[r][j] for r in rows)  # shifted for stability; the probabilities are unchanged
    w = [math.exp((grid[r][j] - top) / tau) for r in rows]
    z = sum(w)
    return list(rows), [x / z for x in w]


class PathFamily(_Family):
    """Graded, opt-in (`data=paths`): pick one of K rows (letters a, b, ...) per column of a K x L grid
    of small numbers with rare jackpots, moving at most one row per step, to maximise the visited sum.

    Why: on the binary families SFT already reaches the demonstrator's ceiling, so RL has nothing to
    gain; here the score is graded, (sum - worst) / (best - worst) over the valid paths, and the
    demonstrator is deliberately MYOPIC: a Boltzmann expert at temperature `tau` that looks at the
    current column only. Greedy decoding of a policy imitating it follows the myopic greedy path
    (about 0.87 mean score, optimal on about 45% of 4 x 8 grids); the expert's own samples average
    about 0.84 and a uniformly random valid path about 0.41; planning ahead reaches 1.0.

    `verify` accepts every well-formed valid path (every demonstration verifies); `grade` is the
    normalised sum (1.0 for every valid path when best == worst) and 0.0 for malformed answers: no
    run of exactly L row letters, a letter outside the K rows, or a move of more than one row.
    """

    name, graded = "path", True
    # Corruptions write letters that no path uses; without these lines the task's own corpus would
    # leave most of them two tokens ("▁" + letter) and the corruption probe would drop every row.
    tokenizer_texts = (_spaced(_LOWER),) * 2  # BPE merges need a pair twice (min_frequency=2)

    def __init__(self, n_rows: int = 4, length: int = 8, tau: float = 1.0, p_jackpot: float = 0.15) -> None:
        if not (2 <= n_rows <= len(_LOWER) and length >= 2 and tau > 0 and 0 <= p_jackpot <= 1):
            raise ValueError(
                f"PathFamily: need 2 <= n_rows <= 26, length >= 2, tau > 0, 0 <= p_jackpot <= 1; got "
                f"n_rows={n_rows}, length={length}, tau={tau}, p_jackpot={p_jackpot}"
            )
        self.n_rows, self.length, self.tau, self.p_jackpot = n_rows, length, tau, p_jackpot

    def draw_grid(self, rng: random.Random) -> list[list[int]]:
        """n_rows lists of `length` cells: 9 with probability p_jackpot, else uniform in 0..2."""
        return [
            [9 if rng.random() < self.p_jackpot else rng.randint(0, 2) for _ in range(self.length)]
            for _ in range(self.n_rows)
        ]

    def expert_path(self, grid: list[list[int]], rng: random.Random) -> list[int]:
        """One row index per column from the myopic Boltzmann expert (see `expert_logprob`)."""
        path: list[int] = []
        for j in range(len(grid[0])):
            rows, probs = _boltzmann_step(grid, j, path[-1] if path else None, self.tau)
            path.append(rng.choices(rows, weights=probs)[0])
        return path

    def expert_logprob(self, grid: list[list[int]], path: list[int]) -> float:
        """Exact log-probability of `path` (row indices) under the expert: the first row with probability
        proportional to exp(grid[r][0] / tau), each next one among the rows at most one away likewise;
        -inf for an invalid path."""
        total = 0.0
        for j, r in enumerate(path):
            rows, probs = _boltzmann_step(grid, j, path[j - 1] if j else None, self.tau)
            if r not in rows:
                return -math.inf
            total += math.log(probs[rows.index(r)])
        return total

    def draw(self, rng: random.Random) -> tuple[dict, dict, dict]:
        grid = self.draw_grid(rng)
        path = self.expert_path(grid, rng)
        best, worst = path_bounds(grid)
        g = " | ".join(f"{_LOWER[r]}: {' '.join(map(str, row))}" for r, row in enumerate(grid))
        return (
            {"g": g},
            {"p": _spaced("".join(_LOWER[r] for r in path))},
            {"grid": grid, "best": best, "worst": worst},
        )

    @staticmethod
    def _path(meta: dict, response: str) -> list[int] | None:
        """The answer's row indices, or None when it is malformed (the grid's shape comes from meta)."""
        grid = meta["grid"]
        m = _pick_run(_LOWER_RUN, response, prefer_long=True)
        letters = m.group(0).split() if m else []
        if len(letters) != len(grid[0]) or any(c not in _LOWER[: len(grid)] for c in letters):
            return None
        path = [_LOWER.index(c) for c in letters]
        return path if all(abs(a - b) <= 1 for a, b in zip(path, path[1:])) else None

    def check(self, meta: dict, response: str) -> bool:
        return self._path(meta, response) is not None

    def grade(self, meta: dict, response: str) -> float:
        try:
            path = self._path(meta, response)
            if path is None:
                return 0.0
            best, worst = int(meta["best"]), int(meta["worst"])
            total = sum(meta["grid"][r][j] for j, r in enumerate(path))
            return 1.0 if best == worst else (total - worst) / (best - worst)
        except Exception:  # garbage in -> 0.0, never a crash
            return 0.0

    def corrupt_at(self, meta: dict, response: str, rng: random.Random) -> tuple[int, set[str]]:
        """A path letter becomes a lower-case letter that names no row: malformed, so it grades 0
        (any valid replacement would be a different path of possibly equal score)."""
        m = _pick_run(_LOWER_RUN, response, prefer_long=True)
        idx = rng.choice([m.start() + i for i, c in enumerate(m.group(0)) if not c.isspace()])
        return idx, set(_LOWER[: len(meta["grid"])])


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
