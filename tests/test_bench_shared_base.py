"""The shared-base benchmark (benchmarks/shared_base.py) at a minimal size: every case runs, the new default
computes today's numbers, and the shared arm holds one copy of the base weights instead of three."""

from __future__ import annotations

import pytest

from benchmarks.common import Workload
from benchmarks.shared_base import memory_child, run_sharing, summarize_memory, summarize_sharing

TINY = Workload(prompts=2, prompt_len=8, k=2, new_tokens=4, layers=1)


def test_sharing_cases_agree_and_report_targets():
    res = run_sharing(TINY, reps=1)
    assert len(res["rows"]) == 8 and all(r["s"] > 0 and r["flops"] > 0 for r in res["rows"])
    assert res["diffs"]["score"] < 1e-4 and res["diffs"]["update"] < 1e-4
    text, checks = summarize_sharing(TINY, res)
    assert len(checks) == 4 and "ideal token ratio" in text and "bf16 / fp32" in text


@pytest.mark.slow
def test_memory_arms_hold_one_base_instead_of_three():
    rows = {arm: memory_child(arm, TINY) for arm in ("separate", "shared")}
    ratio = rows["shared"]["weights_mib"] / rows["separate"]["weights_mib"]
    assert 0.3 < ratio < 0.36  # one base (+ 3 small adapters) vs three copies (+ 1 adapter)
    assert all(r["generated"] == TINY.rows * TINY.new_tokens for r in rows.values())
    text, checks = summarize_memory(TINY, rows)
    assert len(checks) == 1 and "peak" in text
    assert 0 < rows["shared"]["total_mib"] < rows["separate"]["total_mib"]
    assert all(r["raw_peak_mib"] > 0 and r["step_extra_mib"] >= 0 for r in rows.values())
