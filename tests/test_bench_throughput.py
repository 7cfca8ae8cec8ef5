"""Throughput benchmarks (issue 7) at tiny settings: they run, match work across variants, report."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from benchmarks import __main__ as dispatcher
from benchmarks import common, flops, generation, sft_overhead


def test_every_registered_benchmark_exposes_main():
    for name, mod in dispatcher.BENCHMARKS.items():
        assert callable(importlib.import_module(mod).main), name


def test_model_flops_and_table_format():
    assert flops.model_flops(1000, 10, "train") == 60_000
    assert flops.model_flops(1000, 10, "infer") == 20_000
    with pytest.raises(ValueError, match="kind"):
        flops.model_flops(1, 1, "backward")
    t = common.md_table(["a", "b"], [["x", 0.5], ["y", 12345.0]])
    assert t.splitlines() == ["| a | b |", "|---|---:|", "| x | 0.500 |", "| y | 1.23e+04 |"]
    line, ok = common.target_line("r", 0.69, 0.7)
    assert ok and line.endswith("(got 0.690): MET")
    assert common.target_line("r", 0.71, 0.7)[1] is False


def test_matmul_peak_is_positive_and_plausible():
    p = common.matmul_flops(torch.float32, n=128, reps=2)
    assert p.dtype == "float32" and 1e6 < p.flops_per_s < 1e14


def test_sft_overhead_variants_see_same_batches_and_loss():
    cfg = sft_overhead.SFTBenchConfig(
        model="tiny", batch_size=4, steps=3, warmup=1, rounds=1, precision="fp32"
    )
    res = sft_overhead.run(cfg)
    assert res["tokens"]["lightning"] == res["tokens"]["plain"] and len(res["tokens"]["plain"]) == 3
    # same initial weights and first batch -> the same first loss (fp32)
    assert res["first_loss"]["lightning"] == pytest.approx(res["first_loss"]["plain"], abs=1e-5)
    report, overhead = sft_overhead.summarize(cfg, res)
    assert math.isfinite(overhead) and "| lightning |" in report and "| plain |" in report


def test_sft_overhead_rejects_bad_warmup():
    with pytest.raises(ValueError, match="--warmup"):
        sft_overhead.SFTBenchConfig(steps=2, warmup=2).validate()


def test_generation_both_variants_generate_exactly_prompts_k_tokens():
    cfg = generation.GenBenchConfig(model="tiny", prompts=2, k=3, max_new_tokens=5, reps=1, precision="fp32")
    res = generation.run(cfg)
    assert res["tokens"] == {"hf_sampler": 30, "plain": 30}
    report, ratio = generation.summarize(cfg, res)
    assert ratio > 0 and "tokens per call: 30" in report


@pytest.mark.slow
def test_dpr_vs_trl_matches_tokens_and_reports_phases():
    # trl is a dev/bench extra (installed by `make test`), never a runtime dependency
    from benchmarks import dpr_vs_trl

    cfg = dpr_vs_trl.RLBenchConfig(
        model="tiny", prompts=2, k=2, max_new_tokens=4, rounds=1, steps=2, precision="fp32"
    )
    res = dpr_vs_trl.run(cfg)
    for side in ("densepath", "trl"):
        (rec,) = res["records"][side]  # one timed step (the block's first is a warm-up)
        assert rec["tokens"] == 2 * 2 * 4
        assert rec["step"] >= rec["generate"] > 0
    report, ratio = dpr_vs_trl.summarize(cfg, res)
    assert ratio > 0 and "tokens generated per step: densepath 16, trl 16" in report
    assert res["dtypes"] == {"densepath": ["float32"], "trl": ["float32"]}


def test_dpr_vs_trl_rejects_k1_and_zero_beta():
    from benchmarks import dpr_vs_trl

    with pytest.raises(ValueError, match="--k"):
        dpr_vs_trl.RLBenchConfig(k=1).validate()
    with pytest.raises(ValueError, match="--kl-coef"):
        dpr_vs_trl.RLBenchConfig(kl_coef=0.0).validate()


def test_e2e_reads_stage_times_in_pipeline_order(tmp_path):
    from benchmarks import e2e

    metrics = {"dpr/time_s": 60.0, "dpr/train/time_s": 50.0, "sft/time_s": 140.0, "sft/eval/x": 1.0}
    assert list(e2e.stage_times(metrics)) == ["sft", "dpr"]
    assert e2e.stage_times(metrics)["dpr"] == (60.0, 50.0)
    (tmp_path / "metrics.json").write_text('{"sft/time_s": 400.0}')
    assert e2e.main([str(tmp_path), "--check"]) == 1  # 400 s > 6 min
    with pytest.raises(FileNotFoundError, match="hydra.run.dir"):
        e2e.load_metrics(tmp_path / "nope")
