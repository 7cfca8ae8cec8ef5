"""Shared base and prefix sharing against today's code paths, on the real-model workload.

Run: ``python -m benchmarks shared_base {memory,sharing} [--reps 1] [--layers 30] [--check]``.

``memory``: peak resident memory of one whole DPR step (sample 4 x 8 responses of 64 tokens, score them with
pi_SFT and pi_base, one micro-batched update and AdamW step) in a fresh process per arm:

- ``separate`` (today's LoRA path): the policy is the merged SFT model with a fresh LoRA; pi_SFT and pi_base
  are two more merged float32 copies;
- ``shared``: one float32 base holding the `sft`, `baseline` and `policy` adapters (models/adapters.py).

Both arms use the same settings otherwise: prefix sharing on, one prompt (8 rows) per backward pass
(`micro_batch=1`), gradient checkpointing on, 8 rows per generate call. The figure is the step's peak RSS
minus the RSS before any model was built, so the weights count. Peak = max(1 ms VmRSS sampling, VmHWM after
a reset, ru_maxrss) as in `benchmarks.scoring`.

``sharing``: time of the frozen scoring (pi_SFT + pi_base) and of the policy update (forward with grad and
backward; the AdamW step on the LoRA weights is negligible and left out), with and without prefix sharing,
in one process, arms interleaved, float32, gradient checkpointing off:

- today: separate merged copies, every prompt run k times;
- separate copies with prefix sharing (isolates prefix sharing);
- the shared base with prefix sharing (the new default: both scorers in one forward with per-row adapters).

FLOP estimates (printed as a fraction of the measured fp32 matmul FLOP/s): a forward costs
2 x (non-embedding parameters) per token run, plus the LM head 2 x V x H per scored response token; the
LoRA update costs 2 x its forward (the backward computes input gradients only; frozen weights get none).
Attention's quadratic term is left out (320-token rows).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import torch

from benchmarks.common import (
    Workload,
    flop_fraction,
    matmul_flops,
    md_table,
    median,
    smollm2_shaped,
    target_line,
    workload_prompts,
    workload_responses,
)

logger = logging.getLogger(__name__)

MEMORY_TARGET = 0.5  # shared-base peak / separate copies peak
SCORING_TARGET = 0.45  # prefix-shared frozen scoring / unshared
UPDATE_TARGET = 0.65  # prefix-shared policy update / unshared


# ------------------------------------------------------------------------------------------- models
def _adapter(base, path: Path, seed: int, w: Workload) -> Path:
    """A random (non-zero) LoRA adapter on `base`, saved to `path` (stands in for an SFT adapter)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=w.lora_r,
        lora_alpha=w.lora_alpha,
        target_modules=list(w.lora_targets),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    peft = get_peft_model(copy.deepcopy(base), cfg)
    peft.save_pretrained(str(path))
    return path


def _lora(w: Workload) -> dict:
    return {"r": w.lora_r, "alpha": w.lora_alpha, "dropout": 0.0, "target_modules": list(w.lora_targets)}


