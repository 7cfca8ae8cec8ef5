"""Built-in verifiable task families (`data=toy`).

Why this exists: dense-reward recovery needs tasks where (a) a ~1M-param model can learn the
skill from a few thousand demonstrations, (b) success is checkable by a program, and (c) a single
wrong payload character is well defined, so probes can ask "does the recovered reward dip exactly
at the corrupted token?". Every payload character (digit or letter) is written space-separated,
so the project tokenizer maps it to its own token.

Each family: `sample(rng)` -> Example (prompt + one expert demonstration with a randomly chosen
phrasing), `verify(meta, response)` -> bool (judges the content, ignores the wording, never
raises), `corrupt(meta, response, rng)` -> (response with ONE checked payload char replaced by a
different char of the same class, its index).
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

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

    def sample(self, rng: random.Random) -> Example: ...

    def verify(self, meta: dict, response: str) -> bool: ...

    def corrupt(self, meta: dict, response: str, rng: random.Random) -> tuple[str, int]: ...


def _spaced(chars: str) -> str:
    """'abc' -> 'a b c': one payload character per whitespace chunk, hence per token."""
    return " ".join(chars)


def _swap_char(c: str, rng: random.Random, avoid: set[str] = frozenset()) -> str:
    """A different character of the same class as `c` (digit/lower/upper), not in `avoid`."""
    pool = _DIGITS if c.isdigit() else _LOWER if c.islower() else _UPPER
    choices = [x for x in pool if x != c and x not in avoid]
    return rng.choice(choices)


def _runs(pattern: re.Pattern, text: str) -> list[re.Match]:
    return list(pattern.finditer(text))


def _pick_run(pattern: re.Pattern, text: str, prefer_long: bool) -> re.Match | None:
    """The answer is the LAST run of space-separated single characters; letter families prefer
    runs of >= 2 chars so that a stray article ('a', 'I') in the wording is not taken as the answer."""
    runs = _runs(pattern, text)
    if prefer_long:
        long = [m for m in runs if len(m.group(0).split()) >= 2]
        runs = long or runs
    return runs[-1] if runs else None


_DIGIT_RUN = re.compile(r"(?<![0-9A-Za-z])[0-9](?: +[0-9])*(?![0-9A-Za-z])")
_LOWER_RUN = re.compile(r"(?<![0-9A-Za-z])[a-z](?: +[a-z])*(?![0-9A-Za-z])")
_UPPER_RUN = re.compile(r"(?<![0-9A-Za-z])[A-Z](?: +[A-Z])*(?![0-9A-Za-z])")

_ANSWER_TEMPLATES = ("{p}", "Answer: {p}", "The answer is {p}.", "Result = {p}")


class _RunFamily:
    """Families whose answer is one run of space-separated single chars compared exactly."""

    name: str = ""
    prompt_templates: tuple[str, ...] = ()
    response_templates: tuple[str, ...] = _ANSWER_TEMPLATES
    run_pattern: re.Pattern = _DIGIT_RUN
    prefer_long: bool = False

    def draw(self, rng: random.Random) -> tuple[dict, dict]:
        """Return (template fields, meta); meta must contain 'answer' (unspaced payload)."""
        raise NotImplementedError

    def sample(self, rng: random.Random) -> Example:
        fields, meta = self.draw(rng)
        prompt = rng.choice(self.prompt_templates).format(**fields)
        response = rng.choice(self.response_templates).format(p=_spaced(meta["answer"]), **fields)
        return Example(self.name, prompt, response, meta)

    def _match(self, response: str) -> re.Match | None:
        return _pick_run(self.run_pattern, response, self.prefer_long)

    def verify(self, meta: dict, response: str) -> bool:
        try:
            m = self._match(response)
            return m is not None and "".join(m.group(0).split()) == meta["answer"]
        except Exception:  # garbage in -> not a success, never a crash
            return False

    def corrupt(self, meta: dict, response: str, rng: random.Random) -> tuple[str, int]:
        if not self.verify(meta, response):
            raise ValueError(
                f"{self.name}.corrupt: response {response!r} does not verify; corrupt a correct one"
            )
        m = self._match(response)
        idx = rng.choice([m.start() + i for i, c in enumerate(m.group(0)) if not c.isspace()])
        return response[:idx] + _swap_char(response[idx], rng) + response[idx + 1 :], idx


class AddFamily(_RunFamily):
    """3-digit addition, all numbers written least-significant digit first (learnable carry order)."""

    name = "add"
    prompt_templates = (
        "Add the reversed numbers: {a} + {b}",
        "Reversed digits, add: {a} + {b}",
        "Sum the reversed numbers {a} and {b}.",
    )
    response_templates = _ANSWER_TEMPLATES + ("Sum: {p}",)

    def draw(self, rng: random.Random) -> tuple[dict, dict]:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        ra, rb, rs = str(a)[::-1], str(b)[::-1], str(a + b)[::-1]
        return {"a": _spaced(ra), "b": _spaced(rb)}, {"a": a, "b": b, "answer": rs}


class SortFamily(_RunFamily):
    name = "sort"
    prompt_templates = (
        "Sort ascending: {d}",
        "Sort these digits from low to high: {d}",
        "Put in increasing order: {d}",
    )
    response_templates = _ANSWER_TEMPLATES + ("Sorted: {p}",)

    def draw(self, rng: random.Random) -> tuple[dict, dict]:
        digits = "".join(rng.choice(_DIGITS) for _ in range(rng.randint(5, 6)))
        return {"d": _spaced(digits)}, {"digits": digits, "answer": "".join(sorted(digits))}


class ReverseFamily(_RunFamily):
    name = "reverse"
    prompt_templates = ("Reverse the letters: {s}", "Write backwards: {s}", "Reverse this sequence: {s}")
    response_templates = _ANSWER_TEMPLATES + ("Reversed: {p}",)
    run_pattern = _LOWER_RUN
    prefer_long = True

    def draw(self, rng: random.Random) -> tuple[dict, dict]:
        s = "".join(rng.choice(_LOWER) for _ in range(rng.randint(5, 8)))
        return {"s": _spaced(s)}, {"text": s, "answer": s[::-1]}


class CountFamily(_RunFamily):
    """Count a letter's occurrences; counts are kept to 0..9 so the answer is one digit token."""

    name = "count"
    prompt_templates = (
        "How many times does {c} occur in: {s}?",
        "Count the letter {c} in: {s}",
        "In {s}, how often is {c}?",
    )
    response_templates = _ANSWER_TEMPLATES + ("{c} occurs {p} times.",)

    def draw(self, rng: random.Random) -> tuple[dict, dict]:
        c = rng.choice(_LOWER)
        n = rng.randint(6, 10)
        # bias toward the target letter so counts are not almost always 0
        s = "".join(c if rng.random() < 0.3 else rng.choice(_LOWER) for _ in range(n))
        if s.count(c) > 9:
            s = s[:-1]
        return {"c": c, "s": _spaced(s)}, {"letter": c, "text": s, "answer": str(s.count(c))}


