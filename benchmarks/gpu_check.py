"""GPU check: the CUDA tests, CUDA-vs-CPU scoring, and one bf16 DPR step on the real-model workload.

Run: ``bash benchmarks/gpu_check.sh [options]`` (sets up the environment, then runs this module), or
``python -m benchmarks gpu_check [options]`` where torch, transformers, peft, lightning and pytest are
installed. Prints ONE markdown table (check | result | detail) at the end; exit 1 if a check failed
(or, with ``--require-gpu``, if there is no CUDA device).

Rows:
1. ``pytest -m cuda tests/test_cuda.py``: passed / failed / skipped counts (``--noconftest``: the
   repo's conftest imports Hydra, which the GPU machine lacks; these tests need none of it).
2. CUDA scoring = CPU scoring: ``response_logprobs`` of a random SmolLM2-shaped model (``--equality-layers``
   layers, fp32, TF32 off) on the workload's prompts and responses; max abs diff of the log-probs on the
   device (prefix-shared ``group=k`` and unshared) against the CPU's unshared ones.
3. bf16 DPR step: ``RLModule.training_step`` (no Trainer) on the full workload (``benchmarks.common.Workload``)
   with a random SmolLM2-shaped bf16 base shared by the policy and both scorers (two random LoRA adapters
   as ``sft`` and ``baseline``), prefix sharing, EOS suppressed: step seconds (generate / score / update),
   generated tokens/s and peak GPU memory (``torch.cuda.max_memory_allocated``).

Without CUDA every row reports ``skipped (no CUDA)``; ``--cpu-smoke`` runs rows 1-3 on the CPU instead
(tests as a dry run, ``DENSEPATH_CUDA_TEST_DEVICE=cpu``) so the code paths are exercised; those rows say
``CPU smoke`` and are no GPU result. ``--smoke`` (or ``GPU_CHECK_SMOKE=1``) shrinks the workload.

Imports only torch, transformers, peft, lightning and densepath modules that import none of hydra,
omegaconf, wandb, datasets or gguf (``densepath.rewards.builder`` imports Hydra: not used here).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import torch

from benchmarks.common import Workload, median, smollm2_shaped, workload_prompts, workload_responses

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
EQUALITY_TOL = 1e-3  # max abs diff of fp32 log-probs (~-10.8 each): kernel rounding is ~1e-5
SMOKE = {"prompts": 2, "prompt_len": 32, "k": 2, "new_tokens": 8}
NO_CUDA = "skipped (no CUDA)"
CPU_SMOKE = "passed (CPU smoke, not a GPU result)"


@dataclasses.dataclass
class Row:
    check: str
    result: str
    detail: str

    @property
    def failed(self) -> bool:
        return self.result.startswith("failed")


def table(rows: Sequence[Row]) -> str:
    """The one markdown table the check prints (``|`` in a detail would break a cell: replaced)."""
    out = ["| check | result | detail |", "|---|---|---|"]
    out += [f"| {r.check} | {r.result} | {r.detail.replace('|', '/')} |" for r in rows]
    return "\n".join(out)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=Workload().layers, help="layers of the DPR-step model")
    p.add_argument(
        "--equality-layers", type=int, default=None, help="layers of the CUDA-vs-CPU model (min(4, --layers))"
    )
    p.add_argument("--steps", type=int, default=3, help="timed DPR steps after one warm-up step")
    p.add_argument("--smoke", action="store_true", help=f"a small workload {SMOKE} (or GPU_CHECK_SMOKE=1)")
    p.add_argument("--cpu-smoke", action="store_true", help="without CUDA: run every row on the CPU")
    p.add_argument("--require-gpu", action="store_true", help="exit 1 when there is no CUDA device")
    p.add_argument("--budget-s", type=float, default=280.0, help="time for all rows (the .sh allows 300 s)")
    p.add_argument("--pytest-timeout-s", type=float, default=150.0)
    p.add_argument("--rows-file", type=Path, default=None, help="append each row here as it finishes")
    args = p.parse_args(list(argv))
    args.equality_layers = args.equality_layers or min(4, args.layers)
    args.smoke = args.smoke or os.environ.get("GPU_CHECK_SMOKE", "") not in ("", "0")
    for name in ("layers", "equality_layers", "steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def workload(args, layers: int) -> Workload:
    return dataclasses.replace(Workload(), layers=layers, **(SMOKE if args.smoke else {}))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ row 1
def check_pytest(args, cuda: bool, deadline: float) -> Row:
    """``pytest -m cuda tests/test_cuda.py`` in a subprocess; counts from its JUnit XML."""
    name = "pytest -m cuda tests/test_cuda.py"
    dry = not cuda and args.cpu_smoke
    env = dict(os.environ, **({"DENSEPATH_CUDA_TEST_DEVICE": "cpu"} if dry else {}))
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", "-m", "cuda"]
        cmd += ["tests/test_cuda.py", f"--junitxml={xml}"]
        timeout = max(10.0, min(args.pytest_timeout_s, deadline - time.monotonic() - 60))
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            tail = (e.stdout or b"")[-2000:]
            sys.stdout.write(tail.decode() if isinstance(tail, bytes) else tail)
            return Row(name, "failed", f"timed out after {timeout:.0f} s")
        sys.stdout.write(f"$ {' '.join(cmd)}\n{proc.stdout[-6000:]}{proc.stderr[-2000:]}\n")
        if not xml.exists():
            why = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
            return Row(name, "failed", f"pytest exit {proc.returncode}, no report: {why[0][:200]}")
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    counts = f"{passed} passed, {n['failures'] + n['errors']} failed, {n['skipped']} skipped"
    if n["failures"] or n["errors"] or proc.returncode not in (0, 5):
        return Row(name, "failed", f"{counts} (pytest exit {proc.returncode})")
    if not cuda and not dry:
        return Row(name, NO_CUDA, counts)
    if passed == 0 or n["skipped"]:
        return Row(name, "failed", f"{counts}: every test must run where CUDA is available")
    return Row(
        name, CPU_SMOKE if dry else "passed", counts + (" (DENSEPATH_CUDA_TEST_DEVICE=cpu)" if dry else "")
    )


# ------------------------------------------------------------------------------------------ row 2
def check_equality(args, device: torch.device) -> Row:
    """fp32 log-probs of the workload's responses on ``device`` (group=k and 1) vs the CPU (group=1)."""
    from densepath.models.logprobs import response_logprobs

    name = "CUDA scoring = CPU scoring (fp32)"
    w = workload(args, args.equality_layers)
    torch.set_float32_matmul_precision("highest")  # TF32 off: the comparison is fp32 against fp32
    model = smollm2_shaped(w, seed=0, dtype=torch.float32)
    prompts = workload_prompts(w).repeat_interleave(w.k, 0)  # (rows, P), prompt-major
    responses = workload_responses(w)  # (rows, T)
    batch = (prompts, torch.ones_like(prompts), responses, torch.ones_like(responses))
    with torch.no_grad():
        t0 = time.perf_counter()
        ref = response_logprobs(model, *batch, group=1).logp  # (rows, T)
        t_cpu = time.perf_counter() - t0
        model.to(device)
        on_dev = tuple(x.to(device) for x in batch)
        got = {g: response_logprobs(model, *on_dev, group=g).logp.cpu() for g in (w.k, 1)}
    diff = {g: float((lp - ref).abs().max()) for g, lp in got.items()}
    worst = max(diff.values())
    ok = bool(torch.isfinite(ref).all()) and worst <= EQUALITY_TOL
    detail = (
        f"max abs diff of log-probs vs CPU: group={w.k} (prefix-shared) {diff[w.k]:.2e}, group=1 {diff[1]:.2e} "
        f"(tol {EQUALITY_TOL:g}); {w.layers} layers, {w.rows} rows x {w.prompt_len}+{w.new_tokens} tokens, "
        f"logp mean {float(ref.mean()):.3f} std {float(ref.std()):.3f}; CPU reference {t_cpu:.1f} s"
    )
    del model
    if device.type == "cpu":
        return Row(name, (CPU_SMOKE if ok else "failed (CPU smoke)"), "cpu vs cpu: " + detail)
    return Row(name, "passed" if ok else "failed", detail)


