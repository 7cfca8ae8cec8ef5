"""The CUDA path against the CPU reference: scoring, the shared base in bf16, and one DPR update step.

Why a file of its own: every other test runs on the CPU, so nothing else would notice a kernel, dtype or
device-placement bug that only shows on a GPU (sdpa's CUDA kernels, peft's per-row adapters on CUDA, a
bf16 base under fp32 adapters, a tensor left on the CPU). Marked `cuda` and skipped without a GPU;
`benchmarks/gpu_check.sh` runs them (`pytest -m cuda tests/test_cuda.py`).

Needs no Hydra config (no conftest fixtures), so it runs with `--noconftest` on a machine that has only
torch, transformers, peft and lightning. `DENSEPATH_CUDA_TEST_DEVICE=cpu` runs the same code on the CPU
as a dry run of the tests themselves (CPU against CPU proves nothing about CUDA).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from densepath.models.adapters import SharedBase
from densepath.models.logprobs import response_logprobs

DEVICE = os.environ.get("DENSEPATH_CUDA_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(),
        reason="needs a CUDA GPU (torch.cuda.is_available() is False); run on a GPU machine, "
        "e.g. `bash benchmarks/gpu_check.sh`",
    ),
]

K, G, P, T, V = 3, 2, 7, 6, 61  # samples per prompt, prompts, prompt / response width, vocabulary
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


@pytest.fixture(autouse=True)
def exact_fp32_matmuls():
    """TF32 would make CUDA fp32 matmuls ~1e-3 relative: the fp32 comparisons need true fp32."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(old)


def _model(seed=0) -> LlamaForCausalLM:
    """A random fp32 Llama (GQA, untied head) in eval mode, on the CPU."""
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float().eval()


def _batch(seed=1):
    """G prompts (one left-padded by 3) repeated K times, prompt-major; right-padded responses of varied
    lengths: the layout the sampler returns and prefix sharing expects."""
    g = torch.Generator().manual_seed(seed)
    pmask = torch.ones(G, P, dtype=torch.long)
    pmask[1, :3] = 0
    prompts = torch.randint(3, V, (G, P), generator=g) * pmask
    rid = torch.randint(3, V, (G * K, T), generator=g)
    rm = (torch.arange(T)[None] < torch.tensor([T, 4, 1, 5, T, 2])[:, None]).long()
    return prompts.repeat_interleave(K, 0), pmask.repeat_interleave(K, 0), rid * rm, rm


def _to(batch, device):
    return tuple(x.to(device) for x in batch)


def _rel(a, b) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _logp_and_grads(model, batch, group):
    """Log-probs, soft values and the gradients of a loss that weighs every token differently."""
    model.zero_grad(set_to_none=True)
    out = response_logprobs(model, *batch, group=group, return_values=True)
    w = torch.linspace(-1, 1, out.logp.numel(), device=out.logp.device).view_as(out.logp)
    (out.logp * w).sum().backward()
    grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return out.logp.detach().cpu(), out.values.detach().cpu(), grads


@pytest.mark.parametrize("group", [1, K])
def test_response_logprobs_on_cuda_equal_cpu(group):
    """fp32 log-probs, soft values and gradients on the device equal the CPU's (unshared) to 1e-4 relative,
    with and without prefix sharing (`group=K`)."""
    cpu = _model()
    batch = _batch()
    lp_ref, v_ref, g_ref = _logp_and_grads(cpu, batch, 1)
    dev = copy.deepcopy(cpu).to(DEVICE)
    lp, v, g = _logp_and_grads(dev, _to(batch, DEVICE), group)
    assert lp.shape == (G * K, T) and bool((lp[batch[3] == 0] == 0).all())
    assert _rel(lp, lp_ref) < 1e-4 and _rel(v, v_ref) < 1e-4
    assert set(g) == set(g_ref) and len(g_ref) > 10
    for name in g_ref:
        assert _rel(g[name], g_ref[name]) < 1e-4, name
    # the comparison can fail: other responses score differently
    other = _to((*batch[:2], batch[2].roll(1, dims=1) * batch[3], batch[3]), DEVICE)
    with torch.no_grad():
        assert _rel(response_logprobs(dev, *other, group=group).logp, lp_ref) > 1e-2


def _random_adapter(base, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) A and B saved to `out`, as SFT's `save_adapter` writes one."""
    from peft import get_peft_model

    from densepath.models.adapters import lora_config

    cfg = lora_config(LORA)
    cfg.init_lora_weights = False  # random B too: the adapter changes the model
    torch.manual_seed(seed)
    get_peft_model(copy.deepcopy(base), cfg).save_pretrained(str(out))
    return out


