"""benchmarks.dpr_lora_vs_trl at a minimal size: both sides run the same work and the report is complete.

The full workload (30 layers, 4 x 256-token prompts, k=8, 64 new tokens) is the lead's measured run; here
one SmolLM2-shaped layer, 2 prompts of 8 tokens, k=2, 4 new tokens.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from benchmarks.common import Workload


@pytest.mark.slow
@pytest.mark.parametrize("micro_batch", [0, 1])
def test_both_sides_run_matched_work_and_report_a_finite_ratio(micro_batch):
    pytest.importorskip("trl")  # a dev/bench extra, never a runtime dependency
    from benchmarks import dpr_lora_vs_trl as bench

    cfg = bench.LoraBenchConfig(
        layers=1, prompts=2, prompt_len=8, k=2, new_tokens=4, rounds=2, threads=1, micro_batch=micro_batch
    )
    res = bench.run(cfg)
    assert res["rounds_run"] == 2 and not res["stopped_by_budget"]
    for side in ("densepath", "trl"):
        recs = res["records"][side]
        assert len(recs) == 2, side  # one timed step per round
        for rec in recs:
            assert rec["tokens"] == 2 * 2 * 4, side
            assert rec["step"] >= rec["generate"] > 0 and rec["score"] > 0 and rec["update"] > 0, side
    for rec in res["records"]["trl"]:  # TRL tokenised the workload's prompts back to the same ids
        assert rec["prompt_tokens"] == 2 * 2 * 8 and rec["foreign_prompts"] == 0
        assert rec["reward"] > 0 and rec["policy+ref logp"] > 0
    assert set(res["kernels"].values()) == {"sdpa"}
    assert res["gradient_checkpointing"] == {"densepath": False, "trl": False}
    # the same LoRA (r=8 on q/k/v/o of one layer) trains on both sides
    assert res["trainable"]["densepath"] == res["trainable"]["trl"] > 0
    assert res["peak_rss_mib"] >= max(res["side_peak_rss_mib"].values()) > 0
    report, ratio = bench.summarize(cfg, res)
    assert math.isfinite(ratio) and ratio > 0
    assert f"micro_batch={1 if micro_batch else None}" in report
    assert "tokens generated per step: densepath 16, trl 16" in report
    assert "| densepath |" in report and "| trl |" in report and "| densepath/trl |" in report
    assert report.count("|---|") == 1  # one table
    line, ok = bench.target(ratio)
    assert line.startswith("target DPR step <= 0.5x TRL RLOOTrainer step") and ok == (ratio <= 0.5)


def test_the_token_check_names_the_side_that_missed():
    from benchmarks import dpr_lora_vs_trl as bench

    cfg = bench.LoraBenchConfig(layers=1, prompts=2, prompt_len=8, k=2, new_tokens=4)
    good = {"tokens": 16, "prompt_tokens": 32, "foreign_prompts": 0}
    res = {"workload": cfg.workload(), "records": {"densepath": [dict(good)], "trl": [dict(good)]}}
    assert bench.check_tokens(cfg, res) == {"densepath": 16, "trl": 16}
    res["records"]["trl"][0]["tokens"] = 15  # one sequence stopped early
    with pytest.raises(AssertionError, match="trl generated \\[15\\] tokens"):
        bench.check_tokens(cfg, res)
    res["records"]["trl"][0].update(tokens=16, foreign_prompts=1)
    with pytest.raises(AssertionError, match="round-trip"):
        bench.check_tokens(cfg, res)


def test_flop_estimate_counts_the_prefix_shared_and_the_repeated_tokens():
    from benchmarks import dpr_lora_vs_trl as bench

    w = dataclasses.replace(Workload(), prompts=4, prompt_len=256, k=8, new_tokens=64)
    N, HV = 1e8, w.hidden * w.vocab
    dp, trl = bench.phase_flops(w, int(N), "densepath"), bench.phase_flops(w, int(N), "trl")
    # scoring: densepath runs each prompt once per scorer (2 adapters), TRL every row through 4 forwards
    assert dp["score"] == pytest.approx(2 * (2 * N * (4 * 256 + 32 * 64) + 2 * HV * 32 * 64))
    assert trl["score"] == pytest.approx(4 * (2 * N * 32 * 320 + 2 * HV * 32 * 64))
    # generation differs only in the prefill: 4 prompts vs 32 rows
    assert trl["generate"] - dp["generate"] == pytest.approx(2 * N * 28 * 256 + 2 * HV * 28)
    # the update: body tokens in the ratio 1 / ideal_sharing_ratio, the LM-head term (response logits) equal
    assert trl["update"] - dp["update"] == pytest.approx(2 * 2 * N * (32 * 320 - (4 * 256 + 32 * 64)))
    assert 1 < trl["update"] / dp["update"] < 1 / w.ideal_sharing_ratio


def test_config_errors_name_the_flag():
    from benchmarks import dpr_lora_vs_trl as bench

    for kw, flag in (({"k": 1}, "--k"), ({"kl_coef": 0.0}, "--kl-coef"), ({"prompt_len": 0}, "--prompt-len")):
        with pytest.raises(ValueError, match=flag):
            bench.LoraBenchConfig(**kw).validate()
    with pytest.raises(ValueError, match="--budget-min"):
        bench.LoraBenchConfig(budget_min=0.0).validate()
    cfg, check = bench.parse_args(["--layers", "2", "--new-tokens", "8", "--check"])
    assert check and cfg.workload().layers == 2 and cfg.tokens_per_step == 4 * 8 * 8
    assert cfg.micro_batch == 1  # the default that fits the 23 GiB bench machine (module docstring)


def test_micro_batch_splits_the_update_the_same_way_on_both_sides(tmp_path):
    pytest.importorskip("trl")
    from benchmarks import dpr_lora_vs_trl as bench

    cfg = bench.LoraBenchConfig(prompts=4, k=8, micro_batch=1)
    w = cfg.workload()
    assert cfg.micro_batches(w) == 4 and bench.LoraBenchConfig(micro_batch=0).micro_batches(w) == 1
    args = bench.trl_args(w, cfg, 1, str(tmp_path), 0)
    # one generation of 32 completions, 4 backward passes of 8 rows (1 prompt), one optimiser step
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, 4)
    assert args.steps_per_generation == 4 and args.gradient_checkpointing is False and args.bf16 is False
    warm = bench.warmup_workload(w)  # 1 prompt: one pass
    assert cfg.micro_batches(warm) == 1
    with pytest.raises(ValueError, match="--micro-batch"):
        bench.LoraBenchConfig(prompts=4, micro_batch=3).validate()
