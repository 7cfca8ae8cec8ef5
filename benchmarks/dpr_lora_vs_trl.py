"""DPR step on the shared base vs TRL ``RLOOTrainer`` + LoRA, on the real-model workload, interleaved.

Run: ``python -m benchmarks dpr_lora_vs_trl [--layers 30 --rounds 2 --steps 1 --budget-min 14 --micro-batch 1]
[--check]``
(smoke: ``--layers 2 --prompt-len 32 --new-tokens 8 --k 2 --prompts 2 --threads 1``). Needs the ``bench``
extra (``trl``). ``--check`` exits 1 when the DPR step takes more than 0.5x the TRL step.

The workload is :class:`benchmarks.common.Workload` (printed in full): a random-weight SmolLM2-135M-shaped
Llama, LoRA r=8 alpha=16 on q/k/v/o, 4 prompts of exactly 256 tokens, k=8, exactly 64 new tokens (EOS
suppressed), float32, ``sdpa`` attention on every model, gradient checkpointing off on both sides. Two random
LoRA adapters stand in for the SFT run's adapters: "sft" (pi_SFT = base + sft) and "baseline" (pi_base =
base + baseline).

- ``densepath`` (the default LoRA path): one float32 base holding the ``sft``, ``baseline`` and a fresh
  ``policy`` adapter (:class:`densepath.models.adapters.SharedBase`); :class:`RLModule` under a
  ``lightning.Trainer``: sample k responses per prompt (one prefill per prompt), score them with pi_SFT and
  pi_base stacked in one forward with per-row adapters, prefix sharing on (each prompt runs once per model),
  leave-one-out advantages, k3 KL to pi_SFT from the reward forward's log pi_SFT, one AdamW step.
- ``trl``: ``trl.RLOOTrainer`` with ``peft_config`` (the same LoRA) on a separate full copy of the SFT model
  (base + sft adapter merged), ``beta > 0`` (TRL's reference is then the adapter-disabled model = pi_SFT),
  and a reward function that scores every completion with two more separate merged copies (pi_SFT and
  pi_base) through the same :class:`DenseReward`, summed to the sequence log-ratio. TRL gets the prompts as
  text of a word-level tokenizer whose words map one-to-one to token ids ("t17 t4093 ..."), so its own
  tokenisation reproduces the workload's ids exactly (checked).

Matched: prompts per step, k (``num_generations``), prompt and response lengths, float32, attention kernel,
no gradient checkpointing, one optimiser step per generation batch (``num_iterations=1``), AdamW at the same
learning rate, grad clip 1.0, and the update's micro-batches: ``--micro-batch M`` prompts (M k rows) per
backward pass on both sides (densepath ``micro_batch=M``; TRL ``per_device_train_batch_size = M k`` and
``gradient_accumulation_steps = steps_per_generation = prompts / M``: still one generation and one optimiser
step), ``0`` = the whole step in one pass. Why the default is 1: without checkpointing, TRL's one-pass update
holds the activations of all R (P + T) tokens, ~0.6 GiB per layer here (measured peak RSS, 1 thread: 8.0 GiB at
4 layers, 10.7 GiB at 8), i.e. ~25 GiB at 30 layers, more than the 23 GiB bench machine; with 1 prompt per
pass, 5.6 GiB at 8 layers (densepath: 3.9 -> 2.6 GiB). It costs densepath a no-grad old-logp forward (its
one-pass update reuses the gradient forward's values): at 8 layers its step went 40.5 s -> 45.6 s, TRL's 144 s
-> 140 s. Both sides must generate exactly ``prompts * k * new_tokens`` tokens per step (asserted).

Timing: one warm-up step per side on a reduced workload (1 prompt, k=2, 4 new tokens; same prompt length),
then ``rounds`` interleaved rounds of ``steps`` timed steps per side under a fresh trainer (the side that goes
first alternates). A round is not started when the last round's duration would carry the run past
``--budget-min`` (the report says so). Phases as in ``benchmarks.dpr_vs_trl``: densepath ``generate`` /
``score`` / ``update`` are the module's own timers; TRL ``generate`` wraps ``_generate``, ``score`` is the rest
of ``_generate_and_score_completions`` (reward function + policy old-logp forward + reference forward), and
``update`` is the step minus that (forward + backward + optimiser step).

FLOP estimate (reported as a fraction of the measured fp32 matmul FLOP/s): a forward costs 2 N per token run
(N = non-embedding parameters) plus the tied LM head 2 H V per position whose logits are computed; the LoRA
update costs 2x its forward (the backward computes input gradients only: frozen weights get none). LoRA's
own matmuls and attention's quadratic term are left out. Tokens run per step (n prompts, P prompt tokens,
k samples, T new tokens, R = n k rows): generation n P (densepath: one prefill per prompt) or R P (TRL) plus
R (T - 1) decode tokens; densepath scoring 2 x (n P + R T) (two adapters, prefix shared) and update
2 x (n P + R T); TRL scoring 4 x R (P + T) (pi_SFT, pi_base, policy old-logp, reference) and update
2 x R (P + T); logits on the R T response positions of every scoring/update forward. With ``--micro-batch``
densepath's update first runs a no-grad forward for the old log-probs (3 x (n P + R T)); TRL computes its old
log-probs in the scoring phase either way. TRL's policy and reference forwards use its fused, chunked LM head
(log-probs and entropy over the 49k vocabulary), whose elementwise work is a visible part of TRL's score and
update on CPU (torch.profiler at 2 layers: ~40% of a TRL step).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import resource
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from benchmarks.common import (
    Workload,
    add_config_flags,
    default_threads,
    flop_fraction,
    matmul_flops,
    md_table,
    median,
    n_params,
    smollm2_shaped,
    workload_prompts,
)

logger = logging.getLogger(__name__)

MAX_STEP_RATIO = 0.5  # target: DPR step time <= 0.5x the TRL RLOOTrainer step
ATTN = "sdpa"  # one attention kernel on every model of both sides
PHASES: tuple[str, ...] = ("generate", "score", "update")


@dataclass(frozen=True)
class LoraBenchConfig:
    """One run; every field is a CLI flag (``new_tokens`` -> ``--new-tokens``). Workload fields default to
    :class:`Workload`'s; smaller ones are for smoke tests only."""

    layers: int = Workload.layers
    prompts: int = Workload.prompts
    prompt_len: int = Workload.prompt_len
    k: int = Workload.k
    new_tokens: int = Workload.new_tokens
    rounds: int = 2  # interleaved rounds
    steps: int = 1  # timed steps per side per round
    budget_min: float = 14.0  # no new round once the last round's duration would pass this
    micro_batch: int = 1  # prompts per backward pass on both sides; 0: the whole step in one pass (docstring)
    kl_coef: float = 0.05  # DPR k3 coefficient = TRL beta
    lr: float = 1e-5
    threads: int = dataclasses.field(default_factory=default_threads)
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the bad flag and a valid choice."""
        if self.k < 2:
            raise ValueError(
                f"--k must be >= 2 (leave-one-out / RLOO need 2 samples per prompt), got {self.k}."
            )
        if self.kl_coef <= 0:
            raise ValueError(
                f"--kl-coef must be > 0 (TRL runs with a KL reference, beta > 0), got {self.kl_coef}."
            )
        if not self.budget_min > 0:
            raise ValueError(f"--budget-min must be > 0 minutes, got {self.budget_min}.")
        if self.micro_batch < 0 or (self.micro_batch and self.prompts % self.micro_batch):
            raise ValueError(
                f"--micro-batch must be 0 (one pass) or divide --prompts {self.prompts} (TRL accumulates equal "
                f"micro-batches), got {self.micro_batch}."
            )
        for name in ("layers", "prompts", "prompt_len", "new_tokens", "rounds", "steps", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")

    def workload(self) -> Workload:
        return dataclasses.replace(
            Workload(),
            layers=self.layers,
            prompts=self.prompts,
            prompt_len=self.prompt_len,
            k=self.k,
            new_tokens=self.new_tokens,
        )

    def micro_batches(self, w: Workload) -> int:
        """Backward passes per optimiser step on ``w`` (1: the whole step at once)."""
        return w.prompts // min(self.micro_batch, w.prompts) if self.micro_batch else 1

    @property
    def tokens_per_step(self) -> int:
        """Generated tokens per optimiser step when EOS is suppressed."""
        return self.prompts * self.k * self.new_tokens


def warmup_workload(w: Workload) -> Workload:
    """The reduced workload of the warm-up step: first calls of every kernel and code path, not timed."""
    return dataclasses.replace(w, prompts=1, k=2, new_tokens=min(4, w.new_tokens))


# --------------------------------------------------------------------------- #
# models, tokenizer, FLOPs
# --------------------------------------------------------------------------- #


def word_tokenizer(vocab: int, eos_id: int = 2):
    """A word-level tokenizer of ``vocab`` ids: ``"t<id>"`` is token ``id`` (0 unk, 1 bos, 2 eos = pad).

    Why: TRL tokenises text prompts itself; with one word per id, the workload's random token ids survive
    the round trip exactly, so TRL runs its ordinary prompt path on the same ids as densepath.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, vocab)}}
    tk = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    if tok.eos_token_id != eos_id or len(tok) != vocab:
        raise RuntimeError(
            f"word tokenizer: eos {tok.eos_token_id} (want {eos_id}), {len(tok)} ids ({vocab})"
        )
    return tok