# ------------------------------------------------------------------------------------------ row 3
def random_adapter(base, out: Path, lora: dict, seed: int) -> Path:
    """A LoRA adapter with random A and B (peft ``init_lora_weights=False``) on a copy of ``base``, saved as
    SFT saves one (``save_pretrained``: adapter_config.json + safetensors)."""
    from peft import get_peft_model

    from densepath.models.adapters import lora_config

    cfg = lora_config(lora)
    cfg.init_lora_weights = False
    torch.manual_seed(seed)
    get_peft_model(copy.deepcopy(base), cfg).save_pretrained(str(out))
    return out


def build_dpr(w: Workload, device: torch.device, tmp: Path):
    """(RLModule, SharedBase) for a bf16 DPR step: a random SmolLM2-shaped base, random ``sft`` and
    ``baseline`` adapters, log-ratio reward on the shared base, the fixed-length sampler, prefix sharing."""
    from benchmarks.dpr_vs_trl import _fixed_length_sampler
    from densepath.algos.rl import RLModule
    from densepath.models.adapters import SharedBase
    from densepath.rewards.baselines import SnapshotBaseline
    from densepath.rewards.dense import DenseReward
    from densepath.rewards.formulations import LogRatio

    lora = {"r": w.lora_r, "alpha": w.lora_alpha, "dropout": 0.0, "target_modules": list(w.lora_targets)}
    base = smollm2_shaped(w, seed=0, dtype=torch.float32)
    sft_dir = random_adapter(base, tmp / "sft", lora, seed=1)
    baseline_dir = random_adapter(base, tmp / "baseline", lora, seed=2)
    shared = SharedBase(base.to(device), sft_dir, baseline_dir, lora, torch.bfloat16)
    shared.model.to(device)
    baseline = SnapshotBaseline(fraction=0.5)  # n_models=1: pi_base is the shared base's `baseline` adapter
    baseline.name = "baseline_adapter"
    reward = DenseReward(LogRatio(), None, baseline, shared=shared)
    tok = SimpleNamespace(pad_token_id=2, eos_token_id=2)  # smollm2_shaped's ids; EOS is suppressed
    sampler = _fixed_length_sampler(tok, w.new_tokens)
    prompts = workload_prompts(w).tolist()
    mod = RLModule(
        shared.model, reward, sampler, prompts, k=w.k, lr=1e-5, prefix_sharing=True,
        check_params=shared.assert_trainable,
    )  # fmt: skip
    mod.to(device)
    return mod, shared


