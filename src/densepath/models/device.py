"""Where models run and in which precision, read from the `trainer` config node."""

from __future__ import annotations

import contextlib

import torch


def device_for(trainer_cfg) -> torch.device:
    """CUDA when the trainer asks for a GPU and one is present, else the CPU."""
    acc = str(trainer_cfg.get("accelerator", "cpu"))
    if acc in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_kind(trainer_cfg) -> str | None:
    """The autocast device type for generation/scoring when the trainer trains in bf16, else None."""
    if not str(trainer_cfg.get("precision", "32")).startswith("bf16"):
        return None
    return device_for(trainer_cfg).type


def autocast_for(trainer_cfg):
    """bf16 autocast for generation/scoring when the trainer trains in bf16 (faster on CPU too)."""
    kind = autocast_kind(trainer_cfg)
    return torch.autocast(kind, dtype=torch.bfloat16) if kind else contextlib.nullcontext()
