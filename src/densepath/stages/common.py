"""Helpers shared by the stages: trainer construction, policy loading, evaluation and printing."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from densepath.eval.evaluate import evaluate_policy, format_table
from densepath.models.io import load_policy
from densepath.models.tokenizer import tokenizer_hash

log = logging.getLogger(__name__)


def flat_config(cfg) -> dict:
    """The resolved config as a flat dict (`a.b.c: value`), for tracking backends."""
    out = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = node

    walk("", OmegaConf.to_container(cfg, resolve=True))
    return out


def make_trainer(ctx, stage: str, *, max_steps: int, callbacks: list, logger, **overrides):
    return instantiate(ctx.cfg.trainer, max_steps=max_steps, logger=logger, callbacks=callbacks, **overrides)


def autocast_for(ctx):
    """bf16 autocast for generation/scoring when the trainer trains in bf16 (faster on CPU too)."""
    prec = str(ctx.cfg.trainer.get("precision", "32"))
    if prec.startswith("bf16"):
        device = (
            "cuda"
            if torch.cuda.is_available() and ctx.cfg.trainer.get("accelerator") in ("gpu", "cuda")
            else "cpu"
        )
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def device_for(ctx) -> torch.device:
    acc = str(ctx.cfg.trainer.get("accelerator", "cpu"))
    if acc in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def load_checked(path: Path, ctx, role: str):
    """Load a saved policy and check it shares the run's tokenizer (a mismatch silently breaks scoring)."""
    model, tok = load_policy(path)
    if ctx.tokenizer is not None and tokenizer_hash(tok) != tokenizer_hash(ctx.tokenizer):
        raise ValueError(
            f"tokenizer mismatch: {role} at {path} does not share the policy's tokenizer/vocabulary "
            f"({len(tok)} vs {len(ctx.tokenizer)} tokens). Every scorer must use the policy's tokenizer; "
            "use checkpoints from the same SFT run."
        )
    return model, tok


def evaluate_and_report(ctx, model, *, title: str, splits=("val", "eval"), extra=None) -> dict[str, float]:
    sampler = instantiate(ctx.cfg.sampler).configure(ctx.tokenizer)
    task = ctx.task
    ev = ctx.cfg.eval
    metrics: dict[str, float] = {}
    model.eval()
    with autocast_for(ctx):
        for split in splits:
            rows = task.splits()[split][: ev.get(f"{split}_size") or None]
            m, _ = evaluate_policy(
                model,
                ctx.tokenizer,
                task,
                rows,
                sampler,
                split=split,
                temperature=ev.temperature,
                extra=extra,
            )
            metrics.update(m)
            if not task.has_verifier and task.headline == "nll":
                from densepath.eval.loglik import heldout_nll

                for k, v in heldout_nll(model, ctx.tokenizer, task, rows).items():
                    metrics[f"{split}/{k}"] = v
                    metrics[f"{split}/sampled/{k}"] = v  # not sampled: listed there so tables find it
    if hasattr(task, "reference_metrics"):
        metrics.update({f"eval/{k}": v for k, v in task.reference_metrics().items()})
    families = sorted({r["family"] for r in task.splits()["eval"]})
    table = format_table(metrics, "eval", task.headline, families if len(families) > 1 else [], title=title)
    print("\n" + table + "\n", flush=True)
    return metrics
