"""The graded `path` family (`data=paths`): exact bounds, exact grades, the myopic expert's law, malformed
answers at 0, and the default `data=toy` unchanged by its arrival. Every reference here is a brute-force
loop over row sequences, written independently of the family's dynamic programme and sampler."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
from collections import Counter

import numpy as np
import pytest
from hydra.utils import instantiate

from conftest import compose_cfg
from densepath.data.formatting import encode_pair
from densepath.data.sources import ToyTask
from densepath.data.toy import DEFAULT_FAMILIES, FAMILIES, make_splits
from densepath.data.toy_paths import PathFamily, path_bounds

PATH = FAMILIES["path"]
K, L = 4, 8
ROWS = "abcd"
SMALL = {"sft": 700, "rl": 140, "val": 70, "eval": 70}


def legal_paths(k: int, length: int) -> list[tuple[int, ...]]:
    """All k^length row sequences, kept when every step moves at most one row."""
    out = []
    for seq in itertools.product(range(k), repeat=length):
        ok = True
        for a, b in zip(seq, seq[1:]):
            if abs(a - b) > 1:
                ok = False
        if ok:
            out.append(seq)
    return out


LEGAL = legal_paths(K, L)
LEGAL_SET = set(LEGAL)


def path_sum(grid: list[list[int]], seq) -> int:
    total = 0
    for j, r in enumerate(seq):
        total += grid[r][j]
    return total


def brute_grade(grid: list[list[int]], seq) -> float:
    paths = LEGAL if (len(grid), len(grid[0])) == (K, L) else legal_paths(len(grid), len(grid[0]))
    sums = [path_sum(grid, p) for p in paths]
    best, worst = max(sums), min(sums)
    return 1.0 if best == worst else (path_sum(grid, seq) - worst) / (best - worst)


def text(seq) -> str:
    return " ".join(ROWS[r] for r in seq)


def meta_of(grid: list[list[int]]) -> dict:
    best, worst = path_bounds(grid)
    return {"grid": grid, "best": best, "worst": worst}


def test_legal_path_count_and_registry() -> None:
    # 4 rows: the walks on a path graph of 4 vertices; the count pins the move rule
    assert len(LEGAL) == 3194
    assert PATH.graded and PATH.name == "path" and "path" not in DEFAULT_FAMILIES
    assert not any(FAMILIES[f].graded for f in DEFAULT_FAMILIES)


def test_bounds_equal_brute_force_on_random_grids() -> None:
    rng = random.Random(0)
    for _ in range(150):
        grid = PATH.draw_grid(rng)
        assert len(grid) == K and all(len(row) == L for row in grid)
        assert {v for row in grid for v in row} <= {0, 1, 2, 9}
        sums = [path_sum(grid, p) for p in LEGAL]
        assert path_bounds(grid) == (max(sums), min(sums))


@pytest.mark.parametrize(("k", "length"), [(2, 2), (2, 5), (3, 4), (5, 3)])
def test_bounds_equal_brute_force_on_other_shapes(k: int, length: int) -> None:
    rng = random.Random(k * 10 + length)
    paths = legal_paths(k, length)
    for _ in range(40):
        grid = [[rng.randint(-3, 9) for _ in range(length)] for _ in range(k)]
        sums = [path_sum(grid, p) for p in paths]
        assert path_bounds(grid) == (max(sums), min(sums))


def test_jackpot_rate_and_expert_mean_are_as_designed() -> None:
    """Cells: 9 with probability 0.15, else uniform 0..2; the expert's mean grade is about 0.84."""
    rng = random.Random(1)
    cells = [v for _ in range(2000) for row in PATH.draw_grid(rng) for v in row]
    n = len(cells)
    assert abs(cells.count(9) / n - 0.15) < 0.01
    for v in (0, 1, 2):
        assert abs(cells.count(v) / n - 0.85 / 3) < 0.01
    grades = [PATH.grade(e.meta, e.response) for e in (PATH.sample(rng) for _ in range(400))]
    assert 0.78 < float(np.mean(grades)) < 0.90


def test_demonstrations_verify_and_grade_exactly() -> None:
    rng = random.Random(2)
    for _ in range(300):
        e = PATH.sample(rng)
        seq = [ROWS.index(c) for c in re.findall(r"\b[a-z]\b", e.response)]
        assert len(seq) == L and tuple(seq) in LEGAL_SET, e.response
        sums = [path_sum(e.meta["grid"], p) for p in LEGAL]
        assert (e.meta["best"], e.meta["worst"]) == (max(sums), min(sums))
        assert PATH.verify(e.meta, e.response) is True
        assert abs(PATH.grade(e.meta, e.response) - brute_grade(e.meta["grid"], seq)) < 1e-12
        json.dumps(e.meta)


