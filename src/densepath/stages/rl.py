"""The RL stages: DPR (dense reward-to-go) and RLOO (sequence-level), sharing every code path."""

from __future__ import annotations

import logging
import time

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate

from densepath.algos.rl import RLModule
from densepath.algos.sft import read_counts
from densepath.callbacks.resume import ResumableLoader
from densepath.callbacks.samples import SampleTableCallback
from densepath.callbacks.val_eval import ValEvalCallback, val_headline_fn
from densepath.data.formatting import encode_prompt
from densepath.models.factory import prepare_policy
from densepath.models.io import load_policy, save_policy
from densepath.rewards.dense import DenseReward
from densepath.rewards.logprobs import response_logprobs
from densepath.stages.common import (
    device_for,
    entropy_per_token,
    evaluate_and_report,
    flat_config,
    make_trainer,
    resume_checkpoint,
)

log = logging.getLogger(__name__)


def build_reward(ctx, device) -> DenseReward:
    spec = instantiate(ctx.cfg.reward)
    baseline = instantiate(ctx.cfg.baseline) if spec.uses_baseline else None
    reward = DenseReward.from_sft_dir(
        spec, baseline, ctx.artefact_dir("sft"), ctx.tokenizer, device, dtype=getattr(torch, spec.dtype)
    )
    ctx.manifest["reward"] = reward.describe()
    ctx.manifest["baseline"] = reward.baseline_name
    return reward


def reward_and_kl_extra(reward: DenseReward, policy):
    """Per-sample recovered reward and KL(pi || pi_SFT) estimate (sum over tokens of log pi - log pi_SFT)."""

    @torch.no_grad()
    def extra(b):
        b = b.to(next(policy.parameters()).device)
        out = reward.score_full(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask)
        lp = response_logprobs(policy, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask).logp
        m = b.response_mask.float()
        return {
            "reward": (out.rewards.float() * m).sum(-1).cpu().numpy(),
            "kl_to_sft": ((lp.float() - out.logp_sft.float()) * m).sum(-1).cpu().numpy(),
            "entropy_est": entropy_per_token(lp, m),
        }

    return extra


