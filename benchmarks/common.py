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


# ---------------------------------------------------------------- the real-model workload (issue 17)
@dataclass(frozen=True)
class Workload:
    """The fixed real-model workload every shared-base / prefix-sharing / TRL benchmark runs.

    SmolLM2-135M's shape with random weights (the real ones are not needed for speed or memory), LoRA
    r=8 on q/k/v/o, 4 prompts per step of exactly 256 tokens (no padding), k=8 samples of exactly 64 new
    tokens (EOS suppressed), fp32 unless a benchmark says otherwise.
    """

    prompts: int = 4
    prompt_len: int = 256
    k: int = 8
    new_tokens: int = 64
    layers: int = 30  # SmolLM2-135M; fewer only for smoke tests (--layers)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    vocab: int = 49152
    hidden: int = 576
    heads: int = 9
    kv_heads: int = 3
    intermediate: int = 1536

    @property
    def rows(self) -> int:
        return self.prompts * self.k

    @property
    def ideal_sharing_ratio(self) -> float:
        """Token positions run with prefix sharing over without: (P + kT) / (k (P + T)); the ratio a
        prefix-shared forward could reach if time were proportional to tokens (the prompt:response length
        ratio P:T is what sets it)."""
        P, T, k = self.prompt_len, self.new_tokens, self.k
        return (P + k * T) / (k * (P + T))

    def describe(self) -> str:
        return (
            f"workload: SmolLM2-135M shape (vocab {self.vocab}, hidden {self.hidden}, {self.layers} layers, "
            f"{self.heads} heads / {self.kv_heads} KV heads, MLP {self.intermediate}, tied embeddings), random "
            f"weights; LoRA r={self.lora_r} alpha={self.lora_alpha} on {'/'.join(self.lora_targets)}; "
            f"{self.prompts} prompts x {self.prompt_len} prompt tokens, k={self.k}, {self.new_tokens} new tokens "
            f"(EOS suppressed) -> {self.rows} rows; prompt:response = {self.prompt_len}:{self.new_tokens} = "
            f"{self.prompt_len / self.new_tokens:g}; ideal prefix-sharing token ratio "
            f"(P+kT)/(k(P+T)) = {self.ideal_sharing_ratio:.3f}; threads={torch.get_num_threads()} "
            f"torch={torch.__version__}"
        )


def smollm2_shaped(w: Workload, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A random-weight LlamaForCausalLM of SmolLM2-135M's shape (``w.layers`` layers), eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from densepath.models import attention

    cfg = LlamaConfig(
        vocab_size=w.vocab,
        hidden_size=w.hidden,
        intermediate_size=w.intermediate,
        num_hidden_layers=w.layers,
        num_attention_heads=w.heads,
        num_key_value_heads=w.kv_heads,
        max_position_embeddings=2048,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    return attention.apply(model)


def workload_prompts(w: Workload, seed: int = 0) -> torch.Tensor:
    """``w.prompts`` prompts of exactly ``w.prompt_len`` random non-special tokens, (prompts, P)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, w.vocab, (w.prompts, w.prompt_len), generator=g)


def workload_responses(w: Workload, seed: int = 1) -> torch.Tensor:
    """``w.rows`` responses of exactly ``w.new_tokens`` random non-special tokens (no EOS), (rows, T)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, w.vocab, (w.rows, w.new_tokens), generator=g)


def flop_fraction(flops: float, seconds: float, peak: MatmulPeak) -> float:
    """Achieved FLOP/s as a fraction of the measured matmul peak."""
    return flops / max(seconds, 1e-12) / peak.flops_per_s
