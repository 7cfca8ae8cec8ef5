"""Toy verifiable task families: demonstrations verify, near-misses fail, corruption is one char, splits disjoint."""

from __future__ import annotations

import json
import random
import re

import pytest

from densepath.data.toy import DEFAULT_FAMILIES, FAMILIES, Example, make_splits

SMALL = {"sft": 700, "rl": 140, "val": 70, "eval": 70}
EXPECTED_FAMILIES = {"add", "sort", "reverse", "count", "words", "json", "upper"}
OPT_IN = {"path"}  # in FAMILIES, drawn only when named (data=paths)

# meta per family, built by hand, so the cases below do not depend on the generator
METAS = {
    "add": {"a": 123, "b": 456, "answer": "975"},  # 123 + 456 = 579, written reversed
    "sort": {"digits": "31415", "answer": "11345"},
    "reverse": {"text": "abcde", "answer": "edcba"},
    "count": {"letter": "x", "text": "axbxcd", "answer": "2"},
    "words": {"topic": "the sea", "n": 4, "allowed": ["wave", "salt", "blue", "deep", "fish", "sand"]},
    "json": {"key": "name", "value": "cat"},
    "upper": {"text": "abcd", "answer": "ABCD"},
    # best 27 (c c c b c c b b), worst 0; rows a..d, 8 columns
    "path": {
        "grid": [
            [0, 1, 2, 0, 0, 1, 2, 0],
            [1, 0, 0, 9, 0, 0, 1, 2],
            [2, 2, 1, 0, 1, 9, 0, 1],
            [0, 0, 0, 2, 2, 0, 0, 0],
        ],
        "best": 27,
        "worst": 0,
    },
}

# independently phrased correct answers (none taken verbatim from the templates)
GOOD = {
    "add": [
        "9 7 5",
        "The sum, reversed, is 9 7 5!",
        "I get 9 7 5",
        "=> 9 7 5",
        "9 7 5 is the answer",
        "9  7  5",
    ],
    "sort": ["1 1 3 4 5", "In order: 1 1 3 4 5.", "Ascending gives 1 1 3 4 5"],
    "reverse": ["e d c b a", "Backwards it reads e d c b a.", "Here is a reversal: e d c b a"],
    "count": ["2", "There are 2.", "x appears 2 times", "It shows up 2 times in the string."],
    "words": [
        "wave salt blue deep",
        "Wave, salt, blue, deep.",
        "My answer: deep blue salt sand",
        "fish fish fish fish",
    ],
    "json": ['{"name": "c a t"}', 'Output: {"name":"c a t"}', '```json\n{ "name" : "cat" }\n```'],
    "upper": ["A B C D", "In capitals it is A B C D.", "Sure thing: A B C D"],
    # any well-formed legal path verifies (its grade is tested in test_graded_task.py)
    "path": [
        "c c c b c c b b",
        "Going with a a a a a a a a then.",
        "My route: d c b a b c d d",
        "b  b c d d c b a",
    ],
}

# near-misses: one digit off, missing/extra char, wrong count, N+-1 words, wrong key, wrong case ...
BAD = {
    "add": ["9 7 6", "9 7", "9 7 5 0", "5 7 9", "975", "The answer is 1 2 3."],
    "sort": ["1 1 3 4 6", "1 3 4 5", "1 1 3 4 5 5", "5 4 3 1 1", "3 1 4 1 5"],
    "reverse": ["e d c b", "e d c b a a", "a b c d e", "e d c b z", "E D C B A", "edcba"],
    "count": ["3", "1", "2 2", "two", "The count is 0."],
    "words": ["wave salt blue", "wave salt blue deep fish", "wave salt blue ocean", "wave salt blue dee", ""],
    "json": [
        '{"nam": "c a t"}',
        '{"name": "c a t", "x": "y"}',
        '{"name": "c a"}',
        '{"name": "c a t s"}',
        '{"name": ["c a t"]}',
        '{"name": "c a t"',
        "name: c a t",
        '["name", "c a t"]',
    ],
    "upper": ["a b c d", "A B C", "A B C D E", "A B C E", "ABCD", "D C B A"],
    "path": [
        "c c c b c c b",  # 7 columns
        "c c c b c c b b b",  # 9
        "a c c b c c b b",  # a -> c jumps two rows
        "c c c b c c b e",  # no row e
        "C C C B C C B B",
        "cccbccbb",
        "",
    ],
}

GARBAGE = [
    "",
    " ",
    "\n\n",
    "}{",
    "{{{",
    '{"',
    "\x00\x01",
    "héllo wörld ✓ 数字 ١٢٣",
    "!!!???",
    "a" * 5000,
    "null",
    "[]",
    ":" * 10,
    "1" * 300,
    '{"name": {"x": 1}}',
    None,
    12345,
    b"bytes",
]


def test_registry_has_required_families() -> None:
    assert set(FAMILIES) >= EXPECTED_FAMILIES | OPT_IN
    for name, fam in FAMILIES.items():
        assert fam.name == name
    # data=toy's families and their round-robin order: changing either changes every split
    assert DEFAULT_FAMILIES == ("add", "sort", "reverse", "count", "words", "json", "upper")


@pytest.fixture(scope="module")
def splits() -> dict[str, list[Example]]:
    return make_splits(0, SMALL)


