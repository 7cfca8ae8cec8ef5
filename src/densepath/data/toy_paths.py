"""The graded `path` family of `data=toy` (opt-in: `data=paths`); the shared base is
:mod:`densepath.data.toy_base`, the registry :mod:`densepath.data.toy_families`.

Many answers are valid, and how good one is (its path sum between the worst and the best valid path)
is a number, so a policy can improve on its demonstrator: `grade` is that score in [0, 1], `verify`
accepts every valid path.
"""

from __future__ import annotations

import math
import random

from densepath.data.toy_base import _LOWER, _LOWER_RUN, _Family, _pick_run, _spaced

_PATH_PROMPTS: tuple[str, ...] = (
    "Pick one row per column, moving at most one row each step, to maximise the sum. {g}",
    "Grid {g}. Choose a row in every column, up or down by at most one per step, for the largest total.",
    "Find the best path through {g}: one row letter per column, neighbouring rows only.",
)
_PATH_RESPONSES: tuple[str, ...] = ("{p}", "Path: {p}", "Best path: {p}", "Rows: {p}")


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
    prompt_templates = _PATH_PROMPTS
    response_templates = _PATH_RESPONSES
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