def drive(mod, device: torch.device):
    """Make ``training_step`` callable without a Trainer (tests/test_shared_base.py does the same): the
    real AdamW, a plain backward, the logged dicts kept; generate and score synchronise the device so the
    module's own phase timers measure the work, not the kernel launches."""
    opt = mod.configure_optimizers()
    logs: list[dict] = []
    mod.optimizers = lambda: opt
    mod.manual_backward = lambda loss: loss.backward()
    mod.log_dict = lambda d, **kw: logs.append(dict(d))  # tensors: read after the timed step (no sync)
    mod.log = lambda *a, **kw: None
    for obj, attr in ((mod.sampler, "generate"), (mod.reward, "score_full")):
        orig = getattr(obj, attr)

        def synced(*a, _orig=orig, **kw):
            out = _orig(*a, **kw)
            _sync(device)
            return out

        setattr(obj, attr, synced)
    return logs


def checksum(model, skip: set[str]) -> int:
    """An exact fingerprint of every parameter not in ``skip``: the sum of its bits as integers (an integer
    sum is deterministic on any device, a float sum need not be)."""
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    total = 0
    for n, p in model.named_parameters():
        if n not in skip:
            total += int(p.detach().contiguous().view(ints[p.element_size()]).sum(dtype=torch.int64))
    return total


