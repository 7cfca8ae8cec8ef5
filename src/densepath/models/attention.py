"""The attention kernel every model of a run uses, chosen once per run (like the thread count).

Why: at the scale of the built-in models on CPU, transformers' `eager` attention (two small
matmuls and a softmax) is much faster than `sdpa`, whose CPU flash kernel has a large fixed cost
per call. Measured on the 2-core bench machine with the 5M model (`python -m benchmarks
dpr_vs_trl --attn`, and benchmarks/README.md): the RL update's forward + backward
0.87 s (eager) vs 1.26 s (sdpa), 4,096 sampled tokens 0.65 s vs 0.84 s. On a GPU, `sdpa` (or
flash attention) is the right choice (`attn_implementation: auto`). The math is the same; only
rounding differs.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

CHOICES = ("auto", "eager", "sdpa", "flash_attention_2", "flex_attention")
_choice: str | None = None


def resolve(name: str, device) -> str:
    if name not in CHOICES:
        raise ValueError(f"attn_implementation={name!r}: choose one of {', '.join(CHOICES)}")
    if name == "auto":
        return "eager" if torch.device(device).type == "cpu" else "sdpa"
    return name


def configure(name: str | None, device) -> str | None:
    """Set the run's kernel (`None` leaves every model as transformers loads it)."""
    global _choice
    _choice = None if name is None else resolve(name, device)
    log.info("attention implementation: %s", _choice or "transformers default")
    return _choice


def apply(model):
    """Switch `model` (a transformers PreTrainedModel) to the run's kernel; returns it.

    float64 models (the exact reference tests) keep their kernel: transformers 5.24's eager path
    turns a padding mask into NaN logits in float64 (float32 and bf16 are fine; tested)."""
    if _choice is None or not hasattr(model, "set_attn_implementation"):
        return model
    if _choice == "eager" and next(model.parameters()).dtype == torch.float64:
        return model
    model.set_attn_implementation(_choice)
    return model