def test_optimal_and_near_miss_paths() -> None:
    rng = random.Random(3)
    for _ in range(60):
        grid = PATH.draw_grid(rng)
        meta = meta_of(grid)
        by_sum = sorted(LEGAL, key=lambda p: path_sum(grid, p))
        best = by_sum[-1]
        assert PATH.grade(meta, text(best)) == 1.0
        assert PATH.grade(meta, f"Best path: {text(best)}") == 1.0
        lower = [p for p in by_sum if path_sum(grid, p) < path_sum(grid, best)]
        if not lower:  # every valid path has the same sum: all grade 1
            assert PATH.grade(meta, text(by_sum[0])) == 1.0
            continue
        near = lower[-1]  # the second best distinct sum
        g = PATH.grade(meta, text(near))
        assert g < 1.0 and abs(g - brute_grade(grid, near)) < 1e-12
        assert PATH.verify(meta, text(near)) is True
        assert PATH.grade(meta, text(by_sum[0])) == 0.0 and PATH.verify(meta, text(by_sum[0]))


def test_flat_grid_grades_every_valid_path_one() -> None:
    grid = [[1] * L for _ in range(K)]
    meta = meta_of(grid)
    assert meta["best"] == meta["worst"] == L
    assert PATH.grade(meta, "a b c d d c b a") == 1.0
    assert PATH.grade(meta, "a c c d d c b a") == 0.0  # still malformed


MALFORMED = [
    "a a a a a a a",  # L - 1 letters
    "a a a a a a a a a",  # L + 1
    "a c c c c c c c",  # a -> c jumps two rows
    "d d d d d d d b",  # d -> b
    "a a a a a a a e",  # no row e
    "A A A A A A A A",
    "aaaaaaaa",
    "a, a, a, a, a, a, a, a",
    "",
    "   ",
    "The best path is unclear.",
    "\x00\x01 ✓ 数字",
    "1 2 3 4 5 6 7 8",
    None,
    12345,
    b"a a a a a a a a",
]


@pytest.mark.parametrize("response", MALFORMED)
def test_malformed_answers_grade_zero(response) -> None:
    meta = meta_of(PATH.draw_grid(random.Random(4)))
    assert PATH.grade(meta, response) == 0.0
    assert PATH.verify(meta, response) is False


def test_bad_meta_never_raises() -> None:
    for meta in ({}, {"grid": []}, {"grid": [[1, 2]], "best": "x"}, {"grid": None, "best": 1, "worst": 0}):
        assert PATH.grade(meta, "a a a a a a a a") == 0.0
        assert PATH.verify(meta, "a a a a a a a a") is False


def reference_probability(grid: list[list[int]], seq, tau: float) -> float:
    """The myopic Boltzmann expert written out: first row ~ exp(v[r][0] / tau) over all rows, then
    each row ~ exp(v[r'][j] / tau) over the rows at most one away from the previous one."""
    k = len(grid)
    z = 0.0
    for r in range(k):
        z += math.exp(grid[r][0] / tau)
    p = math.exp(grid[seq[0]][0] / tau) / z
    for j in range(1, len(seq)):
        prev, z = seq[j - 1], 0.0
        for r in range(k):
            if abs(r - prev) <= 1:
                z += math.exp(grid[r][j] / tau)
        if abs(seq[j] - prev) > 1:
            return 0.0
        p *= math.exp(grid[seq[j]][j] / tau) / z
    return p


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_expert_logprob_equals_the_formula(tau: float) -> None:
    fam = PathFamily(tau=tau)
    rng = random.Random(5)
    for _ in range(6):
        grid = fam.draw_grid(rng)
        total = 0.0
        for seq in LEGAL:
            ref = reference_probability(grid, seq, tau)
            assert math.isclose(math.exp(fam.expert_logprob(grid, list(seq))), ref, rel_tol=1e-9)
            total += ref
        assert math.isclose(total, 1.0, rel_tol=1e-9)  # a distribution over the valid paths
        assert fam.expert_logprob(grid, [0, 2, 2, 2, 2, 2, 2, 2]) == -math.inf


def test_expert_samples_follow_the_formula() -> None:
    """Empirical path frequencies of the sampler on a fixed small grid vs the exact probabilities."""
    fam = PathFamily(n_rows=3, length=3)
    grid = [[0, 9, 1], [2, 0, 1], [1, 2, 9]]
    rng = random.Random(6)
    n = 40_000
    counts = Counter(tuple(fam.expert_path(grid, rng)) for _ in range(n))
    paths = legal_paths(3, 3)
    assert set(counts) <= set(paths)
    diffs = [abs(counts[p] / n - reference_probability(grid, p, 1.0)) for p in paths]
    assert max(diffs) < 0.01
    # and on the real 4 x 8 shape: the first row and the first move
    grid = PATH.draw_grid(random.Random(7))
    first = Counter(PATH.expert_path(grid, rng)[0] for _ in range(20_000))
    z = sum(math.exp(grid[r][0]) for r in range(K))
    assert max(abs(first[r] / 20_000 - math.exp(grid[r][0]) / z) for r in range(K)) < 0.02


