"""Tests for densepath.algos.pg_math (method.md section 4).

References here are deliberately slow, direct float64 loops. The last group
checks the central claim of DPR: on a tabular policy the REINFORCE estimator
with reward-to-go and a leave-one-out baseline is unbiased for the gradient of
the expected return, and a baseline that includes the sample itself is not.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from densepath.algos.pg_math import (
    advantages,
    k1_in_reward,
    kl_k1,
    kl_k3,
    policy_gradient_loss,
    reward_to_go,
    whiten,
)

DT = torch.float64


def _ragged_mask(lengths: list[int], t_len: int) -> torch.Tensor:
    """Prefix masks with the given lengths. # (B, T) float64"""
    pos = torch.arange(t_len)[None, :]
    return (pos < torch.tensor(lengths)[:, None]).to(DT)


def _poison_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Put inf / nan / huge values on padding to prove they never leak."""
    junk = torch.tensor([float("inf"), float("nan"), -1e30, float("-inf")], dtype=x.dtype)
    fill = junk[torch.arange(x.numel()) % 4].view_as(x)
    return torch.where(mask.bool(), x, fill)


# --------------------------------------------------------------------------- #
# reward_to_go
# --------------------------------------------------------------------------- #
def _rtg_loop(r: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    b, t_len = r.shape
    out = torch.zeros(b, t_len, dtype=DT)
    for i in range(b):
        for t in range(t_len):
            if mask[i, t] == 0:
                continue
            out[i, t] = sum(gamma ** (j - t) * float(r[i, j]) for j in range(t, t_len) if mask[i, j] != 0)
    return out


@pytest.mark.parametrize("gamma", [1.0, 0.99, 0.9])
def test_reward_to_go_matches_double_loop(gamma: float) -> None:
    torch.manual_seed(0)
    lengths = [7, 3, 0, 1, 5]
    mask = _ragged_mask(lengths, 7)
    r = torch.randn(5, 7, dtype=DT)
    g = reward_to_go(_poison_padding(r, mask), mask, gamma=gamma)
    ref = _rtg_loop(r, mask, gamma)
    assert torch.allclose(g, ref, atol=1e-12, rtol=0)
    assert torch.all(g[mask == 0] == 0)
    # the first real token's return is the (discounted) sum of the row
    assert g[0, 0].item() == pytest.approx(sum(gamma**j * r[0, j].item() for j in range(7)), abs=1e-12)


@pytest.mark.parametrize("gamma", [0.9, 0.999, 0.0])
def test_reward_to_go_long_sequences_blocked_path(gamma: float) -> None:
    """T > block size: the two-level scan must match a backward recursion, with no overflow."""
    torch.manual_seed(1)
    t_len = 1300  # 3 blocks of 512, last one partial
    lengths = [1300, 777, 513]
    mask = _ragged_mask(lengths, t_len)
    r = torch.randn(3, t_len, dtype=DT)
    g = reward_to_go(r, mask, gamma=gamma)
    rl, ml = r.tolist(), mask.tolist()
    for i in range(3):
        run = 0.0
        ref = [0.0] * t_len
        for t in range(t_len - 1, -1, -1):
            run = (rl[i][t] if ml[i][t] else 0.0) + gamma * run
            ref[t] = run if ml[i][t] else 0.0
        assert torch.allclose(g[i], torch.tensor(ref, dtype=DT), atol=1e-10, rtol=0)
    g32 = reward_to_go(r.float(), mask.float(), gamma=gamma)
    assert g32.dtype == torch.float32 and torch.isfinite(g32).all()


def test_reward_to_go_rejects_bad_inputs() -> None:
    r = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="gamma"):
        reward_to_go(r, torch.ones(2, 3), gamma=1.5)
    with pytest.raises(ValueError, match="rewards"):
        reward_to_go(torch.zeros(2, 4), torch.ones(2, 3))


# --------------------------------------------------------------------------- #
# advantages
# --------------------------------------------------------------------------- #
def _loo_loop(g: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    b, t_len = g.shape
    out = torch.zeros(b, t_len, dtype=DT)
    for i in range(b):
        grp = range((i // k) * k, (i // k) * k + k)
        for t in range(t_len):
            if mask[i, t] == 0:
                continue
            others = [float(g[j, t]) if mask[j, t] != 0 else 0.0 for j in grp if j != i]
            out[i, t] = float(g[i, t]) - sum(others) / (k - 1)
    return out


def test_advantages_loo_matches_loop() -> None:
    torch.manual_seed(2)
    k = 3
    lengths = [6, 2, 4, 1, 6, 0]  # 2 prompts x 3 samples, ragged
    mask = _ragged_mask(lengths, 6)
    g = torch.randn(6, 6, dtype=DT)
    a = advantages(_poison_padding(g, mask), mask, k=k, kind="loo")
    assert torch.allclose(a, _loo_loop(g, mask, k), atol=1e-12, rtol=0)
    assert torch.all(a[mask == 0] == 0)
    # k=2 special case: A_1 = G_1 - G_2 at positions both rows reach
    a2 = advantages(g, torch.ones(6, 6, dtype=DT), k=2, kind="loo")
    assert torch.allclose(a2[0], g[0] - g[1], atol=1e-12)


def test_advantages_batch_mean_none_whiten() -> None:
    torch.manual_seed(3)
    lengths = [5, 2, 4, 0]
    mask = _ragged_mask(lengths, 5)
    g = torch.randn(4, 5, dtype=DT)
    gm = g * mask
    ref = torch.zeros(4, 5, dtype=DT)
    for i in range(4):
        for t in range(5):
            if mask[i, t]:
                ref[i, t] = g[i, t] - sum(float(gm[j, t]) for j in range(4)) / 4
    a = advantages(_poison_padding(g, mask), mask, k=1, kind="batch_mean")
    assert torch.allclose(a, ref, atol=1e-12, rtol=0)
    assert torch.equal(advantages(g, mask, k=2, kind="none"), gm)
    assert torch.allclose(advantages(g, mask, k=2, kind="whiten"), whiten(g, mask), atol=1e-15)


def test_advantages_errors() -> None:
    g, m = torch.zeros(4, 3), torch.ones(4, 3)
    with pytest.raises(ValueError, match="k >= 2"):
        advantages(g, m, k=1, kind="loo")
    with pytest.raises(ValueError, match="multiple of k"):
        advantages(g, m, k=3, kind="loo")
    with pytest.raises(ValueError, match="unknown advantage kind"):
        advantages(g, m, k=2, kind="grpo")


# --------------------------------------------------------------------------- #
# whiten
# --------------------------------------------------------------------------- #
def test_whiten_zero_mean_unit_std_over_real_tokens() -> None:
    torch.manual_seed(4)
    mask = _ragged_mask([6, 1, 3, 0], 6)
    x = 3.0 + 5.0 * torch.randn(4, 6, dtype=DT)
    y = whiten(_poison_padding(x, mask), mask)
    real = y[mask.bool()]
    assert real.mean().abs().item() < 1e-12
    assert real.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-8)
    assert torch.all(y[mask == 0] == 0)
    # affine invariance: the same standardised values as the raw reals
    xr = x[mask.bool()]
    assert torch.allclose(real, (xr - xr.mean()) / xr.std(unbiased=False), atol=1e-8)


def test_whiten_reduce_fn_hook_matches_global_batch() -> None:
    """Simulated 2-rank DDP: reducing [sum, sum_sq, count] gives the whitening of the union."""
    torch.manual_seed(5)
    m1, m2 = _ragged_mask([4, 2], 4), _ragged_mask([3, 1, 4], 4)
    x1, x2 = torch.randn(2, 4, dtype=DT), 2 + torch.randn(3, 4, dtype=DT)
    x2m = x2 * m2
    other = torch.stack([x2m.sum(), (x2m**2).sum(), m2.sum()])
    seen: list[torch.Tensor] = []

    def reduce_fn(stats: torch.Tensor) -> torch.Tensor:
        seen.append(stats.clone())
        return stats + other

    def reduce_inplace(stats: torch.Tensor) -> None:
        stats.add_(other)

    y1 = whiten(x1, m1, reduce_fn=reduce_fn)
    y1b = whiten(x1, m1, reduce_fn=reduce_inplace)
    y_all = whiten(torch.cat([x1, x2]), torch.cat([m1, m2]))
    assert torch.allclose(y1, y_all[:2], atol=1e-12)
    assert torch.allclose(y1b, y_all[:2], atol=1e-12)
    x1m = x1 * m1
    assert torch.allclose(seen[0], torch.stack([x1m.sum(), (x1m**2).sum(), m1.sum()]), atol=1e-12)


# --------------------------------------------------------------------------- #
# KL estimators
# --------------------------------------------------------------------------- #
def test_kl_estimators_are_unbiased_exactly_and_k3_nonnegative() -> None:
    torch.manual_seed(6)
    pi = torch.softmax(torch.randn(7, dtype=DT), -1)
    ref = torch.softmax(torch.randn(7, dtype=DT), -1)
    kl = float((pi * (pi.log() - ref.log())).sum())
    assert kl > 0.05  # a non-trivial KL
    lp, lr = pi.log()[None, :], ref.log()[None, :]  # (1, V): one "token" per support point
    e_k1 = float((pi[None, :] * kl_k1(lp, lr)).sum())
    e_k3 = float((pi[None, :] * kl_k3(lp, lr)).sum())
    assert e_k1 == pytest.approx(kl, abs=1e-10)
    assert e_k3 == pytest.approx(kl, abs=1e-10)
    # k3 >= 0 pointwise, == 0 iff equal, on a wide grid of log-ratios
    d = torch.linspace(-30, 30, 2001, dtype=DT)[None, :]
    k3 = kl_k3(torch.zeros_like(d), d)
    assert torch.all(k3 >= 0)
    assert kl_k3(lp, lp).abs().max().item() == 0.0
    # accurate near 0 (expm1): k3 ~ d^2 / 2
    small = torch.tensor([[1e-6]], dtype=DT)
    assert kl_k3(torch.zeros_like(small), small).item() == pytest.approx(0.5e-12, rel=1e-5)


def test_k1_in_reward() -> None:
    torch.manual_seed(7)
    r, lp, lr = (torch.randn(2, 4, dtype=DT) for _ in range(3))
    lp.requires_grad_(True)
    mask = _ragged_mask([4, 2], 4)
    out = k1_in_reward(r, lp, lr, kl_coef=0.3)
    assert torch.allclose(out, r - 0.3 * (lp.detach() - lr), atol=1e-15)
    assert not out.requires_grad
    out_m = k1_in_reward(r, lp, lr, kl_coef=0.3, mask=mask)
    assert torch.all(out_m[mask == 0] == 0) and torch.equal(out_m[mask == 1], out[mask == 1])


# --------------------------------------------------------------------------- #
# policy_gradient_loss
# --------------------------------------------------------------------------- #
def _setup_loss(seed: int = 8):
    torch.manual_seed(seed)
    mask = _ragged_mask([5, 2, 4, 1], 5)
    logp = -torch.rand(4, 5, dtype=DT) * 3
    adv = torch.randn(4, 5, dtype=DT)
    ref = -torch.rand(4, 5, dtype=DT) * 3
    return mask, logp, adv, ref


@pytest.mark.parametrize("variant", ["plain", "kl", "clip"])
def test_padding_carries_no_loss_and_no_gradient(variant: str) -> None:
    mask, logp, adv, ref = _setup_loss()

    def run(lp_values: torch.Tensor, adv_values: torch.Tensor):
        lp = lp_values.clone().requires_grad_(True)
        kw = {}
        if variant == "kl":
            kw = dict(kl=kl_k3(lp, ref), kl_coef=0.7)
        if variant == "clip":
            kw = dict(old_logp=logp - 0.05, clip_eps=0.2)
        loss, _ = policy_gradient_loss(lp, adv_values, mask, **kw)
        loss.backward()
        return loss.detach(), lp.grad

    loss1, grad1 = run(logp, adv)
    if variant == "kl":
        # kl is built by the caller from logp: its own backward would turn inf/nan
        # at padding into nan (0 * inf), so use large finite junk there.
        junk = torch.where(mask.bool(), logp, 40.0 * torch.randn_like(logp))
        loss2, grad2 = run(junk, _poison_padding(adv, mask))
    else:
        loss2, grad2 = run(_poison_padding(logp, mask), _poison_padding(adv, mask))
    assert torch.isfinite(loss1) and loss2.item() == loss1.item()
    assert torch.all(grad2[mask == 0] == 0) and torch.all(grad1[mask == 0] == 0)
    assert torch.equal(grad1, grad2)
    assert torch.all(grad1[mask == 1] != 0)


@pytest.mark.parametrize(
    "kwargs,denominator",
    [
        ({}, 4.0),
        ({"n_seqs": 9}, 9.0),
        ({"norm": "token_mean"}, 12.0),
        ({"norm": "token_mean", "token_count": 30}, 30.0),
        ({"norm": "token_mean", "token_count": torch.tensor(25.0, dtype=DT)}, 25.0),
    ],
)
def test_normalisers(kwargs: dict, denominator: float) -> None:
    mask, logp, adv, _ = _setup_loss()
    lp = logp.clone().requires_grad_(True)
    loss, stats = policy_gradient_loss(lp, adv, mask, **kwargs)
    total = sum(float(adv[i, t]) * float(logp[i, t]) for i in range(4) for t in range(5) if mask[i, t])
    assert loss.item() == pytest.approx(-total / denominator, abs=1e-12)
    loss.backward()
    assert torch.allclose(lp.grad, -adv * mask / denominator, atol=1e-15)
    assert stats["normaliser"].item() == denominator and stats["n_tokens"].item() == 12
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad and v.dim() == 0 for v in stats.values())


def test_advantage_is_detached() -> None:
    mask, logp, adv, _ = _setup_loss()
    lp = logp.clone().requires_grad_(True)
    a = adv.clone().requires_grad_(True)
    loss, _ = policy_gradient_loss(lp, a * 2.0, mask)
    loss.backward()
    assert a.grad is None
    assert torch.allclose(lp.grad, -2.0 * adv * mask / 4, atol=1e-15)


def test_kl_term_normalised_like_pg_and_carries_gradient() -> None:
    mask, logp, adv, ref = _setup_loss()
    for norm, n in [("seq_mean", 4.0), ("token_mean", 12.0)]:
        lp = logp.clone().requires_grad_(True)
        loss, stats = policy_gradient_loss(lp, adv, mask, norm=norm, kl=kl_k3(lp, ref), kl_coef=0.5)
        k3 = torch.exp(ref - logp) - (ref - logp) - 1
        kl_sum = float((k3 * mask).sum())
        pg = -float((adv * logp * mask).sum()) / n
        assert loss.item() == pytest.approx(pg + 0.5 * kl_sum / n, abs=1e-12)
        assert stats["kl_loss"].item() == pytest.approx(kl_sum / n, abs=1e-12)
        assert stats["kl_mean"].item() == pytest.approx(kl_sum / 12, abs=1e-12)
        loss.backward()
        # d k3 / d logp = 1 - exp(ref - logp)
        expected = (-adv + 0.5 * (1 - torch.exp(ref - logp))) * mask / n
        assert torch.allclose(lp.grad, expected, atol=1e-14)


def test_ppo_clip_at_ratio_one_equals_reinforce() -> None:
    mask, logp, adv, _ = _setup_loss()
    lp1 = logp.clone().requires_grad_(True)
    lp2 = logp.clone().requires_grad_(True)
    l1, _ = policy_gradient_loss(lp1, adv, mask)
    l2, st = policy_gradient_loss(lp2, adv, mask, old_logp=logp.clone(), clip_eps=0.2)
    l1.backward()
    l2.backward()
    assert torch.allclose(lp1.grad, lp2.grad, atol=1e-15, rtol=0)
    assert st["clip_frac"].item() == 0.0 and st["ratio_mean"].item() == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("shift", [1.0, -1.0])
def test_ppo_clip_zero_gradient_where_clipped(shift: float) -> None:
    """ratio = e^shift is outside [0.8, 1.2]: the clipped surrogate is flat where
    moving further would only help (A > 0 with ratio high, A < 0 with ratio low)."""
    mask, logp, adv, _ = _setup_loss()
    old = logp - shift
    lp = logp.clone().requires_grad_(True)
    loss, st = policy_gradient_loss(lp, adv, mask, old_logp=old, clip_eps=0.2)
    loss.backward()
    ratio = math.exp(shift)
    flat = (adv * shift > 0) & (mask == 1)
    live = (adv * shift < 0) & (mask == 1)
    assert flat.any() and live.any()
    assert torch.all(lp.grad[flat] == 0)
    assert torch.allclose(lp.grad[live], (-adv * ratio / 4)[live], atol=1e-14)
    assert st["clip_frac"].item() == 1.0


def test_policy_gradient_loss_errors() -> None:
    mask, logp, adv, _ = _setup_loss()
    with pytest.raises(ValueError, match="old_logp"):
        policy_gradient_loss(logp, adv, mask, clip_eps=0.2)
    with pytest.raises(ValueError, match="kl is None"):
        policy_gradient_loss(logp, adv, mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="unknown norm"):
        policy_gradient_loss(logp, adv, mask, norm="sum")
    with pytest.raises(ValueError, match="adv"):
        policy_gradient_loss(logp, adv[:, :3], mask)


# --------------------------------------------------------------------------- #
# unbiasedness on a tabular policy
# --------------------------------------------------------------------------- #
VOCAB, EOS, HORIZON = 3, 2, 3
N_PREV = VOCAB + 1  # prev index 0 = BOS, 1 + a for token a


def _prev_index(y: torch.Tensor) -> torch.Tensor:
    """prev[n, t] = 0 (BOS) at t = 0, else 1 + y[n, t-1]. # (N, H)"""
    return torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1] + 1], dim=1)


