"""Shared pieces of the throughput benchmarks: toy prompts, tiny Llamas, medians, tables, FLOP/s.

Why one module: every throughput benchmark must build the *same* tokenizer, prompts and models for
the variants it compares, and report medians and ratios in the same table format.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

# model presets: name -> (hidden, layers, heads, intermediate); ~1k BPE vocabulary, untied head
MODEL_PRESETS: dict[str, tuple[int, int, int, int]] = {
    "1m": (128, 4, 4, 352),  # conf/model/tiny.yaml (the default pipeline)
    "5m": (256, 6, 8, 688),  # conf/model/tiny5m.yaml
    "20m": (512, 6, 8, 1376),
    "tiny": (32, 1, 2, 64),  # tests only
}


def check_model_and_precision(model: str, precision: str) -> None:
    """Shared flag validation of the throughput benchmarks: errors name the flag and the choices."""
    if model not in MODEL_PRESETS:
        raise ValueError(f"--model {model!r}: choose one of {sorted(MODEL_PRESETS)}.")
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"--precision {precision!r}: choose bf16 or fp32.")


def default_threads() -> int:
    """CPUs this process may run on (affinity-aware), so the thread count is explicit and printed."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def toy_tokenizer_and_rows(n_rows: int, seed: int = 0, vocab_size: int = 1024):
    """A BPE tokenizer trained on toy-task text and ``n_rows`` toy rows (prompt + demonstration).

    Why the toy task: it is the default pipeline's data, so prompt lengths are realistic.
    """
    from densepath.data.toy import make_splits
    from densepath.models.tokenizer import train_bpe_tokenizer

    rows = make_splits(seed, {"sft": max(n_rows, 400)})["sft"]
    texts = [r.prompt for r in rows] + [r.response for r in rows]
    tok = train_bpe_tokenizer(texts, vocab_size=vocab_size)
    return tok, rows[:n_rows]


def chat_messages(prompt: str) -> list[dict]:
    """One user turn: the same conversation is fed to densepath and to TRL."""
    return [{"role": "user", "content": prompt}]


def build_llama(preset: str, tokenizer, seed: int) -> nn.Module:
    """A random-weight tiny Llama from ``MODEL_PRESETS`` with a fixed seed (fp32, train mode)."""
    from densepath.models.factory import TinyLlama

    if preset not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(MODEL_PRESETS)}.")
    hidden, layers, heads, inter = MODEL_PRESETS[preset]
    torch.manual_seed(seed)
    return TinyLlama(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=512,
    ).build(tokenizer)


def n_params(model: nn.Module, non_embedding: bool = False) -> int:
    """Parameter count; ``non_embedding`` drops the input embedding (a lookup, no FLOPs)."""
    n = sum(p.numel() for p in model.parameters())
    if non_embedding:
        n -= model.get_input_embeddings().weight.numel()
    return n


def median(xs: Sequence[float]) -> float:
    """Median, NaN for an empty list (so a missing phase prints as nan, not a crash)."""
    return statistics.median(xs) if xs else float("nan")


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats get 3 significant decimals, the first column is left-aligned."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.3f}"
        return str(v)

    out = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def target_line(name: str, value: float, limit: float, lower_is_better: bool = True) -> tuple[str, bool]:
    """``target NAME <= LIMIT (got V): MET|MISSED`` and whether it was met."""
    ok = value <= limit if lower_is_better else value >= limit
    op = "<=" if lower_is_better else ">="
    return f"target {name} {op} {limit:g} (got {value:.3f}): {'MET' if ok else 'MISSED'}", ok


@dataclass(frozen=True)
class MatmulPeak:
    """Measured dense matmul throughput of this machine at one dtype."""

    dtype: str
    n: int
    flops_per_s: float


def matmul_flops(dtype: torch.dtype, n: int = 1024, reps: int = 5) -> MatmulPeak:
    """Median FLOP/s of an ``n x n @ n x n`` matmul (2 n^3 FLOPs) after one warm-up.

    Why measured, not from a spec sheet: a shared 2-core VM's useful peak depends on the host, the
    thread count and the load; the fractions reported next to it are only meaningful in one run.
    """
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return MatmulPeak(str(dtype).removeprefix("torch."), n, 2 * n**3 / median(times))


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """``(fn(), seconds)``."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def add_config_flags(parser, config_cls) -> None:
    """A ``--flag`` for every field of a benchmark's frozen config dataclass (``max_new_tokens`` ->
    ``--max-new-tokens``), typed and defaulted like the field."""
    import dataclasses

    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(default), default=default)