class UpperFamily(_RunFamily):
    name = "upper"
    prompt_templates = ("Write in uppercase: {s}", "Capitalise every letter: {s}", "Copy in capitals: {s}")
    response_templates = _ANSWER_TEMPLATES + ("Uppercase: {p}",)
    run_pattern = _UPPER_RUN
    prefer_long = True

    def draw(self, rng: random.Random) -> tuple[dict, dict]:
        s = "".join(rng.choice(_LOWER) for _ in range(rng.randint(4, 7)))
        return {"s": _spaced(s)}, {"text": s, "answer": s.upper()}


_TOPICS: dict[str, tuple[str, ...]] = {
    "the sea": (
        "wave",
        "salt",
        "blue",
        "deep",
        "fish",
        "sand",
        "tide",
        "shell",
        "foam",
        "reef",
        "boat",
        "gull",
    ),
    "a forest": (
        "tree",
        "leaf",
        "moss",
        "root",
        "bark",
        "fern",
        "owl",
        "pine",
        "deer",
        "oak",
        "shade",
        "trail",
    ),
    "a city": (
        "road",
        "car",
        "tower",
        "crowd",
        "noise",
        "light",
        "bus",
        "shop",
        "bridge",
        "park",
        "street",
        "train",
    ),
    "space": (
        "star",
        "moon",
        "orbit",
        "comet",
        "dark",
        "planet",
        "rocket",
        "void",
        "sun",
        "galaxy",
        "dust",
        "cold",
    ),
    "winter": (
        "snow",
        "ice",
        "cold",
        "frost",
        "wind",
        "white",
        "sled",
        "scarf",
        "fire",
        "storm",
        "hail",
        "quiet",
    ),
    "food": (
        "bread",
        "rice",
        "soup",
        "apple",
        "cheese",
        "salt",
        "honey",
        "pie",
        "bean",
        "corn",
        "milk",
        "egg",
    ),
}
_WORD_TOKEN = re.compile(r"\S+")
_STRIP = ".,;!?\"'()[]"


