"""The built-in `data=` options (see `data.task.Task`): a task owns its splits, chat formatting, tokenizer and per-sample scoring.

Every task returns splits `sft` (with demonstrations), `rl`, `val` and `eval` as lists of rows
`{"family", "prompt", "response", "meta"}`; `score(rows, texts)` returns per-sample metrics
(`success` for verifiable tasks, graded in [0, 1] on `data=paths`; `true_return` for known_reward,
nothing for plain chat data).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from densepath.data.task import Task
from densepath.data.toy import DEFAULT_FAMILIES, FAMILIES, make_splits
from densepath.models.tokenizer import symbol_tokenizer, train_bpe_tokenizer

log = logging.getLogger(__name__)


def _cache_dir(cache_dir: str | None) -> Path:
    return Path(cache_dir or Path.home() / ".cache" / "densepath").expanduser()


@dataclass
class ToyTask(Task):
    """`data=toy`: the built-in verifiable instruction families (`families` None: the default seven;
    `data=paths`: the graded `path` family alone)."""

    name, headline, higher_is_better, verifiable, recovery_probe = "toy", "success", True, True, "corruption"
    seed: int = 0
    sizes: dict = field(default_factory=lambda: {"sft": 20000, "rl": 2000, "val": 300, "eval": 600})
    families: list[str] | None = None
    vocab_size: int = 1024
    cache_dir: str | None = None
    max_prompt_len: int = 64
    max_response_len: int = 48
    _splits: dict | None = field(default=None, init=False, repr=False)

    def _generate(self, seed: int, sizes: dict) -> dict[str, list[dict]]:
        raw = make_splits(seed, sizes, list(self.families) if self.families else None)
        return {k: [{"family": e.family, "prompt": e.prompt, "response": e.response, "meta": e.meta} for e in v]
                for k, v in raw.items()}  # fmt: skip

    def splits(self) -> dict[str, list[dict]]:
        if self._splits is None:
            self._splits = self._generate(self.seed, dict(self.sizes))
        return self._splits

    def messages(self, row: dict) -> list[dict]:
        return [{"role": "user", "content": row["prompt"]}]

    def corpus(self) -> list[str]:
        rows = [r for split in self.splits().values() for r in split]
        extra = [t for f in (self.families or DEFAULT_FAMILIES) for t in FAMILIES[f].tokenizer_texts]
        return [r["prompt"] for r in rows] + [r["response"] for r in rows] + extra

    def build_tokenizer(self):
        return train_bpe_tokenizer(self.corpus(), self.vocab_size, _cache_dir(self.cache_dir) / "tokenizers")

    @property
    def graded(self) -> bool:
        """A graded family (`path`) is among the task's: `success` is then a score in [0, 1]."""
        return any(FAMILIES[f].graded for f in (self.families or DEFAULT_FAMILIES))

    def score(self, rows: list[dict], texts: list[str]) -> dict[str, np.ndarray]:
        """`success`: each family's grade (0/1 on the binary families). With a graded family also
        `optimal` (grade 1) and `valid` (well formed and legal, whatever its grade)."""
        fams = [FAMILIES[r["family"]] for r in rows]
        grade = np.asarray([f.grade(r["meta"], t) for f, r, t in zip(fams, rows, texts)], dtype=np.float64)
        if not self.graded:
            return {"success": grade}
        valid = [bool(f.verify(r["meta"], t)) for f, r, t in zip(fams, rows, texts)]
        return {
            "success": grade,
            "optimal": (grade == 1.0).astype(np.float64),
            "valid": np.asarray(valid, dtype=np.float64),
        }

    def corrupt(self, row: dict, response: str, rng: random.Random) -> tuple[str, int]:
        return FAMILIES[row["family"]].corrupt(row["meta"], response, rng)

    def fresh_demonstrations(self, n: int, seed: int) -> list[dict]:
        """New demonstrations from the generator (for continued SFT), disjoint from eval/val prompts."""
        held = {r["prompt"] for s in ("rl", "val", "eval") for r in self.splits()[s]}
        rows = self._generate(10_000 + seed, {"sft": n + len(held) // 4 + 16})["sft"]
        return [r for r in rows if r["prompt"] not in held][:n]


@dataclass
class KnownRewardTask(Task):
    """`data=known_reward`: 8 symbols + EOS, hidden reward r*(prev, next), an exact expert; prompts
    name a reward table, a start state and a horizon (see `data.known_reward_prompts.Benchmark`). The
    defaults here are the original single-prompt benchmark; conf/data/known_reward.yaml sets the broadened
    one."""

    seed: int = 0
    sizes: dict = field(default_factory=lambda: {"sft": 20000, "rl": 2000, "val": 256, "eval": 512})
    reward_seed: int | list[int] = 0
    n_tokens: int = 8
    horizon: int = 8
    min_horizon: int | None = None  # None: every prompt has the full horizon
    starts: str | list[str] = "bos"
    expert: dict = field(default_factory=lambda: {"temperature": 1.0, "epsilon": 0.0})
    demos: int | None = None  # the demonstration count (None: sizes.sft)
    split_fractions: dict | None = None
    max_prompt_len: int = 8
    max_response_len: int = 9
    name, headline, higher_is_better, verifiable, recovery_probe = (
        "known_reward",
        "true_return",
        True,
        True,
        "fidelity",
    )

    def __post_init__(self):
        from densepath.data.known_reward_prompts import Benchmark

        seeds = self.reward_seed
        if not isinstance(seeds, int):
            seeds = [int(x) for x in seeds]
        unknown = set(self.expert) - {"temperature", "epsilon"}
        if unknown:
            raise ValueError(f"data.expert has unknown keys {sorted(unknown)}; use temperature and epsilon")
        self.bench = Benchmark(
            self.seed,
            seeds,
            self.n_tokens,
            self.horizon,
            starts=self.starts if isinstance(self.starts, str) else list(self.starts),
            min_horizon=self.min_horizon,
            temperature=float(self.expert.get("temperature", 1.0)),
            epsilon=float(self.expert.get("epsilon", 0.0)),
            fractions=dict(self.split_fractions) if self.split_fractions else None,
        )
        self._sizes = dict(self.sizes)
        if self.demos is not None:
            if int(self.demos) < 1:
                raise ValueError(f"data.demos={self.demos} must be >= 1 (the number of SFT demonstrations)")
            self._sizes["sft"] = int(self.demos)
        self._splits = None

    @property
    def max_answer_tokens(self) -> int:
        return self.horizon + 1  # horizon symbols, then EOS

    def splits(self) -> dict[str, list[dict]]:
        if self._splits is None:
            self._splits = self.bench.splits(self._sizes)
        return self._splits

    def messages(self, row: dict) -> list[dict]:
        return [{"role": "user", "content": row["prompt"]}]  # the empty prompt renders BOS alone

    def corpus(self) -> list[str]:
        return []

    def build_tokenizer(self):
        from densepath.data.known_reward import symbols

        return symbol_tokenizer(symbols(self.n_tokens) + self.bench.space.vocabulary())

    def score(self, rows: list[dict], texts: list[str]) -> dict[str, np.ndarray]:
        returns, valid = self.bench.score(rows, texts)
        return {"true_return": returns.numpy(), "malformed": (~valid).numpy().astype(np.float64)}

    def reference_metrics(self, rows: list[dict]) -> dict[str, float]:
        return self.bench.references(rows)

    def describe(self) -> dict:
        return {**self.bench.describe(), "demos": self._sizes.get("sft")}

    def reference_samples(self, rows: list[dict], generator) -> dict[str, list[str]]:
        """Answers of the exact expert and of the uniform policy to each row (the fidelity probe's references)."""
        from densepath.data.known_reward import to_text
        from densepath.data.known_reward_prompts import by_table

        out: dict[str, list[str]] = {"expert": [""] * len(rows), "uniform": [""] * len(rows)}
        for mdp, idx, st, hs in by_table(self.bench.mdps, self.bench.prompts_of(rows)):
            for name, draw in (("expert", mdp.sample_expert), ("uniform", mdp.sample_uniform)):
                for i, s in zip(idx, draw(len(idx), generator, st, hs)):
                    out[name][i] = to_text(s, self.n_tokens)
        return out

    def scored_answers(self, rows: list[dict], texts: list[str]) -> tuple[list[dict], list[str], np.ndarray]:
        """The well-formed answers as the MDP reads them (canonical text), their rows and true returns."""
        from densepath.data.known_reward import to_text

        prompts = self.bench.prompts_of(rows)
        keep, answers = [], []
        for r, p, t in zip(rows, prompts, texts):
            ep = self.bench.mdps[p.table].episode_from_text(t, p.horizon)
            if ep is not None:
                keep.append(r)
                answers.append(to_text(ep, self.n_tokens))
        returns = self.bench.score(keep, answers)[0].numpy() if keep else np.zeros(0)
        return keep, answers, returns

    def fresh_demonstrations(self, n: int, seed: int) -> list[dict]:
        """New expert demonstrations over every prompt, from a generator the SFT split never used."""
        return self.bench.rows("sft", n, seed_offset=20_000 + seed)
