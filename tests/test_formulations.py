"""Tests for the dense reward formulations against the identities in docs/method.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn
from transformers import LlamaForCausalLM

from conftest import tiny_llama
from densepath.models.logprobs import build_inputs, full_distribution_logprobs, response_logprobs
from densepath.rewards.formulations import (
    ensemble_logp,
    log_ratio,
    logprob,
    postprocess,
    soft_bellman,
    sparse,
    uniform_logp,
)

VOCAB = 37
PAD, BOS, EOS = 0, 1, 2


def _tiny_llama(seed: int) -> LlamaForCausalLM:
    return tiny_llama(seed, VOCAB)


@pytest.fixture(scope="module")
def sft() -> LlamaForCausalLM:
    return _tiny_llama(0)


@pytest.fixture(scope="module")
def base() -> LlamaForCausalLM:
    return _tiny_llama(1)


def _batch() -> dict[str, torch.Tensor]:
    """Rows: truncated at max length (no padding); EOS then padding; BOS-only prompt; EOS only."""
    g = torch.Generator().manual_seed(7)
    P, T = 5, 6
    prompt_lens, resp_lens = [5, 2, 1, 3], [6, 4, 5, 1]
    prompt_ids = torch.full((4, P), PAD, dtype=torch.long)
    prompt_mask = torch.zeros(4, P, dtype=torch.long)
    response_ids = torch.full((4, T), PAD, dtype=torch.long)
    response_mask = torch.zeros(4, T, dtype=torch.long)
    for b, (pl, rl) in enumerate(zip(prompt_lens, resp_lens)):
        toks = torch.randint(3, VOCAB, (pl,), generator=g)
        toks[0] = BOS
        prompt_ids[b, P - pl :], prompt_mask[b, P - pl :] = toks, 1
        resp = torch.randint(3, VOCAB, (rl,), generator=g)
        if b > 0:
            resp[-1] = EOS
        response_ids[b, :rl], response_mask[b, :rl] = resp, 1
    return dict(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids, response_mask=response_mask
    )


def _ref_logits(model, batch) -> torch.Tensor:
    """Full-forward logits (B, L, V) in float64, independent of the chunked kernel."""
    input_ids, attention_mask, position_ids = build_inputs(**batch)
    with torch.no_grad():
        return model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).logits.double()


def _full(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return full_distribution_logprobs(model, **batch)


def _score(model, batch):
    with torch.no_grad():
        return response_logprobs(model, **batch, return_values=True)


def test_log_ratio_sums_to_sequence_log_ratio(sft, base):
    batch = _batch()
    mask = batch["response_mask"]
    r = log_ratio(_score(sft, batch).logp, _score(base, batch).logp, mask)
    ls_s = torch.log_softmax(_ref_logits(sft, batch), -1)
    ls_b = torch.log_softmax(_ref_logits(base, batch), -1)
    P = batch["prompt_ids"].shape[1]
    for b in range(4):
        seq_s = seq_b = 0.0
        for t in range(int(mask[b].sum())):
            a = int(batch["response_ids"][b, t])
            seq_s += float(ls_s[b, P + t - 1, a])
            seq_b += float(ls_b[b, P + t - 1, a])
        assert abs(float(r[b].sum()) - (seq_s - seq_b)) < 1e-10


def test_soft_bellman_vs_logprob_potential_identity(sft):
    batch = _batch()
    mask = batch["response_mask"]
    out = _score(sft, batch)
    r_sb = soft_bellman(out.logp, out.values, mask)
    r_lp = logprob(out.logp, mask)
    z = _ref_logits(sft, batch)
    P = batch["prompt_ids"].shape[1]
    for b in range(4):
        n = int(mask[b].sum())
        V = [float(torch.logsumexp(z[b, P + t - 1], -1)) for t in range(n)] + [0.0]  # terminal V = 0
        for t in range(n):
            q = float(z[b, P + t - 1, batch["response_ids"][b, t]])
            assert abs(float(r_sb[b, t]) - (q - V[t + 1])) < 1e-10  # Q(s,a) - V(s')
            assert abs(float(r_sb[b, t] - r_lp[b, t]) - (V[t] - V[t + 1])) < 1e-10
        assert abs(float(r_sb[b].sum() - r_lp[b].sum()) - V[0]) < 1e-10
    # the potential term is not trivially zero
    assert (r_sb - r_lp).abs().max() > 0.1


def test_expected_log_ratio_is_kl(sft, base):
    batch = _batch()
    mask = batch["response_mask"]
    full_s = _full(sft, batch)  # (B, T, V)
    full_b = _full(base, batch)
    mask3 = mask.unsqueeze(-1).expand_as(full_s)
    # reward of every possible action a at every state: E_{a~pi_SFT}[r_t]
    expected = (full_s.exp() * log_ratio(full_s, full_b, mask3)).sum(-1)  # (B, T)
    P = batch["prompt_ids"].shape[1]
    z_s, z_b = _ref_logits(sft, batch), _ref_logits(base, batch)
    real = mask == 1
    idx_b, idx_t = real.nonzero(as_tuple=True)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=z_s[idx_b, P + idx_t - 1]),
        torch.distributions.Categorical(logits=z_b[idx_b, P + idx_t - 1]),
    )
    torch.testing.assert_close(expected[real], kl, atol=1e-10, rtol=0)
    assert (expected[real] >= 0).all() and (expected[real] > 1e-4).all()
    p = torch.softmax(z_s[0, P - 1], -1).numpy()
    q = torch.softmax(z_b[0, P - 1], -1).numpy()
    assert abs(float(expected[0, 0]) - scipy.stats.entropy(p, q)) < 1e-10
    assert torch.equal(expected[~real], torch.zeros_like(expected[~real]))


class _ShiftedHead(nn.Module):
    """lm_head plus a per-state constant c(s) = h(s) . w added to every logit."""

    def __init__(self, head: nn.Module, w: torch.Tensor):
        super().__init__()
        self.head, self.w = head, w

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h) + (h @ self.w).unsqueeze(-1)


def test_per_state_logit_shift_is_potential_shaping(sft, base):
    batch = _batch()
    mask = batch["response_mask"]
    shifted = _tiny_llama(0)
    w = torch.randn(32, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    shifted.set_output_embeddings(_ShiftedHead(shifted.get_output_embeddings(), w))
    a, s = _score(sft, batch), _score(shifted, batch)
    lp_base = _score(base, batch).logp

    torch.testing.assert_close(s.logp, a.logp, atol=1e-10, rtol=0)
    torch.testing.assert_close(
        log_ratio(s.logp, lp_base, mask), log_ratio(a.logp, lp_base, mask), atol=1e-10, rtol=0
    )
    torch.testing.assert_close(logprob(s.logp, mask), logprob(a.logp, mask), atol=1e-10, rtol=0)

    # c(s_t) computed independently from the backbone's hidden states
    input_ids, attention_mask, position_ids = build_inputs(**batch)
    with torch.no_grad():
        hs = sft.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
    P = batch["prompt_ids"].shape[1]
    diff = soft_bellman(s.logp, s.values, mask) - soft_bellman(a.logp, a.values, mask)
    for b in range(4):
        n = int(mask[b].sum())
        c = [float(hs[b, P + t - 1] @ w) for t in range(n)] + [0.0]
        for t in range(n):
            assert abs(float(s.values[b, t] - a.values[b, t]) - c[t]) < 1e-9
            assert abs(float(diff[b, t]) - (c[t] - c[t + 1])) < 1e-9
    assert diff.abs().max() > 0.1


def test_sparse_places_row_sum_on_last_token():
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    dense = torch.randn(4, 4, generator=g, dtype=torch.float64)
    dense[mask == 0] = float("inf")  # garbage on padding must not leak
    out = sparse(dense, mask)
    ref = torch.zeros(4, 4, dtype=torch.float64)
    for b in range(4):
        n = int(mask[b].sum())
        if n:
            ref[b, n - 1] = sum(float(dense[b, t]) for t in range(n))
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)


def test_sparse_of_log_ratio_has_same_return(sft, base):
    batch = _batch()
    mask = batch["response_mask"]
    dense = log_ratio(_score(sft, batch).logp, _score(base, batch).logp, mask)
    sp = sparse(dense, mask)
    torch.testing.assert_close(sp.sum(1), dense.sum(1), atol=1e-12, rtol=0)
    assert int((sp != 0).sum()) == 4


def test_postprocess_scale_and_clip():
    r = torch.tensor([[-3.0, -0.2, 0.4, 5.0], [1.0, -1.0, 7.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    out = postprocess(r, mask, scale=2.0, clip=1.5)
    ref = torch.zeros_like(r)
    for b in range(2):
        for t in range(4):
            if mask[b, t]:
                ref[b, t] = min(max(r[b, t].item() * 2.0, -1.5), 1.5)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    torch.testing.assert_close(postprocess(r, mask), torch.where(mask == 1, r, 0.0), atol=0, rtol=0)
    torch.testing.assert_close(
        postprocess(r, mask, scale=-0.5), torch.where(mask == 1, -0.5 * r, 0.0), atol=0, rtol=0
    )
    with pytest.raises(ValueError, match="clip"):
        postprocess(r, mask, clip=0.0)


def test_uniform_baseline(sft):
    batch = _batch()
    mask = batch["response_mask"]
    lp = _score(sft, batch).logp
    u = uniform_logp(mask, VOCAB, dtype=torch.float64)
    r = log_ratio(lp, u, mask)
    torch.testing.assert_close(r, torch.where(mask == 1, lp + math.log(VOCAB), 0.0), atol=1e-12, rtol=0)
    assert torch.equal(u[mask == 0], torch.zeros_like(u[mask == 0]))
    with pytest.raises(ValueError, match="vocab_size"):
        uniform_logp(mask, 0)


def test_ensemble_of_one_and_two(sft, base):
    batch = _batch()
    mask, ids = batch["response_mask"], batch["response_ids"]
    full_s = _full(sft, batch)
    full_b = _full(base, batch)
    torch.testing.assert_close(
        ensemble_logp([full_s], ids, mask), _score(sft, batch).logp, atol=1e-10, rtol=0
    )

    ens = ensemble_logp([full_s, full_b], ids, mask)
    ref = torch.zeros(4, 6, dtype=torch.float64)
    for b in range(4):
        for t in range(6):
            if mask[b, t]:
                m = [(float(full_s[b, t, a]) + float(full_b[b, t, a])) / 2 for a in range(VOCAB)]
                lse = float(np.logaddexp.reduce(m))
                ref[b, t] = m[int(ids[b, t])] - lse
    torch.testing.assert_close(ens, ref, atol=1e-10, rtol=0)
    # a normalised geometric mean differs from the plain mean of log-probs
    plain = torch.where(mask == 1, (_score(sft, batch).logp + _score(base, batch).logp) / 2, 0.0)
    assert (ens - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="empty"):
        ensemble_logp([], ids, mask)


def test_rewards_zero_on_padding():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 4, generator=g, dtype=torch.float64)
    b = torch.randn(3, 4, generator=g, dtype=torch.float64)
    a[mask == 0], b[mask == 0] = float("-inf"), float("nan")
    pad = mask == 0
    outs = {
        "log_ratio": log_ratio(a, b, mask),
        "logprob": logprob(a, mask),
        "soft_bellman": soft_bellman(a, b, mask),
        "sparse": sparse(a, mask),
        "postprocess": postprocess(a, mask, scale=3.0, clip=1.0),
        "uniform": uniform_logp(mask, VOCAB),
        "ensemble": ensemble_logp(
            [torch.log_softmax(torch.randn(3, 4, 5, generator=g), -1)],
            torch.zeros(3, 4, dtype=torch.long),
            mask,
        ),
    }
    for name, o in outs.items():
        assert torch.equal(o[pad], torch.zeros_like(o[pad])), name
        assert torch.isfinite(o[~pad]).all(), name


def test_shape_and_layout_errors():
    mask = torch.tensor([[1, 0, 1]])
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="right-padded"):
        soft_bellman(x, x, mask)
    with pytest.raises(ValueError, match="logp_base"):
        log_ratio(x, torch.zeros(1, 2), torch.ones(1, 3))
