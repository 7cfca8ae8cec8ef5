"""The limit: measured matmul FLOP/s of this machine vs the model FLOP/s each stage achieves.

Run: ``python -m benchmarks flops [--model 1m|5m|20m --precision bf16|fp32 --sft-steps 8
--rl-steps 3 --prompts 16 --k 8 --max-new-tokens 32 --matmul-n 1024]``.

In one process: the fp32 and bf16 ``n x n`` matmul FLOP/s (median of 5 after a warm-up, measured
before and after the stage runs and the larger kept), then a short Lightning SFT run
(:mod:`benchmarks.sft_overhead`) and a short DPR run (:mod:`benchmarks.dpr_vs_trl`,
densepath side only, EOS suppressed) on the same model. Model FLOPs use the usual estimates with
N = parameters without the input embedding (a lookup):

- training (SFT step, DPR update): ``6 N`` per input token (prompt + response positions);
- inference (DPR scoring with 2 frozen models): ``2 N`` per input token per model;
- generation: ``2 N`` per prompt token (prefill) and per generated token (attention FLOPs and the
  KV-cache reads are ignored, which favours long sequences; at these lengths they are small).

Each stage's achieved FLOP/s is divided by the measured matmul FLOP/s of its compute dtype.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from benchmarks.common import (
    add_config_flags,
    build_llama,
    check_model_and_precision,
    default_threads,
    matmul_flops,
    md_table,
    median,
    n_params,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlopsConfig:
    """One setting; every field is a CLI flag."""

    model: str = "5m"
    precision: str = "bf16"
    sft_steps: int = 8
    sft_batch_size: int = 64
    rl_steps: int = 3
    prompts: int = 16
    k: int = 8
    max_new_tokens: int = 32
    matmul_n: int = 1024
    threads: int = dataclasses.field(default_factory=default_threads)
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the bad field and a valid choice."""
        check_model_and_precision(self.model, self.precision)
        if self.sft_steps < 3 or self.rl_steps < 2:
            raise ValueError("--sft-steps must be >= 3 and --rl-steps >= 2 (the first steps are warm-ups).")


def model_flops(n: int, tokens: float, kind: str) -> float:
    """FLOPs of ``kind`` ('train': 6N/token, 'infer': 2N/token) over ``tokens`` tokens."""
    per = {"train": 6, "infer": 2}
    if kind not in per:
        raise ValueError(f"kind={kind!r}: choose 'train' or 'infer'.")
    return per[kind] * n * tokens


def measure_peaks(n: int) -> dict[str, float]:
    """{'float32': FLOP/s, 'bfloat16': FLOP/s} of an ``n x n`` matmul."""
    return {p.dtype: p.flops_per_s for p in (matmul_flops(torch.float32, n), matmul_flops(torch.bfloat16, n))}


def run(cfg: FlopsConfig) -> dict:
    """Peaks, then the SFT and DPR stages; returns per-stage (seconds, model FLOPs) and peaks."""
    from benchmarks import dpr_vs_trl as rl
    from benchmarks import sft_overhead as sft

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    peaks_before = measure_peaks(cfg.matmul_n)

    # SFT (Lightning, the stage as it runs)
    scfg = sft.SFTBenchConfig(
        model=cfg.model, batch_size=cfg.sft_batch_size, steps=cfg.sft_steps, warmup=2, rounds=1,
        precision=cfg.precision, threads=cfg.threads, seed=cfg.seed,
    )  # fmt: skip
    tok, dm = sft.make_datamodule(scfg)
    model = build_llama(cfg.model, tok, cfg.seed)
    n = n_params(model, non_embedding=True)
    rec = sft.run_lightning(scfg, model, dm)
    batches = list(dm.train_dataloader())[: cfg.sft_steps]
    in_tokens = sum(int(b["prompt_mask"].sum() + b["response_mask"].sum()) for b in batches[scfg.warmup :])
    sft_s = rec["ends"][-1] - rec["starts"][scfg.warmup]

    # DPR (densepath side of the RL benchmark)
    rcfg = rl.RLBenchConfig(
        model=cfg.model, prompts=cfg.prompts, k=cfg.k, max_new_tokens=cfg.max_new_tokens,
        precision=cfg.precision, rounds=1, steps=cfg.rl_steps, threads=cfg.threads, seed=cfg.seed,
    )  # fmt: skip
    recs, prompt_tokens = run_dpr_only(rcfg)
    peaks_after = measure_peaks(cfg.matmul_n)
    peaks = {k: max(peaks_before[k], peaks_after[k]) for k in peaks_before}

    rows_per_step = cfg.prompts * cfg.k
    gen_tokens = rows_per_step * cfg.max_new_tokens
    seq_tokens = prompt_tokens * cfg.k + gen_tokens  # prompt + response positions per step
    stages = {
        f"SFT, {cfg.sft_steps - scfg.warmup} steps (train)": (sft_s, model_flops(n, in_tokens, "train")),
        "DPR generate (infer)": (median([r["generate"] for r in recs]), model_flops(n, seq_tokens, "infer")),
        "DPR score, 2 models (infer)": (
            median([r["score"] for r in recs]),
            2 * model_flops(n, seq_tokens, "infer"),
        ),
        "DPR update (train)": (median([r["update"] for r in recs]), model_flops(n, seq_tokens, "train")),
        "DPR step (all)": (
            median([r["step"] for r in recs]),
            model_flops(n, seq_tokens, "infer") * 3 + model_flops(n, seq_tokens, "train"),
        ),
    }
    return {
        "peaks": peaks,
        "peaks_before": peaks_before,
        "peaks_after": peaks_after,
        "stages": stages,
        "n": n,
    }


