"""The SFT stage: train pi_SFT on demonstrations, save it and its baseline snapshots, evaluate."""

from __future__ import annotations

import random

from hydra.utils import instantiate

from densepath.callbacks.reward_recovery import RewardRecoveryCallback
from densepath.callbacks.snapshots import SnapshotCallback
from densepath.data.datamodule import DemoDataModule, encode_rows
from densepath.eval.extras import EntropyExtra
from densepath.eval.recovery_pass import RecoveryPass
from densepath.models.device import autocast_kind, device_for
from densepath.models.factory import count_params, prepare_policy
from densepath.models.io import save_policy
from densepath.stages.base import FitSetup, TrainingStage
from densepath.stages.common import build_sampler, evaluate_and_report


def recovery_callback(ctx, sft_dir) -> RewardRecoveryCallback:
    """The configured reward recovered from the live SFT model at the end of SFT (`callbacks.reward_recovery`)."""
    cfg = ctx.cfg
    rpass = RecoveryPass(
        reward_cfg=cfg.reward,
        baseline_cfg=cfg.baseline,
        sampler=build_sampler(ctx),
        task=ctx.task,
        tokenizer=ctx.tokenizer,
        sft_dir=sft_dir,
        probe_size=cfg.recover.probe_size,
        n_reference=cfg.recover.fidelity_samples,
        n_heat=cfg.recover.heatmap_rows,
        seed=cfg.seed,
        autocast_kind=autocast_kind(cfg.trainer),
        tokenizer_hash=ctx.manifest["tokenizer_hash"],
        tracking=ctx.tracking,
    )
    return RewardRecoveryCallback(
        rpass, sft_dir / "recovery", cfg.callbacks.reward_recovery.get("every_n_val", 0)
    )


def run_tokenizer(ctx, spec=None):
    """The model's own tokenizer, or one trained on the task's corpus (cached) for models without one."""
    spec = spec if spec is not None else instantiate(ctx.cfg.model)
    return spec.load_tokenizer() or ctx.task.build_tokenizer()