def ids_to_text(ids: Sequence[int]) -> str:
    return " ".join(f"t{i}" for i in ids)


def _lora_dict(w: Workload) -> dict:
    return {"r": w.lora_r, "alpha": w.lora_alpha, "dropout": 0.0, "target_modules": list(w.lora_targets)}


def random_adapter(base, path: Path, seed: int, w: Workload) -> Path:
    """A random (non-zero) LoRA adapter on a copy of ``base``, saved to ``path`` (an SFT run's adapter)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=w.lora_r,
        lora_alpha=w.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(w.lora_targets),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(copy.deepcopy(base), cfg).save_pretrained(str(path))
    return path


def merged_copy(base, adapter: Path):
    """base + adapter merged into a separate plain float32 model (what a TRL user loads), eval mode."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter)).merge_and_unload().eval()
    model.set_attn_implementation(ATTN)
    return model


def phase_flops(w: Workload, n_body: int, side: str, micro_batched: bool = False) -> dict[str, float]:
    """Estimated FLOPs per phase of one step (module docstring): ``{generate, score, update}``.
    ``micro_batched``: densepath's update first runs a no-grad forward for the old log-probs (3x forward)."""
    n, P, k, T = w.prompts, w.prompt_len, w.k, w.new_tokens
    R = n * k

    def fwd(tokens: int, logit_rows: int) -> float:
        return 2.0 * n_body * tokens + 2.0 * w.hidden * w.vocab * logit_rows

    decode = R * (T - 1)  # the prefill's last position gives the first token
    if side == "densepath":
        shared = n * P + R * T  # each prompt once per model (prefix sharing)
        return {
            "generate": fwd(n * P + decode, n + decode),
            "score": 2 * fwd(shared, R * T),
            "update": (3 if micro_batched else 2) * fwd(shared, R * T),
        }
    if side == "trl":
        full = R * (P + T)
        return {
            "generate": fwd(R * P + decode, R + decode),
            "score": 4 * fwd(full, R * T),
            "update": 2 * fwd(full, R * T),
        }
    raise ValueError(f"side {side!r}: choose densepath or trl")


