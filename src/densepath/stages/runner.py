"""Runs the stages `pipeline.stages` lists, in order, in one run dir; sets the headline metrics."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from densepath.context import RunContext
from densepath.data.task import check_rollout_length
from densepath.models import attention
from densepath.models.device import device_for
from densepath.stages.base import Stage

log = logging.getLogger(__name__)


def build_pipeline(cfg: DictConfig) -> dict[str, Stage]:
    """name -> Stage, in order. Fails on a bad entry before any work is done."""
    stages = {}
    for name, node in (cfg.pipeline.get("stages") or {}).items():
        if node is None or "_target_" not in node:
            raise ValueError(
                f"pipeline.stages.{name}: no `_target_`; add a stage config, e.g. "
                f"+stage@pipeline.stages.{name}=<option of conf/stage>"
            )
        stage = instantiate(node)
        if not isinstance(stage, Stage):
            raise TypeError(f"pipeline.stages.{name}: {node._target_} is not a densepath.stages.base.Stage")
        stage.name = str(name)
        stages[str(name)] = stage
    if not stages:
        raise ValueError("pipeline.stages is empty: choose a pipeline, e.g. pipeline=default or pipeline=sft")
    return stages


def _run_name(cfg: DictConfig) -> str:
    if cfg.get("run_name"):
        return str(cfg.run_name)
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task
        return ",".join(o.split(".")[-1] for o in overrides)[:120]
    except Exception:  # noqa: BLE001 - outside a Hydra app (tests calling directly)
        return ""


def _set_headline(ctx, stages: dict[str, Stage]) -> None:
    """`eval/<headline>` and `val/<headline>` of DPR (else of the last policy stage), and the Optuna
    objective: the validation headline, signed so that higher is better (eval is never optimised)."""
    head = ctx.task.headline
    policy_stages = [n for n, s in stages.items() if s.policy_dir is not None]
    headline_stage = "dpr" if "dpr" in stages else (policy_stages[-1] if policy_stages else None)
    if headline_stage and f"{headline_stage}/eval/{head}" in ctx.metrics:
        ctx.metrics[f"eval/{head}"] = ctx.metrics[f"{headline_stage}/eval/{head}"]
        val = ctx.metrics.get(f"{headline_stage}/val/{head}")
        ctx.metrics[f"val/{head}"] = val
        sign = 1.0 if ctx.task.higher_is_better else -1.0
        ctx.metrics["objective"] = sign * val if val is not None else None
        ctx.manifest["headline_stage"] = headline_stage
    ctx.flush()


def run_stages(cfg: DictConfig, run_dir: Path) -> dict:
    stages = build_pipeline(cfg)
    ctx = RunContext.create(cfg, run_dir)
    check_rollout_length(ctx.task, cfg.sampler.max_new_tokens)  # before any work
    ctx.stages = stages
    ctx.run_name = _run_name(cfg)
    if "sft" not in stages:
        from densepath.models.io import load_tokenizer

        ctx.set_tokenizer(load_tokenizer(ctx.artefact_dir("sft") / "policy"))
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    attention.configure(cfg.get("attn_implementation", "auto"), device_for(cfg.trainer))
    for name, stage in stages.items():
        if cfg.get("resume") == "auto" and ctx.stage_finished(name):
            log.info("resume=auto: stage %s already finished in %s, skipped", name, run_dir)
            continue
        log.info("=== stage %s ===", name)
        t0 = time.perf_counter()
        try:
            stage.run(ctx)
        finally:  # a stage that raises still closes its tracking run: multirun jobs never merge
            if ctx.tracking is not None:
                ctx.tracking.finish()
        ctx.metrics[f"{name}/time_s"] = time.perf_counter() - t0
        ctx.flush()
    _set_headline(ctx, stages)
    return dict(ctx.metrics)