class SFTStage(TrainingStage):
    """`sft`: settings in the `sft` node; the LightningModule is `sft.module` (built by Hydra)."""

    policy_dir = "policy"
    artifact_subdir = "policy"

    half: list[int] | None = None  # set on the half-data SFT: the indices of its half of the `sft` split
    lr_factor_node: str | None = None  # a node whose `lr_factor` scales sft.module.lr (the low-LR control)

    @property
    def primary(self) -> bool:
        """The main SFT run (snapshots, recovery callback); not the half-data or low-LR controls."""
        return self.half is None and self.lr_factor_node is None

    def run(self, ctx) -> dict[str, float]:
        node = ctx.cfg.sft
        if node.get("half_data") and self.primary and not ctx.stage_finished(f"{self.name}_half_data"):
            # the paper's pi_base: SFT on a random half of the demonstrations, same passes and schedule
            # shape (half the optimiser steps), before the main run so its recovery report can use it.
            # The tokenizer first: a chat task fits its splits to the length limits when it is set.
            ctx.set_tokenizer(run_tokenizer(ctx))
            n = len(ctx.task.splits()["sft"])
            half = HalfDataSFTStage()
            half.name, half.half = (
                f"{self.name}_half_data",
                sorted(random.Random(ctx.cfg.seed).sample(range(n), n // 2)),
            )
            half.run(ctx)
        return super().run(ctx)

    def setup(self, ctx) -> FitSetup:
        cfg, scfg, dcfg = ctx.cfg, ctx.cfg.sft, ctx.cfg.data
        sft_dir = ctx.stage_dir(self.name)
        spec = instantiate(cfg.model)
        tok = run_tokenizer(ctx, spec)
        ctx.set_tokenizer(tok)
        model = prepare_policy(spec.build(tok), cfg.model, device_for(cfg.trainer))
        splits = ctx.task.splits()
        rows = splits["sft"] if self.half is None else [splits["sft"][i] for i in self.half]
        train = encode_rows(tok, ctx.task, rows, dcfg.max_prompt_len, dcfg.max_response_len, "sft")
        val = encode_rows(
            tok,
            ctx.task,
            splits["val"][: scfg.val_loss_size],
            dcfg.max_prompt_len,
            dcfg.max_response_len,
            "val",
        )
        self.snapshots = SnapshotCallback(
            sft_dir / "snapshots", list(scfg.snapshot_fractions), scfg.steps, scfg.batch_size, tok
        )
        callbacks = [self.snapshots] if self.primary else []
        self.recovery = None
        if self.primary and cfg.callbacks.get("reward_recovery", {}).get("enabled", False):
            self.recovery = recovery_callback(ctx, sft_dir)
            callbacks.append(self.recovery)
        steps, warmup = scfg.steps, scfg.module.warmup_steps
        if self.half is not None:  # the same schedule shape over half the steps
            steps, warmup = max(1, round(steps / 2)), round(warmup / 2)
        lr = float(scfg.module.lr) * (
            float(cfg[self.lr_factor_node].lr_factor) if self.lr_factor_node else 1.0
        )
        return FitSetup(
            module=instantiate(scfg.module, _partial_=True)(
                model, max_steps=steps, warmup_steps=warmup, lr=lr
            ),
            max_steps=steps,
            data={"datamodule": DemoDataModule(train, val, tok.pad_token_id, scfg.batch_size, cfg.seed)},
            callbacks=callbacks,
            trainer_kwargs={
                "val_check_interval": min(scfg.val_every, steps),
                "check_val_every_n_epoch": None,
            },
        )

    def report(self, ctx, fs: FitSetup, metrics: dict):
        module, sft_dir = fs.module, ctx.stage_dir(self.name)
        policy = save_policy(module.model, ctx.tokenizer, sft_dir / "policy")
        steps = int(metrics["train/steps"])
        more = {
            "train/tokens_per_s": module.trained_tokens / max(metrics["train/time_s"], 1e-9),
            "train/final_lr": module.final_lr(),
            "model/params": float(count_params(module.model)),
        }
        if self.recovery is not None:
            more.update({f"recovery/{k}": v for k, v in self.recovery.last_metrics.items()})
        more.update(
            evaluate_and_report(
                ctx, module.model, title="SFT policy on `eval`", extra=EntropyExtra(module.model)
            )
        )
        saved = self.snapshots.saved
        manifest = {
            "policy": policy["path"],
            "checkpoints": {"policy": policy, **{f"snapshot_{k}": v for k, v in saved.items()}},
            "snapshots": saved,
            "tokenizer_hash": ctx.manifest["tokenizer_hash"],
            "samples_seen": steps * ctx.cfg.sft.batch_size * fs.trainer.world_size,
            # the order of the `sft` split the run consumed (data.loader.consumed_indices recovers it)
            "data_order": {
                "n": len(ctx.task.splits()["sft"]),
                "seed": int(ctx.cfg.seed),
                "batch_size": int(ctx.cfg.sft.batch_size),
                "steps": steps,
                "world": int(fs.trainer.world_size),
            },
            "final_lr": module.final_lr(),
        }
        return more, manifest


class HalfDataSFTStage(SFTStage):
    """SFT on `half` of the demonstrations (run by `SFTStage` when `sft.half_data`): `baseline=half_data`."""

    def report(self, ctx, fs: FitSetup, metrics: dict):
        policy = save_policy(fs.module.model, ctx.tokenizer, ctx.stage_dir(self.name) / "policy")
        return {}, {
            "checkpoints": {"policy": policy},
            "demo_indices": self.half,
            "steps": int(metrics["train/steps"]),
        }


class LowLRSFTStage(SFTStage):
    """`sft_lowlr`: SFT from the same start as `sft` (model, data, steps, schedule shape) at
    `sft.module.lr * sft_lowlr.lr_factor`, the low-learning-rate control of "Implicit Reward as the
    Bridge". No snapshots, half-data run or recovery callback; its policy is evaluated like SFT's."""

    lr_factor_node = "sft_lowlr"

    def report(self, ctx, fs: FitSetup, metrics: dict):
        stage_dir = ctx.stage_dir(self.name)
        policy = save_policy(fs.module.model, ctx.tokenizer, stage_dir / "policy")
        more = {"train/final_lr": fs.module.final_lr(), "train/lr": float(fs.module.hparams.lr)}
        more.update(
            evaluate_and_report(ctx, fs.module.model, title=f"{self.name}: low-LR SFT policy on `eval`")
        )
        return more, {
            "policy": policy["path"],
            "checkpoints": {"policy": policy},
            "lr": float(fs.module.hparams.lr),
            "lr_factor": float(ctx.cfg[self.lr_factor_node].lr_factor),
            "compute": {
                "optimiser_steps": int(metrics["train/steps"]),
                "trained_tokens": int(fs.module.trained_tokens),
            },
        }