@pytest.fixture(scope="module")
def all_splits() -> dict[str, list[Example]]:
    """Every family, the opt-in ones included, for the per-family properties."""
    return make_splits(0, SMALL, list(FAMILIES))


def test_split_sizes_and_interleaving(splits: dict[str, list[Example]]) -> None:
    assert {k: len(v) for k, v in splits.items()} == SMALL
    counts = {f: sum(e.family == f for e in splits["sft"]) for f in FAMILIES}
    assert {f for f, n in counts.items() if n} == EXPECTED_FAMILIES  # opt-in families only when named
    counts = {f: counts[f] for f in DEFAULT_FAMILIES}
    assert max(counts.values()) - min(counts.values()) <= 1  # uniform round robin
    assert [e.family for e in splits["sft"][:7]] == list(DEFAULT_FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_all_demonstrations_verify(all_splits: dict[str, list[Example]], family: str) -> None:
    rows = [e for v in all_splits.values() for e in v if e.family == family]
    assert len(rows) > 50
    words = 60 if family == "path" else 25  # a path prompt writes its 4 x 8 grid
    for e in rows:
        assert FAMILIES[family].verify(e.meta, e.response), (e.prompt, e.response)
        json.dumps(e.meta)  # JSON-serialisable
        assert len(e.prompt.split()) <= words and len(e.response) <= 60


def _frame(e: Example) -> str:
    """The wording of a response with its payload removed (single chars, the JSON object, the word list)."""
    if e.family == "words":
        return e.response[: e.response.rfind(":") + 1] + e.response[-1:].strip("abcdefghijklmnopqrstuvwxyz")
    return re.sub(r"\{.*\}|\b\w\b", "", e.response)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_varied_phrasings(all_splits: dict[str, list[Example]], family: str) -> None:
    rows = [e for e in all_splits["sft"] if e.family == family]
    assert len({" ".join(e.prompt.split()[:2]) for e in rows}) >= 3  # >= 3 prompt templates in use
    assert len({_frame(e) for e in rows}) >= 3  # >= 3 response phrasings in use


@pytest.mark.parametrize(("family", "text"), [(f, t) for f, ts in GOOD.items() for t in ts])
def test_independent_phrasings_pass(family: str, text: str) -> None:
    assert FAMILIES[family].verify(METAS[family], text) is True


@pytest.mark.parametrize(("family", "text"), [(f, t) for f, ts in BAD.items() for t in ts])
def test_near_misses_fail(family: str, text: str) -> None:
    assert FAMILIES[family].verify(METAS[family], text) is False


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_garbage_returns_false(family: str) -> None:
    fam = FAMILIES[family]
    for g in GARBAGE:
        assert fam.verify(METAS.get(family, {}), g) is False
    assert fam.verify({}, "1 2 3") is False  # bad meta also never raises


def _same_class(a: str, b: str) -> bool:
    return (a.isdigit() and b.isdigit()) or (a.islower() and b.islower()) or (a.isupper() and b.isupper())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_corrupt_changes_one_checked_char(family: str) -> None:
    fam = FAMILIES[family]
    rng = random.Random(123)
    for _ in range(200):
        e = fam.sample(rng)
        bad, idx = fam.corrupt(e.meta, e.response, rng)
        assert len(bad) == len(e.response)
        diffs = [i for i, (a, b) in enumerate(zip(e.response, bad)) if a != b]
        assert diffs == [idx]
        assert bad[idx] != e.response[idx] and _same_class(e.response[idx], bad[idx])
        assert bad[idx].isalnum()
        assert not fam.verify(e.meta, bad), (e.response, bad)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_corrupt_rejects_wrong_input(family: str) -> None:
    with pytest.raises(ValueError, match="does not verify"):
        FAMILIES[family].corrupt(METAS[family], "nonsense", random.Random(0))


def test_splits_disjoint_and_deterministic(splits: dict[str, list[Example]]) -> None:
    prompts = {k: [e.prompt for e in v] for k, v in splits.items()}
    for k, v in prompts.items():
        assert len(set(v)) == len(v), k
    names = list(prompts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not set(prompts[a]) & set(prompts[b]), (a, b)
    assert make_splits(0, SMALL) == splits
    other = make_splits(1, SMALL)
    assert [e.prompt for e in other["sft"]] != prompts["sft"]


def test_held_out_splits_do_not_depend_on_sft_size() -> None:
    a = make_splits(5, {"sft": 10, "eval": 30})
    b = make_splits(5, {"sft": 200, "eval": 30})
    assert a["eval"] == b["eval"]


def test_family_subset() -> None:
    out = make_splits(0, {"sft": 20}, families=["add", "json"])
    assert {e.family for e in out["sft"]} == {"add", "json"}


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown families"):
        make_splits(0, {"sft": 5}, families=["nope"])
    with pytest.raises(ValueError, match="non-negative"):
        make_splits(0, {"sft": -1})


def test_prompt_space_too_small_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import densepath.data.toy as toy

    class Tiny:
        name = "tiny"

        def sample(self, rng: random.Random) -> Example:
            return Example("tiny", f"p{rng.randint(0, 2)}", "r", {})

    monkeypatch.setitem(toy.FAMILIES, "tiny", Tiny())
    monkeypatch.setattr(toy, "_MAX_TRIES", 200)
    with pytest.raises(ValueError, match="ran out of fresh prompts"):
        toy.make_splits(0, {"sft": 4}, families=["tiny"])