def test_corruption_is_malformed_and_grades_zero() -> None:
    rng = random.Random(8)
    for _ in range(300):
        e = PATH.sample(rng)
        bad, idx = PATH.corrupt(e.meta, e.response, rng)
        assert [i for i, (a, b) in enumerate(zip(e.response, bad)) if a != b] == [idx]
        assert e.response[idx] in ROWS and bad[idx].islower() and bad[idx] not in ROWS
        assert PATH.grade(e.meta, bad) == 0.0 and PATH.verify(e.meta, bad) is False


def _digest(splits) -> str:
    rows = [[k, e.family, e.prompt, e.response, e.meta] for k, v in splits.items() for e in v]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def test_default_splits_unchanged() -> None:
    """`families` None draws the seven default families exactly as before the opt-in `path` existed
    (the digest was taken with the code before it)."""
    out = make_splits(0, SMALL)
    assert _digest(out) == "40318877cb6104ec8b6aaec56e45c9d8fe7f3392f1a98441a79f0b737d621734"
    assert out == make_splits(0, SMALL, list(DEFAULT_FAMILIES))
    assert {e.family for v in out.values() for e in v} == set(DEFAULT_FAMILIES)


def test_path_splits_are_prompt_disjoint() -> None:
    out = make_splits(0, SMALL, ["path"])
    assert {k: len(v) for k, v in out.items()} == SMALL
    assert {e.family for v in out.values() for e in v} == {"path"}
    prompts = [e.prompt for v in out.values() for e in v]
    assert len(set(prompts)) == len(prompts)


def test_toy_task_scores() -> None:
    grid = [
        [0, 1, 2, 0, 0, 1, 2, 0],
        [1, 0, 0, 9, 0, 0, 1, 2],
        [2, 2, 1, 0, 1, 9, 0, 1],
        [0, 0, 0, 2, 2, 0, 0, 0],
    ]
    row = {"family": "path", "prompt": "", "response": "", "meta": meta_of(grid)}  # best 27, worst 0
    texts = ["c c c b c c b b", "Path: a a a a a a a a", "c c c b c c b", "a c c b c c b b"]
    out = ToyTask(families=["path"]).score([row] * 4, texts)
    assert set(out) == {"success", "optimal", "valid"}
    np.testing.assert_allclose(out["success"], [1.0, 6 / 27, 0.0, 0.0], atol=1e-12)
    np.testing.assert_array_equal(out["optimal"], [1, 0, 0, 0])
    np.testing.assert_array_equal(out["valid"], [1, 1, 0, 0])

    add = {"family": "add", "prompt": "", "response": "", "meta": {"a": 123, "b": 456, "answer": "975"}}
    plain = ToyTask().score([add, add], ["9 7 5", "9 7 6"])
    assert set(plain) == {"success"}
    np.testing.assert_array_equal(plain["success"], [1.0, 0.0])
    mixed = ToyTask(families=["add", "path"]).score([add, row], ["9 7 6", "Path: a a a a a a a a"])
    np.testing.assert_allclose(mixed["success"], [0.0, 6 / 27])
    np.testing.assert_array_equal(mixed["valid"], [0, 1])


def test_data_paths_config_fits_its_lengths(tmp_path) -> None:
    cfg = compose_cfg(["data=paths", f"data.cache_dir={tmp_path}"], None)
    task = instantiate(cfg.data, sizes={"sft": 300, "rl": 20, "val": 20, "eval": 20})
    assert list(task.families) == ["path"] and task.graded
    tok = task.build_tokenizer()
    rows = [r for v in task.splits().values() for r in v]
    enc = [encode_pair(tok, task.messages(r), r["response"]) for r in rows]
    assert max(len(e.prompt_ids) for e in enc) <= cfg.data.max_prompt_len
    assert max(len(e.response_ids) for e in enc) <= cfg.data.max_response_len
    assert max(len(e.response_ids) for e in enc) <= cfg.sampler.max_new_tokens


def test_experiment_paths_composes() -> None:
    cfg = compose_cfg(["experiment=paths"], None)
    assert list(cfg.data.families) == ["path"] and cfg.sft.steps == 1200
    assert list(cfg.pipeline.stages) == ["sft", "decode"] and list(cfg.decode.policies) == ["sft"]
