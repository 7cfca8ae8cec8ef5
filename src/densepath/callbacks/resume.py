"""Exact resume: atomic periodic checkpoints, a resumable data order, and RNG state in the checkpoint.

- `AtomicCheckpointIO`: writes to a temp file, fsyncs, then renames, so a crash while writing never
  leaves a corrupt checkpoint; refuses to write non-finite weights; loads with `weights_only=True`.
- `ResumableLoader`: a DataLoader whose order is a pure function of (seed, epoch) and whose position
  is saved in the checkpoint (Lightning restores `_Stateful` loaders), so a run resumed mid-epoch
  sees exactly the batches the uninterrupted run would have seen.
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
from torch.utils.data import DataLoader, Sampler

log = logging.getLogger(__name__)


class NonFiniteWeightsError(RuntimeError):
    pass


def _all_finite(obj) -> bool:
    if torch.is_tensor(obj):
        return bool(torch.isfinite(obj).all()) if obj.is_floating_point() else True
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    return True


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
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint {path} not found; pass an existing ckpt_path=... or use resume=auto"
            )
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class ResumableSampler(Sampler[int]):
    """Epoch e is `randperm(n, seed + e)`; `skip` batches at the start of the first epoch on resume."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch = 0
        self.start = 0  # indices to skip in the current epoch (set on resume)

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return self.n // self._rank_world()[1]

    def __iter__(self):
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = list(range(self.n))
        rank, world = self._rank_world()
        if world > 1:  # every rank gets a disjoint, equal-sized share of the same permutation
            order = order[: len(self) * world][rank::world]
        start, self.start = self.start, 0
        self.epoch += 1
        yield from order[start:]


class ResumableLoader(DataLoader):
    """A DataLoader with `state_dict` / `load_state_dict` (Lightning saves it in the checkpoint).

    The position is the number of batches the training loop has consumed, read from the trainer
    (`progress_fn`), not from the sampler, which runs one batch ahead because of prefetching.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        seed: int,
        collate_fn=None,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        self._rsampler = ResumableSampler(len(dataset), seed, shuffle)
        # a private generator: creating an iterator draws a base seed, which must not consume the
        # global RNG (that would shift the generation stream between a resumed and a straight run)
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=self._rsampler,
            collate_fn=collate_fn,
            drop_last=drop_last,
            num_workers=0,
            generator=torch.Generator().manual_seed(seed),
        )
        self.progress_fn = None

    def batches_per_epoch(self) -> int:
        return len(self)

    def state_dict(self) -> dict[str, int]:
        consumed = int(self.progress_fn()) if self.progress_fn is not None else 0
        return {"consumed_batches": consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        consumed = int(state.get("consumed_batches", 0))
        nb = max(1, self.batches_per_epoch())
        self._rsampler.epoch = consumed // nb
        self._rsampler.start = (consumed % nb) * self.batch_size
        log.info("resumed data order at epoch %d, batch %d", consumed // nb, consumed % nb)


class LoaderProgress(L.Callback):
    """Hands the trainer's step count to every ResumableLoader (one batch per optimiser step)."""

    def on_train_start(self, trainer, pl_module):
        loaders = trainer.fit_loop._combined_loader.flattened if trainer.fit_loop._combined_loader else []
        for dl in loaders:
            if isinstance(dl, ResumableLoader):
                dl.progress_fn = lambda t=trainer: t.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # the monitored value of keep-last-N checkpointing (ModelCheckpoint runs after this callback)
        pl_module.log("ckpt_step", float(trainer.global_step), logger=False, prog_bar=False)


def _python_state() -> dict:
    version, internal, gauss = random.getstate()
    return {"version": version, "state": list(internal), "gauss": gauss}


def _numpy_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


class RNGStateCallback(L.Callback):
    """Saves and restores every RNG the run draws from (plain types and tensors: weights_only-safe)."""

    def state_dict(self) -> dict[str, Any]:
        state = {
            "python": _python_state(),
            "numpy": _numpy_state(),
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
    p = Path(stage_dir) / "ckpt" / "last.ckpt"
    return p if p.is_file() else None
