"""Extension without editing: a new stage, task, reward formulation and baseline, each in its own file
under tests/extension/ with a config under tests/conf/, run in a pipeline through Hydra's search path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from hydra.utils import instantiate

from conftest import compose_cfg, run_cfg

HERE = Path(__file__).resolve().parent


def test_new_stage_task_reward_and_baseline_run_in_a_pipeline(tmp_path: Path):
    from densepath.data.datamodule import Collator, encode_rows
    from densepath.models.io import load_policy
    from densepath.models.logprobs import response_logprobs
    from extension.copy_task import CopyTask

    run = tmp_path / "run"
    overrides = [
        "debug=tiny",
        f"hydra.searchpath=[file://{HERE / 'conf'}]",
        "data=copy",
        f"data.cache_dir={tmp_path / 'cache'}",
        "reward=log_ratio_bonus",
        "baseline=uniform_mix",
        "pipeline=sft",
        "+stage@pipeline.stages.reward_summary=reward_summary",
        "+reward_summary.n_demos=8",
    ]
    metrics = run_cfg(overrides, run)
    # the task: SFT trained and evaluated on it; the recovery callback ran its corruption probe
    assert 0.0 <= metrics["sft/eval/sampled/success"] <= 1.0
    assert metrics["sft/recovery/probe/n"] > 0 and "sft/recovery/probe/detection_rate" in metrics
    # the manifest names the new formulation and baseline
    man = json.loads((run / "manifest.json").read_text())["stages"]["reward_summary"]
    assert man["reward"]["formulation"] == "log_ratio_bonus" and man["reward"]["bonus"] == 0.5
    assert man["reward"]["baseline"]["name"] == "uniform_mix_0.25"
    # the reward values: log pi_SFT - log((1-w) pi_half + w/|V|) + bonus, recomputed directly
    sft, tok = load_policy(run / "sft" / "policy")
    half, _ = load_policy(run / "sft" / "snapshots" / "frac_0.50")
    task = instantiate(compose_cfg(overrides, None).data)
    assert isinstance(task, CopyTask)
    b = Collator(tok.pad_token_id)(encode_rows(tok, task, task.splits()["val"][:8], 32, 16, "val"))
    args = (b["prompt_ids"], b["prompt_mask"], b["response_ids"], b["response_mask"])
    with torch.no_grad():
        lp_sft, lp_half = (response_logprobs(m, *args).logp.double() for m in (sft, half))
    base = torch.logaddexp(lp_half + math.log(0.75), torch.full_like(lp_half, math.log(0.25 / len(tok))))
    m = b["response_mask"].double()
    want = float(((lp_sft - base + 0.5) * m).sum() / m.sum())
    # the stage's output
    assert metrics["reward_summary/n_demos"] == 8
    assert abs(metrics["reward_summary/mean_token_reward"] - want) < 1e-4
