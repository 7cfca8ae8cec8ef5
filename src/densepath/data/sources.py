"""The built-in `data=` options (see `data.task.Task`): a task owns its splits, chat formatting, tokenizer and per-sample scoring.

Every task returns splits `sft` (with demonstrations), `rl`, `val` and `eval` as lists of rows
`{"family", "prompt", "response", "meta"}`; `score(rows, texts)` returns per-sample metrics
(`success` for verifiable tasks, `true_return` for known_reward, nothing for plain chat data).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from densepath.data.task import Task
from densepath.data.toy import FAMILIES, make_splits
from densepath.models.tokenizer import symbol_tokenizer, train_bpe_tokenizer

log = logging.getLogger(__name__)


def _cache_dir(cache_dir: str | None) -> Path:
    return Path(cache_dir or Path.home() / ".cache" / "densepath").expanduser()


@dataclass
class ToyTask(Task):
    """`data=toy`: the built-in verifiable instruction families."""

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
        return [r["prompt"] for r in rows] + [r["response"] for r in rows]

    def build_tokenizer(self):
        return train_bpe_tokenizer(self.corpus(), self.vocab_size, _cache_dir(self.cache_dir) / "tokenizers")

    def score(self, rows: list[dict], texts: list[str]) -> dict[str, np.ndarray]:
        ok = [bool(FAMILIES[r["family"]].verify(r["meta"], t)) for r, t in zip(rows, texts)]
        return {"success": np.asarray(ok, dtype=np.float64)}

    def corrupt(self, row: dict, response: str, rng: random.Random) -> tuple[str, int]:
        return FAMILIES[row["family"]].corrupt(row["meta"], response, rng)

    def fresh_demonstrations(self, n: int, seed: int) -> list[dict]:
        """New demonstrations from the generator (for continued SFT), disjoint from eval/val prompts."""
        held = {r["prompt"] for s in ("rl", "val", "eval") for r in self.splits()[s]}
        rows = self._generate(10_000 + seed, {"sft": n + len(held) // 4 + 16})["sft"]
        return [r for r in rows if r["prompt"] not in held][:n]


@dataclass
class KnownRewardTask(Task):
    """`data=known_reward`: 8 symbols + EOS, hidden reward r*(prev, next), exact soft-optimal expert."""

    seed: int = 0
    sizes: dict = field(default_factory=lambda: {"sft": 20000, "rl": 2000, "val": 256, "eval": 512})
    reward_seed: int = 0
    n_tokens: int = 8
    horizon: int = 8
    max_prompt_len: int = 4
    max_response_len: int = 9
    name, headline, higher_is_better, verifiable, recovery_probe = (
        "known_reward",
        "true_return",
        True,
        True,
        "fidelity",
    )

    def __post_init__(self):
        from densepath.data.known_reward import KnownRewardMDP

        self.mdp = KnownRewardMDP(self.n_tokens, self.horizon, seed=self.reward_seed)
        self._splits = None

    @property
    def max_answer_tokens(self) -> int:
        return self.horizon + 1  # horizon symbols, then EOS

    def splits(self) -> dict[str, list[dict]]:
        if self._splits is None:
            from densepath.data.known_reward import make_splits

            self._splits = make_splits(
                self.seed,
                dict(self.sizes),
                reward_seed=self.reward_seed,
                n_tokens=self.n_tokens,
                horizon=self.horizon,
            )
        return self._splits

    def messages(self, row: dict) -> list[dict]:
        return [{"role": "user", "content": ""}]  # the symbol template renders BOS alone

    def corpus(self) -> list[str]:
        return []

    def build_tokenizer(self):
        from densepath.data.known_reward import symbols

        return symbol_tokenizer(symbols(self.n_tokens))

    def score(self, rows: list[dict], texts: list[str]) -> dict[str, np.ndarray]:
        returns, valid = self.mdp.score_texts(texts)
        return {"true_return": returns.numpy(), "malformed": (~valid).numpy().astype(np.float64)}

    def reference_metrics(self) -> dict[str, float]:
        return {
            "expert_true_return": self.mdp.expert_mean_return(),
            "best_true_return": self.mdp.best_return(),
            "uniform_true_return": self.mdp.uniform_mean_return(),
            "worst_true_return": self.mdp.worst_return(),
        }

    def reference_samples(self, n: int, generator) -> dict[str, list[str]]:
        """Answers of the exact expert and of the uniform policy (the fidelity probe's references)."""
        from densepath.data.known_reward import to_text

        expert, uniform = self.mdp.sample_expert(n, generator), self.mdp.sample_uniform(n, generator)
        return {
            "expert": [to_text(s, self.n_tokens) for s in expert],
            "uniform": [to_text(s, self.n_tokens) for s in uniform],
        }

    def scored_answers(self, texts: list[str]) -> tuple[list[str], np.ndarray]:
        """The well-formed answers as the MDP reads them (canonical text) and their true returns."""
        from densepath.data.known_reward import to_text

        eps = [e for e in (self.mdp.episode_from_text(t) for t in texts) if e is not None]
        returns = self.mdp.true_return(eps).numpy() if eps else np.zeros(0)
        return [to_text(e, self.n_tokens) for e in eps], returns

    def fresh_demonstrations(self, n: int, seed: int) -> list[dict]:
        import torch

        from densepath.data.known_reward import to_text

        g = torch.Generator().manual_seed(20_000 + seed)
        seqs = self.mdp.sample_expert(n, g)
        return [
            {"family": self.name, "prompt": "", "response": to_text(s, self.n_tokens), "meta": {"tokens": s}}
            for s in seqs
        ]
