"""pi_base for the `log_ratio` / `sparse` rewards (config group `baseline`).

Each baseline resolves its checkpoints from an SFT stage dir and returns per-token log-probs in the
project layout. Models are frozen (eval mode, no grad) and live on the scorer's device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from densepath.models.adapters import BARE, adapter_dir
from densepath.models.io import load_policy, sha256_file, snapshot_dir
from densepath.models.logprobs import full_distribution_logprobs, response_logprobs
from densepath.models.tokenizer import tokenizer_hash
from densepath.rewards.formulations import ensemble_logp, uniform_logp

log = logging.getLogger(__name__)


def freeze(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def available_fractions(sft_dir: Path) -> list[str]:
    root = Path(sft_dir) / "snapshots"
    return sorted(p.name.removeprefix("frac_") for p in root.glob("frac_*") if (p / "config.json").exists())


def load_frozen(path: Path, tokenizer, role: str, dtype=torch.float32):
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{role}: checkpoint {path} is missing")
    model, tok = load_policy(path, dtype=dtype)
    if tokenizer is not None and tokenizer_hash(tok) != tokenizer_hash(tokenizer):
        raise ValueError(
            f"tokenizer mismatch: {role} at {path} does not share the policy's tokenizer/vocabulary "
            f"({len(tok)} vs {len(tokenizer)} tokens); all scorers must come from the policy's SFT run"
        )
    return freeze(model)


def _describe(path: Path) -> dict:
    weights = sorted(path.glob("*.safetensors"))
    return {"path": str(path), "sha256": [sha256_file(w) for w in weights]}


class Baseline:
    """Interface: `load(sft_dir, tokenizer, device)` then `logp(batch...) -> (B, T)`."""

    name = "baseline"
    n_models = 1  # frozen models run per scored token (inference cost)

    def load(self, sft_dir: Path, tokenizer, device, dtype=torch.float32) -> Baseline:
        raise NotImplementedError

    def logp(self, prompt_ids, prompt_mask, response_ids, response_mask, group: int = 1) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name}

    def shared_source(self, sft_dir: Path) -> tuple[Path | str | None, str | None]:
        """For DPR's shared base (models.adapters): (the adapter dir of this pi_base, or `__base__` for the
        bare base, or None when no model is read), and why it cannot share the base (None when it can).
        Sets what `describe` reports without loading a model."""
        return None, f"baseline={self.name} has no LoRA adapter"


@dataclass
class SnapshotBaseline(Baseline):
    """The SFT snapshot at `fraction` of the SFT steps (`sft_half` = 0.5, `sft_fraction`)."""

    fraction: float = 0.5
    chunk_size: int | None = None  # None: auto (a fixed logits budget per chunk)

    def checkpoint(self, sft_dir) -> Path:
        path = snapshot_dir(Path(sft_dir) / "snapshots", float(self.fraction))
        if not (path / "config.json").exists():
            have = available_fractions(sft_dir)
            raise FileNotFoundError(
                f"baseline.fraction={self.fraction}: the SFT run at {sft_dir} saved no snapshot at that "
                f"fraction; saved fractions: {have or 'none'}. Choose one of them, or rerun SFT with "
                f"sft.snapshot_fractions=[...,{self.fraction}]"
            )
        return path

    def locate(self, sft_dir):
        self.path = self.checkpoint(sft_dir)
        self.name = f"sft_frac_{float(self.fraction):.2f}"
        return self

    def role(self) -> str:
        return f"baseline snapshot {self.fraction}"

    def load(self, sft_dir, tokenizer, device, dtype=torch.float32):
        self.locate(sft_dir)
        self.model = load_frozen(self.path, tokenizer, self.role(), dtype).to(device)
        return self

    def shared_source(self, sft_dir):
        self.locate(sft_dir)
        adapter = adapter_dir(self.path)
        return (adapter, None) if adapter else (None, f"baseline snapshot {self.path} has no LoRA adapter")

    @torch.no_grad()
    def logp(self, prompt_ids, prompt_mask, response_ids, response_mask, group: int = 1):
        return response_logprobs(
            self.model,
            prompt_ids,
            prompt_mask,
            response_ids,
            response_mask,
            chunk_size=self.chunk_size,
            group=group,
        ).logp

    def describe(self):
        return {"name": self.name, "fraction": float(self.fraction), **_describe(self.path)}


@dataclass
class BaseModelBaseline(SnapshotBaseline):
    """The model before SFT."""

    name = "base"

    def checkpoint(self, sft_dir) -> Path:
        return Path(sft_dir) / "snapshots" / "base"

    def locate(self, sft_dir):
        self.path = self.checkpoint(sft_dir)
        return self

    def role(self) -> str:
        return f"baseline `{self.name}`"

    def shared_source(self, sft_dir):
        self.locate(sft_dir)
        return BARE, None  # the shared base is this very model

    def describe(self):
        return {"name": self.name, **_describe(self.path)}


@dataclass
class HalfDataBaseline(BaseModelBaseline):
    """The paper's pi_base: SFT on a random half of the demonstrations (`sft.half_data=true`), with the
    same passes and schedule shape. A step snapshot equals it only in a one-pass run."""

    name = "half_data"

    def checkpoint(self, sft_dir) -> Path:
        path = Path(sft_dir).parent / f"{Path(sft_dir).name}_half_data" / "policy"
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"baseline=half_data: the SFT run at {sft_dir} trained no half-data model ({path} is "
                "missing); rerun SFT with sft.half_data=true, or choose baseline=sft_half"
            )
        return path

    def shared_source(self, sft_dir):
        self.locate(sft_dir)
        adapter = adapter_dir(self.path)
        if adapter is None:
            return None, f"the half-data model {self.path} has no LoRA adapter"
        own, ours = self.path.parent / "snapshots" / "base", Path(sft_dir) / "snapshots" / "base"
        if own.exists() and _describe(own)["sha256"] != _describe(ours)["sha256"]:
            return None, f"the half-data run started from another base ({own} differs from {ours})"
        return adapter, None


@dataclass
class UniformBaseline(Baseline):
    """Uniform over the vocabulary: log pi_base = -log|V|."""

    n_models = 0

    def load(self, sft_dir, tokenizer, device, dtype=torch.float32):
        self.vocab_size = len(tokenizer)
        self.name = "uniform"
        return self

    def logp(self, prompt_ids, prompt_mask, response_ids, response_mask, group: int = 1):
        return uniform_logp(response_mask, self.vocab_size, dtype=torch.float32)

    def shared_source(self, sft_dir):
        return None, None  # no model to share

    def describe(self):
        return {"name": "uniform", "vocab_size": self.vocab_size}


@dataclass
class EnsembleBaseline(Baseline):
    """Normalised geometric mean of several snapshots (materialises (B, T, V) per member: small vocabularies)."""

    fractions: list = field(default_factory=lambda: [0.25, 0.5, 0.75])

    @property
    def n_models(self) -> int:  # type: ignore[override]
        return len(self.fractions)

    def load(self, sft_dir, tokenizer, device, dtype=torch.float32):
        self.members = [SnapshotBaseline(f).load(sft_dir, tokenizer, device, dtype) for f in self.fractions]
        self.name = "ensemble_" + "_".join(f"{float(f):.2f}" for f in self.fractions)
        return self

    def shared_source(self, sft_dir):
        return None, f"baseline={self.name} (an ensemble of snapshots) is not implemented on a shared base"

    @torch.no_grad()
    def logp(self, prompt_ids, prompt_mask, response_ids, response_mask, group: int = 1):
        full = [
            full_distribution_logprobs(m.model, prompt_ids, prompt_mask, response_ids, response_mask)
            for m in self.members
        ]
        return ensemble_logp(full, response_ids, response_mask)

    def describe(self):
        return {"name": self.name, "members": [m.describe() for m in self.members]}
