"""Tests for the chunked teacher-forced log-prob kernel (densepath.models.logprobs)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from conftest import tiny_llama
from densepath.models.logprobs import (
    TokenLogProbs,
    build_inputs,
    full_distribution_logprobs,
    response_logprobs,
    selective_log_softmax,
)

VOCAB = 37
PAD, BOS, EOS = 0, 1, 2


def _tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    return tiny_llama(seed, VOCAB)


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return _tiny_llama(0)


def _batch(pad_id: int = PAD) -> dict[str, torch.Tensor]:
    """4 rows: no padding at all; short prompt + EOS then padding; BOS-only prompt; EOS-only response."""
    g = torch.Generator().manual_seed(123)
    P, T = 5, 6
    prompt_lens = [5, 2, 1, 3]
    resp_lens = [6, 4, 6, 1]
    prompt_ids = torch.full((4, P), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros(4, P, dtype=torch.long)
    response_ids = torch.full((4, T), pad_id, dtype=torch.long)
    response_mask = torch.zeros(4, T, dtype=torch.long)
    for b, (pl, rl) in enumerate(zip(prompt_lens, resp_lens)):
        toks = torch.randint(3, VOCAB, (pl,), generator=g)
        toks[0] = BOS
        prompt_ids[b, P - pl :] = toks
        prompt_mask[b, P - pl :] = 1
        resp = torch.randint(3, VOCAB, (rl,), generator=g)
        if b in (1, 3):  # finished with EOS, then padding
            resp[-1] = EOS
        response_ids[b, :rl] = resp
        response_mask[b, :rl] = 1
    return dict(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids, response_mask=response_mask
    )


def _reference(model, batch, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow direct reference: full forward, log_softmax, loop over rows and positions."""
    input_ids, attention_mask, position_ids = build_inputs(**batch)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logits = logits.double() / temperature
    lsm = torch.log_softmax(logits, dim=-1)
    P = batch["prompt_ids"].shape[1]
    B, T = batch["response_ids"].shape
    logp = torch.zeros(B, T, dtype=torch.float64)
    vals = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            if batch["response_mask"][b, t]:
                a = int(batch["response_ids"][b, t])
                logp[b, t] = lsm[b, P + t - 1, a]
                vals[b, t] = torch.logsumexp(logits[b, P + t - 1], dim=-1)
    return logp, vals


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_direct_reference(model, temperature):
    batch = _batch()
    with torch.no_grad():
        out = response_logprobs(model, **batch, temperature=temperature, return_values=True)
        ref_logp, ref_vals = _reference(model, batch, temperature)
    assert isinstance(out, TokenLogProbs)
    assert out.logp.dtype == torch.float64 and out.logp.shape == (4, 6)
    torch.testing.assert_close(out.logp, ref_logp, atol=1e-10, rtol=0)
    torch.testing.assert_close(out.values, ref_vals, atol=1e-10, rtol=0)
    # Q(s_t, a_t) = logp + V is the tempered logit of the taken action
    assert (out.logp[batch["response_mask"] == 1] < 0).all()


def test_temperature_changes_scores(model):
    batch = _batch()
    with torch.no_grad():
        a = response_logprobs(model, **batch, temperature=1.0).logp
        b = response_logprobs(model, **batch, temperature=0.7).logp
        no_values = response_logprobs(model, **batch).values
    assert (a - b).abs().max() > 1e-3
    assert no_values is None


def test_alone_equals_in_padded_batch(model):
    batch = _batch()
    with torch.no_grad():
        full = response_logprobs(model, **batch, return_values=True)
        for b in range(4):
            pm = batch["prompt_mask"][b] == 1
            rm = batch["response_mask"][b] == 1
            alone = response_logprobs(
                model,
                batch["prompt_ids"][b][pm][None],
                batch["prompt_mask"][b][pm][None],
                batch["response_ids"][b][rm][None],
                batch["response_mask"][b][rm][None],
                return_values=True,
            )
            n = int(rm.sum())
            torch.testing.assert_close(full.logp[b, :n], alone.logp[0], atol=1e-10, rtol=0)
            torch.testing.assert_close(full.values[b, :n], alone.values[0], atol=1e-10, rtol=0)


