"""Saving and loading policies as HF directories (safetensors + tokenizer), with content hashes."""

from __future__ import annotations

import copy
import hashlib
import logging
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from densepath.models import attention
from densepath.models.adapters import save_adapter

log = logging.getLogger(__name__)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _plain(model):
    """A PEFT (LoRA) model is saved merged, as a plain HF checkpoint that every loader understands.

    The active adapters are merged (the DPR policy on a shared base: `sft` + `policy`; a scorer-only
    adapter is dropped). A bf16 base is upcast first, so the merge adds the float32 adapter delta to the
    exact base weights instead of rounding the sum to bf16.
    """
    try:
        from peft import PeftModel
    except ImportError:  # peft is optional
        return model
    if not isinstance(model, PeftModel):
        return model
    plain = copy.deepcopy(model).float()
    for name in [n for n in plain.peft_config if n not in set(_active(plain))]:
        plain.delete_adapter(name)
    return plain.merge_and_unload()


def _active(model) -> list[str]:
    active = model.base_model.active_adapter
    return [active] if isinstance(active, str) else list(active)


def save_policy(model, tokenizer, path: str | Path) -> dict:
    """Write `path/` atomically (to `path.tmp`, then rename) and return {path, sha256}.

    A failed write (disk full, a crash) never leaves a half-written policy, and never loses the
    previous one: the old dir is renamed aside and only removed once the new one is in place.
    """
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _plain(model).save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        save_adapter(model, tmp)  # LoRA: the adapter alone too, for DPR's shared base (models.adapters)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a partial write must not linger next to the policy
        raise
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
        try:
            tmp.rename(path)
        except BaseException:
            old.rename(path)  # put the previous policy back
            raise
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    weights = sorted(path.glob("*.safetensors"))
    digest = hashlib.sha256("".join(sha256_file(w) for w in weights).encode()).hexdigest()
    return {"path": str(path), "sha256": digest}


def snapshot_dir(root: str | Path, fraction: float) -> Path:
    """Where the SFT snapshot at `fraction` of the optimiser steps lives under `<sft>/snapshots`."""
    return Path(root) / f"frac_{fraction:.2f}"


def _policy_dir(path: str | Path) -> Path:
    if not ((path := Path(path)) / "config.json").exists():
        raise FileNotFoundError(
            f"checkpoint `{path}` not found (no config.json). Pass the run dir of a finished SFT run "
            "as parent_run=<dir>, or a saved policy directory."
        )
    return path


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False):
    """The tokenizer of a saved policy dir alone (stages that only need it skip loading weights)."""
    tok = AutoTokenizer.from_pretrained(str(_policy_dir(path)), trust_remote_code=trust_remote_code)
    tok.padding_side = "left"
    return tok


def load_policy(path: str | Path, *, dtype=torch.float32, trust_remote_code: bool = False):
    """Load a saved policy dir (safetensors only; no pickles)."""
    path = _policy_dir(path)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return attention.apply(model), load_tokenizer(path, trust_remote_code=trust_remote_code)
