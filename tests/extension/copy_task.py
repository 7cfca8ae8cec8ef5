"""A new task: copy five letters. Implements `densepath.data.task.Task` (verifier and corruption probe)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from densepath.data.task import Task
from densepath.models.tokenizer import train_bpe_tokenizer

LETTERS = "abcdefgh"


def _row(rng: random.Random) -> dict:
    word = " ".join(rng.choice(LETTERS) for _ in range(5))
    return {"family": "copy", "prompt": f"copy: {word}", "response": word, "meta": {"word": word}}


@dataclass
class CopyTask(Task):
    name, headline, higher_is_better, verifiable, recovery_probe = "copy", "success", True, True, "corruption"
    seed: int = 0
    sizes: dict = field(default_factory=lambda: {"sft": 400, "rl": 16, "val": 24, "eval": 24})
    cache_dir: str = ""
    max_prompt_len: int = 32
    max_response_len: int = 16

    def splits(self) -> dict[str, list[dict]]:
        rng, seen, out = random.Random(self.seed), set(), {}
        for split, n in self.sizes.items():
            out[split] = []
            while len(out[split]) < n:
                r = _row(rng)
                if split == "sft" or r["prompt"] not in seen:  # held-out prompts are unseen in sft
                    seen.add(r["prompt"])
                    out[split].append(r)
        return out

    def messages(self, row: dict) -> list[dict]:
        return [{"role": "user", "content": row["prompt"]}]

    def build_tokenizer(self):
        corpus = [f"copy: {c}" for c in LETTERS] + list(LETTERS)
        return train_bpe_tokenizer(corpus, 64, Path(self.cache_dir) / "tokenizers")

    def score(self, rows: list[dict], texts: list[str]) -> dict[str, np.ndarray]:
        return {"success": np.asarray([t.strip() == r["meta"]["word"] for r, t in zip(rows, texts)], float)}

    def corrupt(self, row: dict, response: str, rng: random.Random) -> tuple[str, int]:
        i = 2 * rng.randrange(5)  # a letter position in "a b c d e"
        other = rng.choice([c for c in LETTERS if c != response[i]])
        return response[:i] + other + response[i + 1 :], i

    def fresh_demonstrations(self, n: int, seed: int) -> list[dict]:
        rng = random.Random(10_000 + seed)
        return [_row(rng) for _ in range(n)]