def peak_rss_mib() -> float:
    """Lifetime peak resident memory of this process (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class SidePeak:
    """Peak RSS (MiB, the whole process) while one side's timed blocks run: VmHWM is reset before each
    block (``benchmarks.scoring.reset_peak_rss``) and read after it; NaN where /proc does not allow it.
    ``mib["before"]``: the peak before the first block (building and warm-up); a reset also lowers
    ``ru_maxrss``, so the run's peak is the max of the three."""

    def __init__(self) -> None:
        self.mib: dict[str, float] = {}

    def run(self, side: str, fn, *args):
        from benchmarks.scoring import read_status_kib, reset_peak_rss

        self.mib.setdefault("before", max(peak_rss_mib(), read_status_kib("VmHWM") / 1024))
        ok = reset_peak_rss()
        out = fn(*args)
        peak = read_status_kib("VmHWM") / 1024 if ok else float("nan")
        self.mib[side] = max(self.mib.get(side, float("-inf")), peak)
        return out


# --------------------------------------------------------------------------- #
# densepath side
# --------------------------------------------------------------------------- #


def densepath_module(shared, reward, tok, w: Workload, prompts: list[list[int]], cfg: LoraBenchConfig):
    """RLModule on the shared base's policy, sampling exactly ``w.new_tokens`` tokens per response, with
    ``w.prompts // cfg.micro_batches(w)`` prompts per backward pass."""
    from benchmarks.dpr_vs_trl import _fixed_length_sampler
    from densepath.algos.rl import RLModule

    return RLModule(
        shared.model,
        reward,
        _fixed_length_sampler(tok, w.new_tokens),
        prompts,
        k=w.k,
        lr=cfg.lr,
        kl="k3",
        kl_coef=cfg.kl_coef,
        prefix_sharing=True,
        micro_batch=w.prompts // cfg.micro_batches(w) if cfg.micro_batch else None,
        check_params=shared.assert_trainable,
    )


