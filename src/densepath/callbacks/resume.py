"""Exact resume: atomic periodic checkpoints, a resumable data order, and RNG state in the checkpoint.

- `AtomicCheckpointIO`: writes to a temp file, fsyncs, then renames, so a crash while writing never
  leaves a corrupt checkpoint; refuses to write non-finite weights; loads with `weights_only=True`.
- `LoaderProgress`: hands the trainer's step count to every `data.loader.ResumableLoader`, whose
  position is saved in the checkpoint.
- `RNGStateCallback`: Python, numpy and torch (CPU and CUDA) RNG states in the checkpoint; the
  sampler's generation draws from torch's global RNG, so this restores the generation stream too.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from densepath.data.loader import ResumableLoader

log = logging.getLogger(__name__)


class NonFiniteWeightsError(RuntimeError): ...


def _all_finite(obj) -> bool:
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    return not (torch.is_tensor(obj) and obj.is_floating_point()) or bool(torch.isfinite(obj).all())


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if not _all_finite(checkpoint.get("state_dict", {})):
            raise NonFiniteWeightsError(
                f"refusing to write checkpoint {path}: the model has non-finite weights (the previous "
                "checkpoint is kept). Lower the learning rate or clip rewards/gradients."
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = True) -> dict[str, Any]:
        if not (path := Path(path)).is_file():
            raise FileNotFoundError(
                f"checkpoint {path} not found; pass an existing ckpt_path=... or use resume=auto"
            )
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class LoaderProgress(L.Callback):  # one batch per optimiser step: the step count is the position
    def on_train_start(self, trainer, pl_module):
        loaders = trainer.fit_loop._combined_loader.flattened if trainer.fit_loop._combined_loader else []
        for dl in loaders:
            if isinstance(dl, ResumableLoader):
                dl.progress_fn = lambda t=trainer: t.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # the monitored value of keep-last-N checkpointing (ModelCheckpoint runs after this callback)
        pl_module.log("ckpt_step", float(trainer.global_step), logger=False, prog_bar=False)


class RNGStateCallback(L.Callback):
    """Saves and restores every RNG the run draws from (plain types and tensors: weights_only-safe)."""

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": {"version": version, "state": list(internal), "gauss": gauss},
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_callbacks(stage_dir: Path, every_n_steps: int, keep_last: int) -> list[L.Callback]:
    """Periodic checkpoints (`ckpt/step=N.ckpt`, newest `keep_last` kept, plus `last.ckpt`)."""
    cbs: list[L.Callback] = [RNGStateCallback(), LoaderProgress()]
    if every_n_steps and every_n_steps > 0:
        cbs.append(
            ModelCheckpoint(
                dirpath=str(stage_dir / "ckpt"),
                filename="step={ckpt_step:.0f}",
                auto_insert_metric_name=False,
                every_n_train_steps=int(every_n_steps),
                save_top_k=int(keep_last),
                monitor="ckpt_step",
                mode="max",
                save_last=True,
                save_on_train_epoch_end=False,
            )
        )
    return cbs


def last_checkpoint(stage_dir: Path) -> Path | None:
    return p if (p := Path(stage_dir) / "ckpt" / "last.ckpt").is_file() else None