class WordsFamily:
    """Multi-answer family: exactly N words, each from the listed allowed words (any order, any choice).

    The allowed list makes a one-letter corruption well defined (the word leaves the list) and
    gives a large prompt space (subsets x orders) so splits can be disjoint."""

    name = "words"
    prompt_templates = (
        "Describe {topic} in exactly {n} words, using only: {ws}",
        "Answer in exactly {n} words about {topic}. Allowed words: {ws}",
        "Use {n} words from {ws} to talk about {topic}.",
    )
    response_templates = ("{p}", "{p}.", "Answer: {p}", "Here: {p}")

    def sample(self, rng: random.Random) -> Example:
        topic = rng.choice(sorted(_TOPICS))
        allowed = rng.sample(_TOPICS[topic], 6)
        n = rng.randint(3, 6)
        words = rng.sample(allowed, n)
        prompt = rng.choice(self.prompt_templates).format(topic=topic, n=n, ws=" ".join(allowed))
        response = rng.choice(self.response_templates).format(p=" ".join(words))
        return Example(self.name, prompt, response, {"topic": topic, "n": n, "allowed": allowed})

    @staticmethod
    def _content(response: str) -> list[re.Match]:
        """Word chunks after the last ':' (the wording before a colon is framing, not content)."""
        start = response.rfind(":") + 1
        return [m for m in _WORD_TOKEN.finditer(response, start) if m.group(0).strip(_STRIP)]

    def verify(self, meta: dict, response: str) -> bool:
        try:
            allowed = {w.lower() for w in meta["allowed"]}
            words = [m.group(0).strip(_STRIP).lower() for m in self._content(response)]
            return len(words) == int(meta["n"]) and all(w in allowed for w in words)
        except Exception:
            return False

    def corrupt(self, meta: dict, response: str, rng: random.Random) -> tuple[str, int]:
        if not self.verify(meta, response):
            raise ValueError(f"words.corrupt: response {response!r} does not verify; corrupt a correct one")
        allowed = {w.lower() for w in meta["allowed"]}
        m = rng.choice(self._content(response))
        idx = rng.choice([m.start() + i for i, c in enumerate(m.group(0)) if c.isalpha()])
        off = idx - m.start()
        word = m.group(0)
        # forbid replacements that would turn the word into another allowed word
        avoid = {
            c for c in _LOWER + _UPPER if (word[:off] + c + word[off + 1 :]).strip(_STRIP).lower() in allowed
        }
        return response[:idx] + _swap_char(response[idx], rng, avoid) + response[idx + 1 :], idx


