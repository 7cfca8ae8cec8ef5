"""Scoring-memory benchmark: the project log-prob kernel against a naive full ``log_softmax``.

Run: ``python -m benchmarks scoring [--vocab 49152 --batch 8 --seq 512 --hidden 576 --layers 2
--reps 3 --dtype float32 --chunk-size 0 (auto)] [--check]``.

What is compared, on a frozen (``torch.no_grad()``) random-weight ``LlamaForCausalLM`` shaped like
SmolLM2 (vocab 49,152, hidden 576, head_dim 64, 3:1 grouped KV heads, MLP 8/3 * hidden, tied
embeddings) but with few layers:

- ``kernel``: :func:`densepath.models.logprobs.response_logprobs`, which runs the backbone once
  and applies the LM head to the response-predicting hidden states only, ``chunk_size`` rows at a
  time, reducing each chunk to ``(logp, logsumexp)`` at once;
- ``naive``: ``model(...).logits`` over every position, ``log_softmax(-1)``, then a gather at the
  response positions. This holds a (B, L, V) logits tensor and a (B, L, V) copy at the same time.

Why subprocesses: peak RSS is a per-process high-water mark, so each variant runs in its own
``python -m benchmarks.scoring --variant NAME`` process and reports one JSON line; the parent
compares the saved (B, T) log-probs and prints the table. Memory is "extra peak RSS during
scoring minus RSS before scoring", with the model and inputs already resident, measured three ways
and the largest taken: a 1 ms VmRSS sampling thread, VmHWM after resetting it through
``/proc/self/clear_refs``, and ``getrusage(RUSAGE_SELF).ru_maxrss`` when it rose. Linux only.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import logging
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("kernel", "naive")
REFERENCE = "naive"
MAX_MEM_RATIO = 0.25  # target: kernel extra peak memory <= 25% of naive's
DIFF_TOL: dict[str, float] = {"float32": 1e-4, "float64": 1e-10}  # target: max |logp_kernel - logp_naive|
_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
_MIB = 1024 * 1024
MALLOC_MMAP_THRESHOLD = 128 * 1024  # bytes; set in each child's env unless already set


def _default_threads() -> int:
    """CPUs this process may run on (affinity-aware), so the thread count is explicit and printed."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark setting; every field is a CLI flag (``chunk_size`` -> ``--chunk-size``)."""

    vocab: int = 49152
    batch: int = 8
    seq: int = 512  # total tokens per row: prompt_len + response
    prompt_len: int = 32
    hidden: int = 576
    layers: int = 2
    reps: int = 3
    dtype: str = "float32"
    chunk_size: int = 0  # 0: the kernel's auto chunk (a fixed logits budget per chunk)
    threads: int = dataclasses.field(default_factory=_default_threads)
    seed: int = 0

    @property
    def response_len(self) -> int:
        """T, the number of scored tokens per row."""
        return self.seq - self.prompt_len

    def validate(self) -> None:
        """Raise ValueError naming the bad field and a valid choice."""
        positive = ("vocab", "batch", "hidden", "layers", "reps", "threads", "prompt_len")
        if int(self.chunk_size) < 0:
            raise ValueError(f"--chunk-size must be >= 0 (0 = auto), got {self.chunk_size}.")
        for name in positive:
            if int(getattr(self, name)) < 1:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be >= 1, got {getattr(self, name)}.")
        if self.seq <= self.prompt_len:
            raise ValueError(
                f"--seq ({self.seq}) must exceed --prompt-len ({self.prompt_len}) so that at least one "
                "response token is scored; e.g. --seq 512 --prompt-len 32."
            )
        if self.dtype not in _DTYPES:
            raise ValueError(f"--dtype {self.dtype!r} is not supported; choose one of {sorted(_DTYPES)}.")


