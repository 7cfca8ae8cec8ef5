"""RewardRecoveryCallback: recover the dense reward from the live SFT model, on its device.

Runs at the end of SFT (and every `every_n_val` validation runs when > 0) the `RecoveryPass` it is
given (the configured reward, the task's probe, heatmap and artefact under `<sft>/recovery/<tag>/`).
Its last metrics travel back to the main process under ddp_spawn (`callbacks.spawn`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

log = logging.getLogger(__name__)


class RewardRecoveryCallback(L.Callback):
    carry_to_main = True  # `callbacks.spawn` returns this callback's state from the worker

    def __init__(self, recovery_pass, out_root: Path, every_n_val: int = 0):
        self.recovery_pass = recovery_pass
        self.out_root = Path(out_root)
        self.every_n_val = int(every_n_val)
        self._n_val = 0
        self.last_metrics: dict[str, float] = {}

    def _run(self, trainer, pl_module, tag: str) -> None:
        if not trainer.is_global_zero:
            return
        try:
            metrics = self.recovery_pass(pl_module.model, self.out_root / tag, pl_module.device)
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

    def state_dict(self):
        return {"last_metrics": dict(self.last_metrics)}

    def load_state_dict(self, state):
        self.last_metrics = dict(state.get("last_metrics", {}))