def _shared_reward(base, sft_dir, baseline_dir, dtype, device):
    """(SharedBase, DenseReward) as DPR builds them on one base: log-ratio reward, pi_SFT and pi_base as
    per-row adapters (`rewards.builder.build_on_shared_base` without the Hydra config)."""
    from densepath.rewards.baselines import SnapshotBaseline
    from densepath.rewards.dense import DenseReward
    from densepath.rewards.formulations import LogRatio

    shared = SharedBase(copy.deepcopy(base), sft_dir, baseline_dir, LORA, dtype)
    shared.model.to(device)
    baseline = SnapshotBaseline(fraction=0.5)  # n_models=1: read from the shared base's `baseline` adapter
    baseline.name = "baseline_adapter"
    return shared, DenseReward(LogRatio(), None, baseline, shared=shared)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    base = _model()
    return base, _random_adapter(base, root / "sft", 1), _random_adapter(base, root / "baseline", 2)


def test_shared_base_bf16_on_cuda_scores_close_to_cpu_fp32(adapters):
    """DenseReward on a bf16 shared base on the device (prefix-shared, per-row adapters) is within bf16
    rounding of the fp32 CPU reference, and far from a reward that ignored an adapter."""
    base, sft_dir, baseline_dir = adapters
    batch = _batch()
    _, ref_reward = _shared_reward(base, sft_dir, baseline_dir, torch.float32, "cpu")
    shared, reward = _shared_reward(base, sft_dir, baseline_dir, torch.bfloat16, DEVICE)
    assert all(p.dtype == torch.bfloat16 for n, p in shared.model.named_parameters() if "lora_" not in n)
    assert {p.device.type for p in shared.model.parameters()} == {torch.device(DEVICE).type}
    ref = ref_reward.score_full(*batch)
    out = reward.score_full(*_to(batch, DEVICE), group=K)
    assert out.logp_sft.dtype == torch.float32 and out.rewards.device.type == torch.device(DEVICE).type
    mask = batch[3].bool()
    d_logp = float((out.logp_sft.cpu() - ref.logp_sft)[mask].abs().max())
    d_reward = float((out.rewards.cpu() - ref.rewards)[mask].abs().max())
    # bf16 weights: a few 1e-3 on the CPU (bf16 vs fp32 there), not another model
    assert d_logp < 0.05 and d_reward < 0.05, (d_logp, d_reward)
    # the reward is not trivially small: pi_SFT and pi_base differ by far more than the tolerance (0.35)
    assert float(ref.rewards[mask].abs().max()) > 0.2
    shared.assert_trainable()


def test_rl_update_step_on_cuda_trains_only_the_policy_adapter(adapters):
    """One RLModule.training_step on the device (HFSampler on the policy, shared-base reward, prefix
    sharing, AdamW) gives finite gradients on the policy adapter alone and moves nothing else."""
    from densepath.algos.rl import RLModule
    from densepath.sampling.hf import HFSampler

    base, sft_dir, baseline_dir = adapters
    shared, reward = _shared_reward(base, sft_dir, baseline_dir, torch.bfloat16, DEVICE)
    sampler = HFSampler(max_new_tokens=5, pad_token_id=0, eos_token_id=2)
    prompts = [[1, 5, 9, 11], [1, 7, 3, 8, 21, 30], [1, 4]]
    mod = RLModule(
        shared.model, reward, sampler, prompts, k=K, lr=1e-3, prefix_sharing=True,
        check_params=shared.assert_trainable,
    )  # fmt: skip
    mod.to(DEVICE)
    opt = mod.configure_optimizers()
    grads: dict[str, torch.Tensor] = {}

    class Capture:
        """The real AdamW; records the gradients it applies."""

        def zero_grad(self, set_to_none=True):
            opt.zero_grad(set_to_none=set_to_none)

        def step(self):
            grads.update(
                {n: p.grad.detach().clone() for n, p in shared.model.named_parameters() if p.grad is not None}
            )
            opt.step()

    logged: dict = {}
    mod.optimizers = lambda: Capture()
    mod.manual_backward = lambda loss: loss.backward()
    mod.log_dict = lambda d, **kw: logged.update(d)
    mod.log = lambda *a, **kw: None
    before = {n: p.detach().clone() for n, p in shared.model.named_parameters()}
    loss = mod.training_step(torch.tensor([0, 2]), 0)

    assert loss is not None and bool(torch.isfinite(loss)), "the step was skipped as non-finite"
    assert grads and all(".policy." in n for n in grads), sorted(grads)[:3]
    assert all(bool(torch.isfinite(g).all()) for g in grads.values())
    assert any(float(g.abs().max()) > 0 for g in grads.values())
    moved = {n for n, p in shared.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and all(".policy." in n for n in moved), sorted(moved - set(grads))[:3]
    assert logged["train/length"] > 0 and bool(torch.isfinite(logged["train/grad_norm"]))
    assert mod.generated_tokens > 0 and mod.last_samples["response_ids"].shape[0] == 2 * K
