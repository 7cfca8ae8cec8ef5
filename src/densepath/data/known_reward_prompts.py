"""The known-reward benchmark (`data=known_reward`): prompts and splits over the MDP of
:mod:`densepath.data.known_reward`.

A prompt names a reward table (one per reward seed), a start state and a horizon; ``sft`` demonstrates
every prompt with the expert, while ``rl`` / ``val`` / ``eval`` get pairwise-disjoint prompt sets
(:func:`assign_prompts`). :class:`Benchmark` holds the tables, the prompt space and the held-out sets, and
scores answers and gives exact per-prompt references from the MDPs. The defaults are the original
single-prompt benchmark (one table, start BOS, the full horizon: one empty prompt shared by every split).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence

import torch

from densepath.data.known_reward import KnownRewardMDP, symbols, to_text

logger = logging.getLogger(__name__)

FAMILY = "known_reward"
SPLITS: tuple[str, ...] = ("sft", "rl", "val", "eval")
HELD_OUT: tuple[str, ...] = ("rl", "val", "eval")  # prompt-disjoint where the prompt space allows
DEFAULT_SIZES: dict[str, int] = {"sft": 2000, "rl": 512, "val": 256, "eval": 512}
DEFAULT_FRACTIONS: dict[str, float] = {"rl": 0.5, "val": 0.25, "eval": 0.25}
BOS_SYMBOL = "^"  # the start state "no previous symbol" as prompt text


class Prompt(tuple):
    """One prompt of the benchmark: (table index, start state id, horizon)."""

    __slots__ = ()

    def __new__(cls, table: int, start: int, horizon: int):
        return super().__new__(cls, (int(table), int(start), int(horizon)))

    table = property(lambda self: self[0])
    start = property(lambda self: self[1])
    horizon = property(lambda self: self[2])


def parse_starts(starts, n_tokens: int) -> list[int]:
    """Start-state ids from ``"all"`` (every symbol, then BOS), ``"bos"``, or a list of symbols (``"^"`` = BOS)."""
    syms = symbols(n_tokens)
    if isinstance(starts, str) and starts in ("all", "bos"):
        return [*range(n_tokens), n_tokens] if starts == "all" else [n_tokens]
    if isinstance(starts, str) or not starts:
        raise ValueError(
            f"data.starts={starts!r}: use all, bos, or a non-empty list of symbols from {syms} and "
            f"{BOS_SYMBOL!r} (BOS)"
        )
    lookup = {**{s: i for i, s in enumerate(syms)}, BOS_SYMBOL: n_tokens}
    bad = [s for s in starts if str(s) not in lookup]
    if bad:
        raise ValueError(
            f"data.starts has unknown symbols {bad}; use symbols from {syms} or {BOS_SYMBOL!r} (BOS)"
        )
    return sorted({lookup[str(s)] for s in starts})


class PromptSpace:
    """Every prompt ``(table, start, horizon)`` and its text: only the fields that vary are written,
    so the single-prompt space (one table, BOS, one horizon) renders the empty prompt of the original
    benchmark. Text tokens: ``T<k>`` (table k), a symbol or ``^`` (start), ``h<h>`` (horizon)."""

    def __init__(self, n_tables: int, starts: Sequence[int], horizons: Sequence[int], n_tokens: int) -> None:
        if n_tables < 1 or not starts or not horizons:
            raise ValueError("a prompt space needs >= 1 table, start and horizon")
        self.n_tables, self.starts, self.horizons, self.n_tokens = (
            n_tables,
            list(starts),
            list(horizons),
            n_tokens,
        )
        self.prompts = [Prompt(m, s, h) for m in range(n_tables) for s in self.starts for h in self.horizons]
        self._by_text = {self.text(p): p for p in self.prompts}

    def text(self, p: Prompt) -> str:
        parts = []
        if self.n_tables > 1:
            parts.append(f"T{p.table}")
        if len(self.starts) > 1:
            parts.append(BOS_SYMBOL if p.start == self.n_tokens else symbols(self.n_tokens)[p.start])
        if len(self.horizons) > 1:
            parts.append(f"h{p.horizon}")
        return " ".join(parts)

    def parse(self, text: str) -> Prompt:
        try:
            return self._by_text[text]
        except KeyError:
            raise ValueError(
                f"prompt {text!r} is not in this known_reward prompt space ({len(self.prompts)} prompts, e.g. "
                f"{next(iter(self._by_text))!r}); score answers to the task's own rows"
            ) from None

    def vocabulary(self) -> list[str]:
        """The prompt words the symbol tokenizer needs beyond the symbols."""
        words = [f"T{m}" for m in range(self.n_tables)] if self.n_tables > 1 else []
        if len(self.starts) > 1 and self.n_tokens in self.starts:
            words.append(BOS_SYMBOL)
        return words + ([f"h{h}" for h in self.horizons] if len(self.horizons) > 1 else [])


def assign_prompts(
    prompts: Sequence[Prompt], seed: int, fractions: Mapping[str, float] | None = None
) -> tuple[dict[str, list[Prompt]], str]:
    """Pairwise-disjoint rl / val / eval prompt sets, and how they were drawn.

    ``by start``: when every start state has >= 3 prompts (tables x horizons), each start's prompts are
    shuffled and dealt val, eval, then rl, so every split covers every start with different
    (table, horizon) pairs. ``by prompt``: otherwise, with >= 3 prompts, the shuffled prompts are dealt
    the same way. ``shared``: fewer than 3 prompts (the original single-prompt benchmark), every split
    uses every prompt. val and eval get ``round(n * fraction)`` prompts each, at least 1; rl the rest.
    """
    fr = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    if set(fr) != set(HELD_OUT) or any(not 0 < float(v) < 1 for v in fr.values()):
        raise ValueError(f"data.split_fractions={fr}: give rl, val and eval, each in (0, 1)")
    prompts = list(prompts)
    by_start: dict[int, list[Prompt]] = {}
    for p in prompts:
        by_start.setdefault(p.start, []).append(p)
    if len(prompts) < 3:
        return {s: list(prompts) for s in HELD_OUT}, "shared"
    rule = "by start" if min(len(g) for g in by_start.values()) >= 3 else "by prompt"
    groups = list(by_start.values()) if rule == "by start" else [prompts]
    rng = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    out: dict[str, list[Prompt]] = {s: [] for s in HELD_OUT}
    for group in groups:
        order = [group[i] for i in torch.randperm(len(group), generator=rng).tolist()]
        n_val = max(1, round(len(group) * float(fr["val"])))
        n_eval = max(1, round(len(group) * float(fr["eval"])))
        if n_val + n_eval >= len(group):
            raise ValueError(
                f"data.split_fractions={fr} leave no rl prompt in a group of {len(group)}; lower val/eval"
            )
        out["val"] += order[:n_val]
        out["eval"] += order[n_val : n_val + n_eval]
        out["rl"] += order[n_val + n_eval :]
    return {k: sorted(v) for k, v in out.items()}, rule


def cycle_prompts(prompts: Sequence[Prompt], n: int, seed: int) -> list[Prompt]:
    """n rows over the prompts, each prompt floor(n/k) or ceil(n/k) times, in a seeded order."""
    if not prompts:
        raise ValueError("cycle_prompts needs at least one prompt")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(int(seed))).tolist()
    return [prompts[order[i % len(prompts)]] for i in range(n)]


def by_table(
    mdps: Sequence[KnownRewardMDP], prompts: Sequence[Prompt]
) -> Iterator[tuple[KnownRewardMDP, list[int], list[int], list[int]]]:
    """Per reward table in order (skipping tables no prompt names): its MDP, the positions of its
    prompts in ``prompts`` and their start states and horizons, ready for the MDP's per-episode methods."""
    for m, mdp in enumerate(mdps):
        idx = [i for i, p in enumerate(prompts) if p.table == m]
        if idx:
            yield mdp, idx, [prompts[i].start for i in idx], [prompts[i].horizon for i in idx]


