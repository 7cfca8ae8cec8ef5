"""The SFT stage: train pi_SFT on demonstrations, save it and its baseline snapshots, evaluate."""

from __future__ import annotations

import json
import logging
import time

import lightning as L
from hydra.utils import instantiate

from densepath.algos.sft import SFTModule, read_counts
from densepath.callbacks.reward_recovery import RewardRecoveryCallback
from densepath.callbacks.snapshots import SnapshotCallback
from densepath.data.datamodule import DemoDataModule, encode_rows
from densepath.models.factory import count_params, prepare_policy
from densepath.models.io import save_policy
from densepath.stages.common import (
    entropy_extra,
    evaluate_and_report,
    flat_config,
    make_trainer,
    resume_checkpoint,
)

log = logging.getLogger(__name__)


def build_tokenizer(ctx):
    spec = instantiate(ctx.cfg.model)
    tok = spec.load_tokenizer() or ctx.task.build_tokenizer()
    ctx.set_tokenizer(tok)
    return spec, tok


def run(ctx) -> dict[str, float]:
    cfg, scfg, dcfg = ctx.cfg, ctx.cfg.sft, ctx.cfg.data
    stage_dir = ctx.stage_dir("sft")
    L.seed_everything(cfg.seed, workers=True)
    spec, tok = build_tokenizer(ctx)
    model = spec.build(tok)
    model = prepare_policy(model, cfg.model)
    splits = ctx.task.splits()
    train = encode_rows(tok, ctx.task, splits["sft"], dcfg.max_prompt_len, dcfg.max_response_len, "sft")
    val = encode_rows(
        tok, ctx.task, splits["val"][: scfg.val_size], dcfg.max_prompt_len, dcfg.max_response_len, "val"
    )
    dm = DemoDataModule(train, val, tok.pad_token_id, scfg.batch_size, cfg.seed)
    module = SFTModule(
        model,
        lr=scfg.lr,
        weight_decay=scfg.weight_decay,
        warmup_steps=scfg.warmup_steps,
        min_lr_ratio=scfg.min_lr_ratio,
        max_steps=scfg.steps,
        constant_lr=scfg.constant_lr,
        max_bad_steps=cfg.get("max_bad_steps", 5),
    )
    snaps = SnapshotCallback(
        stage_dir / "snapshots", list(scfg.snapshot_fractions), scfg.steps, scfg.batch_size, tok
    )
    callbacks = [snaps]
    rr_cfg = cfg.callbacks.get("reward_recovery", {})
    if rr_cfg.get("enabled", False):
        callbacks.append(RewardRecoveryCallback(ctx, stage_dir, rr_cfg.get("every_n_val", 0)))
    logger = ctx.tracking.logger(stage_dir, "sft", ctx.run_name, flat_config(cfg)) if ctx.tracking else False
    trainer = make_trainer(
        ctx,
        "sft",
        max_steps=scfg.steps,
        callbacks=callbacks,
        logger=logger,
        val_check_interval=min(scfg.val_every, scfg.steps),
        check_val_every_n_epoch=None,
    )
    module.counts_path = stage_dir / "train_counts.json"
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=resume_checkpoint(ctx, "sft"))
    train_time = time.perf_counter() - t0
    steps_done = read_counts(module, module.counts_path)
    steps_done = (
        trainer.global_step if steps_done is None else steps_done
    )  # totals over ranks (ddp) / survives ddp_spawn
    snaps.reload()
    policy = save_policy(module.model, tok, stage_dir / "policy")

    metrics = {
        "train/steps": float(steps_done),
        "train/trained_tokens": float(module.trained_tokens),
        "train/tokens_per_s": module.trained_tokens / max(train_time, 1e-9),
        "train/time_s": train_time,
        "train/final_lr": module.final_lr(),
        "model/params": float(count_params(module.model)),
    }
    for k in ("train/loss", "val/loss"):
        if k in trainer.callback_metrics:
            metrics[k] = float(trainer.callback_metrics[k])
    rec = stage_dir / "recovery" / "final" / "metrics.json"
    if rec.exists():  # written by RewardRecoveryCallback on rank 0
        metrics.update({f"recovery/{k}": v for k, v in json.loads(rec.read_text()).items()})
    metrics.update(
        evaluate_and_report(
            ctx, module.model, title="SFT policy on `eval`", extra=entropy_extra(module.model)
        )
    )
    manifest = {
        "checkpoints": {"policy": policy, **{f"snapshot_{k}": v for k, v in snaps.saved.items()}},
        "snapshots": snaps.saved,
        "tokenizer_hash": ctx.manifest["tokenizer_hash"],
        "samples_seen": steps_done * scfg.batch_size * trainer.world_size,
        "final_lr": module.final_lr(),
    }
    if ctx.tracking:
        manifest["wandb_artifact"] = ctx.artifact_name("sft")
        ctx.tracking.log_artifact(
            manifest["wandb_artifact"], "model", stage_dir / "policy", {"sha256": policy["sha256"]}
        )
    ctx.record("sft", metrics, manifest)
    if ctx.tracking:
        ctx.tracking.finish({f"final/{k}": v for k, v in metrics.items()})
    return metrics
