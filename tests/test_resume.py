"""Kill -9 at a random step, resume with resume=auto: the same final parameters, bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

CLI = [sys.executable, "-m", "densepath"]
EXACT = [
    "debug=tiny",
    "threads=1",
    "trainer.precision=32-true",
    "checkpoint.every_n_steps=1",
    "checkpoint.keep_last=2",
]
TIMING = ("time", "tokens_per_s")


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(args, cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([*CLI, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def _kill_at_step(args, cwd: Path, ckpt_glob: str, step: int) -> None:
    """Start the run and SIGKILL it once the checkpoint of `step` is on disk."""
    proc = subprocess.Popen(
        [*CLI, *args], cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 600
    try:
        while time.time() < deadline:
            if any(cwd.glob(ckpt_glob.format(step=step))):
                break
            if proc.poll() is not None:
                pytest.fail(f"the run finished before step {step} was checkpointed")
            time.sleep(0.02)
        else:
            pytest.fail("timed out waiting for the checkpoint")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _weights(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _same_metrics(a: Path, b: Path) -> None:
    ma, mb = json.loads(a.read_text()), json.loads(b.read_text())
    keys = {k for k in ma if not any(t in k for t in TIMING)}
    assert keys == {k for k in mb if not any(t in k for t in TIMING)}
    diff = {k: (ma[k], mb[k]) for k in keys if ma[k] != mb[k]}
    assert not diff, diff


def _run_dir(cwd: Path) -> Path:
    runs = [p.parent for p in cwd.glob("outputs/*/*/manifest.json")]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.slow
def test_sft_killed_and_resumed_matches_uninterrupted(tmp_path: Path):
    args = [*EXACT, "pipeline=sft", "sft.steps=24", f"data.cache_dir={tmp_path / 'cache'}"]
    ref = tmp_path / "ref"
    ref.mkdir()
    _run([*args, "hydra.run.dir=run"], ref)

    work = tmp_path / "work"
    work.mkdir()
    step = random.Random().randint(3, 20)
    _kill_at_step([*args, "resume=auto"], work, "outputs/*/*/sft/ckpt/step={step}.ckpt", step)
    run = _run_dir(work)
    assert not (run / "DONE").exists()
    out = _run([*args, "resume=auto"], work)
    assert f"continuing {run.relative_to(work)}" in out.stderr
    assert _run_dir(work) == run and (run / "DONE").exists()
    a, b = _weights(ref / "run" / "sft" / "policy"), _weights(run / "sft" / "policy")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"killed at step {step}"
    _same_metrics(ref / "run" / "metrics.json", run / "metrics.json")
    # a plain re-run (no resume) starts a new run dir and leaves the old one untouched
    before = (run / "metrics.json").read_bytes()
    _run(args, work)
    assert len(list(work.glob("outputs/*/*/manifest.json"))) == 2
    assert (run / "metrics.json").read_bytes() == before


# LoRA: DPR on the shared base (one bf16 base, the sft/baseline/policy adapters; models/adapters.py)
LORA = ["model.lora={enabled:true,r:4,alpha:8,target_modules:[q_proj,v_proj]}", "model.base_dtype=bfloat16"]


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora_shared_base"])
def test_dpr_killed_and_resumed_matches_uninterrupted(tmp_path: Path, lora: bool):
    sft = tmp_path / "sft"
    sft.mkdir()
    extra = LORA if lora else []
    _run([*EXACT, *extra, "pipeline=sft", f"data.cache_dir={tmp_path / 'cache'}", "hydra.run.dir=run"], sft)
    args = [
        *EXACT,
        *extra,
        "pipeline=dpr",
        "dpr.steps=12",
        "dpr.selection_every=4",
        f"parent_run={sft / 'run'}",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    ref = tmp_path / "ref"
    ref.mkdir()
    _run([*args, "hydra.run.dir=run"], ref)

    work = tmp_path / "work"
    work.mkdir()
    step = random.Random().randint(2, 10)
    _kill_at_step([*args, "resume=auto"], work, "outputs/*/*/dpr/ckpt/step={step}.ckpt", step)
    run = _run_dir(work)
    _run([*args, "resume=auto"], work)
    if lora:
        assert json.loads((run / "manifest.json").read_text())["shared_base"]["dtype"] == "bfloat16"
    for name in ("last", "best"):
        a, b = _weights(ref / "run" / "dpr" / name), _weights(run / "dpr" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), (name, step)
    _same_metrics(ref / "run" / "metrics.json", run / "metrics.json")


def test_explicit_missing_ckpt_path_is_a_clear_error(tmp_path: Path):
    from conftest import run_cfg

    with pytest.raises(FileNotFoundError, match="ckpt_path=.*no such checkpoint"):
        run_cfg(["debug=tiny", "pipeline=sft", f"ckpt_path={tmp_path / 'nope.ckpt'}"], tmp_path / "r")


def test_checkpoint_io_is_atomic_and_refuses_nan(tmp_path: Path):
    from densepath.callbacks.resume import AtomicCheckpointIO, NonFiniteWeightsError

    io = AtomicCheckpointIO()
    good = {"state_dict": {"w": torch.ones(3)}, "global_step": 1}
    io.save_checkpoint(good, tmp_path / "last.ckpt")
    before = (tmp_path / "last.ckpt").read_bytes()
    with pytest.raises(NonFiniteWeightsError, match="non-finite"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan")])}}, tmp_path / "last.ckpt")
    assert (tmp_path / "last.ckpt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind
    assert torch.equal(io.load_checkpoint(tmp_path / "last.ckpt")["state_dict"]["w"], torch.ones(3))


def test_resumable_loader_continues_mid_epoch():
    from densepath.data.loader import ResumableLoader

    full = ResumableLoader(list(range(10)), 3, seed=7)
    seen = [b.tolist() for _ in range(3) for b in full]  # 3 epochs x 3 batches
    resumed = ResumableLoader(list(range(10)), 3, seed=7)
    resumed.load_state_dict({"consumed_batches": 4})  # epoch 1, batch 1
    rest = [b.tolist() for b in resumed] + [b.tolist() for b in resumed]
    assert rest == seen[4:]


def test_evalset_watch_keeps_points_up_to_the_resumed_step_and_measures_the_rest_again(tmp_path: Path):
    """A run that stopped after its last checkpoint re-measures the watch points past the step it resumes at
    (they came from training that is being redone) and keeps the earlier ones."""
    import json
    from types import SimpleNamespace

    from densepath.callbacks.evalset_watch import EvalSetWatch

    out = tmp_path / "watch.jsonl"
    out.write_text("".join(json.dumps({"step": s, "reward": float(s)}) + "\n" for s in (0, 2, 4, 6)))
    w = EvalSetWatch(None, None, [], [], None, None, every=2, out=out)
    seen = []

    def fake_watch(trainer, module, step):  # no model here: record the calls (the real one also sets `last`)
        seen.append(step)
        w.last = max(w.last, step)

    w._watch = fake_watch
    trainer = SimpleNamespace(global_step=2, is_global_zero=True, max_steps=8)
    w.on_train_start(trainer, None)
    assert [json.loads(x)["step"] for x in out.read_text().splitlines()] == [0, 2]
    assert w.done == {0, 2} and w.last == 2 and seen == [2]
    for step in (3, 4, 5, 7, 8):  # ppo_epochs > 1 may skip a multiple: crossing it counts
        trainer.global_step = step
        w.on_train_batch_end(trainer, None, None, None, 0)
    assert seen == [2, 4, 7, 8]  # 4; 6 skipped by the step count, so 7 crosses it; 8 is the last step