def run_densepath(module, w: Workload, steps: int, seed: int) -> list[dict]:
    """``steps`` DPR steps under a fresh ``lightning.Trainer`` (``benchmarks.dpr_vs_trl``'s block)."""
    from benchmarks.dpr_vs_trl import run_densepath_block

    block_cfg = SimpleNamespace(steps=steps, prompts=w.prompts, seed=seed, precision="fp32")
    return run_densepath_block(block_cfg, module, w.prompts, 0)


# --------------------------------------------------------------------------- #
# TRL side
# --------------------------------------------------------------------------- #


def trl_args(w: Workload, cfg: LoraBenchConfig, steps: int, output_dir: str, seed: int):
    """The ``RLOOConfig`` matching ``w``: one generation batch = one optimiser step, EOS suppressed,
    float32, gradient checkpointing off (TRL's default is on). With ``--micro-batch`` the generation batch
    is split into ``cfg.micro_batches(w)`` accumulated micro-batches (``steps_per_generation`` equal to
    ``gradient_accumulation_steps``: still one generation and one optimiser step)."""
    from trl import RLOOConfig

    g = cfg.micro_batches(w)
    # transformers 5.x renamed gradient_checkpointing (TRL defaults it to True) to activation_checkpointing
    new_name = "activation_checkpointing" in {f.name for f in dataclasses.fields(RLOOConfig)}
    no_checkpointing = {"activation_checkpointing" if new_name else "gradient_checkpointing": False}
    return RLOOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=w.rows // g,  # completions per backward pass (TRL counts completions)
        gradient_accumulation_steps=g,
        steps_per_generation=g,
        num_iterations=1,
        num_generations=w.k,
        max_completion_length=w.new_tokens,
        generation_kwargs={"min_new_tokens": w.new_tokens},
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=cfg.kl_coef,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        max_steps=steps,
        **no_checkpointing,
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=seed,
        log_completions=False,
    )


def lora_peft_config(w: Workload):
    from densepath.models.adapters import lora_config

    return lora_config(_lora_dict(w))


