"""RewardRecoveryCallback: recover the dense reward from the live SFT model, on its device.

Runs at the end of SFT (and every `every_n_val` validation runs when > 0): builds the configured
DenseReward from a frozen copy of the current policy and the saved baseline snapshot, runs the
corruption probe (verifiable tasks) or the fidelity check (known_reward), logs the metrics, and
writes the token heatmap and the reward artefact (parquet + manifest) under `<sft>/recovery/`.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import lightning as L

log = logging.getLogger(__name__)


class RewardRecoveryCallback(L.Callback):
    def __init__(self, ctx, sft_dir: Path, every_n_val: int = 0):
        self.ctx = ctx
        self.sft_dir = Path(sft_dir)
        self.every_n_val = int(every_n_val)
        self._n_val = 0
        self.last_metrics: dict[str, float] = {}

    def _run(self, trainer, pl_module, tag: str) -> None:
        if not trainer.is_global_zero:
            return
        from densepath.stages.recover import recovery_pass

        frozen = copy.deepcopy(pl_module.model)  # the live model keeps training
        try:
            metrics = recovery_pass(
                self.ctx, frozen, self.sft_dir, self.sft_dir / "recovery" / tag, pl_module.device
            )
        except FileNotFoundError as e:  # e.g. the baseline snapshot is not written yet mid-training
            log.warning("reward recovery skipped at %s: %s", tag, e)
            return
        self.last_metrics = metrics
        if trainer.logger:
            trainer.logger.log_metrics(
                {f"recover/{k}": v for k, v in metrics.items()}, step=trainer.global_step
            )

    def on_validation_end(self, trainer, pl_module):
        if self.every_n_val <= 0 or trainer.sanity_checking:
            return
        self._n_val += 1
        if self._n_val % self.every_n_val == 0:
            self._run(trainer, pl_module, f"step_{trainer.global_step}")

    def on_train_end(self, trainer, pl_module):
        self._run(trainer, pl_module, "final")
