"""Baseline snapshots: the SFT policy at configured fractions of the SFT optimiser steps.

The paper's pi_base is the SFT checkpoint trained on half the data (`baseline=sft_half`); other
fractions feed `baseline=sft_fraction` / `ensemble`. The model before SFT is kept for `baseline=base`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L

from densepath.models.io import save_policy, snapshot_dir

log = logging.getLogger(__name__)


class SnapshotCallback(L.Callback):
    carry_to_main = True  # `callbacks.spawn` returns `saved` from the worker under ddp_spawn

    def __init__(self, root: str | Path, fractions: list[float], max_steps: int, batch_size: int, tokenizer):
        for f in fractions:
            if not 0.0 < float(f) < 1.0:
                raise ValueError(f"sft.snapshot_fractions: {f} is not in (0, 1); use e.g. [0.25, 0.5]")
        self.root, self.tokenizer, self.batch_size = Path(root), tokenizer, batch_size
        # fraction -> the optimiser step after which it is taken (at least 1)
        self.targets = {float(f): max(1, round(float(f) * max_steps)) for f in fractions}
        self.saved: dict[str, dict] = {}

    def state_dict(self):
        return {"saved": self.saved}

    def load_state_dict(self, state):
        self.saved = dict(state.get("saved", {}))

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero and not (self.root / "base").exists():
            info = save_policy(pl_module.model, self.tokenizer, self.root / "base")
            self.saved["base"] = {**info, "step": 0, "samples_seen": 0, "fraction": 0.0}
            self._write_index()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        for frac, target in self.targets.items():
            key = f"{frac:.2f}"
            if step == target and key not in self.saved and trainer.is_global_zero:
                info = save_policy(pl_module.model, self.tokenizer, snapshot_dir(self.root, frac))
                seen = step * self.batch_size * trainer.world_size
                self.saved[key] = {**info, "step": step, "samples_seen": seen, "fraction": frac}
                log.info("saved baseline snapshot %.2f at step %d (%d samples seen)", frac, step, seen)
                self._write_index()

    def _write_index(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "index.json").write_text(json.dumps(self.saved, indent=2))