def sample_rows(
    mdps: Sequence[KnownRewardMDP], space: PromptSpace, prompts: Sequence[Prompt], generator: torch.Generator
) -> list[dict]:
    """One expert demonstration per prompt (in order) as framework rows; tables sampled in order."""
    n_tokens = space.n_tokens
    rows: list[dict | None] = [None] * len(prompts)
    for mdp, idx, starts, hs in by_table(mdps, prompts):
        seqs = mdp.sample_expert(len(idx), generator, starts, hs)
        returns = mdp.true_return(seqs, starts, hs).tolist()
        for i, s, r in zip(idx, seqs, returns):
            p = prompts[i]
            meta = {"tokens": s, "true_return": r, "reward_seed": mdp.seed, "table": p.table, "start": p.start,
                    "horizon": p.horizon}  # fmt: skip
            rows[i] = {
                "family": FAMILY,
                "prompt": space.text(p),
                "response": to_text(s, n_tokens),
                "meta": meta,
            }
    return rows  # type: ignore[return-value]


class Benchmark:
    """The broadened benchmark: reward tables (one per reward seed), a prompt space, the expert, and the
    disjoint held-out prompt sets. The defaults are the original benchmark (one table, start BOS,
    horizon H: one empty prompt shared by every split).

    ``sft`` demonstrates every prompt of the space (the expert is one policy defined everywhere); ``rl``,
    ``val`` and ``eval`` get disjoint prompt sets (:func:`assign_prompts`).
    """

    def __init__(
        self,
        seed: int = 0,
        reward_seed: int | Sequence[int] = 0,
        n_tokens: int = 8,
        horizon: int = 8,
        *,
        starts="bos",
        min_horizon: int | None = None,
        temperature: float = 1.0,
        epsilon: float = 0.0,
        fractions: Mapping[str, float] | None = None,
    ) -> None:
        self.seed = int(seed)
        seeds = [int(reward_seed)] if isinstance(reward_seed, int) else [int(s) for s in reward_seed]
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"data.reward_seed={reward_seed}: give an int or a list of distinct ints")
        self.mdps = [
            KnownRewardMDP(n_tokens, horizon, seed=s, temperature=temperature, epsilon=epsilon) for s in seeds
        ]
        lo = horizon if min_horizon is None else int(min_horizon)
        if not 1 <= lo <= horizon:
            raise ValueError(f"data.min_horizon={min_horizon} must be in 1..horizon={horizon}")
        self.space = PromptSpace(len(seeds), parse_starts(starts, n_tokens), range(lo, horizon + 1), n_tokens)
        self.held, self.rule = assign_prompts(self.space.prompts, self.seed, fractions)

    def rows(self, split: str, n: int, seed_offset: int = 0) -> list[dict]:
        """n expert demonstrations over the split's prompts (``sft``: every prompt), seeded by split."""
        idx = SPLITS.index(split) + seed_offset
        pool = self.space.prompts if split == "sft" else self.held[split]
        prompts = cycle_prompts(pool, int(n), self.seed * 31 + idx)
        gen = torch.Generator().manual_seed(self.seed * 1000003 + idx)
        return sample_rows(self.mdps, self.space, prompts, gen)

    def splits(self, sizes: Mapping[str, int] | None = None) -> dict[str, list[dict]]:
        """Rows for each split in ``sizes``; each split has its own generator, so resizing one split
        leaves the others unchanged."""
        sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
        unknown = set(sizes) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split names {sorted(unknown)}; use a subset of {list(SPLITS)}")
        out = {split: self.rows(split, int(sizes[split])) for split in SPLITS if split in sizes}
        sp = self.space
        logger.info(
            "known_reward splits: %s rows; %d prompts (%d tables x %d starts x %d horizons), rl/val/eval "
            "prompts %s drawn %s; reward seeds %s; expert %s",
            {k: len(v) for k, v in out.items()}, len(sp.prompts), sp.n_tables, len(sp.starts), len(sp.horizons),
            {k: len(v) for k, v in self.held.items()}, self.rule, [m.seed for m in self.mdps], self.expert(),
        )  # fmt: skip
        return out

    def expert(self) -> dict:
        m = self.mdps[0]
        return {"temperature": m.temperature, "epsilon": m.epsilon, "soft_optimal": m.soft_optimal}

    def prompts_of(self, rows: Sequence[dict]) -> list[Prompt]:
        return [self.space.parse(r["prompt"]) for r in rows]

    def score(self, rows: Sequence[dict], texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """True returns (N,) and validity (N,) of answers to ``rows`` (strict: malformed = worst return)."""
        if len(rows) != len(texts):
            raise ValueError(f"{len(rows)} rows but {len(texts)} answers; pass one answer per row")
        prompts = self.prompts_of(rows)
        ret = torch.zeros(len(rows), dtype=torch.float64)
        valid = torch.zeros(len(rows), dtype=torch.bool)
        for mdp, idx, starts, hs in by_table(self.mdps, prompts):
            ret[idx], valid[idx] = mdp.score_texts([texts[i] for i in idx], starts, hs)
        return ret, valid

    def references(self, rows: Sequence[dict]) -> dict[str, float]:
        """Exact references averaged over ``rows``' prompts: best, expert mean, uniform mean, worst."""
        prompts = self.prompts_of(rows)
        if not prompts:
            return {}
        out = {}
        for key, fn in (("expert", "expert_mean_return"), ("best", "best_return"),
                        ("uniform", "uniform_mean_return"), ("worst", "worst_return")):  # fmt: skip
            vals = [getattr(self.mdps[p.table], fn)(p.start, p.horizon) for p in prompts]
            out[f"{key}_true_return"] = float(sum(vals) / len(vals))
        return out

    def describe(self) -> dict:
        sp = self.space
        return {
            "reward_seeds": [m.seed for m in self.mdps],
            "expert": self.expert(),
            "prompt_space": {
                "tables": sp.n_tables,
                "starts": len(sp.starts),
                "horizons": list(sp.horizons),
                "prompts": len(sp.prompts),
            },  # fmt: skip
            "held_out_prompts": {k: len(v) for k, v in self.held.items()},
            "split_rule": self.rule,
            "sft_prompts": "all",
        }


def make_splits(
    seed: int,
    sizes: Mapping[str, int] | None = None,
    reward_seed: int | Sequence[int] = 0,
    n_tokens: int = 8,
    horizon: int = 8,
    **options,
) -> dict[str, list[dict]]:
    """Expert demonstrations as framework rows for splits sft/rl/val/eval (see :class:`Benchmark`)."""
    return Benchmark(seed, reward_seed, n_tokens, horizon, **options).splits(sizes)
