"""Safe artefacts: no secret in any file a run writes, no default `trust_remote_code`, and loaders that
never unpickle arbitrary objects (safetensors for policies, `weights_only=True` for checkpoints)."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FAKE_KEY = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432"  # 40 hex chars, the shape of a wandb key


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in sorted(root.rglob("*")) if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
def test_wandb_key_appears_in_no_file_or_log(tmp_path: Path):
    """A tiny offline `logger=wandb` run through the CLI: every byte it writes is free of the key."""
    env = {
        **os.environ,
        "WANDB_API_KEY": FAKE_KEY,
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    run = tmp_path / "run"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "densepath",
            "debug=tiny",
            "pipeline=sft",
            "logger=wandb",
            "sft.steps=2",
            "sft.val_every=2",
            "callbacks.reward_recovery.enabled=false",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={run}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # the run really wrote what we grep: config, manifest, metrics, csv/wandb files, hydra's job log
    names = {p.name for p in run.rglob("*") if p.is_file()}
    assert {"metrics.json", "manifest.json", "config.yaml", "overrides.yaml"} <= names, sorted(names)
    assert any(p.suffix == ".wandb" for p in run.rglob("*")), "no wandb offline files were written"
    assert _files_containing(tmp_path, FAKE_KEY.encode()) == []
    assert FAKE_KEY not in out.stdout and FAKE_KEY not in out.stderr


def test_redact_hides_a_key_in_messages():
    from densepath.tracking import _redact

    msg = _redact(f"401 for key {FAKE_KEY}: unauthorized")
    assert FAKE_KEY not in msg and "<redacted>" in msg and msg.startswith("401 for key")


def test_no_default_trust_remote_code():
    hits = subprocess.run(
        ["grep", "-rn", "trust_remote_code", str(ROOT / "conf")], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    assert hits, "expected model configs to state trust_remote_code explicitly"
    for line in hits:
        value = line.split("trust_remote_code", 1)[1]
        assert re.fullmatch(r"\s*:\s*false\s*(#.*)?", value), line
    import inspect

    from densepath.models import factory, io

    assert inspect.signature(io.load_policy).parameters["trust_remote_code"].default is False
    defaults = [c for c in vars(factory).values() if inspect.isclass(c) and hasattr(c, "trust_remote_code")]
    assert defaults and all(c.trust_remote_code is False for c in defaults)


def test_load_policy_asks_for_safetensors(tmp_path: Path, monkeypatch):
    import densepath.models.io as io

    (tmp_path / "config.json").write_text("{}")
    seen = {}

    def spy(path, **kw):
        seen.update(kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(io.AutoModelForCausalLM, "from_pretrained", spy)
    with pytest.raises(RuntimeError, match="stop here"):
        io.load_policy(tmp_path)
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False


def test_load_policy_refuses_a_pickle_only_checkpoint(tmp_path: Path):
    from conftest import tiny_llama
    from densepath.models.io import load_policy

    model = tiny_llama().float()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle, no safetensors
    with pytest.raises(OSError, match=r"safetensors|model\.safetensors"):
        load_policy(tmp_path)


def _side_effect(path: str) -> str:
    Path(path).write_text("code ran while loading a checkpoint\n")
    return "pwned"


class Evil:
    """Unpickling this runs `_side_effect`: what a malicious checkpoint would do."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (_side_effect, (self.path,))


def test_checkpoint_load_refuses_pickled_objects(tmp_path: Path):
    from densepath.callbacks.resume import AtomicCheckpointIO

    marker = tmp_path / "ran.txt"
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "extra": Evil(marker)}, bad)
    with pytest.raises(pickle.UnpicklingError, match="weights_only|Weights only"):
        AtomicCheckpointIO().load_checkpoint(bad)
    assert not marker.exists()  # nothing in the file was executed
    # the same file with plain tensors/containers loads fine
    ok = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 3}, ok)
    assert AtomicCheckpointIO().load_checkpoint(ok)["global_step"] == 3
