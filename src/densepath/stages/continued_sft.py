"""Compute-matched control: SFT continued from pi_SFT on fresh demonstrations.

Same number of optimiser steps as the DPR run it is compared with, about the same number of trained
tokens (the batch size is chosen to match), at SFT's final learning rate (constant).
"""

from __future__ import annotations

import json
import logging
import time

import lightning as L
import numpy as np

from densepath.algos.sft import SFTModule, read_counts
from densepath.callbacks.val_eval import ValEvalCallback, val_headline_fn
from densepath.data.datamodule import DemoDataModule, encode_rows
from densepath.models.factory import prepare_policy
from densepath.models.io import load_policy, save_policy
from densepath.stages.common import (
    device_for,
    evaluate_and_report,
    flat_config,
    make_trainer,
    resume_checkpoint,
)

log = logging.getLogger(__name__)


def _dpr_compute(ctx) -> tuple[int, float] | None:
    """(optimiser steps, trained tokens) of the DPR run in this run dir or the parent run."""
    if "dpr/train/steps" in ctx.metrics:
        return int(ctx.metrics["dpr/train/steps"]), float(ctx.metrics["dpr/train/trained_tokens"])
    try:
        man = json.loads((ctx.artefact_dir("dpr") / "manifest.json").read_text())
        c = man["compute"]
        return int(c["optimiser_steps"]), float(c["trained_tokens"])
    except (FileNotFoundError, KeyError):
        return None


def run(ctx) -> dict[str, float]:
    cfg, acfg, dcfg = ctx.cfg, ctx.cfg.algo, ctx.cfg.data
    stage_dir = ctx.stage_dir("continued_sft")
    L.seed_everything(cfg.seed, workers=True)
    sft_dir = ctx.artefact_dir("sft")
    sft_man = json.loads((sft_dir / "manifest.json").read_text())
    policy = prepare_policy(load_policy(sft_dir / "policy")[0], cfg.model)
    matched = _dpr_compute(ctx)
    probe = ctx.task.fresh_demonstrations(256, cfg.seed + 1)
    enc_probe = encode_rows(
        ctx.tokenizer, ctx.task, probe, dcfg.max_prompt_len, dcfg.max_response_len, "fresh"
    )
    mean_len = float(np.mean([len(e.response_ids) for e in enc_probe]))
    if matched is None:
        steps = int(acfg.steps)
        target_tokens = steps * acfg.prompts_per_step * acfg.k * mean_len
        log.warning(
            "no DPR run to match: using algo.steps=%d and prompts_per_step*k demonstrations per step", steps
        )
    else:
        steps, target_tokens = matched
    batch_size = max(1, round(target_tokens / max(1, steps) / mean_len))
    rows = ctx.task.fresh_demonstrations(steps * batch_size, cfg.seed + 2)
    train = encode_rows(
        ctx.tokenizer, ctx.task, rows, dcfg.max_prompt_len, dcfg.max_response_len, "continued_sft"
    )
    val_demo = encode_rows(
        ctx.tokenizer,
        ctx.task,
        ctx.task.splits()["val"][: cfg.sft.val_size],
        dcfg.max_prompt_len,
        dcfg.max_response_len,
        "val",
    )
    dm = DemoDataModule(train, val_demo, ctx.tokenizer.pad_token_id, batch_size, cfg.seed)
    lr = float(sft_man.get("final_lr", cfg.sft.lr * cfg.sft.min_lr_ratio))
    module = SFTModule(policy, lr=lr, weight_decay=cfg.sft.weight_decay, max_steps=steps, constant_lr=True)
    from hydra.utils import instantiate

    sampler = instantiate(cfg.sampler).configure(ctx.tokenizer)
    val_cb = ValEvalCallback(
        val_headline_fn(ctx, sampler, ctx.task.splits()["val"][: acfg.val_size]),
        acfg.val_every,
        stage_dir,
        ctx.tokenizer,
        ctx.task.headline,
        model_attr="model",
    )
    logger = (
        ctx.tracking.logger(stage_dir, "continued_sft", ctx.run_name, flat_config(cfg))
        if ctx.tracking
        else False
    )
    trainer = make_trainer(
        ctx, "continued_sft", max_steps=steps, callbacks=[val_cb], logger=logger, limit_val_batches=0
    )
    module.counts_path = stage_dir / "train_counts.json"
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=resume_checkpoint(ctx, "continued_sft"))
    train_time = time.perf_counter() - t0
    steps_done = read_counts(module, module.counts_path)
    steps_done = trainer.global_step if steps_done is None else steps_done
    val_cb.reload()
    last = save_policy(module.model, ctx.tokenizer, stage_dir / "last")
    metrics = {
        "train/steps": float(steps_done),
        "train/trained_tokens": float(module.trained_tokens),
        "train/generated_tokens": 0.0,
        "train/batch_size": float(batch_size),
        "train/lr": lr,
        "train/time_s": train_time,
        "train/matched_tokens_target": float(target_tokens),
        "val/best": val_cb.best,
        "val/best_step": float(val_cb.best_step),
    }
    extra = None
    try:
        from densepath.stages.rl import build_reward, reward_and_kl_extra

        reward = build_reward(ctx, device_for(ctx))
    except (FileNotFoundError, ValueError) as e:
        log.warning("no reward model for the report (%s)", e)
        reward = None
    best_model, _ = load_policy(stage_dir / "best")
    if reward is not None:
        extra = reward_and_kl_extra(reward, best_model)
    metrics.update(
        evaluate_and_report(
            ctx, best_model, title="continued SFT: best-val checkpoint on `eval`", extra=extra
        )
    )
    manifest = {
        "checkpoints": {"best": {"path": str(stage_dir / "best"), "step": val_cb.best_step}, "last": last},
        "parent_sft": str(sft_dir),
        "matched_to_dpr": matched is not None,
        "compute": {
            "optimiser_steps": steps_done,
            "trained_tokens": module.trained_tokens,
            "generated_tokens": 0,
        },
    }
    ctx.record("continued_sft", metrics, manifest)
    if ctx.tracking:
        ctx.tracking.finish({f"final/{k}": v for k, v in metrics.items() if np.isfinite(v)})
    return metrics