def run_dpr_only(rcfg) -> tuple[list[dict], int]:
    """DPR steps (first dropped) and the prompt tokens per step (sum over the step's prompts)."""
    from benchmarks import dpr_vs_trl as rl
    from benchmarks.common import chat_messages, toy_tokenizer_and_rows
    from densepath.algos.rl import RLModule
    from densepath.data.formatting import encode_prompt

    n_prompts = max(rcfg.prompts * rcfg.steps, 64)
    tok, rows = toy_tokenizer_and_rows(n_prompts, rcfg.seed)
    prompt_ids = [encode_prompt(tok, chat_messages(r.prompt)) for r in rows]
    policy = build_llama(rcfg.model, tok, rcfg.seed)
    reward = rl.build_reward(
        build_llama(rcfg.model, tok, rcfg.seed), build_llama(rcfg.model, tok, rcfg.seed + 1)
    )
    module = RLModule(
        policy, reward, rl._fixed_length_sampler(tok, rcfg.max_new_tokens), prompt_ids, k=rcfg.k, lr=rcfg.lr,
        kl="k3", kl_coef=rcfg.kl_coef,
    )  # fmt: skip
    recs = rl.run_densepath_block(rcfg, module, n_prompts, 0)[1:]
    mean_prompt = sum(map(len, prompt_ids)) / len(prompt_ids)
    return recs, round(mean_prompt * rcfg.prompts)


def summarize(cfg: FlopsConfig, res: dict) -> str:
    """The report: peaks and a per-stage table of achieved FLOP/s and fraction of the peak."""
    peaks = res["peaks"]
    compute = "bfloat16" if cfg.precision == "bf16" else "float32"
    lines = [
        "## Limit: matmul FLOP/s vs achieved model FLOP/s",
        f"model={cfg.model} N(non-embedding)={res['n'] / 1e6:.2f}M precision={cfg.precision} threads={cfg.threads} "
        f"torch={torch.__version__}",
        f"matmul {cfg.matmul_n}^3 GFLOP/s (before / after the stages; max used): "
        + ", ".join(
            f"{k} {res['peaks_before'][k] / 1e9:.1f} / {res['peaks_after'][k] / 1e9:.1f}"
            for k in sorted(peaks)
        ),
        "",
    ]
    rows = []
    for name, (secs, flops) in res["stages"].items():
        achieved = flops / secs
        rows.append(
            [name, secs, flops / 1e9, achieved / 1e9, achieved / peaks[compute], achieved / peaks["float32"]]
        )
    lines.append(
        md_table(
            [
                "stage (median step)",
                "s",
                "model GFLOP",
                "GFLOP/s",
                f"fraction of {compute} matmul",
                "fraction of fp32",
            ],
            rows,
        )
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> FlopsConfig:
    """CLI flags for every :class:`FlopsConfig` field."""
    p = argparse.ArgumentParser(prog="python -m benchmarks flops", description=__doc__.split("\n")[0])
    add_config_flags(p, FlopsConfig)
    return FlopsConfig(**vars(p.parse_args(list(argv))))


def main(argv: Sequence[str] | None = None) -> int:
    """Run and print the report (no target: this is the ceiling the others are read against)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "densepath.models.factory"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    sys.stdout.write(summarize(cfg, run(cfg)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
