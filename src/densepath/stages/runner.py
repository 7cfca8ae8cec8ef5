"""Runs the stages an `algo` names, in order, in one run dir; prints the final comparison."""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from densepath.context import RunContext

log = logging.getLogger(__name__)

# stage name -> "module:function"; each function takes the RunContext and returns its metrics
STAGES = {
    "sft": "densepath.stages.sft:run",
    "recover": "densepath.stages.recover:run",
    "dpr": "densepath.stages.rl:run_dpr",
    "rloo": "densepath.stages.rl:run_rloo",
    "continued_sft": "densepath.stages.continued_sft:run",
    "temperature": "densepath.stages.temperature:run",
}


def _resolve(name: str):
    if name not in STAGES:
        raise ValueError(f"algo.stages: unknown stage `{name}`; choose from {sorted(STAGES)}")
    mod, fn = STAGES[name].split(":")
    return getattr(importlib.import_module(mod), fn)


def _run_name(cfg: DictConfig) -> str:
    if cfg.get("run_name"):
        return str(cfg.run_name)
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task
        return ",".join(o.split(".")[-1] for o in overrides)[:120]
    except Exception:  # noqa: BLE001 - outside a Hydra app (tests calling directly)
        return ""


def run_stages(cfg: DictConfig, run_dir: Path) -> dict:
    stages = list(cfg.algo.stages)
    fns = [_resolve(s) for s in stages]  # fail on a typo before any work
    ctx = RunContext.create(cfg, run_dir)
    ctx.run_name = _run_name(cfg)
    if "sft" not in stages:
        from densepath.models.io import load_tokenizer

        ctx.set_tokenizer(load_tokenizer(ctx.artefact_dir("sft") / "policy"))
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    from densepath.models import attention
    from densepath.stages.common import device_for

    attention.configure(cfg.get("attn_implementation", "auto"), device_for(ctx))
    timings = {}
    for name, fn in zip(stages, fns):
        if cfg.get("resume") == "auto" and ctx.stage_finished(name):
            log.info("resume=auto: stage %s already finished in %s, skipped", name, run_dir)
            continue
        log.info("=== stage %s ===", name)
        t0 = time.perf_counter()
        try:
            fn(ctx)
        finally:  # a stage that raises still closes its tracking run: multirun jobs never merge
            if ctx.tracking is not None:
                ctx.tracking.finish()
        timings[name] = time.perf_counter() - t0
        ctx.metrics[f"{name}/time_s"] = timings[name]
        ctx.flush()
    head = ctx.task.headline
    policy_stages = [s for s in stages if s not in ("recover", "temperature")]
    headline_stage = "dpr" if "dpr" in stages else (policy_stages[-1] if policy_stages else None)
    if headline_stage and f"{headline_stage}/eval/{head}" in ctx.metrics:
        ctx.metrics[f"eval/{head}"] = ctx.metrics[f"{headline_stage}/eval/{head}"]
        val = ctx.metrics.get(f"{headline_stage}/val/{head}")
        ctx.metrics[f"val/{head}"] = val
        # the Optuna objective: validation only, higher is better (negated likelihood loss)
        ctx.metrics["objective"] = (-val if head == "nll" else val) if val is not None else None
        ctx.manifest["headline_stage"] = headline_stage
    ctx.flush()
    from densepath.eval.report import print_final_table

    print_final_table(ctx, stages)
    return dict(ctx.metrics)
