"""Helpers shared by the stages: trainer construction, policy loading, evaluation and printing."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from densepath.eval.evaluate import evaluate_policy, format_table

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
    """The configured Trainer plus exact-resume machinery: atomic periodic checkpoints under
    `<stage>/ckpt/`, RNG state and data position in every checkpoint."""
    from densepath.callbacks.resume import AtomicCheckpointIO, checkpoint_callbacks

    ck = ctx.cfg.get("checkpoint", {}) or {}
    every = int(ck.get("every_n_steps", 0) or 0)
    cbs = list(callbacks) + checkpoint_callbacks(ctx.stage_dir(stage), every, int(ck.get("keep_last", 2)))
    if every > 0:
        overrides["enable_checkpointing"] = True
    if int(ctx.cfg.trainer.get("devices", 1) or 1) != 1:
        # ddp_spawn pickles the module through shared memory; fd passing fails in some sandboxes
        torch.multiprocessing.set_sharing_strategy("file_system")
    return instantiate(
        ctx.cfg.trainer,
        max_steps=max_steps,
        logger=logger,
        callbacks=cbs,
        plugins=[AtomicCheckpointIO()],
        **overrides,
    )


def resume_checkpoint(ctx, stage: str) -> str | None:
    """The checkpoint a training stage starts from: `ckpt_path=` if given, else, when the run dir
    is being resumed (resume=auto), the stage's own `last.ckpt`."""
    from densepath.callbacks.resume import last_checkpoint

    if ctx.cfg.get("ckpt_path"):
        p = Path(ctx.cfg.ckpt_path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"ckpt_path={ctx.cfg.ckpt_path}: no such checkpoint file")
        return str(p)
    if ctx.cfg.get("resume") == "auto":
        last = last_checkpoint(ctx.stage_dir(stage))
        if last is not None:
            log.info("resume=auto: stage %s continues from %s", stage, last)
            return str(last)
    return None


def autocast_kind(ctx) -> str | None:
    """The autocast device type for generation/scoring when the trainer trains in bf16, else None."""
    if not str(ctx.cfg.trainer.get("precision", "32")).startswith("bf16"):
        return None
    on_gpu = torch.cuda.is_available() and ctx.cfg.trainer.get("accelerator") in ("gpu", "cuda")
    return "cuda" if on_gpu else "cpu"


def autocast_for(ctx):
    """bf16 autocast for generation/scoring when the trainer trains in bf16 (faster on CPU too)."""
    kind = autocast_kind(ctx)
    return torch.autocast(kind, dtype=torch.bfloat16) if kind else contextlib.nullcontext()


def device_for(ctx) -> torch.device:
    acc = str(ctx.cfg.trainer.get("accelerator", "cpu"))
    if acc in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def entropy_per_token(logp: torch.Tensor, mask: torch.Tensor):
    """Per-sample entropy estimate of the sampling policy: mean over response tokens of -log pi. (B,)"""
    m = mask.float()
    return (-(logp.float() * m).sum(-1) / m.sum(-1).clamp(min=1)).cpu().numpy()


def entropy_extra(policy):
    """`evaluate_policy` extra: the entropy estimate of each sample."""
    from densepath.rewards.logprobs import response_logprobs

    @torch.no_grad()
    def extra(b):
        b = b.to(next(policy.parameters()).device)
        lp = response_logprobs(policy, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask).logp
        return {"entropy_est": entropy_per_token(lp, b.response_mask)}

    return extra


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
