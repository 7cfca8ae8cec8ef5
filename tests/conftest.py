"""Shared fixtures: compose the real Hydra configs and run stages in a temp dir, offline."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_cfg(overrides: list[str], tmp_path: Path | None = None):
    """The real config with `overrides`; caches go under tmp_path when given."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        extra = []
        own_cache = any(o.startswith("data.cache_dir") for o in overrides)
        non_toy = any(
            (o.startswith("data=") and o != "data=toy") or o.startswith("experiment=") for o in overrides
        )
        if tmp_path is not None and not own_cache and not non_toy:
            extra.append(f"data.cache_dir={tmp_path / 'cache'}")
        return compose(config_name="config", overrides=list(overrides) + extra)


def run_cfg(overrides: list[str], run_dir: Path) -> dict:
    from densepath.stages.runner import run_stages

    cfg = compose_cfg(overrides, run_dir.parent)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_stages(cfg, run_dir)


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory) -> Path:
    """One tiny SFT run shared by tests that need pi_SFT, its snapshots and tokenizer."""
    run_dir = tmp_path_factory.mktemp("sft_run") / "run"
    run_cfg(
        ["debug=tiny", "pipeline=sft", "sft.snapshot_fractions=[0.25,0.5,0.75]", "sft.half_data=true"],
        run_dir,
    )
    return run_dir


def tiny_llama(seed: int = 0, vocab: int = 37):
    """A float64 ~50k-parameter Llama for exact reference tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).double().eval()