def _all_sequences() -> tuple[torch.Tensor, torch.Tensor]:
    """Every complete response: ends at EOS or at the horizon; padded with EOS. # (S, H), (S, H)"""
    seqs = []
    for length in range(1, HORIZON + 1):
        for prefix in itertools.product(range(VOCAB - 1), repeat=length - 1):
            lasts = [EOS] if length < HORIZON else list(range(VOCAB))
            for last in lasts:
                seqs.append(list(prefix) + [last])
    y = torch.full((len(seqs), HORIZON), EOS, dtype=torch.long)
    mask = torch.zeros(len(seqs), HORIZON, dtype=DT)
    for n, s in enumerate(seqs):
        y[n, : len(s)] = torch.tensor(s)
        mask[n, : len(s)] = 1
    return y, mask


def _table_lookup(
    table: torch.Tensor, y: torch.Tensor, batch_of_row: torch.Tensor | None = None
) -> torch.Tensor:
    """table[(b,) t, prev, a] gathered along each sequence. # (N, H)"""
    t_idx = torch.arange(HORIZON)[None, :].expand_as(y)
    if batch_of_row is None:
        return table[t_idx, _prev_index(y), y]
    return table[batch_of_row[:, None].expand_as(y), t_idx, _prev_index(y), y]


def _sample(theta: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n sequences from the tabular policy (loop over the 3 positions only). # (n, H), (n, H)"""
    probs = torch.softmax(theta.detach(), -1)  # (H, 4, V)
    y = torch.full((n, HORIZON), EOS, dtype=torch.long)
    mask = torch.zeros(n, HORIZON, dtype=DT)
    prev = torch.zeros(n, dtype=torch.long)
    alive = torch.ones(n, dtype=torch.bool)
    for t in range(HORIZON):
        a = torch.multinomial(probs[t, prev], 1, generator=gen).squeeze(1)
        y[:, t] = torch.where(alive, a, torch.full_like(a, EOS))
        mask[:, t] = alive.to(DT)
        alive = alive & (a != EOS)
        prev = y[:, t] + 1
    return y, mask


@pytest.fixture(scope="module")
def tabular():
    """theta, reward table, exact gradient of J, and the reachable coordinates."""
    gen = torch.Generator().manual_seed(1234)
    theta = torch.randn(HORIZON, N_PREV, VOCAB, dtype=DT, generator=gen).requires_grad_(True)
    rtab = 1.5 * torch.randn(HORIZON, N_PREV, VOCAB, dtype=DT, generator=gen)
    y, mask = _all_sequences()
    logpi = torch.log_softmax(theta, -1)
    lp = _table_lookup(logpi, y)  # (S, H)
    p_y = torch.exp((lp * mask).sum(1))  # (S,)
    assert p_y.sum().item() == pytest.approx(1.0, abs=1e-12)
    ret = (_table_lookup(rtab, y) * mask).sum(1)  # (S,)
    (exact,) = torch.autograd.grad((p_y * ret).sum(), theta)
    reachable = torch.zeros(HORIZON, N_PREV, VOCAB, dtype=torch.bool)
    reachable[0, 0] = True  # t=0 from BOS
    reachable[1:, 1 : EOS + 1] = True  # t>=1 after a non-EOS token
    return theta.detach(), rtab, exact, reachable


def test_expected_dpr_gradient_equals_exact_gradient(tabular) -> None:
    theta0, rtab, exact, reachable = tabular
    theta = theta0.clone().requires_grad_(True)
    y, mask = _all_sequences()
    total = torch.zeros((), dtype=DT)
    for n in range(y.shape[0]):  # one library call per sequence, n_seqs=1
        yn, mn = y[n : n + 1], mask[n : n + 1]
        lp = _table_lookup(torch.log_softmax(theta, -1), yn)  # (1, H)
        g = reward_to_go(_table_lookup(rtab, yn), mn)
        adv = advantages(g, mn, k=1, kind="none")
        loss, _ = policy_gradient_loss(lp, adv, mn, n_seqs=1)
        p = torch.exp((lp.detach() * mn).sum())
        total = total + p * (-loss)
    (expected,) = torch.autograd.grad(total, theta)
    assert exact.abs().max().item() > 0.1
    assert torch.allclose(expected, exact, atol=1e-10, rtol=0)
    assert torch.all(exact[~reachable] == 0)


def _mc_gradients(theta0, rtab, k: int, m: int, seed: int, baseline: str) -> torch.Tensor:
    """Per-batch DPR gradients (-grad loss) for m batches of 1 prompt x k samples. # (m, H, 4, V)

    All batches go through one library call: with n_seqs=k, the loss over the
    m*k prompt-major rows is the sum of the m per-batch losses, and each batch
    gets its own copy of theta, so one backward pass gives every batch's gradient.
    """
    gen = torch.Generator().manual_seed(seed)
    y, mask = _sample(theta0, m * k, gen)
    theta_b = theta0.expand(m, *theta0.shape).clone().requires_grad_(True)  # (m, H, 4, V)
    batch_of_row = torch.arange(m * k) // k
    lp = _table_lookup(torch.log_softmax(theta_b, -1), y, batch_of_row)  # (m*k, H)
    g = reward_to_go(_table_lookup(rtab, y), mask)
    if baseline == "loo":
        adv = advantages(g, mask, k=k, kind="loo")
    else:  # negative control: group mean that includes the sample itself
        gm = (g * mask).view(m, k, HORIZON)
        adv = (gm - gm.mean(1, keepdim=True)).reshape(m * k, HORIZON) * mask
    loss, _ = policy_gradient_loss(lp, adv, mask, n_seqs=k, norm="seq_mean")
    (grad,) = torch.autograd.grad(loss, theta_b)
    if baseline == "loo":  # the batched call equals separate per-batch calls
        for b in range(3):
            rows = slice(b * k, (b + 1) * k)
            th = theta0.clone().requires_grad_(True)
            lp_b = _table_lookup(torch.log_softmax(th, -1), y[rows])
            adv_b = advantages(g[rows], mask[rows], k=k, kind="loo")
            loss_b, _ = policy_gradient_loss(lp_b, adv_b, mask[rows])
            (gb,) = torch.autograd.grad(loss_b, th)
            assert torch.allclose(gb, grad[b], atol=1e-13)
    return -grad


def _z_scores(samples: torch.Tensor, target: torch.Tensor, reachable: torch.Tensor):
    mean = samples.mean(0)
    se = samples.std(0, unbiased=True) / math.sqrt(samples.shape[0])
    assert torch.all(se[reachable] > 0), "MC standard errors must be positive on reachable coordinates"
    assert torch.all(samples[:, ~reachable] == 0)
    return mean, se, ((mean - target) / se)[reachable]


def test_monte_carlo_loo_dpr_is_unbiased(tabular) -> None:
    theta0, rtab, exact, reachable = tabular
    grads = _mc_gradients(theta0, rtab, k=8, m=4000, seed=7, baseline="loo")
    mean, se, z = _z_scores(grads, exact, reachable)
    assert z.abs().max().item() < 4.0, f"max |z| = {z.abs().max().item():.2f}"
    # the test has power: the signal is many standard errors away from 0
    assert (exact[reachable].abs() / se[reachable]).max().item() > 10


def test_monte_carlo_negative_control_self_inclusive_baseline_is_biased(tabular) -> None:
    """With k=2, A = G - mean(G_1, G_2) = (1/2) * LOO advantage, so the expected
    gradient is exactly (k-1)/k = 1/2 of the true one; the MC test must see it."""
    theta0, rtab, exact, reachable = tabular
    k = 2
    grads = _mc_gradients(theta0, rtab, k=k, m=4000, seed=11, baseline="self_inclusive")
    _, _, z_true = _z_scores(grads, exact, reachable)
    _, _, z_biased = _z_scores(grads, exact * (k - 1) / k, reachable)
    assert z_true.abs().max().item() > 4.0, "negative control should be detectably biased"
    assert z_biased.abs().max().item() < 4.0, f"max |z| vs analytic bias = {z_biased.abs().max().item():.2f}"
