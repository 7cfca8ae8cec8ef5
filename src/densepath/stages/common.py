"""What the stages share: the sampler, the trainer, resume, the evaluation report."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from densepath.data.task import check_rollout_length
from densepath.eval.evaluate import evaluate_policy, format_table
from densepath.eval.loglik import heldout_nll
from densepath.models.device import autocast_for

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


def build_sampler(ctx):
    """The configured sampler (the one home of decoding settings), checked against the task's horizon."""
    check_rollout_length(ctx.task, ctx.cfg.sampler.max_new_tokens)
    return instantiate(ctx.cfg.sampler).configure(ctx.tokenizer)


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


def evaluate_and_report(ctx, model, *, title: str, splits=("val", "eval"), extra=None) -> dict[str, float]:
    """Greedy and sampled evaluation on `splits` (sizes `eval.<split>_size`), printed as a table."""
    sampler = build_sampler(ctx)
    task = ctx.task
    metrics: dict[str, float] = {}
    model.eval()
    with autocast_for(ctx.cfg.trainer):
        for split in splits:
            rows = task.splits()[split][: ctx.cfg.eval.get(f"{split}_size") or None]
            m, _ = evaluate_policy(model, ctx.tokenizer, task, rows, sampler, split=split, extra=extra)
            metrics.update(m)
            metrics.update({f"{split}/{k}": v for k, v in task.reference_metrics(rows).items()})
            if not task.verifiable:
                for k, v in heldout_nll(model, ctx.tokenizer, task, rows).items():
                    metrics[f"{split}/{k}"] = v
                    metrics[f"{split}/sampled/{k}"] = v  # not sampled: listed there so tables find it
    families = sorted({r["family"] for r in task.splits()["eval"]})
    table = format_table(metrics, "eval", task.headline, families if len(families) > 1 else [], title=title)
    print("\n" + table + "\n", flush=True)
    return metrics


REPORT_CHOICES = ("auto", "best", "last")


def reported_checkpoint(ctx, node) -> str:
    """Which checkpoint a trained stage reports as its policy (`<node>.report`): `best` (the best-`val`
    checkpoint), `last` (the fixed budget in the config) or `auto`: best-`val` on tasks with a verifier,
    last on the others. On chat data the `val` headline is NLL, whose best checkpoint is the one closest
    to SFT: selecting on it would make any RL stage equal SFT by construction."""
    choice = str(node.get("report", "auto"))
    if choice not in REPORT_CHOICES:
        raise ValueError(
            f"{node._key() if hasattr(node, '_key') else 'report'}: report={choice!r}; use one of {list(REPORT_CHOICES)}"
        )
    if choice == "auto":
        return "best" if ctx.task.verifiable else "last"
    return choice


def report_best_and_last(ctx, name: str, node, sel, models: dict, extra_for, last_step: int):
    """Evaluate the reported checkpoint on `val` and `eval` (`eval/...`) and the other one on `eval`
    (`eval_best/...` or `eval_last/...`). `models` maps best/last to policies, `extra_for(model)` gives the
    per-sample extra. Returns (the reported checkpoint's name, metrics)."""
    primary = reported_checkpoint(ctx, node)
    titles = {
        "best": f"{name}: best-val checkpoint (step {sel.best_step}) on `eval`",
        "last": f"{name}: last checkpoint (step {last_step}, the configured budget) on `eval`",
    }
    more = evaluate_and_report(ctx, models[primary], title=titles[primary], extra=extra_for(models[primary]))
    other = "last" if primary == "best" else "best"
    m = evaluate_and_report(
        ctx,
        models[other],
        title=titles[other] + " (secondary)",
        splits=("eval",),
        extra=extra_for(models[other]),
    )
    more.update({k.replace("eval/", f"eval_{other}/", 1): v for k, v in m.items() if k.startswith("eval/")})
    more["report/last_checkpoint"] = float(primary == "last")
    return primary, more