_JSON_KEYS = ("name", "color", "city", "code", "word", "tag", "label", "pet")
_JSON_VALUE = re.compile(r':\s*"([^"\\]*)"')


class JsonFamily:
    """Reply as a one-key JSON object; the value's letters are space-separated (one token each)."""

    name = "json"
    prompt_templates = (
        'Reply as JSON with key "{k}" and value "{v}".',
        "Return a JSON object: key {k}, value {v}.",
        'Give JSON where "{k}" maps to "{v}".',
    )
    response_templates = ("{j}", "JSON: {j}", "Here is the JSON: {j}", "Sure: {j}")

    def sample(self, rng: random.Random) -> Example:
        k = rng.choice(_JSON_KEYS)
        letters = "".join(rng.choice(_LOWER) for _ in range(rng.randint(3, 6)))
        v = _spaced(letters)
        prompt = rng.choice(self.prompt_templates).format(k=k, v=v)
        response = rng.choice(self.response_templates).format(j=json.dumps({k: v}))
        return Example(self.name, prompt, response, {"key": k, "value": letters})

    def verify(self, meta: dict, response: str) -> bool:
        try:
            i, j = response.find("{"), response.rfind("}")
            if i < 0 or j < i:
                return False
            obj = json.loads(response[i : j + 1])
            if not isinstance(obj, dict) or list(obj) != [meta["key"]]:
                return False
            value = obj[meta["key"]]
            return isinstance(value, str) and value in (meta["value"], _spaced(meta["value"]))
        except Exception:
            return False

    def corrupt(self, meta: dict, response: str, rng: random.Random) -> tuple[str, int]:
        if not self.verify(meta, response):
            raise ValueError(f"json.corrupt: response {response!r} does not verify; corrupt a correct one")
        m = list(_JSON_VALUE.finditer(response))[-1]
        idx = rng.choice([m.start(1) + i for i, c in enumerate(m.group(1)) if c.isalpha()])
        return response[:idx] + _swap_char(response[idx], rng) + response[idx + 1 :], idx


FAMILIES: dict[str, TaskFamily] = {
    f.name: f
    for f in (
        AddFamily(),
        SortFamily(),
        ReverseFamily(),
        CountFamily(),
        WordsFamily(),
        JsonFamily(),
        UpperFamily(),
    )
}

# Held-out splits are drawn first so their contents depend only on (seed, their own size), not on sft size.
_SPLIT_PRIORITY = ("eval", "val", "rl", "sft")
_MAX_TRIES = 2000


def make_splits(
    seed: int, sizes: dict[str, int], families: list[str] | None = None
) -> dict[str, list[Example]]:
    """Deterministic splits with pairwise-disjoint prompt strings, families interleaved round-robin.

    Disjoint prompts mean no eval/val/rl prompt was ever trained on by SFT."""
    names = list(families) if families else list(FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise ValueError(f"make_splits: unknown families {unknown or names}; choose from {sorted(FAMILIES)}")
    bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or v < 0}
    if bad:
        raise ValueError(f"make_splits: sizes must be non-negative ints, got {bad}")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: dict[str, list[Example]] = {}
    order = [s for s in _SPLIT_PRIORITY if s in sizes] + [s for s in sizes if s not in _SPLIT_PRIORITY]
    for split in order:
        rows: list[Example] = []
        for i in range(sizes[split]):
            fam = FAMILIES[names[i % len(names)]]
            for _ in range(_MAX_TRIES):
                ex = fam.sample(rng)
                if ex.prompt not in seen:
                    break
            else:
                raise ValueError(
                    f"make_splits: family {fam.name!r} ran out of fresh prompts after {len(seen)} prompts "
                    f"(split {split!r}); reduce sizes {sizes} or add more families"
                )
            seen.add(ex.prompt)
            rows.append(ex)
        out[split] = rows
    log.info("toy splits (seed=%d): %s", seed, {k: len(v) for k, v in out.items()})
    return {k: out[k] for k in sizes}
