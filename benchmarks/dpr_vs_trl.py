"""DPR step vs TRL ``RLOOTrainer`` step at matched settings, interleaved in one process.

Run: ``python -m benchmarks dpr_vs_trl [--model 5m|20m --prompts 16 --k 8 --max-new-tokens 32
--precision bf16|fp32 --rounds 3 --steps 3] [--check]``. Needs the ``bench`` extra (``trl``).

What each side does per optimiser step (same prompts per step, k, ``max_new_tokens``, dtype,
threads, and the same random-weight policy at the start):

- ``densepath``: :class:`densepath.algos.rl.RLModule` under a ``lightning.Trainer``: sample k
  responses per prompt with :class:`HFSampler`, score them with :class:`DenseReward` (frozen
  pi_SFT and pi_base, dense log-ratio), reward-to-go, leave-one-out advantages, k3 KL to pi_SFT
  reusing the reward forward's log pi_SFT, one AdamW step.
- ``trl``: ``trl.RLOOTrainer`` with ``beta > 0`` (a KL reference: its own frozen copy of the
  initial policy = pi_SFT) and a reward function that scores each completion with the *same two
  frozen models* through the same :class:`DenseReward`, summed to the sequence log-ratio
  log pi_SFT(y|x) - log pi_base(y|x).

EOS is suppressed on both sides (``min_new_tokens = max_new_tokens``), so both generate exactly
``prompts * k * max_new_tokens`` tokens per step; this is asserted. The two are interleaved in
blocks: ``rounds`` times, ``steps`` densepath steps then ``steps`` TRL steps (fresh trainers, the
same model objects); the first step of every block is a warm-up and is dropped. Phases:

- densepath: the module's own ``time/generate_s``, ``time/score_s``, ``time/update_s`` (``update``
  = policy forward + backward + optimiser step); ``other`` = step minus the three (Lightning loop).
- trl: ``generate`` wraps ``RLOOTrainer._generate``; ``reward`` wraps the reward function (the two
  frozen scorers); ``policy+ref logp`` is the rest of ``_generate_and_score_completions`` (the
  no-grad policy forward for old log-probs, the reference-model forward, decoding, advantages);
  ``update`` = step minus ``_generate_and_score_completions`` (forward + backward + optimiser step).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from benchmarks.common import (
    MODEL_PRESETS,
    add_config_flags,
    build_llama,
    chat_messages,
    check_model_and_precision,
    default_threads,
    md_table,
    median,
    n_params,
    target_line,
    toy_tokenizer_and_rows,
)

logger = logging.getLogger(__name__)

MAX_STEP_RATIO = 0.7  # target: densepath step time <= 0.7x TRL's
PHASES: tuple[str, ...] = ("generate", "score", "update", "other")


@dataclass(frozen=True)
class RLBenchConfig:
    """One matched setting; every field is a CLI flag (``max_new_tokens`` -> ``--max-new-tokens``)."""

    model: str = "5m"
    prompts: int = 16  # prompts per optimiser step (conf/algo/dpr.yaml)
    k: int = 8
    max_new_tokens: int = 32
    precision: str = "bf16"  # bf16 autocast (both sides) or fp32
    rounds: int = 3
    steps: int = 3  # steps per block; the first of each block is a warm-up
    kl_coef: float = 0.05  # DPR k3 coefficient = TRL beta
    lr: float = 1e-5
    threads: int = dataclasses.field(default_factory=default_threads)
    seed: int = 0
    # attention kernels: "framework" = each side as it runs by default (densepath: its run-wide
    # `attn_implementation: auto` = eager on CPU; TRL: what transformers loads, sdpa); "sdpa" or
    # "eager" = that kernel on every model of both sides
    attn: str = "framework"

    def validate(self) -> None:
        """Raise ValueError naming the bad field and a valid choice."""
        check_model_and_precision(self.model, self.precision)
        if self.attn not in ("framework", "sdpa", "eager"):
            raise ValueError(f"--attn must be framework, sdpa or eager, got {self.attn!r}.")
        if self.k < 2:
            raise ValueError(
                f"--k must be >= 2 (leave-one-out / RLOO need 2 samples per prompt), got {self.k}."
            )
        if self.steps < 2:
            raise ValueError(
                f"--steps must be >= 2 (the first step of each block is a warm-up), got {self.steps}."
            )
        if self.kl_coef <= 0:
            raise ValueError(
                f"--kl-coef must be > 0 (TRL runs with a KL reference, beta > 0), got {self.kl_coef}."
            )
        for name in ("prompts", "max_new_tokens", "rounds", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")

    @property
    def tokens_per_step(self) -> int:
        """Generated tokens per optimiser step when EOS is suppressed."""
        return self.prompts * self.k * self.max_new_tokens


def _fixed_length_sampler(tokenizer, max_new_tokens: int):
    """An :class:`HFSampler` that never stops early: ``min_new_tokens = max_new_tokens``.

    Why: with EOS suppressed both frameworks generate exactly the same number of tokens, so the
    comparison does not depend on what a random-weight policy happens to sample.
    """
    from densepath.sampling.hf import HFSampler

    class FixedLengthSampler(HFSampler):
        def generate(
            self,
            model,
            prompts,
            *,
            k=1,
            max_new_tokens=None,
            temperature=None,
            greedy=False,
            min_new_tokens=0,
        ):
            n = int(max_new_tokens or self.max_new_tokens)
            return super().generate(
                model,
                prompts,
                k=k,
                max_new_tokens=n,
                temperature=temperature,
                greedy=greedy,
                min_new_tokens=n,
            )

    return FixedLengthSampler(max_new_tokens=max_new_tokens).configure(tokenizer)


def build_reward(sft, base):
    """The densepath scorer over two frozen models: dense ``log pi_SFT - log pi_base``."""
    from densepath.rewards.baselines import SnapshotBaseline, freeze
    from densepath.rewards.dense import DenseReward
    from densepath.rewards.formulations import LogRatio

    baseline = SnapshotBaseline(fraction=0.5)
    baseline.model = freeze(base)
    baseline.name = "bench_base"
    return DenseReward(LogRatio(), freeze(sft), baseline)


class DtypeProbe:
    """Forward hook on one MLP projection: records the output dtypes seen (proves autocast is on)."""

    def __init__(self, model) -> None:
        self.dtypes: set[str] = set()
        layer = model.model.layers[0].mlp.down_proj
        self.handle = layer.register_forward_hook(
            lambda m, i, o: self.dtypes.add(str(o.dtype).removeprefix("torch."))
        )


# --------------------------------------------------------------------------- #
# densepath side
# --------------------------------------------------------------------------- #


def run_densepath_block(cfg: RLBenchConfig, module, n_prompts: int, block: int) -> list[dict]:
    """``cfg.steps`` DPR steps under a fresh ``lightning.Trainer``; one dict of timings per step."""
    import lightning as L
    from torch.utils.data import DataLoader

    records: list[dict] = []

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.t0 = time.perf_counter()
            self.tok0 = pl_module.generated_tokens

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step = time.perf_counter() - self.t0
            m = trainer.callback_metrics
            rec = {
                "step": step,
                "generate": float(m["time/generate_s"]),
                "score": float(m["time/score_s"]),
                "update": float(m["time/update_s"]),
                "tokens": pl_module.generated_tokens - self.tok0,
            }
            rec["other"] = step - rec["generate"] - rec["score"] - rec["update"]
            records.append(rec)

    g = torch.Generator().manual_seed(cfg.seed + block)
    loader = DataLoader(
        list(range(n_prompts)), batch_size=cfg.prompts, shuffle=True, generator=g, drop_last=True
    )
    trainer = L.Trainer(
        max_steps=cfg.steps,
        accelerator="cpu",
        devices=1,
        precision="bf16-mixed" if cfg.precision == "bf16" else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[StepTimer()],
    )
    trainer.fit(module, train_dataloaders=loader)
    return records


# --------------------------------------------------------------------------- #
# TRL side
# --------------------------------------------------------------------------- #


def trl_config(cfg: RLBenchConfig, output_dir: str, seed: int | None = None):
    """The ``RLOOConfig`` matching ``cfg``: one generation batch = one optimiser step, EOS suppressed."""
    from trl import RLOOConfig

    return RLOOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=cfg.prompts * cfg.k,  # completions per step (TRL counts completions)
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        num_generations=cfg.k,
        max_completion_length=cfg.max_new_tokens,
        generation_kwargs={"min_new_tokens": cfg.max_new_tokens},
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=cfg.kl_coef,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        max_steps=cfg.steps,
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=cfg.precision == "bf16",
        fp16=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=cfg.seed if seed is None else seed,
        log_completions=False,
        model_init_kwargs={"attn_implementation": cfg.attn} if cfg.attn != "framework" else None,
    )


def run_trl_block(
    cfg: RLBenchConfig, policy_dir: str, tokenizer, dataset, reward_fn, timings: dict, block: int, dtypes: set
) -> list[dict]:
    """``cfg.steps`` RLOO steps under a fresh ``RLOOTrainer`` whose policy and reference model are
    loaded from ``policy_dir`` (TRL builds its reference model from the policy's path)."""
    from trl import RLOOTrainer

    records: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        args = trl_config(cfg, tmp, seed=cfg.seed + block)
        trainer = RLOOTrainer(
            model=policy_dir,
            reward_funcs=reward_fn,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        StepTimer = instrument_trl(trainer, timings, records)
        trainer.add_callback(StepTimer())
        probe = DtypeProbe(trainer.model)
        trainer.train()
        dtypes.update(probe.dtypes)
    return records


def instrument_trl(trainer, timings: dict, records: list[dict], expected: set | None = None):
    """Wrap a TRL RLOOTrainer's generation and scoring with timers; returns the callback class that turns
    them into one record per step (generate, reward, policy+ref logp, update, tokens). With `expected`
    (the prompts as token tuples) the records also count prompt tokens and prompts not among them."""
    from transformers import TrainerCallback

    orig_generate = trainer._generate
    orig_gen_score = trainer._generate_and_score_completions

    @functools.wraps(orig_generate)
    def _generate(prompts):
        t0 = time.perf_counter()
        out = orig_generate(prompts)
        timings["generate"] += time.perf_counter() - t0
        timings["tokens"] += sum(len(c) for c in out[1])
        if expected is not None:
            timings["prompt_tokens"] += sum(len(p) for p in out[0])
            timings["foreign_prompts"] += sum(tuple(p) not in expected for p in out[0])
        return out

    @functools.wraps(orig_gen_score)
    def _gen_score(inputs):
        t0 = time.perf_counter()
        out = orig_gen_score(inputs)
        timings["gen_score"] += time.perf_counter() - t0
        return out

    trainer._generate = _generate
    trainer._generate_and_score_completions = _gen_score

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            timings.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step = time.perf_counter() - self.t0
            gen, rew, gs = timings["generate"], timings["reward"], timings["gen_score"]
            rec = {
                "step": step,
                "generate": gen,
                "reward": rew,
                "policy+ref logp": gs - gen - rew,
                "score": gs - gen,
                "update": step - gs,
                "other": 0.0,
                "tokens": int(timings["tokens"]),
            }
            if expected is not None:
                rec.update(
                    prompt_tokens=int(timings["prompt_tokens"]),
                    foreign_prompts=int(timings["foreign_prompts"]),
                )
            records.append(rec)

    return StepTimer


def make_trl_reward(reward, prompt_ids: list[list[int]], pad_id: int, precision: str, timings: dict):
    """A TRL reward function: the sequence log-ratio from the same :class:`DenseReward`.

    Why through DenseReward: both sides then run the very same two frozen forwards per completion;
    only the framework around them differs. Runs under the same autocast as the rest of the step.
    """
    from densepath.sampling.base import left_pad, right_pad

    def log_ratio_reward(prompts, completions, completion_ids, prompt_idx, **kw) -> list[float]:
        t0 = time.perf_counter()
        p, pm = left_pad([prompt_ids[i] for i in prompt_idx], pad_id)  # (B, P)
        r, rm = right_pad([list(c) for c in completion_ids], pad_id)  # (B, T)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = reward.score_full(p, pm, r, rm)
        seq = (out.rewards.float() * rm).sum(-1)  # (B,)
        timings["reward"] += time.perf_counter() - t0
        return seq.tolist()

    return log_ratio_reward


# --------------------------------------------------------------------------- #
# orchestration and report
# --------------------------------------------------------------------------- #


def run(cfg: RLBenchConfig) -> dict:
    """Build both sides, run ``rounds`` interleaved blocks, return per-step records and settings."""
    from datasets import Dataset

    from densepath.algos.rl import RLModule
    from densepath.data.formatting import encode_prompt

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    n_prompts = max(cfg.prompts * cfg.steps, 64)
    tok, rows = toy_tokenizer_and_rows(n_prompts, cfg.seed)
    prompt_ids = [encode_prompt(tok, chat_messages(r.prompt)) for r in rows]

    from densepath.models import attention

    policy_dp = build_llama(cfg.model, tok, cfg.seed)  # pi_theta, initialised at pi_SFT (same seed)
    sft = build_llama(cfg.model, tok, cfg.seed)  # frozen pi_SFT (TRL's reference is its own copy)
    base = build_llama(cfg.model, tok, cfg.seed + 1)  # frozen pi_base
    # each side scores with its own copies of the two frozen models, so each runs its own kernel
    trl_sft, trl_base = build_llama(cfg.model, tok, cfg.seed), build_llama(cfg.model, tok, cfg.seed + 1)
    attention.configure("auto" if cfg.attn == "framework" else cfg.attn, "cpu")
    try:
        for m in (policy_dp, sft, base):
            attention.apply(m)
    finally:
        attention.configure(None, "cpu")
    if cfg.attn != "framework":
        for m in (trl_sft, trl_base):
            m.set_attn_implementation(cfg.attn)
    kernels = {
        "densepath": policy_dp.config._attn_implementation,
        "trl": cfg.attn if cfg.attn != "framework" else trl_sft.config._attn_implementation,
    }
    reward = build_reward(sft, base)
    trl_reward_model = build_reward(trl_sft, trl_base)
    sampler = _fixed_length_sampler(tok, cfg.max_new_tokens)
    module = RLModule(
        policy_dp,
        reward,
        sampler,
        prompt_ids,
        k=cfg.k,
        lr=cfg.lr,
        kl="k3",
        kl_coef=cfg.kl_coef,
    )  # fmt: skip (decoding: the sampler's max_new_tokens and temperature 1)
    timings: dict = defaultdict(float)
    reward_fn = make_trl_reward(trl_reward_model, prompt_ids, tok.pad_token_id, cfg.precision, timings)
    dataset = Dataset.from_list(
        [{"prompt": chat_messages(r.prompt), "prompt_idx": i} for i, r in enumerate(rows)]
    )
    probe_dp, trl_dtypes = DtypeProbe(policy_dp), set()
    policy_dir = tempfile.mkdtemp(prefix="densepath-bench-policy-")
    sft.save_pretrained(policy_dir)  # TRL loads its policy and its KL reference from here: = pi_SFT
    tok.save_pretrained(policy_dir)

    records: dict[str, list[dict]] = {"densepath": [], "trl": []}
    try:
        for block in range(cfg.rounds):
            dp = run_densepath_block(cfg, module, n_prompts, block)
            tr = run_trl_block(cfg, policy_dir, tok, dataset, reward_fn, timings, block, trl_dtypes)
            records["densepath"] += dp[1:]  # drop each block's warm-up step
            records["trl"] += tr[1:]
            logger.info(
                "round %d: densepath %s s, trl %s s",
                block, [round(r["step"], 2) for r in dp], [round(r["step"], 2) for r in tr],
            )  # fmt: skip
    finally:
        shutil.rmtree(policy_dir, ignore_errors=True)
    return {
        "records": records,
        "n_params": n_params(policy_dp),
        "n_params_nonembed": n_params(policy_dp, non_embedding=True),
        "vocab": len(tok),
        "prompt_tokens_mean": sum(map(len, prompt_ids)) / len(prompt_ids),
        "dtypes": {"densepath": sorted(probe_dp.dtypes), "trl": sorted(trl_dtypes)},
        "kernels": kernels,
    }


def summarize(cfg: RLBenchConfig, res: dict) -> tuple[str, float]:
    """The printed report (configs, tokens per step, phase table) and the step-time ratio."""
    import trl

    recs = res["records"]
    tokens = {side: sorted({r["tokens"] for r in rs}) for side, rs in recs.items()}
    for side, toks in tokens.items():
        if toks != [cfg.tokens_per_step]:
            raise AssertionError(
                f"{side} generated {toks} tokens per step, expected exactly {cfg.tokens_per_step} "
                "(prompts * k * max_new_tokens); EOS suppression (min_new_tokens) did not hold."
            )
    hidden, layers, heads, inter = MODEL_PRESETS[cfg.model]
    lines = [
        "## DPR step vs TRL RLOOTrainer step",
        f"model={cfg.model} (Llama: hidden {hidden}, {layers} layers, {heads} heads, MLP {inter}, untied head) "
        f"params={res['n_params'] / 1e6:.2f}M vocab={res['vocab']} random weights",
        f"prompts/step={cfg.prompts} k={cfg.k} max_new_tokens={cfg.max_new_tokens} (EOS suppressed: min_new_tokens="
        f"{cfg.max_new_tokens}) mean prompt tokens={res['prompt_tokens_mean']:.1f} precision={cfg.precision} "
        f"threads={cfg.threads} torch={torch.__version__} trl={trl.__version__}",
        f"densepath: RLModule (advantage=loo, kl=k3 coef {cfg.kl_coef}, AdamW lr {cfg.lr}, grad clip 1.0), "
        f"lightning precision={'bf16-mixed' if cfg.precision == 'bf16' else '32-true'}",
        f"trl: RLOOTrainer (beta={cfg.kl_coef}, num_generations={cfg.k}, per_device_train_batch_size="
        f"{cfg.prompts * cfg.k}, steps_per_generation=1, num_iterations=1, max_completion_length={cfg.max_new_tokens}, "
        f"generation_kwargs={{min_new_tokens: {cfg.max_new_tokens}}}, AdamW lr {cfg.lr}, max_grad_norm 1.0, "
        f"bf16={cfg.precision == 'bf16'}, use_cpu) reward_func = sum_t [log pi_SFT - log pi_base] via DenseReward",
        f"policy MLP output dtypes seen: densepath {res['dtypes']['densepath']}, trl {res['dtypes']['trl']}",
        f"attention kernels (--attn {cfg.attn}): densepath {res['kernels']['densepath']}, trl {res['kernels']['trl']}",
        f"tokens generated per step: densepath {tokens['densepath'][0]}, trl {tokens['trl'][0]} (match: asserted)",
        f"{cfg.rounds} interleaved rounds x {cfg.steps} steps per side, first step of each block dropped: "
        f"{len(recs['densepath'])} timed steps per side; medians in seconds",
        "",
    ]
    cols = ["step", "generate", "score", "update", "other"]
    rows = []
    med = {side: {c: median([r[c] for r in rs]) for c in cols} for side, rs in recs.items()}
    for side in ("densepath", "trl"):
        rows.append([side] + [med[side][c] for c in cols] + [cfg.tokens_per_step / med[side]["step"]])
    rows.append(
        ["densepath/trl"]
        + [med["densepath"][c] / med["trl"][c] if med["trl"][c] else "-" for c in cols]
        + [""]
    )
    lines.append(
        md_table(["variant", "step s", "generate s", "score s", "update s", "other s", "gen tok/s"], rows)
    )
    trl_reward = median([r["reward"] for r in recs["trl"]])
    trl_other = median([r["policy+ref logp"] for r in recs["trl"]])
    lines.append(
        f"\ntrl score split: reward_func (2 frozen scorers) {trl_reward:.3f} s + policy old-logp / ref-model "
        f"forward / decode {trl_other:.3f} s"
    )
    ratio = med["densepath"]["step"] / med["trl"]["step"]
    lines.append(f"densepath/trl step time: {ratio:.3f}")
    return "\n".join(lines), ratio


def profile_tables(cfg: RLBenchConfig, top: int = 15) -> str:
    """One densepath block and one TRL block (``cfg.steps`` steps each) under ``torch.profiler``:
    the top-``top`` ops by self CPU time per side. Why: a missed target needs to say where time goes."""
    from torch.profiler import ProfilerActivity, profile, record_function

    out = []
    orig_dp, orig_trl = run_densepath_block, run_trl_block
    tables: dict[str, str] = {}

    def wrap(name, fn):
        def inner(*a, **kw):
            with profile(activities=[ProfilerActivity.CPU]) as prof, record_function(name):
                res = fn(*a, **kw)
            tables[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
            return res

        return inner

    g = globals()
    g["run_densepath_block"], g["run_trl_block"] = wrap("densepath", orig_dp), wrap("trl", orig_trl)
    try:
        run(dataclasses.replace(cfg, rounds=1))
    finally:
        g["run_densepath_block"], g["run_trl_block"] = orig_dp, orig_trl
    for name, table in tables.items():
        out.append(f"### torch.profiler, {name}: {cfg.steps} steps, top {top} ops by self CPU time\n{table}")
    return "\n".join(out)


def parse_args(argv: Sequence[str]) -> tuple[RLBenchConfig, bool]:
    """CLI flags for every :class:`RLBenchConfig` field, plus ``--check``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks dpr_vs_trl", description=__doc__.split("\n")[0])
    add_config_flags(p, RLBenchConfig)
    p.add_argument(
        "--check", action="store_true", help=f"exit 1 if the densepath/trl step ratio > {MAX_STEP_RATIO}"
    )
    p.add_argument("--profile", action="store_true", help="instead of timing, profile one block per side")
    ns = vars(p.parse_args(list(argv)))
    flags = (ns.pop("check"), ns.pop("profile"))
    return RLBenchConfig(**ns), flags


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the report, and with ``--check`` return 1 when the target is missed."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "transformers", "trl", "densepath.models.factory"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg, (check, prof) = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import trl  # noqa: F401
    except ImportError:
        logger.error(
            "dpr_vs_trl needs TRL: pip install 'densepath[bench]' (or pip install trl 'torch==<yours>')."
        )
        return 2
    if prof:
        sys.stdout.write(profile_tables(cfg) + "\n")
        return 0
    report, ratio = summarize(cfg, run(cfg))
    line, ok = target_line("step time densepath/trl", ratio, MAX_STEP_RATIO)
    sys.stdout.write(report + "\n" + line + "\n")
    return 0 if ok or not check else 1


if __name__ == "__main__":
    sys.exit(main())