def _merged(base, adapter: Path):
    """base + adapter, merged into a plain float32 copy (what today's path loads as a scorer)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(copy.deepcopy(base), str(adapter)).merge_and_unload().eval()


def build_arm(arm: str, w: Workload, tmp: Path, *, checkpointing: bool = False):
    """(policy, reward, check_params) for `separate` (today), `shared` (one float32 base) or `shared_bf16`."""
    from peft import get_peft_model

    from densepath.models.adapters import SharedBase, lora_config
    from densepath.rewards.baselines import SnapshotBaseline, freeze
    from densepath.rewards.dense import DenseReward
    from densepath.rewards.formulations import LogRatio

    base = smollm2_shaped(w, seed=0)
    sft_dir, base_dir = _adapter(base, tmp / "sft", 1, w), _adapter(base, tmp / "baseline", 2, w)
    baseline = SnapshotBaseline(fraction=0.5)
    baseline.name, baseline.path = "bench_snapshot", base_dir
    if arm in ("shared", "shared_bf16"):
        if checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(3)
        dtype = torch.bfloat16 if arm == "shared_bf16" else torch.float32
        shared = SharedBase(base, sft_dir, base_dir, _lora(w), dtype)
        return shared.model, DenseReward(LogRatio(), None, baseline, shared=shared), shared.assert_trainable
    if arm != "separate":
        raise ValueError(f"arm {arm!r}: choose separate, shared or shared_bf16")
    sft, baseline.model = _merged(base, sft_dir), freeze(_merged(base, base_dir))
    policy = copy.deepcopy(sft)
    del base
    if checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(3)
    policy = get_peft_model(policy, lora_config(_lora(w)))
    return policy, DenseReward(LogRatio(), freeze(sft), baseline), None


def _rl_module(policy, reward, w: Workload, check, *, micro_batch, rows_per_generate):
    from benchmarks.dpr_vs_trl import _fixed_length_sampler
    from densepath.algos.rl import RLModule

    tok = SimpleNamespace(pad_token_id=2, eos_token_id=2)
    sampler = _fixed_length_sampler(tok, w.new_tokens)
    sampler.batch_size = rows_per_generate
    prompts = workload_prompts(w).tolist()
    mod = RLModule(
        policy, reward, sampler, prompts, k=w.k, lr=1e-5, micro_batch=micro_batch, check_params=check
    )
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5)
    mod.optimizers = lambda: opt
    mod.manual_backward = lambda loss: loss.backward()
    mod.log_dict = mod.log = lambda *a, **k: None
    return mod


# ------------------------------------------------------------------------------------------- memory
def memory_child(arm: str, w: Workload) -> dict:
    """One DPR step of `arm` in this (fresh) process; the JSON row.

    What counts: the weights the arm holds (its parameter tensors, shared ones once) plus the step's peak
    RSS over the warmed-up process (after a small DPR step has loaded every code path: library pages and
    allocator pools are the same in both arms and belong to no model). The raw peak over the RSS before
    any model was built is reported beside it.
    """
    from benchmarks.scoring import RssSampler, read_status_kib, reset_peak_rss, ru_maxrss_kib

    gc.collect()
    rss0 = read_status_kib("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        policy, reward, check = build_arm(arm, w, Path(tmp), checkpointing=True)
        gc.collect()
        rss_built = read_status_kib("VmRSS")
        small = dataclasses.replace(w, prompts=1, prompt_len=8, new_tokens=4)
        _rl_module(policy, reward, small, check, micro_batch=1, rows_per_generate=w.k).training_step(
            torch.tensor([0]), 0
        )  # loads code paths; not measured
        mod = _rl_module(policy, reward, w, check, micro_batch=1, rows_per_generate=w.k)
        gc.collect()
        rss_warm = read_status_kib("VmRSS")
        ru0, hwm = ru_maxrss_kib(), reset_peak_rss()
        t0 = time.perf_counter()
        with RssSampler() as s:
            mod.training_step(torch.arange(w.prompts), 0)
        step_s = time.perf_counter() - t0
        ru1 = ru_maxrss_kib()
        peak = max(s.peak_kib, read_status_kib("VmHWM") if hwm else 0, ru1 if ru1 > ru0 else 0)
    weights = sum(p.numel() * p.element_size() for p in _all_weights(policy, reward)) / 2**20
    step_extra = (peak - rss_warm) / 1024
    return {
        "arm": arm,
        "total_mib": weights + step_extra,
        "weights_mib": weights,
        "step_extra_mib": step_extra,
        "raw_peak_mib": (peak - rss0) / 1024,
        "built_mib": (rss_built - rss0) / 1024,
        "step_s": step_s,
        "generated": mod.generated_tokens,
    }


def _all_weights(policy, reward):
    """Every distinct parameter tensor the arm holds (policy and scorers; shared ones once)."""
    seen, out = set(), []
    models = [policy, reward.sft, getattr(reward.baseline, "model", None)]
    for m in models:
        for p in m.parameters() if m is not None else []:
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                out.append(p)
    return out


def run_memory(w: Workload) -> dict:
    from benchmarks.scoring import _child_env, parse_result_line

    rows = {}
    for arm in ("separate", "shared"):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.shared_base",
            "_memory_child",
            arm,
            "--layers",
            str(w.layers),
        ]
        cmd += ["--prompt-len", str(w.prompt_len), "--new-tokens", str(w.new_tokens), "--k", str(w.k)]
        cmd += ["--prompts", str(w.prompts), "--threads", str(torch.get_num_threads())]
        logger.info("running %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
        if proc.returncode != 0:
            raise RuntimeError(f"memory arm {arm} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        rows[arm] = parse_result_line(proc.stdout)
    return rows


def summarize_memory(w: Workload, rows: dict) -> tuple[str, list[tuple[str, bool]]]:
    sep, sh = rows["separate"], rows["shared"]
    cols = ["total_mib", "weights_mib", "step_extra_mib", "raw_peak_mib", "built_mib", "step_s"]
    table = md_table(
        [
            "arm",
            "weights + step extra MiB",
            "weights MiB",
            "step extra MiB",
            "raw peak RSS MiB",
            "RSS after build MiB",
            "step s",
        ],
        [[r["arm"], *(r[c] for c in cols)] for r in (sep, sh)],
    )
    ratio = sh["total_mib"] / sep["total_mib"]
    line, ok = target_line("DPR step peak memory shared/separate", ratio, MEMORY_TARGET)
    text = (
        f"{w.describe()}\nmemory: fp32, prefix sharing on, micro_batch=1 prompt per backward, gradient "
        f"checkpointing on, {w.k} rows per generate call, both arms. weights = the arm's parameter tensors "
        "(shared ones once); step extra = the step's peak RSS over the warmed-up process; raw peak = peak RSS "
        "over the process before any model was built (also counts library pages and allocator pools loaded "
        f"on the way)\n\n{table}\n\n"
        f"shared/separate: weights + step extra {ratio:.3f}, weights {sh['weights_mib'] / sep['weights_mib']:.3f}, "
        f"raw peak {sh['raw_peak_mib'] / sep['raw_peak_mib']:.3f}\n{line}"
    )
    return text, [(line, ok)]


# ------------------------------------------------------------------------------------------ sharing
def _flops(w: Workload, model, shared: bool, n_models: int, update: bool) -> float:
    """The FLOP estimate of the module docstring for one scoring pass (or update) of the workload."""
    emb = model.get_input_embeddings().weight
    body = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n) - emb.numel()
    P, T, rows = w.prompt_len, w.new_tokens, w.rows
    tokens = (w.prompts * P + rows * (T - 1)) if shared else rows * (P + T - 1)
    fwd = 2 * body * tokens + 2 * emb.shape[0] * emb.shape[1] * rows * T
    return n_models * fwd * (2 if update else 1)


def run_sharing(w: Workload, reps: int) -> dict:
    from densepath.models.logprobs import response_logprobs

    peaks = {"fp32": matmul_flops(torch.float32), "bf16": matmul_flops(torch.bfloat16)}
    prompts = workload_prompts(w).repeat_interleave(w.k, 0)
    batch = (
        prompts,
        torch.ones_like(prompts),
        workload_responses(w),
        torch.ones(w.rows, w.new_tokens, dtype=torch.long),
    )
    with tempfile.TemporaryDirectory() as tmp:
        arms = {a: build_arm(a, w, Path(tmp) / a) for a in ("separate", "shared", "shared_bf16")}
    # warm-up on a short batch (code paths, allocator), not timed
    short = tuple(x[: 2 * w.k, :8] for x in batch)
    for policy, reward, _ in arms.values():
        for g in (1, w.k):
            reward.score_full(*short, group=g)
            response_logprobs(policy.eval(), *short, group=g).logp.sum().backward()
    cases = {
        "score: separate copies, unshared (today)": ("score", "separate", 1),
        "score: separate copies, prefix-shared": ("score", "separate", w.k),
        "score: shared base, prefix-shared (new default)": ("score", "shared", w.k),
        "update: separate policy, unshared (today)": ("update", "separate", 1),
        "update: separate policy, prefix-shared": ("update", "separate", w.k),
        "update: shared base, prefix-shared (new default)": ("update", "shared", w.k),
        "score: shared bf16 base, prefix-shared": ("score", "shared_bf16", w.k),
        "update: shared bf16 base, prefix-shared": ("update", "shared_bf16", w.k),
    }
    times = {name: [] for name in cases}
    outs = {}
    for _ in range(reps):  # interleaved: every case once per round
        for name, (kind, arm, group) in cases.items():
            policy, reward, _ = arms[arm]
            policy.zero_grad(set_to_none=True)
            gc.collect()
            t0 = time.perf_counter()
            if kind == "score":
                out = reward.score_full(*batch, group=group).rewards
            else:
                out = response_logprobs(policy.eval(), *batch, group=group).logp
                out.sum().backward()
            times[name].append(time.perf_counter() - t0)
            outs[name] = out.detach()
    model = arms["separate"][0]
    rows = []
    for name, (kind, arm, group) in cases.items():
        t = median(times[name])
        fl = _flops(w, model, group > 1, 2 if kind == "score" else 1, kind == "update")
        peak = peaks["bf16" if arm.endswith("bf16") else "fp32"]
        rows.append(
            {
                "case": name,
                "kind": kind,
                "s": t,
                "times": times[name],
                "flops": fl,
                "frac": flop_fraction(fl, t, peak),
            }
        )
    diffs = {
        "score": float((outs[list(cases)[2]] - outs[list(cases)[0]]).abs().max()),
        "update": float((outs[list(cases)[5]] - outs[list(cases)[3]]).abs().max()),
    }
    return {
        "rows": rows,
        "peak": peaks["fp32"].flops_per_s,
        "peak_bf16": peaks["bf16"].flops_per_s,
        "diffs": diffs,
    }


def summarize_sharing(w: Workload, res: dict) -> tuple[str, list[tuple[str, bool]]]:
    rows = res["rows"]
    table = md_table(
        ["case", "median s", "rounds s", "GFLOP (est.)", "fraction of matmul peak"],
        [
            [r["case"], r["s"], " / ".join(f"{x:.2f}" for x in r["times"]), r["flops"] / 1e9, r["frac"]]
            for r in rows
        ],
    )
    by = {r["case"]: r["s"] for r in rows}
    names = list(by)
    ideal = w.ideal_sharing_ratio
    info = [
        ("scoring, bf16 / fp32 shared base (prefix-shared)", by[names[6]] / by[names[2]]),
        ("update, bf16 / fp32 shared base (prefix-shared)", by[names[7]] / by[names[5]]),
    ]
    ratios = [
        ("scoring, separate copies: prefix-shared / unshared", by[names[1]] / by[names[0]], SCORING_TARGET),
        ("scoring, new default / today", by[names[2]] / by[names[0]], SCORING_TARGET),
        ("update, separate policy: prefix-shared / unshared", by[names[4]] / by[names[3]], UPDATE_TARGET),
        ("update, new default / today", by[names[5]] / by[names[3]], UPDATE_TARGET),
    ]
    lines = [
        f"{n}: {v:.3f} (ideal token ratio {ideal:.3f}; ratio / ideal = {v / ideal:.2f})" for n, v, _ in ratios
    ]
    lines += [f"{n}: {v:.3f} (no target; model.base_dtype=auto picks bf16 on this CPU)" for n, v in info]
    checks = [target_line(n, v, lim) for n, v, lim in ratios]
    text = (
        f"{w.describe()}\nsharing: fp32 (bf16 rows: base weights bf16, adapters fp32, no autocast), gradient "
        f"checkpointing off; matmul peaks measured in this run: fp32 {res['peak'] / 1e9:.1f} GFLOP/s, bf16 "
        f"{res['peak_bf16'] / 1e9:.1f} GFLOP/s (each row's fraction is of its dtype's peak)\n\n{table}\n\n"
        + "\n".join(lines)
        + f"\nmax |new default - today|: rewards {res['diffs']['score']:.2e}, policy log-probs "
        f"{res['diffs']['update']:.2e} (fp32; same models, different summation order)\n"
        + "\n".join(c[0] for c in checks)
    )
    return text, checks


# ---------------------------------------------------------------------------------------------- CLI
def _workload(args) -> Workload:
    return Workload(
        prompts=args.prompts,
        prompt_len=args.prompt_len,
        k=args.k,
        new_tokens=args.new_tokens,
        layers=args.layers,
    )


def parse_args(argv: Sequence[str]):
    p = argparse.ArgumentParser(prog="python -m benchmarks shared_base", description=__doc__.split("\n")[0])
    p.add_argument("part", choices=["memory", "sharing", "_memory_child"])
    p.add_argument("arm", nargs="?", default=None, help=argparse.SUPPRESS)
    w = Workload()
    p.add_argument("--layers", type=int, default=w.layers)
    p.add_argument("--prompts", type=int, default=w.prompts)
    p.add_argument("--prompt-len", type=int, default=w.prompt_len)
    p.add_argument("--new-tokens", type=int, default=w.new_tokens)
    p.add_argument("--k", type=int, default=w.k)
    p.add_argument("--reps", type=int, default=1, help="timed rounds per case (sharing)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return p.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    w = _workload(args)
    if args.part == "_memory_child":
        print(json.dumps(memory_child(args.arm, w)))
        return 0
    if args.part == "memory":
        res = run_memory(w)
        text, checks = summarize_memory(w, res)
    else:
        res = run_sharing(w, args.reps)
        text, checks = summarize_sharing(w, res)
    print(f"## shared_base {args.part}\n{text}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 1 if args.check and not all(ok for _, ok in checks) else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