def check_dpr_step(args, device: torch.device, deadline: float) -> Row:
    name = "bf16 DPR step (shared base, prefix sharing)"
    w = workload(args, args.layers)
    cuda = device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        mod, shared = build_dpr(w, device, Path(tmp))
        t_build = time.perf_counter() - t0
    logs = drive(mod, device)
    policy = set(shared.policy_params)
    frozen = checksum(shared.model, policy)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    prompt_idx = torch.arange(w.prompts)
    records, problems, notes = [], [], []
    n_steps = 1 + args.steps
    step = 0
    while step < n_steps:
        tok0 = mod.generated_tokens
        _sync(device)
        t0 = time.perf_counter()
        loss = mod.training_step(prompt_idx, step)
        _sync(device)
        dt = time.perf_counter() - t0
        if loss is None or not bool(torch.isfinite(loss)):
            problems.append(f"step {step}: non-finite loss or gradient (skipped)")
            break
        rec = {"step": dt, "tokens": mod.generated_tokens - tok0}
        rec.update({p: float(logs[-1][f"time/{p}_s"]) for p in ("generate", "score", "update")})
        records.append(rec)
        step += 1
        left = deadline - time.monotonic()
        if step < n_steps and left < 1.5 * dt + 20:  # keep the table: stop timing before the budget runs out
            notes.append(f"stopped after {step} step(s) for the time budget")
            break
    grads = {n: p.grad for n, p in shared.model.named_parameters() if p.grad is not None}
    if not grads:
        problems.append("no gradients")
    if any(n not in policy for n in grads):
        problems.append(f"gradients outside the policy adapter: {sorted(set(grads) - policy)[:2]}")
    if not all(bool(torch.isfinite(g).all()) for g in grads.values()):
        problems.append("non-finite gradients")
    if checksum(shared.model, policy) != frozen:
        problems.append("a frozen weight changed")
    expected = w.rows * w.new_tokens
    if any(r["tokens"] != expected for r in records):
        problems.append(
            f"tokens per step {sorted({r['tokens'] for r in records})} != {expected} (EOS suppression)"
        )
    base_dtypes = {str(p.dtype) for n, p in shared.model.named_parameters() if "lora_" not in n}
    if base_dtypes != {"torch.bfloat16"}:
        problems.append(f"base weights are {sorted(base_dtypes)}, not bf16")
    timed = records[1:] or records  # the first step is a warm-up
    med = {k: median([r[k] for r in timed]) for k in ("step", "generate", "score", "update")}
    peak = (
        f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
        if cuda
        else "no GPU memory (CPU)"
    )
    detail = (
        f"{w.prompts} prompts x {w.prompt_len} tokens, k={w.k}, {w.new_tokens} new tokens (EOS suppressed), "
        f"{w.layers} layers, bf16 base + fp32 LoRA r={w.lora_r}: step {med['step']:.3f} s (generate "
        f"{med['generate']:.3f} / score {med['score']:.3f} / update {med['update']:.3f}), "
        f"{expected / med['step']:.0f} generated tok/s, {peak}; median of {len(timed)} timed step(s) after "
        f"{len(records) - len(timed)} warm-up; build {t_build:.1f} s"
    ) + "".join(f"; {n}" for n in notes)
    if problems:
        return Row(name, "failed" + (" (CPU smoke)" if not cuda else ""), "; ".join(problems) + ". " + detail)
    return Row(name, "passed" if cuda else CPU_SMOKE, ("ran on CPU: " if not cuda else "") + detail)


# ------------------------------------------------------------------------------------------ main
def _guarded(rows: list[Row], rows_file: Path | None, name: str, fn) -> None:
    """Run one row; an exception fails that row (with its message) instead of losing the table."""
    t0 = time.perf_counter()
    try:
        row = fn()
    except Exception as e:  # noqa: BLE001 - report any failure in the table, then go on
        logger.exception("%s raised", name)
        row = Row(name, "failed", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
    logger.info("%s: %s (%.1f s)", name, row.result, time.perf_counter() - t0)
    rows.append(row)
    if rows_file is not None:
        with rows_file.open("a") as f:
            f.write(f"{row.check}\t{row.result}\t{row.detail}\n")


def environment_line(cuda: bool) -> str:
    import peft
    import transformers

    dev = (
        f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s))"
        if cuda
        else "no CUDA device"
    )
    return (
        f"gpu_check: {dev}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}, python {sys.version.split()[0]}, threads {torch.get_num_threads()}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the three rows, print the table; 1 if a row failed (or ``--require-gpu`` without CUDA)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "transformers", "peft", "densepath.models.adapters"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    deadline = time.monotonic() + args.budget_s
    cuda = torch.cuda.is_available()
    sys.stdout.write(environment_line(cuda) + "\n")
    if args.cpu_smoke and not cuda:
        sys.stdout.write("gpu_check: --cpu-smoke and no CUDA: rows run ON THE CPU; they are no GPU result\n")
    rows: list[Row] = []
    _guarded(
        rows, args.rows_file, "pytest -m cuda tests/test_cuda.py", lambda: check_pytest(args, cuda, deadline)
    )
    device = torch.device("cuda" if cuda else "cpu")
    run_rows = cuda or args.cpu_smoke
    eq, dpr = "CUDA scoring = CPU scoring (fp32)", "bf16 DPR step (shared base, prefix sharing)"
    if run_rows:
        _guarded(rows, args.rows_file, eq, lambda: check_equality(args, device))
        if deadline - time.monotonic() < 45:
            _guarded(
                rows, args.rows_file, dpr, lambda: Row(dpr, "failed", "time budget spent before this row")
            )
        else:
            _guarded(rows, args.rows_file, dpr, lambda: check_dpr_step(args, device, deadline))
    else:
        for name in (eq, dpr):
            _guarded(
                rows, args.rows_file, name, lambda n=name: Row(n, NO_CUDA, "--cpu-smoke runs it on the CPU")
            )
    if args.require_gpu and not cuda:
        rows.append(Row("CUDA device", "failed", "--require-gpu and torch.cuda.is_available() is False"))
    smoke = f" (smoke workload {SMOKE})" if args.smoke else ""
    sys.stdout.write(f"\n## GPU check{smoke}\n\n{table(rows)}\n")
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