def test_pad_token_content_is_irrelevant_and_masked_positions_exact_zero(model):
    with torch.no_grad():
        a = response_logprobs(model, **_batch(PAD), return_values=True, temperature=0.7)
        b = response_logprobs(model, **_batch(VOCAB - 1), return_values=True, temperature=0.7)
    mask = _batch()["response_mask"] == 0
    assert mask.any()
    assert torch.equal(a.logp[mask], torch.zeros_like(a.logp[mask]))
    assert torch.equal(a.values[mask], torch.zeros_like(a.values[mask]))
    torch.testing.assert_close(a.logp, b.logp, atol=1e-10, rtol=0)
    torch.testing.assert_close(a.values, b.values, atol=1e-10, rtol=0)


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def test_chunk_sizes_identical_values_and_gradients():
    model = _tiny_llama(0)
    batch = _batch()
    logps, grads = [], []
    for cs in (1, 3, 1024):
        model.zero_grad(set_to_none=True)
        out = response_logprobs(model, **batch, chunk_size=cs, return_values=True)
        (out.logp.sum() + 0.1 * out.values.sum()).backward()
        logps.append(out.logp.detach())
        grads.append(_grads(model))
    # gradient of the slow reference
    model.zero_grad(set_to_none=True)
    input_ids, attention_mask, position_ids = build_inputs(**batch)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    P = batch["prompt_ids"].shape[1]
    total = logits.new_zeros(())
    for b in range(4):
        for t in range(6):
            if batch["response_mask"][b, t]:
                z = logits[b, P + t - 1]
                total = (
                    total
                    + torch.log_softmax(z, -1)[batch["response_ids"][b, t]]
                    + 0.1 * torch.logsumexp(z, -1)
                )
    total.backward()
    ref_grads = _grads(model)

    for lp in logps[1:]:
        torch.testing.assert_close(lp, logps[0], atol=1e-12, rtol=0)
    for gs in grads:
        assert all(torch.isfinite(g).all() for g in gs)
        assert any(g.abs().max() > 0 for g in gs)
        for g, r in zip(gs, ref_grads):
            torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-8)


def test_head_never_sees_more_than_chunk_rows(model):
    """The LM head runs only on real response-predicting rows, chunk_size at a time."""
    batch = _batch()
    seen: list[tuple[int, ...]] = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    try:
        with torch.no_grad():
            response_logprobs(model, **batch, chunk_size=3)
        no_grad_calls = list(seen)
        seen.clear()
        response_logprobs(model, **batch, chunk_size=3).logp.sum().backward()
    finally:
        hook.remove()
    n_real = int(batch["response_mask"].sum())
    assert all(s[0] <= 3 and len(s) == 2 for s in no_grad_calls)
    assert sum(s[0] for s in no_grad_calls) == n_real
    # with grad: each chunk runs once in forward and once recomputed in backward (checkpoint)
    assert all(s[0] <= 3 for s in seen)
    assert sum(s[0] for s in seen) == 2 * n_real


def test_selective_log_softmax_matches_log_softmax():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, VOCAB, generator=g, dtype=torch.float64) * 5
    idx = torch.randint(0, VOCAB, (7,), generator=g)
    logp, lse = selective_log_softmax(z, idx)
    ref = torch.log_softmax(z, -1)[torch.arange(7), idx]
    torch.testing.assert_close(logp, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(lse, torch.logsumexp(z, -1), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="index shape"):
        selective_log_softmax(z, idx[:3])


def test_full_distribution_consistent(model):
    batch = _batch()
    with torch.no_grad():
        full = full_distribution_logprobs(model, **batch, temperature=0.7)
        sel = response_logprobs(model, **batch, temperature=0.7).logp
    mask = batch["response_mask"] == 1
    assert full.shape == (4, 6, VOCAB)
    torch.testing.assert_close(full.exp().sum(-1)[mask], torch.ones(int(mask.sum()), dtype=torch.float64))
    picked = full.gather(-1, batch["response_ids"].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(torch.where(mask, picked, 0.0), sel, atol=1e-10, rtol=0)
    assert torch.equal(full[~mask], torch.zeros_like(full[~mask]))


def test_bf16_model_upcasts_to_float32():
    m = _tiny_llama(0)
    batch = _batch()
    with torch.no_grad():
        ref, _ = _reference(m, batch)
        out = response_logprobs(m.to(torch.bfloat16), **batch, return_values=True)
    assert out.logp.dtype == torch.float32 and out.values.dtype == torch.float32
    mask = batch["response_mask"] == 1
    assert (out.logp[mask].double() - ref[mask]).abs().max() < 0.1


def test_bad_layouts_raise(model):
    batch = _batch()
    right_padded_prompt = dict(
        batch, prompt_mask=batch["prompt_mask"].flip(1), prompt_ids=batch["prompt_ids"].flip(1)
    )
    with pytest.raises(ValueError, match="LEFT-padded"):
        response_logprobs(model, **right_padded_prompt)
    holey = batch["response_mask"].clone()
    holey[1, 1] = 0
    with pytest.raises(ValueError, match="right-padded"):
        response_logprobs(model, **dict(batch, response_mask=holey))
    with pytest.raises(ValueError, match="temperature"):
        response_logprobs(model, **batch, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        response_logprobs(model, **batch, chunk_size=0)
    with pytest.raises(ValueError, match="response_mask shape"):
        response_logprobs(model, **dict(batch, response_mask=batch["response_mask"][:, :3]))
