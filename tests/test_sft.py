"""SFT maths and behaviour."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import run_cfg, tiny_llama
from densepath.algos.sft import sft_loss, warmup_cosine
from densepath.data.datamodule import Collator
from densepath.data.formatting import Encoded


def _model(vocab=23):
    return tiny_llama(0, vocab)


def test_sft_loss_equals_manual_masked_cross_entropy():
    model = _model()
    items = [
        Encoded([1, 4, 5], [7, 8, 2]),
        Encoded([1, 6], [9, 2]),
        Encoded([1, 4, 4, 5, 6], [10, 11, 12, 2]),
    ]
    batch = Collator(pad_id=0)(items)
    loss, n_tok = sft_loss(model, batch)
    # reference: each sequence alone, unpadded, full logits, CE only on response tokens
    tot, cnt = 0.0, 0
    for it in items:
        ids = torch.tensor([it.prompt_ids + it.response_ids])
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        P = len(it.prompt_ids)
        for t, tok in enumerate(it.response_ids):
            tot -= logp[P + t - 1, tok].item()
            cnt += 1
    assert n_tok.item() == cnt
    assert loss.item() == pytest.approx(tot / cnt, abs=1e-10)


def _dft_reference(model, items) -> torch.Tensor:
    """DFT by hand: each sequence alone, float64 log-softmax, -sum sg(p) log p over response tokens / n."""
    tot, cnt = torch.zeros((), dtype=torch.float64), 0
    for it in items:
        ids = torch.tensor([it.prompt_ids + it.response_ids])
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        P = len(it.prompt_ids)
        for t, tok in enumerate(it.response_ids):
            lp = logp[P + t - 1, tok]
            tot = tot - lp.detach().exp() * lp
            cnt += 1
    return tot / cnt


def test_dft_loss_and_gradient_equal_a_direct_loop_reference():
    items = [
        Encoded([1, 4, 5], [7, 8, 2]),
        Encoded([1, 6], [9, 2]),
        Encoded([1, 4, 4, 5, 6], [10, 11, 12, 2]),
    ]
    batch = Collator(pad_id=0)(items)
    model = _model().double()
    loss, n_tok = sft_loss(model, batch, "dft")
    ref = _dft_reference(model, items)
    assert n_tok.item() == 9
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    (g,) = torch.autograd.grad(loss, [model.lm_head.weight])
    (g_ref,) = torch.autograd.grad(ref, [model.lm_head.weight])
    torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-12)
    # DFT weights every NLL term by p <= 1: strictly below the NLL, and not a rescaled NLL
    nll, _ = sft_loss(model, batch, "nll")
    assert 0 < loss.item() < nll.item()
    with pytest.raises(ValueError, match="sft.loss='focal'.*nll.*dft"):
        sft_loss(model, batch, "focal")


def test_prompt_tokens_carry_no_loss():
    model = _model()
    a = Collator(0)([Encoded([1, 4, 5], [7, 8, 2])])
    b = Collator(0)([Encoded([1, 9, 9], [7, 8, 2])])  # same response, different prompt tokens
    la, _ = sft_loss(model, a)
    a["prompt_ids"].requires_grad_(False)
    emb = model.get_input_embeddings()
    emb.weight.grad = None
    la.backward()
    # a prompt token that never appears in the response gets gradient only through attention, but
    # the loss is computed on response positions only: changing the *targets* of prompt positions
    # (which are not targets) cannot change it, so two prompts of equal length give finite losses
    lb, _ = sft_loss(model, b)
    assert torch.isfinite(la) and torch.isfinite(lb) and la.item() != lb.item()


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)
    mid = warmup_cosine(55, 10, 100, 0.1)
    assert mid == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


@pytest.mark.slow
def test_short_sft_lowers_heldout_loss_and_learns_the_easiest_family(tmp_path: Path):
    run_dir = tmp_path / "sft"
    run_cfg(
        [
            "pipeline=sft",
            "data.families=[upper,sort]",
            "sft.steps=250",
            "sft.val_every=50",
            "sft.batch_size=32",
            "data.sizes={sft: 8000, rl: 64, val: 128, eval: 128}",
            "eval.val_size=128",
            "eval.eval_size=128",
            "callbacks.reward_recovery.enabled=false",
            "trainer.enable_progress_bar=false",
        ],
        run_dir,
    )
    rows = (run_dir / "sft" / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    vi = header.index("val/loss")
    vals = [float(r.split(",")[vi]) for r in rows[1:] if r.split(",")[vi]]
    assert vals[-1] < vals[0] - 0.5, vals
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["sft/val/greedy/upper/success"] >= 0.6, m
