"""Slow, planted-truth checks on the known-reward MDP (method.md; issues: fidelity and DPR gain)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import run_cfg

KR = [
    "data=known_reward_single",
    "data.sizes={sft: 20000, rl: 512, val: 256, eval: 512}",
    "model.hidden_size=64",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.num_kv_heads=4",
    "model.intermediate_size=176",
    "sft.steps=1200",
    "sft.batch_size=64",
    "sft.module.lr=3e-3",
    "sft.val_every=400",
    "sft.val_loss_size=256",
    "eval.val_size=256",
    "eval.eval_size=512",
    "recover.fidelity_samples=512",
    "sampler.max_new_tokens=9",
    "trainer.enable_progress_bar=false",
    "trainer.precision=32-true",
]


@pytest.fixture(scope="module")
def kr_sft(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("kr") / "sft"
    run_cfg([*KR, "pipeline=sft", "callbacks.reward_recovery.enabled=false"], run_dir)
    return run_dir


@pytest.mark.slow
def test_planted_fidelity_logprob_within_expert(kr_sft: Path, tmp_path: Path):
    run_dir = tmp_path / "rec"
    run_cfg([*KR, "pipeline=recover", f"parent_run={kr_sft}"], run_dir)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["recover/logprob/fidelity/expert/pearson"] >= 0.9, m["recover/logprob/fidelity/expert/pearson"]
    # the SFT model is close to the expert: its true return is near the expert's
    sft = json.loads((kr_sft / "metrics.json").read_text())
    assert abs(sft["sft/eval/sampled/true_return"] - sft["sft/eval/expert_true_return"]) < 1.0


@pytest.mark.slow
def test_dpr_on_logprob_beats_sft_true_return(kr_sft: Path, tmp_path: Path):
    run_dir = tmp_path / "dpr"
    run_cfg(
        [
            *KR,
            "pipeline=dpr",
            "reward=logprob",
            "dpr.module.kl=none",
            "dpr.module.lr=1e-3",
            "dpr.steps=60",
            "dpr.prompts_per_step=16",
            "dpr.module.k=8",
            "dpr.selection_every=20",
            "dpr.selection_size=256",
            f"parent_run={kr_sft}",
        ],
        run_dir,
    )
    m = json.loads((run_dir / "metrics.json").read_text())
    sft = json.loads((kr_sft / "metrics.json").read_text())

    def se(d, p):  # the CI is mean +- 1.96 SE
        return (d[f"{p}/eval/sampled/true_return_hi"] - d[f"{p}/eval/sampled/true_return_lo"]) / (2 * 1.96)

    diff = m["dpr/eval/sampled/true_return"] - sft["sft/eval/sampled/true_return"]
    print(
        f"true return: SFT {sft['sft/eval/sampled/true_return']:.3f}, DPR {m['dpr/eval/sampled/true_return']:.3f}, "
        f"expert {sft['sft/eval/expert_true_return']:.3f}"
    )
    assert diff > 3 * math.hypot(se(m, "dpr"), se(sft, "sft")), (diff, m["dpr/eval/sampled/true_return"])
