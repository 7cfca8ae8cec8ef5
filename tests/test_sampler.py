"""The sampler's decode loop against transformers `generate` and against the model's own distribution."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_llama
from densepath.sampling.hf import HFSampler

PAD, EOS = 0, 1
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]  # ragged: exercises left padding


def sampler(engine: str, **kw) -> HFSampler:
    s = HFSampler(engine=engine, **kw)
    s.pad_token_id, s.eos_token_id = PAD, EOS
    return s


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loop_greedy_equals_generate(seed: int):
    model = tiny_llama(seed)
    a = sampler("loop").generate(model, PROMPTS, k=2, max_new_tokens=12, greedy=True)
    b = sampler("generate").generate(model, PROMPTS, k=2, max_new_tokens=12, greedy=True)
    width = b.response_ids.shape[1]
    assert torch.equal(a.response_mask[:, :width], b.response_mask)
    assert torch.equal(a.response_ids[:, :width], b.response_ids)
    assert torch.equal(a.prompt_ids, b.prompt_ids) and torch.equal(a.finished, b.finished)


def eos_bonus(model, bonus: float):
    """Adds `bonus` to the EOS logit at every position (a forward hook on the output head)."""

    def hook(_mod, _inp, out):
        out = out.clone()
        out[..., EOS] += bonus
        return out

    return model.lm_head.register_forward_hook(hook)


def test_loop_stops_at_eos_and_pads_after_it():
    model = tiny_llama(0)
    eos_bonus(model, 3.0)  # EOS likely but not certain: rows end at different steps
    torch.manual_seed(0)
    out = sampler("loop").generate(model, PROMPTS, k=4, max_new_tokens=8, min_new_tokens=3)
    lengths = out.response_mask.sum(-1)
    assert (lengths >= 4).all()  # min_new_tokens: no EOS among the first 3 tokens
    assert len(set(lengths.tolist())) > 1 and out.finished.any()
    ids = out.response_ids
    assert not (ids[:, :3] == EOS).any()
    for i in range(ids.shape[0]):
        n = int(lengths[i])
        assert ids[i, n - 1] == EOS if out.finished[i] else n == 8
        assert (ids[i, n:] == PAD).all() and (out.response_mask[i, n:] == 0).all()


def test_loop_returns_early_when_every_row_finished():
    model = tiny_llama(0)
    eos_bonus(model, 100.0)
    out = sampler("loop").generate(model, PROMPTS, k=2, max_new_tokens=16, min_new_tokens=2)
    assert out.response_ids.shape[1] == 3 and out.finished.all()
    assert (out.response_ids[:, 2] == EOS).all()


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_loop_samples_from_the_tempered_model_distribution(temperature: float):
    """First-token frequencies over 6,000 draws match softmax(logits / T) within 4.5 SE per token,
    and the second token, given the most common first one, matches the model's conditional."""
    model = tiny_llama(3)
    prompt = [5, 6, 7]
    torch.manual_seed(0)
    n = 6000
    out = sampler("loop", batch_size=n).generate(
        model, [prompt], k=n, max_new_tokens=2, min_new_tokens=2, temperature=temperature
    )
    with torch.no_grad():
        z = model(torch.tensor([prompt])).logits[0, -1].double()
    z[EOS] = -math.inf
    p = torch.softmax(z / temperature, -1)
    freq = torch.bincount(out.response_ids[:, 0], minlength=p.numel()).double() / n
    se = (p * (1 - p) / n).sqrt().clamp(min=1e-4)
    assert ((freq - p).abs() / se).max() < 4.5
    first = int(freq.argmax())
    rows = out.response_ids[:, 0] == first
    with torch.no_grad():
        z2 = model(torch.tensor([prompt + [first]])).logits[0, -1].double()
    z2[EOS] = -math.inf
    p2 = torch.softmax(z2 / temperature, -1)
    m = int(rows.sum())
    f2 = torch.bincount(out.response_ids[rows, 1], minlength=p2.numel()).double() / m
    se2 = (p2 * (1 - p2) / m).sqrt().clamp(min=1e-4)
    assert ((f2 - p2).abs() / se2).max() < 4.5


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="sampler.engine"):
        HFSampler(engine="vllm")


def test_eager_and_sdpa_attention_agree_on_padded_batches():
    """models/attention.py picks `eager` on CPU for speed: the log-probs and greedy samples must not change."""
    from densepath.models import attention
    from densepath.models.logprobs import response_logprobs

    model = tiny_llama(1).float()
    b = sampler("loop").generate(model, PROMPTS, k=2, max_new_tokens=10, greedy=True)
    outs = {}
    for impl in ("sdpa", "eager"):
        attention.configure(impl, "cpu")
        try:
            attention.apply(model)
            lp = response_logprobs(model, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask).logp
            g = sampler("loop").generate(model, PROMPTS, k=2, max_new_tokens=10, greedy=True)
        finally:
            attention.configure(None, "cpu")
        outs[impl] = (lp, g.response_ids)
    assert model.config._attn_implementation == "eager"
    assert torch.isfinite(outs["eager"][0]).all()
    assert torch.allclose(outs["sdpa"][0], outs["eager"][0], atol=2e-5)
    assert torch.equal(outs["sdpa"][1], outs["eager"][1])
    assert attention.resolve("auto", "cpu") == "eager" and attention.resolve("auto", "cuda") == "sdpa"
    with pytest.raises(ValueError, match="attn_implementation"):
        attention.resolve("fast", "cpu")
    attention.configure("eager", "cpu")  # float64 models keep sdpa (eager + padding gives NaN there)
    try:
        m64 = attention.apply(tiny_llama(1))
    finally:
        attention.configure(None, "cpu")
    assert m64.config._attn_implementation == "sdpa"