def attention_heads(hidden: int) -> tuple[int, int]:
    """(query heads, KV heads) in SmolLM2's proportions: head_dim 64 and 3 query heads per KV head.

    Why derived: lets ``--hidden`` alone set a consistent shape (576 -> 9 heads, 3 KV heads) and
    stays valid for tiny test sizes (32 -> 1 head, 1 KV head).
    """
    heads = max(1, hidden // 64)
    while hidden % heads:
        heads -= 1
    kv = max(1, heads // 3)
    while heads % kv:
        kv -= 1
    return heads, kv


def build_model(cfg: BenchConfig) -> nn.Module:
    """A random-weight SmolLM2-like ``LlamaForCausalLM`` (tied embeddings), in eval mode and frozen."""
    from transformers import LlamaConfig, LlamaForCausalLM  # lazy: the parent process never needs it

    heads, kv_heads = attention_heads(cfg.hidden)
    mcfg = LlamaConfig(
        vocab_size=cfg.vocab,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.hidden * 8 // 3,
        num_hidden_layers=cfg.layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max(cfg.seq, 2048),
        rope_theta=100000.0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(mcfg).to(_DTYPES[cfg.dtype]).eval()
    model.requires_grad_(False)
    return model


def make_batch(cfg: BenchConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded random ``(prompt_ids, prompt_mask, response_ids, response_mask)``, no padding.

    Why no padding: the kernel skips padded rows, which would flatter it; with full masks both
    variants score exactly B*T tokens.
    """
    g = torch.Generator().manual_seed(cfg.seed + 1)
    B, P, T = cfg.batch, cfg.prompt_len, cfg.response_len
    prompt_ids = torch.randint(0, cfg.vocab, (B, P), generator=g)  # (B, P)
    response_ids = torch.randint(0, cfg.vocab, (B, T), generator=g)  # (B, T)
    return prompt_ids, torch.ones(B, P, dtype=torch.long), response_ids, torch.ones(B, T, dtype=torch.long)


def primer_batch(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """One row with one response token: a call on it loads code pages and lazy state.

    Why: the first call through a code path maps library pages and allocates thread pools (several
    MiB of RSS unrelated to B*T*V); priming on a negligible input keeps that out of the measurement.
    """
    return tuple(t[:1, :1] if i >= 2 else t[:1] for i, t in enumerate(batch))


def score_kernel(model: nn.Module, batch: Sequence[torch.Tensor], chunk_size: int) -> torch.Tensor:
    """(B, T) log-probs from the project kernel (head on response rows only, chunked)."""
    from densepath.models.logprobs import response_logprobs

    return response_logprobs(model, *batch, chunk_size=chunk_size or None).logp  # (B, T)


def score_naive(model: nn.Module, batch: Sequence[torch.Tensor], chunk_size: int = 0) -> torch.Tensor:
    """(B, T) log-probs the obvious way: full logits, full ``log_softmax``, gather.

    ``chunk_size`` is ignored (same signature as :func:`score_kernel`).
    """
    from densepath.models.logprobs import build_inputs

    prompt_ids, _, response_ids, response_mask = batch
    P, T = prompt_ids.shape[1], response_ids.shape[1]
    input_ids, attention_mask, position_ids = build_inputs(*batch)  # each (B, P+T)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).logits  # (B, P+T, V)
    logp_all = torch.log_softmax(logits, dim=-1)  # (B, P+T, V): a second full copy
    picked = logp_all[:, P - 1 : P + T - 1].gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return torch.where(response_mask != 0, picked, torch.zeros((), dtype=picked.dtype))


SCORERS: dict[str, Callable[[nn.Module, Sequence[torch.Tensor], int], torch.Tensor]] = {
    "kernel": score_kernel,
    "naive": score_naive,
}


# --------------------------------------------------------------------------- #
# memory measurement (Linux /proc)
# --------------------------------------------------------------------------- #


def read_status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``: resident now, ``VmHWM``: resident peak)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError as e:
        raise RuntimeError(
            f"cannot read /proc/self/status ({e}); this benchmark measures RSS through Linux /proc, "
            "run it on Linux."
        ) from e
    m = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    if m is None:
        raise RuntimeError(f"/proc/self/status has no {field!r} line; use VmRSS or VmHWM.")
    return int(m.group(1))


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``); False when not allowed.

    Why: the peak of model construction may exceed the scoring peak, hiding it from VmHWM and
    ``ru_maxrss``; after a reset, VmHWM is the exact kernel-tracked peak of what follows.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def ru_maxrss_kib() -> int:
    """Lifetime peak RSS of this process from ``getrusage`` (KiB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class RssSampler:
    """Context manager: a daemon thread that reads VmRSS every ``interval_s`` and keeps the max.

    Why a thread: torch ops release the GIL, so the sampler sees the RSS while a big op is live.
    """

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.peak_kib = 0
        self.n_samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, read_status_kib("VmRSS"))
            self.n_samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self.peak_kib = read_status_kib("VmRSS")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, read_status_kib("VmRSS"))


# --------------------------------------------------------------------------- #
# child: one variant
# --------------------------------------------------------------------------- #


def run_variant(cfg: BenchConfig, variant: str, out_path: Path) -> dict:
    """Build model and inputs, measure one warm-up plus ``cfg.reps`` timed calls, save logp (B, T).

    Memory covers all calls: extra peak = max(sampled VmRSS, VmHWM after reset, ru_maxrss if it
    rose) minus VmRSS before the first call. Returns the JSON-able result row.
    """
    if variant not in SCORERS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(SCORERS)}.")
    torch.set_num_threads(cfg.threads)
    score = SCORERS[variant]
    model = build_model(cfg)
    batch = make_batch(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        score(model, primer_batch(batch), cfg.chunk_size)  # fault in code pages / lazy init, not measured
    gc.collect()

    rss_before = read_status_kib("VmRSS")
    ru_before = ru_maxrss_kib()
    hwm_reset = reset_peak_rss()
    times: list[float] = []
    with torch.no_grad(), RssSampler() as sampler:
        t0 = time.perf_counter()
        logp = score(model, batch, cfg.chunk_size)  # warm-up, (B, T)
        warmup_s = time.perf_counter() - t0
        for _ in range(cfg.reps):
            t0 = time.perf_counter()
            logp = score(model, batch, cfg.chunk_size)  # (B, T)
            times.append(time.perf_counter() - t0)
    ru_after = ru_maxrss_kib()
    hwm_after = read_status_kib("VmHWM") if hwm_reset else 0
    peak = max(sampler.peak_kib, hwm_after, ru_after if ru_after > ru_before else 0)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(logp.detach().cpu(), out_path)
    return {
        "variant": variant,
        "extra_peak_mib": (peak - rss_before) / 1024,
        "rss_before_mib": rss_before / 1024,
        "sampled_peak_mib": sampler.peak_kib / 1024,
        "n_samples": sampler.n_samples,
        "hwm_reset": hwm_reset,
        "hwm_after_mib": hwm_after / 1024 if hwm_reset else None,
        "ru_maxrss_before_mib": ru_before / 1024,
        "ru_maxrss_after_mib": ru_after / 1024,
        "median_s": statistics.median(times),
        "times_s": times,
        "warmup_s": warmup_s,
        "threads": torch.get_num_threads(),
        "n_params": n_params,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default"),
        "logp_path": str(out_path),
    }


# --------------------------------------------------------------------------- #
# parent: orchestration and report
# --------------------------------------------------------------------------- #


def config_to_argv(cfg: BenchConfig) -> list[str]:
    """CLI flags that rebuild ``cfg`` in a child process."""
    argv: list[str] = []
    for f in dataclasses.fields(cfg):
        argv += ["--" + f.name.replace("_", "-"), str(getattr(cfg, f.name))]
    return argv


def _child_env() -> dict[str, str]:
    """The parent's environment with the repo root (for ``benchmarks``) and the dir holding the
    parent's ``densepath`` first on PYTHONPATH, and a fixed glibc mmap threshold.

    Why: the child must import the same ``benchmarks`` and ``densepath`` as the parent even when
    it runs from another directory or densepath is not installed.
    glibc's dynamic mmap threshold otherwise lets freed tens-of-MiB buffers stay in the heap, so RSS
    depends on allocation history (+-100 MiB between runs); a fixed threshold of ``MALLOC_MMAP_
    THRESHOLD_`` bytes returns every larger buffer to the OS on free, and RSS tracks live memory.
    """
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.find_spec("densepath")
    src = Path(spec.origin).resolve().parents[1] if spec and spec.origin else root / "src"
    paths = list(dict.fromkeys([str(root), str(src)]))
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MALLOC_MMAP_THRESHOLD))
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def parse_result_line(stdout: str) -> dict:
    """The last JSON object line a child printed (anything else on stdout is ignored)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("child printed no JSON result line; see its stderr above.")


def run_child(cfg: BenchConfig, variant: str, out_dir: Path) -> dict:
    """Run one variant in a fresh interpreter and return its result row."""
    cmd = [sys.executable, "-m", "benchmarks.scoring", "--variant", variant]
    cmd += ["--out", str(out_dir / f"logp_{variant}.pt"), *config_to_argv(cfg)]
    logger.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
    if proc.returncode != 0:
        raise RuntimeError(
            f"variant {variant!r} failed with exit code {proc.returncode}; its stderr ends with:\n"
            f"{proc.stderr[-4000:]}"
        )
    return parse_result_line(proc.stdout)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in float64 (0.0 for empty tensors); shapes must match."""
    if a.shape != b.shape:
        raise ValueError(f"log-prob shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}; same config needed.")
    if a.numel() == 0:
        return 0.0
    return float((a.double() - b.double()).abs().max())


def format_table(rows: Sequence[dict], diffs: dict[str, float]) -> str:
    """Markdown table: variant | extra peak MiB | median time s | max abs diff vs naive."""
    lines = [
        "| variant | extra peak MiB | median time s | max abs diff vs naive |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['extra_peak_mib']:.1f} | {r['median_s']:.3f} | {diffs[r['variant']]:.3g} |"
        )
    return "\n".join(lines)


def ratio(num: float, den: float) -> float:
    """num / den, NaN when den <= 0 (no measurable baseline: the ratio means nothing)."""
    return num / den if den > 0 else math.nan


def check_targets(mem_ratio: float, diff: float, dtype: str) -> list[tuple[str, bool]]:
    """[(description, met)] for the memory-ratio and accuracy targets; NaN never meets a target."""
    tol = DIFF_TOL[dtype]
    return [
        (
            f"extra memory ratio kernel/naive <= {MAX_MEM_RATIO} (got {mem_ratio:.3f})",
            mem_ratio <= MAX_MEM_RATIO,
        ),
        (f"max abs diff kernel vs naive < {tol:g} ({dtype}) (got {diff:.3g})", diff < tol),
    ]


def describe_config(cfg: BenchConfig, row: dict) -> str:
    """Human-readable setting, including the sizes the memory argument rests on."""
    heads, kv = attention_heads(cfg.hidden)
    itemsize = torch.empty((), dtype=_DTYPES[cfg.dtype]).element_size()
    full_mib = cfg.batch * cfg.seq * cfg.vocab * itemsize / _MIB
    from densepath.models.logprobs import CHUNK_ELEMENTS

    chunk = cfg.chunk_size or max(1, CHUNK_ELEMENTS // cfg.vocab)
    chunk_rows = min(chunk, cfg.batch * cfg.response_len)
    chunk_mib = chunk_rows * cfg.vocab * itemsize / _MIB
    return "\n".join(
        [
            "## scoring-memory benchmark",
            f"vocab={cfg.vocab} batch={cfg.batch} seq={cfg.seq} (prompt {cfg.prompt_len} + response "
            f"{cfg.response_len}) hidden={cfg.hidden} layers={cfg.layers} heads={heads} kv_heads={kv} "
            f"intermediate={cfg.hidden * 8 // 3} tied embeddings",
            f"params={row['n_params'] / 1e6:.2f}M dtype={cfg.dtype} chunk_size={cfg.chunk_size} "
            f"threads={row['threads']} reps={cfg.reps} (median after 1 warm-up) torch={torch.__version__} "
            f"attn={row['attn_implementation']} no_grad MALLOC_MMAP_THRESHOLD_={row['malloc_mmap_threshold']}",
            f"one (B, seq, V) {cfg.dtype} tensor = {cfg.batch}*{cfg.seq}*{cfg.vocab}*{itemsize} B = "
            f"{full_mib:.1f} MiB; one ({chunk_rows}, V) head chunk = {chunk_mib:.1f} MiB",
        ]
    )


def run_benchmark(cfg: BenchConfig, check: bool = False, out_dir: Path | None = None) -> int:
    """Run every variant in its own subprocess, print config + table + targets; return the exit code.

    0 unless ``check`` is set and a target is missed (then 1); 2 if a variant crashed.
    """
    with tempfile.TemporaryDirectory(prefix="densepath_bench_") as tmp:
        work = Path(out_dir) if out_dir is not None else Path(tmp)
        try:
            rows = [run_child(cfg, v, work) for v in VARIANTS]
        except (RuntimeError, ValueError) as e:
            logger.error("%s", e)
            return 2
        logps = {r["variant"]: torch.load(r["logp_path"]) for r in rows}
    by_name = {r["variant"]: r for r in rows}
    diffs = {v: max_abs_diff(logps[v], logps[REFERENCE]) for v in VARIANTS}
    mem_ratio = ratio(by_name["kernel"]["extra_peak_mib"], by_name["naive"]["extra_peak_mib"])
    time_ratio = ratio(by_name["kernel"]["median_s"], by_name["naive"]["median_s"])
    targets = check_targets(mem_ratio, diffs["kernel"], cfg.dtype)

    report = [describe_config(cfg, rows[0]), "", format_table(rows, diffs), ""]
    report.append(f"kernel/naive: extra memory {mem_ratio:.3f}, time {time_ratio:.3f}")
    report += [f"target {desc}: {'MET' if met else 'MISSED'}" for desc, met in targets]
    # The report is the product of this command (to paste into benchmarks/README.md),
    # so it goes to stdout as plain text; diagnostics go through logging (stderr).
    sys.stdout.write("\n".join(report) + "\n")
    sys.stdout.flush()
    missed = not all(met for _, met in targets)
    return 1 if (check and missed) else 0


def build_parser() -> argparse.ArgumentParser:
    """CLI flags: one per :class:`BenchConfig` field, plus the child/parent switches."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks scoring",
        description="Peak extra memory and time of the log-prob kernel vs a naive full log_softmax.",
    )
    defaults = BenchConfig()
    for f in dataclasses.fields(BenchConfig):
        kind = str if f.name == "dtype" else int
        kwargs: dict = {"type": kind, "default": getattr(defaults, f.name)}
        if f.name == "dtype":
            kwargs["choices"] = sorted(_DTYPES)
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--out-dir", type=Path, default=None, help="keep the per-variant logp .pt files here")
    p.add_argument("--variant", choices=VARIANTS, default=None, help=argparse.SUPPRESS)  # child mode
    p.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)  # child: logp file
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for both the parent (no ``--variant``) and the per-variant child."""
    parser = build_parser()
    ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    cfg = BenchConfig(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(BenchConfig)})
    try:
        cfg.validate()
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(level=logging.WARNING if ns.variant else logging.INFO, stream=sys.stderr)
    if ns.variant is None:
        return run_benchmark(cfg, check=ns.check, out_dir=ns.out_dir)
    if ns.out is None:
        parser.error("--variant needs --out PATH for the (B, T) log-probs; the parent passes it.")
    result = run_variant(cfg, ns.variant, ns.out)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
