"""benchmarks/sft_lora.py at a minimal size: every arm runs, trains what it claims (dtypes, LoRA size,
attention, no checkpointing), densepath and TRL see the same weights and tokens, and the report holds."""

from __future__ import annotations

import importlib.util
import math

import pytest

from benchmarks import sft_lora

BASE_DTYPE = {"fp32": "float32", "bf16": "bfloat16"}


def parse_table(report: str) -> dict[str, dict[str, str]]:
    """The printed markdown table, as {arm: {column: cell}}."""
    lines = [ln for ln in report.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[1:]]
    return {r["arm"]: r for r in rows}


@pytest.mark.slow  # ~25-30 s on 2 cores, most of it importing lightning, trl and peft
def test_every_arm_runs_and_reports_what_it_computed():
    has_trl = importlib.util.find_spec("trl") is not None
    arms = sft_lora.ARMS if has_trl else ("densepath_fp32", "densepath_bf16")
    cfg = sft_lora.SFTLoRAConfig(
        layers=1, prompt_len=8, new_tokens=4, steps=1, rounds=1, threads=1, arms=",".join(arms)
    )
    report, ratios = sft_lora.summarize(cfg, sft_lora.run(cfg))
    table = parse_table(report)
    assert list(table) == list(arms)
    assert "workload: SmolLM2-135M shape" in report and "4N, not 6N" in report

    w = cfg.workload()
    kv = w.hidden // w.heads * w.kv_heads  # k/v projection width (GQA)
    lora_per_layer = w.lora_r * (2 * (w.hidden + w.hidden) + 2 * (w.hidden + kv))  # q, o and k, v
    for arm, row in table.items():
        prec = arm.split("_")[1]
        assert row["base weight"] == BASE_DTYPE[prec], arm
        assert row["q_proj out"] == BASE_DTYPE[prec], arm  # no autocast: the base computes in its dtype
        assert row["LoRA weight"] == "float32", arm
        assert (row["attn"], row["grad ckpt"], row["threads"]) == ("sdpa", "off", "1"), arm
        assert int(row["trainable"]) == w.layers * lora_per_layer, arm
        for col in ("tok/s all", "tok/s response", "median step s", "MFU all"):
            assert math.isfinite(float(row[col])) and float(row[col]) > 0, (arm, col)
        # tokens/s over all tokens / over response tokens = (P + T) / T
        all_over_resp = float(row["tok/s all"]) / float(row["tok/s response"])
        assert all_over_resp == pytest.approx((w.prompt_len + w.new_tokens) / w.new_tokens, rel=0.01)

    assert ratios["densepath bf16/fp32"] > 0
    if not has_trl:
        pytest.skip("trl is not importable: the TRL arms were not run (pip install -e '.[bench]')")
    # the same random weights, token ids and loss mask on both sides -> the same first-step loss
    for prec, tol in (("fp32", 1e-4), ("bf16", 2e-2)):
        dp, trl = float(table[f"densepath_{prec}"]["first loss"]), float(table[f"trl_{prec}"]["first loss"])
        assert dp == pytest.approx(trl, abs=tol), prec
    assert set(ratios) == {"densepath/trl fp32", "densepath/trl bf16", "densepath bf16/fp32", "trl bf16/fp32"}
    lines, _ = sft_lora.check_lines(ratios)
    assert len(lines) == 2 and all(ln.startswith("target densepath/trl") for ln in lines)


def test_check_targets_need_both_dtypes_at_or_above_one():
    ok = {"densepath/trl bf16": 1.2, "densepath/trl fp32": 1.0}
    assert sft_lora.check_lines(ok)[1] is True
    assert sft_lora.check_lines({**ok, "densepath/trl fp32": 0.99})[1] is False
    lines, met = sft_lora.check_lines({"densepath/trl bf16": 1.5})  # fp32 arms not run: not met
    assert met is False and "NOT RUN" in lines[1]


def test_bad_flags_name_the_flag():
    with pytest.raises(ValueError, match="--arms"):
        sft_lora.SFTLoRAConfig(arms="densepath_fp16").validate()
    with pytest.raises(ValueError, match="--steps"):
        sft_lora.SFTLoRAConfig(steps=0).validate()
    with pytest.raises(ValueError, match="--attn"):
        sft_lora.SFTLoRAConfig(attn="flash").validate()