def run_trl(
    w: Workload,
    cfg: LoraBenchConfig,
    steps: int,
    seed: int,
    sft_model,
    tok,
    prompts: list[list[int]],
    reward_fn,
    timings: dict,
) -> tuple[list[dict], dict]:
    """``steps`` RLOO steps under a fresh ``RLOOTrainer`` whose policy is a fresh copy of ``sft_model`` plus
    a new LoRA (TRL wraps and patches the model it gets, so each trainer gets its own copy).

    Returns the per-step records and what the policy ran with (attention kernel, gradient checkpointing).
    """
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import RLOOTrainer

    from benchmarks.dpr_vs_trl import instrument_trl

    records: list[dict] = []
    expected = {tuple(p) for p in prompts}
    dataset = Dataset.from_list([{"prompt": ids_to_text(p), "prompt_idx": i} for i, p in enumerate(prompts)])
    policy = copy.deepcopy(sft_model)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = RLOOTrainer(
            model=policy,
            reward_funcs=reward_fn,
            args=trl_args(w, cfg, steps, tmp, seed),
            train_dataset=dataset,
            processing_class=tok,
            peft_config=lora_peft_config(w),
        )
        StepTimer = instrument_trl(trainer, timings, records, expected)
        trainer.remove_callback(PrinterCallback)  # its end-of-training metrics dict is not the report
        trainer.add_callback(StepTimer())
        trainer.train()
        model = trainer.model
        ran = {
            "attn": model.config._attn_implementation,
            "gradient_checkpointing": bool(
                getattr(model.get_base_model(), "is_gradient_checkpointing", False)
            ),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
    del trainer, policy, model
    return records, ran


# --------------------------------------------------------------------------- #
# orchestration and report
# --------------------------------------------------------------------------- #


def build(cfg: LoraBenchConfig, tmp: Path) -> dict:
    """Both sides' models from one random base and two random adapters (module docstring)."""
    from benchmarks.dpr_vs_trl import build_reward
    from densepath.models.adapters import SharedBase
    from densepath.rewards.baselines import SnapshotBaseline
    from densepath.rewards.dense import DenseReward
    from densepath.rewards.formulations import LogRatio

    w = cfg.workload()
    base = smollm2_shaped(w, seed=cfg.seed)
    base.set_attn_implementation(ATTN)
    n_body = n_params(base, non_embedding=True)
    sft_dir = random_adapter(base, tmp / "sft", cfg.seed + 1, w)
    base_dir = random_adapter(base, tmp / "baseline", cfg.seed + 2, w)
    # TRL side: separate merged copies (policy source = pi_SFT; the reward's pi_SFT and pi_base)
    trl_sft, trl_scorer_sft, trl_scorer_base = (
        merged_copy(base, sft_dir),
        merged_copy(base, sft_dir),
        merged_copy(base, base_dir),
    )
    trl_reward = build_reward(trl_scorer_sft, trl_scorer_base)
    # densepath side: the shared base takes `base` itself (wrapped in place)
    torch.manual_seed(cfg.seed + 3)
    shared = SharedBase(base, sft_dir, base_dir, _lora_dict(w), torch.float32)
    baseline = SnapshotBaseline(fraction=0.5)
    baseline.name, baseline.path = "bench_baseline_adapter", base_dir
    reward = DenseReward(LogRatio(), None, baseline, shared=shared)
    return {
        "w": w,
        "n_body": n_body,
        "shared": shared,
        "reward": reward,
        "trl_sft": trl_sft,
        "trl_reward": trl_reward,
        "kernels": {
            "densepath": shared.model.config._attn_implementation,
            "trl reward pi_SFT": trl_scorer_sft.config._attn_implementation,
            "trl reward pi_base": trl_scorer_base.config._attn_implementation,
        },
        "densepath_gc": bool(getattr(base, "is_gradient_checkpointing", False)),
    }


def run(cfg: LoraBenchConfig) -> dict:
    """Build both sides, warm each up on the reduced workload, run the interleaved timed rounds."""
    from benchmarks.dpr_vs_trl import make_trl_reward

    cfg.validate()
    t_start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    peak = matmul_flops(torch.float32, n=2048)  # closer to the big matmuls of the step than 1024^3
    with tempfile.TemporaryDirectory(prefix="densepath-bench-lora-") as tmp:
        m = build(cfg, Path(tmp))
        w = m["w"]
        tok = word_tokenizer(w.vocab)
        prompts = workload_prompts(w, seed=cfg.seed).tolist()
        timings: dict = defaultdict(float)
        reward_fn = make_trl_reward(m["trl_reward"], prompts, tok.pad_token_id, "fp32", timings)
        trl_common = (m["trl_sft"], tok)

        ww = warmup_workload(w)
        t0 = time.perf_counter()
        run_densepath(densepath_module(m["shared"], m["reward"], tok, ww, prompts, cfg), ww, 1, cfg.seed)
        run_trl(ww, cfg, 1, cfg.seed, *trl_common, prompts[: ww.prompts], reward_fn, timings)
        warmup_s = time.perf_counter() - t0
        logger.info("built and warmed up in %.1f s", time.perf_counter() - t_start)

        module = densepath_module(m["shared"], m["reward"], tok, w, prompts, cfg)
        records: dict[str, list[dict]] = {"densepath": [], "trl": []}
        trl_ran: dict = {}
        side_peak = SidePeak()
        budget_s, rounds_run, last_round_s, stopped = cfg.budget_min * 60, 0, 0.0, False
        for r in range(cfg.rounds):
            if r and time.perf_counter() - t_start + last_round_s > budget_s:
                stopped = True
                break
            t_round = time.perf_counter()
            order = ("densepath", "trl") if r % 2 == 0 else ("trl", "densepath")
            for side in order:
                seed = cfg.seed + 1 + r
                if side == "densepath":
                    recs = side_peak.run(side, run_densepath, module, w, cfg.steps, seed)
                else:
                    trl_call = (w, cfg, cfg.steps, seed, *trl_common, prompts, reward_fn, timings)
                    recs, trl_ran = side_peak.run(side, run_trl, *trl_call)
                records[side] += recs
                logger.info("round %d %s: %s s", r, side, [round(x["step"], 2) for x in recs])
            last_round_s, rounds_run = time.perf_counter() - t_round, r + 1
    return {
        "records": records,
        "workload": w,
        "n_body": m["n_body"],
        "peak": peak,
        "kernels": {**m["kernels"], "trl policy": trl_ran.get("attn")},
        "gradient_checkpointing": {
            "densepath": m["densepath_gc"],
            "trl": trl_ran.get("gradient_checkpointing"),
        },
        "trainable": {
            "densepath": sum(p.numel() for p in m["shared"].model.parameters() if p.requires_grad),
            "trl": trl_ran.get("trainable"),
        },
        "rounds_run": rounds_run,
        "stopped_by_budget": stopped,
        "warmup_s": warmup_s,
        "total_s": time.perf_counter() - t_start,
        "peak_rss_mib": max([peak_rss_mib(), *side_peak.mib.values()]),
        "side_peak_rss_mib": side_peak.mib,
    }


def check_tokens(cfg: LoraBenchConfig, res: dict) -> dict[str, int]:
    """Both sides generated exactly ``prompts * k * new_tokens`` tokens every step, and TRL saw the
    workload's prompts token for token; the per-step token count, else AssertionError naming the side."""
    recs, w = res["records"], res["workload"]
    out = {}
    for side, rs in recs.items():
        if not rs:
            raise AssertionError(f"{side} ran no timed step")
        toks = sorted({r["tokens"] for r in rs})
        if toks != [cfg.tokens_per_step]:
            raise AssertionError(
                f"{side} generated {toks} tokens per step, expected exactly {cfg.tokens_per_step} "
                "(prompts * k * new_tokens); EOS suppression (min_new_tokens) did not hold."
            )
        out[side] = toks[0]
    for r in recs["trl"]:
        if r["prompt_tokens"] != w.rows * w.prompt_len or r["foreign_prompts"]:
            raise AssertionError(
                f"trl tokenised {r['prompt_tokens']} prompt tokens ({r['foreign_prompts']} prompts not in the "
                f"workload), expected {w.rows * w.prompt_len}: the word tokenizer did not round-trip the ids."
            )
    return out


def summarize(cfg: LoraBenchConfig, res: dict) -> tuple[str, float]:
    """The printed report (workload, settings, one table, ratios, target) and the step-time ratio."""
    import trl

    recs, w, peak = res["records"], res["workload"], res["peak"]
    tokens = check_tokens(cfg, res)
    cols = ("step", "generate", "score", "update", "other")
    med = {side: {c: median([r[c] for r in rs]) for c in cols} for side, rs in recs.items()}
    g = cfg.micro_batches(w)
    flops = {side: phase_flops(w, res["n_body"], side, micro_batched=g > 1) for side in recs}
    rows = []
    for side in ("densepath", "trl"):
        f, s = flops[side], med[side]
        total = sum(f.values())
        rows.append(
            [side]
            + [s[c] for c in cols]
            + [cfg.tokens_per_step / s["step"], total / 1e9, flop_fraction(total, s["step"], peak)]
            + [flop_fraction(f[p], s[p], peak) for p in PHASES]
        )
    ratio = med["densepath"]["step"] / med["trl"]["step"]
    rows.append(
        ["densepath/trl"]
        + [med["densepath"][c] / med["trl"][c] if med["trl"][c] else "-" for c in cols]
        + ["", sum(flops["densepath"].values()) / sum(flops["trl"].values()), "", "", "", ""]
    )
    header = ["variant", "step s", "generate s", "score s", "update s", "other s", "gen tok/s", "GFLOP/step"]
    header += ["step FLOP/peak", "generate FLOP/peak", "score FLOP/peak", "update FLOP/peak"]
    trl_reward = median([r["reward"] for r in recs["trl"]])
    trl_logp = median([r["policy+ref logp"] for r in recs["trl"]])
    n_steps = {side: len(rs) for side, rs in recs.items()}
    budget_note = (
        f"; stopped after {res['rounds_run']} of {cfg.rounds} rounds: the next would pass --budget-min "
        f"{cfg.budget_min:g}"
        if res["stopped_by_budget"]
        else ""
    )
    lines = [
        "## DPR step (shared base) vs TRL RLOOTrainer + LoRA, real-model workload",
        res["workload"].describe(),
        f"fp32 on CPU, trl={trl.__version__}; measured fp32 matmul peak {peak.flops_per_s / 1e9:.1f} GFLOP/s "
        f"({peak.n}x{peak.n}); non-embedding parameters N={res['n_body'] / 1e6:.2f}M",
        f"attention kernels: {', '.join(f'{k} {v}' for k, v in res['kernels'].items())}; gradient "
        f"checkpointing: densepath {res['gradient_checkpointing']['densepath']}, trl "
        f"{res['gradient_checkpointing']['trl']}; trainable (LoRA) parameters: densepath "
        f"{res['trainable']['densepath']}, trl {res['trainable']['trl']}",
        f"densepath: SharedBase (sft + baseline + policy adapters on one fp32 base), RLModule (advantage=loo, "
        f"kl=k3 coef {cfg.kl_coef}, AdamW lr {cfg.lr}, grad clip 1.0, prefix sharing, micro_batch="
        f"{w.prompts // g if g > 1 else None}), lightning 32-true",
        f"trl: RLOOTrainer + peft LoRA on a merged pi_SFT copy (beta={cfg.kl_coef}: reference = adapters "
        f"disabled = pi_SFT, num_generations={w.k}, per_device_train_batch_size={w.rows // g}, "
        f"gradient_accumulation_steps = steps_per_generation = {g}, "
        f"num_iterations=1, max_completion_length={w.new_tokens}, min_new_tokens={w.new_tokens}, "
        f"gradient_checkpointing=False, AdamW lr {cfg.lr}, max_grad_norm 1.0); reward_func = sum_t [log pi_SFT - "
        "log pi_base] via DenseReward on two more merged copies",
        f"tokens generated per step: densepath {tokens['densepath']}, trl {tokens['trl']} (= prompts*k*new_tokens: "
        f"asserted); trl prompt ids = the workload's (asserted)",
        f"{res['rounds_run']} interleaved rounds x {cfg.steps} step(s) per side{budget_note}; timed steps: "
        f"densepath {n_steps['densepath']}, trl {n_steps['trl']}; warm-up (1 step per side, 1 prompt, k=2, "
        f"{warmup_workload(w).new_tokens} new tokens) {res['warmup_s']:.1f} s; medians in seconds",
        "FLOPs: 2N per token run + 2HV per computed logit; update = 2x forward (LoRA: input gradients only"
        f"{'; densepath micro-batched: + a no-grad old-logp forward' if g > 1 else ''}); LoRA matmuls and "
        "attention scores left out (module docstring lists the tokens run per phase)",
        "",
        md_table(header, rows),
        "",
        f"trl score split: reward_func (2 merged scorers) {trl_reward:.3f} s + policy old-logp and reference "
        f"forwards {trl_logp:.3f} s",
        f"densepath/trl step time: {ratio:.3f}; ideal prefix-sharing token ratio (P+kT)/(k(P+T)) = "
        f"{w.ideal_sharing_ratio:.3f} (prompt:response = {w.prompt_len}:{w.new_tokens}); step ratio / ideal = "
        f"{ratio / w.ideal_sharing_ratio:.3f}",
        f"peak RSS of the process (all models of both sides resident): during densepath steps "
        f"{res['side_peak_rss_mib'].get('densepath', float('nan')):.0f} MiB, during TRL steps "
        f"{res['side_peak_rss_mib'].get('trl', float('nan')):.0f} MiB, whole run (incl. building) {res['peak_rss_mib']:.0f} MiB; "
        f"total run {res['total_s'] / 60:.1f} min",
    ]
    return "\n".join(lines), ratio


def parse_args(argv: Sequence[str]) -> tuple[LoraBenchConfig, bool]:
    """CLI flags for every :class:`LoraBenchConfig` field, plus ``--check``."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks dpr_lora_vs_trl", description=__doc__.split("\n")[0]
    )
    add_config_flags(p, LoraBenchConfig)
    p.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 if the DPR step takes more than {MAX_STEP_RATIO}x the TRL RLOOTrainer step",
    )
    ns = vars(p.parse_args(list(argv)))
    check = ns.pop("check")
    return LoraBenchConfig(**ns), check


def target(ratio: float) -> tuple[str, bool]:
    ok = math.isfinite(ratio) and ratio <= MAX_STEP_RATIO
    line = (
        f"target DPR step <= {MAX_STEP_RATIO:g}x TRL RLOOTrainer step (got {ratio:.3f}x): "
        f"{'MET' if ok else 'MISSED'}"
    )
    return line, ok


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the report, and with ``--check`` return 1 when the target is missed."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in (
        "lightning",
        "lightning.pytorch",
        "lightning.pytorch.utilities.rank_zero",
        "transformers",
        "trl",
        "peft",
        "densepath.models.adapters",
        "densepath.models.factory",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg, check = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import trl  # noqa: F401
    except ImportError:
        logger.error(
            "dpr_lora_vs_trl needs TRL: pip install 'densepath[bench]' (or pip install trl 'torch==<yours>')."
        )
        return 2
    report, ratio = summarize(cfg, run(cfg))
    line, ok = target(ratio)
    sys.stdout.write(report + "\n" + line + "\n")
    return 0 if ok or not check else 1


if __name__ == "__main__":
    sys.exit(main())