class Verifier:
    """Ground truth of RL samples (picklable: ddp_spawn ships the module to worker processes)."""

    def __init__(self, tokenizer, task, rows):
        self.tok, self.task, self.rows = tokenizer, task, rows

    def __call__(self, prompt_idx, b):
        ids, mask = b.response_ids.cpu(), b.response_mask.cpu().bool()
        texts = [
            self.tok.decode(ids[i][mask[i]].tolist(), skip_special_tokens=True) for i in range(ids.shape[0])
        ]
        rws = [self.rows[prompt_idx[i // b.k]] for i in range(ids.shape[0])]
        return {k: v for k, v in self.task.score(rws, texts).items() if k != "valid"}


def run_rl(ctx, stage: str, sequence_level: bool) -> dict[str, float]:
    cfg, acfg = ctx.cfg, ctx.cfg.algo
    stage_dir = ctx.stage_dir(stage)
    L.seed_everything(cfg.seed, workers=True)
    device = device_for(ctx)
    sft_dir = ctx.artefact_dir("sft")
    policy = prepare_policy(load_policy(sft_dir / "policy")[0], cfg.model)
    reward = build_reward(ctx, device)
    sampler = instantiate(cfg.sampler).configure(ctx.tokenizer)
    rows = ctx.task.splits()["rl"]
    prompts = [encode_prompt(ctx.tokenizer, ctx.task.messages(r)) for r in rows]
    module = RLModule(
        policy,
        reward,
        sampler,
        prompts,
        k=acfg.k,
        lr=acfg.lr,
        gamma=acfg.gamma,
        advantage=acfg.advantage,
        whiten_advantages=acfg.whiten,
        norm=acfg.norm,
        kl=acfg.kl,
        kl_coef=acfg.kl_coef,
        temperature=acfg.temperature,
        max_new_tokens=acfg.max_new_tokens,
        sequence_level=sequence_level,
        ppo_epochs=acfg.ppo_epochs,
        clip_eps=acfg.clip_eps,
        grad_clip=acfg.grad_clip,
        verify=Verifier(ctx.tokenizer, ctx.task, rows),
        max_bad_steps=cfg.get("max_bad_steps", 5),
    )
    val_rows = ctx.task.splits()["val"][: acfg.val_size]
    val_cb = ValEvalCallback(
        val_headline_fn(ctx, sampler, val_rows),
        acfg.val_every,
        stage_dir,
        ctx.tokenizer,
        ctx.task.headline,
        model_attr="policy",
    )
    loader = ResumableLoader(list(range(len(prompts))), acfg.prompts_per_step, cfg.seed)
    logger = ctx.tracking.logger(stage_dir, stage, ctx.run_name, flat_config(cfg)) if ctx.tracking else False
    if ctx.tracking:
        for parent_stage in ("recover", "sft"):
            if (parent := ctx.parent_artifact(parent_stage)) is not None:
                ctx.tracking.use_artifact(parent)
                break
    samples_cb = SampleTableCallback(
        ctx.tokenizer, stage_dir / "samples", acfg.sample_table_every, ctx.tracking
    )
    trainer = make_trainer(
        ctx,
        stage,
        max_steps=acfg.steps,
        callbacks=[val_cb, samples_cb],
        logger=logger,
        gradient_clip_val=None,
    )
    module.counts_path = stage_dir / "train_counts.json"
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=resume_checkpoint(ctx, stage))
    train_time = time.perf_counter() - t0
    steps_done = read_counts(module, module.counts_path)
    steps_done = trainer.global_step if steps_done is None else steps_done
    val_cb.reload()
    last = save_policy(module.policy, ctx.tokenizer, stage_dir / "last")

    metrics = {
        "train/steps": float(steps_done),
        "train/trained_tokens": float(module.trained_tokens),
        "train/generated_tokens": float(module.generated_tokens),
        "train/time_s": train_time,
        "val/best": val_cb.best,
        "val/best_step": float(val_cb.best_step),
    }
    for k, v in trainer.callback_metrics.items():
        if k.startswith("train/"):
            metrics[f"{k}_last"] = float(v)
    # final report: the best-val checkpoint on eval, the last one for reference
    best_model, _ = load_policy(stage_dir / "best")
    best_model.to(device)
    metrics.update(
        evaluate_and_report(
            ctx,
            best_model,
            title=f"{stage}: best-val checkpoint (step {val_cb.best_step}) on `eval`",
            extra=reward_and_kl_extra(reward, best_model),
        )
    )
    last_m = evaluate_and_report(
        ctx,
        module.policy.to(device),
        title=f"{stage}: last checkpoint on `eval`",
        splits=("eval",),
        extra=reward_and_kl_extra(reward, module.policy),
    )
    metrics.update(
        {k.replace("eval/", "eval_last/", 1): v for k, v in last_m.items() if k.startswith("eval/")}
    )
    manifest = {
        "checkpoints": {"best": {"path": str(stage_dir / "best"), "step": val_cb.best_step}, "last": last},
        "reward": reward.describe(),
        "baseline": reward.baseline_name,
        "parent_sft": str(sft_dir),
        "val_history": val_cb.history,
        "compute": {
            "optimiser_steps": steps_done,
            "trained_tokens": module.trained_tokens,
            "generated_tokens": module.generated_tokens,
        },
    }
    if ctx.tracking:
        manifest["wandb_artifact"] = ctx.artifact_name(stage)
        ctx.tracking.log_artifact(
            manifest["wandb_artifact"], "model", stage_dir / "best", {"best_step": val_cb.best_step}
        )
    ctx.record(stage, metrics, manifest)
    if ctx.tracking:
        ctx.tracking.finish(
            {f"final/{k}": v for k, v in metrics.items() if isinstance(v, float) and np.isfinite(v)}
        )
    return metrics


def run_dpr(ctx):
    return run_rl(ctx, "dpr", sequence_level=False)


def run_rloo(ctx):
    return run_rl(ctx, "rloo", sequence_level=True)
