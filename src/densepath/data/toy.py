"""Built-in verifiable task families (`data=toy`).

Why this exists: dense-reward recovery needs tasks where (a) a ~1M-param model can learn the
skill from a few thousand demonstrations, (b) success is checkable by a program, and (c) a single
wrong payload character is well defined, so probes can ask "does the recovered reward dip exactly
at the corrupted token?". Every payload character (digit or letter) is written space-separated,
so the project tokenizer maps it to its own token.

The families (`sample`, `verify`, `corrupt`) and their registry live in
:mod:`densepath.data.toy_families` (their shared base in :mod:`densepath.data.toy_base`, the graded
`path` family in :mod:`densepath.data.toy_paths`); this module draws the disjoint splits from them.
"""

from __future__ import annotations

import logging
import random

from densepath.data.toy_base import Example, TaskFamily
from densepath.data.toy_families import DEFAULT_FAMILIES, FAMILIES

__all__ = ["DEFAULT_FAMILIES", "FAMILIES", "Example", "TaskFamily", "make_splits"]

log = logging.getLogger(__name__)

# Held-out splits are drawn first so their contents depend only on (seed, their own size), not on sft size.
_SPLIT_PRIORITY = ("eval", "val", "rl", "sft")
_MAX_TRIES = 2000


def make_splits(
    seed: int, sizes: dict[str, int], families: list[str] | None = None
) -> dict[str, list[Example]]:
    """Deterministic splits with pairwise-disjoint prompt strings, families interleaved round-robin.

    Disjoint prompts mean no eval/val/rl prompt was ever trained on by SFT. `families` None (or empty)
    means `DEFAULT_FAMILIES`; opt-in families (`path`) are drawn only when named."""
    names = list(families) if families else list(DEFAULT_FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise ValueError(f"make_splits: unknown families {unknown or names}; choose from {sorted(FAMILIES)}")
    if bad := {k: v for k, v in sizes.items() if not isinstance(v, int) or v < 0}:
        raise ValueError(f"make_splits: sizes must be non-negative ints, got {bad}")
    rng, seen, out = random.Random(seed), set(), {}
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
