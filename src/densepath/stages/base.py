"""Stages: the steps a `pipeline` lists, each a class built from config with `_target_`.

`Stage.run(ctx)` returns the stage's metrics and records them (and its manifest) in the run dir.
`TrainingStage` is the one fit path SFT, the RL stages and continued SFT share: seed, build the
module and its data, logger, trainer, fit (resumable), read the run's totals back, save, evaluate,
manifest, artefact, finish. A subclass writes only what differs: `setup` and `report`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L

from densepath.stages.common import flat_config, make_trainer, resume_checkpoint

log = logging.getLogger(__name__)


class Stage:
    """One step of a pipeline. `name` is its key in `pipeline.stages` (set by the runner)."""

    name: str = ""
    policy_dir: str | None = None  # the checkpoint folder (in the stage dir) a policy stage reports

    def run(self, ctx) -> dict[str, float]:
        raise NotImplementedError


@dataclass
class FitSetup:
    """What a training stage hands the shared fit path."""

    module: L.LightningModule
    max_steps: int
    data: dict  # `datamodule=` or `train_dataloaders=` for `Trainer.fit`
    callbacks: list = field(default_factory=list)
    trainer_kwargs: dict = field(default_factory=dict)
    parents: tuple[str, ...] = ()  # earlier stages whose tracking artefact this stage uses (first found)
    trainer: L.Trainer | None = None  # set by the fit path


class TrainingStage(Stage):
    artifact_subdir = "best"  # the folder logged as the stage's model artefact

    def setup(self, ctx) -> FitSetup:
        raise NotImplementedError

    def report(self, ctx, fs: FitSetup, metrics: dict) -> tuple[dict, dict]:
        """Save, evaluate: returns (more metrics, the stage manifest)."""
        raise NotImplementedError

    def run(self, ctx) -> dict[str, float]:
        L.seed_everything(ctx.cfg.seed, workers=True)
        stage_dir = ctx.stage_dir(self.name)
        fs = self.setup(ctx)
        logger = False
        if ctx.tracking:
            logger = ctx.tracking.logger(stage_dir, self.name, ctx.run_name, flat_config(ctx.cfg))
            for parent in fs.parents:
                if (art := ctx.parent_artifact(parent)) is not None:
                    ctx.tracking.use_artifact(art)
                    break
        trainer = make_trainer(
            ctx, self.name, max_steps=fs.max_steps, callbacks=fs.callbacks, logger=logger, **fs.trainer_kwargs
        )
        fs.trainer = trainer
        t0 = time.perf_counter()
        trainer.fit(fs.module, **fs.data, ckpt_path=resume_checkpoint(ctx, self.name))
        train_time = time.perf_counter() - t0
        counters = fs.module.run_counters()  # totals over ranks (carried back under ddp_spawn)
        metrics = {
            "train/steps": float(counters.pop("optimiser_steps")),
            **{f"train/{k}": float(v) for k, v in counters.items()},
            "train/time_s": train_time,
        }
        for k, v in trainer.callback_metrics.items():
            if k in ("train/loss", "val/loss"):
                metrics[k] = float(v)
        more, manifest = self.report(ctx, fs, metrics)
        metrics.update(more)
        if ctx.tracking:
            manifest["wandb_artifact"] = ctx.artifact_name(self.name)
            ctx.tracking.log_artifact(
                manifest["wandb_artifact"], "model", stage_dir / self.artifact_subdir, {}
            )
        ctx.record(self.name, metrics, manifest)
        if ctx.tracking:
            ctx.tracking.finish(
                {f"final/{k}": v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)}
            )
        return metrics


def compute(counters_source: dict) -> dict:
    """The compute a training stage spent, for its manifest (matched by the controls)."""
    return {
        "optimiser_steps": int(counters_source["train/steps"]),
        "trained_tokens": int(counters_source.get("train/trained_tokens", 0)),
        "generated_tokens": int(counters_source.get("train/generated_tokens", 0)),
    }


def policy_path(ctx, stage: str) -> Path | None:
    """The policy checkpoint a finished stage reports (its manifest's `policy`), here or in the parent run."""
    try:
        man = json.loads((ctx.artefact_dir(stage) / "manifest.json").read_text())
    except FileNotFoundError:
        return None
    p = man.get("policy")
    return Path(p) if p else None


def available_policies(ctx) -> list[str]:
    """Stages whose policy exists: this pipeline's policy stages, then the parent run's."""
    names = [n for n, st in ctx.stages.items() if st.policy_dir is not None]
    if ctx.parent_run is not None and (ctx.parent_run / "manifest.json").exists():
        stages = json.loads((ctx.parent_run / "manifest.json").read_text()).get("stages", {})
        names += [n for n, man in stages.items() if man.get("policy") and n not in names]
    return names
