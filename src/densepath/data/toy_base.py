"""What every toy task family shares (the families: :mod:`densepath.data.toy_families`, the graded
path family: :mod:`densepath.data.toy_paths`).

An `Example` is one prompt with its demonstration and ground truth; `TaskFamily` is what the toy task
asks of a family; `_Family` is the base that phrases an example, checks a response without ever raising
(`verify`) and replaces ONE checked payload character by a different one of the same class (`corrupt`).
Payload characters are written space-separated (`_spaced`) and an answer is read as the last run of
them (`_pick_run`).
"""

from __future__ import annotations

import random
import re
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


class _Family:
    """What every family shares: phrasing, the never-raising verifier and the corruption.

    A family defines its phrasings `prompt_templates` and `response_templates` (each example draws one
    of each), `draw(rng)` -> (prompt template fields, response template fields, meta),
    `check(meta, response)` -> bool (may raise on garbage: `verify` turns that into False) and
    `corrupt_at(meta, response, rng)` -> (index of the payload char to replace, chars it must not become).
    """

    name: str = ""
    graded: bool = False
    tokenizer_texts: tuple[str, ...] = ()
    prompt_templates: tuple[str, ...]
    response_templates: tuple[str, ...]

    def sample(self, rng: random.Random) -> Example:
        prompt_fields, response_fields, meta = self.draw(rng)
        prompt = rng.choice(self.prompt_templates).format(**prompt_fields)
        response = rng.choice(self.response_templates).format(**response_fields)
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
