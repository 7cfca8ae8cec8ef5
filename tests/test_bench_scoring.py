"""The scoring-memory benchmark: its end-to-end output, its RSS probes and its exit-code logic."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import scoring

ROOT = Path(__file__).resolve().parents[1]  # the repo root: holds benchmarks/
SRC = ROOT / "src"

# Big enough that the naive (B, seq, V) logits (4*256*8192*4 B = 32 MiB, twice) dwarf allocator
# noise, small enough to run in seconds with a 0.27M-parameter model.
MEDIUM = ["--vocab", "8192", "--batch", "4", "--seq", "256", "--hidden", "32", "--layers", "1"]
MEDIUM += ["--reps", "1", "--chunk-size", "64"]

ROW = re.compile(r"^\| (kernel|naive) \| ([-\d.]+) \| ([-\d.]+) \| (\S+) \|$", re.MULTILINE)


def _run_cli(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(SRC)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", "scoring", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=180,
    )


def test_cli_reports_table_and_kernel_saves_memory():
    proc = _run_cli([*MEDIUM, "--check"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "vocab=8192 batch=4 seq=256 (prompt 32 + response 224)" in out
    assert "threads=" in out and "torch=" in out and "chunk_size=64" in out
    assert "| variant | extra peak MiB | median time s | max abs diff vs naive |" in out
    rows = {m.group(1): m.groups()[1:] for m in ROW.finditer(out)}
    assert set(rows) == {"kernel", "naive"}, out

    kernel_mem, kernel_time, kernel_diff = (float(x) for x in rows["kernel"])
    naive_mem, naive_time, naive_diff = (float(x) for x in rows["naive"])
    assert math.isfinite(kernel_diff) and kernel_diff < 1e-4
    assert naive_diff == 0.0
    assert kernel_time > 0 and naive_time > 0
    # naive holds two (4, 256, 8192) fp32 tensors = 64 MiB; the kernel two (64, 8192) chunks = 4 MiB
    assert naive_mem >= 60.0, out
    assert kernel_mem <= 0.25 * naive_mem, out
    assert out.count(": MET") == 2 and "MISSED" not in out


def test_cli_rejects_bad_setting_with_the_flag_name():
    proc = _run_cli(["--seq", "16", "--prompt-len", "32"])
    assert proc.returncode == 2
    assert "--seq (16) must exceed --prompt-len (32)" in proc.stderr


def test_dispatcher_rejects_unknown_benchmark():
    from benchmarks.__main__ import main

    assert main(["nope"]) == 2


def _fake_child(mem: dict[str, float], logp: dict[str, torch.Tensor]):
    """A stand-in for run_child that writes the given logp and reports the given memory."""

    def run_child(cfg, variant, out_dir):
        path = out_dir / f"logp_{variant}.pt"
        torch.save(logp[variant], path)
        return {
            "variant": variant,
            "extra_peak_mib": mem[variant],
            "median_s": 1.0,
            "threads": 1,
            "n_params": 1000,
            "attn_implementation": "sdpa",
            "malloc_mmap_threshold": "131072",
            "logp_path": str(path),
        }

    return run_child


@pytest.mark.parametrize(
    "mem, kernel_shift, check, want_rc, want_missed",
    [
        ({"kernel": 10.0, "naive": 100.0}, 0.0, True, 0, 0),  # both targets met
        ({"kernel": 30.0, "naive": 100.0}, 0.0, True, 1, 1),  # memory ratio 0.3 > 0.25
        ({"kernel": 10.0, "naive": 100.0}, 1e-3, True, 1, 1),  # logp off by 1e-3
        ({"kernel": 30.0, "naive": 100.0}, 1e-3, False, 0, 2),  # missed, but no --check: exit 0
        ({"kernel": 10.0, "naive": 0.0}, 0.0, True, 1, 1),  # no measurable naive memory: NaN ratio
    ],
)
def test_exit_code_follows_targets(monkeypatch, capsys, mem, kernel_shift, check, want_rc, want_missed):
    base = -torch.rand(2, 5, dtype=torch.float32)  # (B, T)
    logp = {"naive": base, "kernel": base + kernel_shift}
    monkeypatch.setattr(scoring, "run_child", _fake_child(mem, logp))
    cfg = scoring.BenchConfig(vocab=16, batch=2, seq=6, prompt_len=1, hidden=8, layers=1, reps=1)
    assert scoring.run_benchmark(cfg, check=check) == want_rc
    out = capsys.readouterr().out
    assert out.count("MISSED") == want_missed
    assert f"| kernel | {mem['kernel']:.1f} | 1.000 |" in out


def test_child_crash_is_reported_not_tabled(monkeypatch, capsys):
    def boom(cfg, variant, out_dir):
        raise RuntimeError(f"variant {variant!r} failed with exit code 1")

    monkeypatch.setattr(scoring, "run_child", boom)
    assert scoring.run_benchmark(scoring.BenchConfig(), check=False) == 2
    assert "| variant |" not in capsys.readouterr().out


def test_rss_sampler_sees_a_transient_allocation():
    before = scoring.read_status_kib("VmRSS")
    with scoring.RssSampler() as sampler:
        x = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
        time.sleep(0.05)
        del x
        time.sleep(0.01)
    assert sampler.n_samples >= 5
    assert (sampler.peak_kib - before) / 1024 >= 60.0


def test_hwm_reset_then_peak_is_exact_high_water_mark():
    if not scoring.reset_peak_rss():
        pytest.skip("/proc/self/clear_refs is not writable here")
    before = scoring.read_status_kib("VmRSS")
    x = torch.ones(48 * 1024 * 1024 // 4)  # 48 MiB
    del x
    hwm = scoring.read_status_kib("VmHWM")
    assert (hwm - before) / 1024 >= 46.0
    assert scoring.reset_peak_rss()
    assert scoring.read_status_kib("VmHWM") - scoring.read_status_kib("VmRSS") < 8 * 1024


def test_read_status_rejects_unknown_field():
    with pytest.raises(RuntimeError, match="no 'VmNope' line"):
        scoring.read_status_kib("VmNope")


@pytest.mark.parametrize("hidden, want", [(576, (9, 3)), (32, (1, 1)), (128, (2, 1)), (200, (2, 1))])
def test_attention_heads_divide_hidden(hidden, want):
    heads, kv = scoring.attention_heads(hidden)
    assert (heads, kv) == want
    assert hidden % heads == 0 and heads % kv == 0


def test_config_round_trips_through_argv():
    cfg = scoring.BenchConfig(vocab=100, batch=3, seq=40, prompt_len=4, chunk_size=7, threads=1, seed=5)
    ns = scoring.build_parser().parse_args(scoring.config_to_argv(cfg))
    assert scoring.BenchConfig(**{k: getattr(ns, k) for k in vars(ns) if hasattr(cfg, k)}) == cfg


def test_primer_batch_is_one_row_one_response_token():
    cfg = scoring.BenchConfig(vocab=50, batch=3, seq=10, prompt_len=4)
    batch = scoring.make_batch(cfg)
    assert [tuple(t.shape) for t in batch] == [(3, 4), (3, 4), (3, 6), (3, 6)]
    primer = scoring.primer_batch(batch)
    assert [tuple(t.shape) for t in primer] == [(1, 4), (1, 4), (1, 1), (1, 1)]
    assert torch.equal(scoring.make_batch(cfg)[2], batch[2])  # seeded: same inputs in every child


def test_max_abs_diff_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) vs \(2, 4\)"):
        scoring.max_abs_diff(torch.zeros(2, 3), torch.zeros(2, 4))
    assert scoring.max_abs_diff(torch.tensor([1.0, -2.0]), torch.tensor([1.5, -2.0])) == 0.5
