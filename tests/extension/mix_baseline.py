"""A new baseline: the half-way SFT snapshot mixed with the uniform policy, pi_base = (1-w) pi_half + w/|V|."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from densepath.rewards.baselines import Baseline, SnapshotBaseline


@dataclass
class UniformMixBaseline(Baseline):
    weight: float = 0.25

    def load(self, sft_dir, tokenizer, device, dtype=torch.float32):
        self.snapshot = SnapshotBaseline(0.5).load(sft_dir, tokenizer, device, dtype)
        self.vocab_size = len(tokenizer)
        self.name = f"uniform_mix_{self.weight:g}"
        return self

    @torch.no_grad()
    def logp(self, prompt_ids, prompt_mask, response_ids, response_mask):
        lp = self.snapshot.logp(prompt_ids, prompt_mask, response_ids, response_mask)  # (B, T)
        uniform = torch.full_like(lp, math.log(self.weight) - math.log(self.vocab_size))
        mixed = torch.logaddexp(lp + math.log1p(-self.weight), uniform)
        return torch.where(response_mask != 0, mixed, torch.zeros_like(mixed))

    def describe(self) -> dict:
        return {"name": self.name, "weight": self.weight, "snapshot": self.snapshot.describe()}
