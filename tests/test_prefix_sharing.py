"""Prefix sharing (models/prefix.py): the k responses of a prompt on one prompt forward equal the unshared
computation, log-probs and gradients, to 1e-4 relative in fp32; with LoRA, per-row adapters, and HF
gradient checkpointing (which would otherwise drop the cache and cut the responses off their prompt)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama
from densepath.models.logprobs import response_logprobs
from densepath.models.prefix import checkpointing_in_eval, prompt_groups, supports_prefix_sharing

K, G, P, T, V = 3, 2, 7, 6, 41


def _model(seed=0):
    return tiny_llama(seed, vocab=V).float()  # the shared float64 reference model, in fp32


def _batch(seed=1):
    """G left-padded prompts (one padded by 3), each repeated K times; right-padded responses of varied lengths."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(1, V, (G, P), generator=g)
    pmask = torch.ones(G, P, dtype=torch.long)
    pmask[1, :3] = 0
    prompts = prompts * pmask
    pid, pm = prompts.repeat_interleave(K, 0), pmask.repeat_interleave(K, 0)
    rid = torch.randint(1, V, (G * K, T), generator=g)
    lengths = torch.tensor([T, 4, 1, 5, T, 2])
    rm = (torch.arange(T)[None] < lengths[:, None]).long()
    return pid, pm, rid * rm, rm


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _logp_and_grads(model, batch, group, temperature=1.0):
    model.zero_grad(set_to_none=True)
    out = response_logprobs(model, *batch, group=group, temperature=temperature, return_values=True)
    w = torch.linspace(-1, 1, out.logp.numel()).view_as(
        out.logp
    )  # a loss that weighs every token differently
    (out.logp * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logp.detach(), out.values.detach(), grads


@pytest.mark.parametrize("checkpointing", [False, True])
def test_shared_prefix_equals_unshared_logprobs_and_grads(checkpointing):
    model, batch = _model(), _batch()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lp1, v1, g1 = _logp_and_grads(model, batch, 1, temperature=0.7)
    lpk, vk, gk = _logp_and_grads(model, batch, K, temperature=0.7)
    assert lpk.shape == (G * K, T)
    assert (lpk[batch[3] == 0] == 0).all()
    assert _rel(lpk, lp1) < 1e-4 and _rel(vk, v1) < 1e-4
    assert set(gk) == set(g1) and len(g1) > 10
    for name in g1:
        assert _rel(gk[name], g1[name]) < 1e-4, name
    # the prompt matters: scoring the same responses after other prompts changes them
    other = (batch[0].roll(1, dims=1) * batch[1], *batch[1:])
    lp_other = response_logprobs(model, *other, group=K).logp.detach()
    assert _rel(lp_other, lp1) > 1e-3


def test_checkpointing_is_active_in_eval_mode():
    """The RL update runs the policy in eval mode; HF checkpoints only `training` layers. The context sets
    the flag on the checkpointed layers alone, and restores it."""
    model = _model()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    calls = []
    layer = model.model.layers[0]
    orig = layer._gradient_checkpointing_func
    layer._gradient_checkpointing_func = lambda *a, **k: calls.append(1) or orig(*a, **k)
    response_logprobs(model, *_batch(), group=1).logp.sum().backward()
    assert calls, "gradient checkpointing did not run in eval mode"
    assert not layer.training and not layer.self_attn.training
    calls.clear()
    with checkpointing_in_eval(model):
        assert layer.training and not layer.self_attn.training
    assert not layer.training
    with torch.no_grad():  # no backward to replay: no checkpointing
        response_logprobs(model, *_batch(), group=K)
    assert not calls


def test_shared_prefix_with_lora_and_per_row_adapters():
    """Per-row adapters (peft mixed batches) in one prefix-shared forward equal each adapter alone."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft = get_peft_model(_model(), cfg, adapter_name="sft")
    peft.add_adapter(
        "other", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft.eval()
    batch = _batch()
    both = tuple(torch.cat([x, x]) for x in batch)
    names = ["sft"] * (G * K) + ["__base__"] * (G * K)
    with torch.no_grad():
        mixed = response_logprobs(peft, *both, group=K, adapter_names=names).logp
        peft.set_adapter("sft")
        only_a = response_logprobs(peft, *batch).logp
        with peft.disable_adapter():
            bare = response_logprobs(peft, *batch).logp
    assert _rel(mixed[: G * K], only_a) < 1e-4 and _rel(mixed[G * K :], bare) < 1e-4
    assert _rel(only_a, bare) > 1e-3  # the adapter changes the scores


def test_prompt_groups_checks_the_layout():
    pid, pm, _, _ = _batch()
    assert prompt_groups(pid, pm, K) == G
    with pytest.raises(ValueError, match="multiple of k"):
        prompt_groups(pid[:-1], pm[:-1], K)
    with pytest.raises(ValueError, match="identical prompts"):
        prompt_groups(pid.roll(1, dims=0), pm.roll(1, dims=0), K)
    assert supports_prefix_sharing(_model())
