"""A new reward formulation: log pi_SFT - log pi_base plus a constant bonus per generated token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from densepath.rewards.formulations import Formulation, log_ratio


@dataclass
class LogRatioBonus(Formulation):
    bonus: float = 0.5
    name: ClassVar[str] = "log_ratio_bonus"
    uses_baseline: ClassVar[bool] = True

    def raw(self, logp_sft, mask, values_sft=None, logp_base=None):
        r = log_ratio(logp_sft, logp_base.to(logp_sft.dtype), mask)
        return torch.where(mask != 0, r + self.bonus, r)

    def describe(self) -> dict:
        return {**super().describe(), "bonus": self.bonus}
