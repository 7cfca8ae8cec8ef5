"""The broadened known-reward benchmark: start states, horizons, several tables, tempered / noisy experts.

Every exact quantity is checked against brute-force enumeration of the episodes of a tiny MDP, with the
expert derived from the enumeration itself (not from the value iteration under test)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from densepath.data.formatting import encode_prompt
from densepath.data.known_reward import KnownRewardMDP
from densepath.data.known_reward_prompts import Benchmark, PromptSpace, assign_prompts, parse_starts
from densepath.data.sources import KnownRewardTask
from densepath.eval import probes

N, H = 3, 3  # symbols A B C, EOS = 3, BOS = 3


def episodes(h: int) -> list[tuple[int, ...]]:
    """Every complete episode of horizon h: k < h symbols then EOS, or h symbols."""
    out = [tuple(p) + (N,) for k in range(h) for p in itertools.product(range(N), repeat=k)]
    return out + [tuple(p) for p in itertools.product(range(N), repeat=h)]


def ret(R: torch.Tensor, y, start: int) -> float:
    total, prev = 0.0, start
    for a in y:
        total += float(R[prev, a])
        prev = a
    return total


def brute_expert(R, start: int, h: int, tau: float, eps: float) -> dict[tuple[int, ...], float]:
    """log-probability of every episode under the tempered / noisy expert, from enumeration alone.

    pi*(a | prefix) = sum of exp(R) over the episodes extending prefix+a / over those extending prefix;
    then pi(a | prefix) = (1 - eps) pi*^(1/tau) / Z + eps / (N+1)."""
    eps_all = episodes(h)
    w = {y: math.exp(ret(R, y, start)) for y in eps_all}

    def mass(prefix):
        return sum(v for y, v in w.items() if y[: len(prefix)] == prefix)

    def step(prefix):  # the policy after `prefix`, over the N+1 actions
        total = mass(prefix)
        star = [mass(prefix + (a,)) / total for a in range(N + 1)]
        t = [p ** (1 / tau) for p in star]
        z = sum(t)
        return [(1 - eps) * x / z + eps / (N + 1) for x in t]

    out = {}
    for y in eps_all:
        lp = 0.0
        for i, a in enumerate(y):
            lp += math.log(step(y[:i])[a])
        out[y] = lp
    return out


@pytest.mark.parametrize("tau,eps", [(1.0, 0.0), (0.5, 0.0), (2.0, 0.0), (1.0, 0.2), (0.4, 0.1)])
@pytest.mark.parametrize("start,h", [(N, 3), (0, 3), (2, 2), (1, 1)])
def test_expert_matches_enumeration(tau, eps, start, h):
    mdp = KnownRewardMDP(N, H, seed=7, temperature=tau, epsilon=eps)
    ref = brute_expert(mdp.R, start, h, tau, eps)
    ys = list(ref)
    got = mdp.expert_logprob([list(y) for y in ys], start, h)
    torch.testing.assert_close(
        got, torch.tensor([ref[y] for y in ys], dtype=torch.float64), rtol=0, atol=1e-10
    )
    assert abs(sum(math.exp(v) for v in ref.values()) - 1) < 1e-12
    rets = [ret(mdp.R, y, start) for y in ys]
    mean = sum(math.exp(ref[y]) * r for y, r in zip(ys, rets))
    assert abs(mdp.expert_mean_return(start, h) - mean) < 1e-10
    assert abs(mdp.best_return(start, h) - max(rets)) < 1e-12
    assert abs(mdp.worst_return(start, h) - min(rets)) < 1e-12
    uni = sum((N + 1) ** -len(y) * r for y, r in zip(ys, rets))
    assert abs(mdp.uniform_mean_return(start, h) - uni) < 1e-10
    if tau == 1.0 and eps == 0.0:  # only the soft-optimal expert keeps log pi*(y) = R*(y) - V(start, h)
        assert mdp.soft_optimal
        diff = got - (torch.tensor(rets, dtype=torch.float64) - mdp.V0(start, h))
        assert float(diff.abs().max()) < 1e-10
        assert abs(mdp.V0(start, h) - math.log(sum(math.exp(r) for r in rets))) < 1e-10
    else:
        assert not mdp.soft_optimal


def test_tempered_expert_is_not_soft_optimal_and_its_mode_moves():
    """Tempering per state changes which episode is most likely; the soft-optimal mode is the best return."""
    star = KnownRewardMDP(N, H, seed=7)
    ys = [list(y) for y in episodes(H)]
    rets = star.true_return(ys)
    assert int(star.expert_logprob(ys).argmax()) == int(rets.argmax())
    cold = KnownRewardMDP(N, H, seed=7, temperature=0.3)
    hot = KnownRewardMDP(N, H, seed=7, temperature=3.0)
    # a colder per-state expert earns more on average, a hotter one less; both stay between uniform and best
    assert (
        hot.expert_mean_return() < star.expert_mean_return() < cold.expert_mean_return() < star.best_return()
    )
    assert star.uniform_mean_return() < hot.expert_mean_return()
    noisy = KnownRewardMDP(N, H, seed=7, epsilon=0.5)
    assert star.uniform_mean_return() < noisy.expert_mean_return() < star.expert_mean_return()


def test_sampling_from_a_start_and_horizon_matches_the_exact_law():
    mdp = KnownRewardMDP(N, H, seed=7, temperature=0.5, epsilon=0.1)
    n, start, h = 20000, 1, 2
    seqs = mdp.sample_expert(n, torch.Generator().manual_seed(0), start, h)
    assert all(len(s) <= h and N not in s[:-1] for s in seqs)
    counts: dict[tuple[int, ...], int] = {}
    for s in seqs:
        counts[tuple(s)] = counts.get(tuple(s), 0) + 1
    ys = episodes(h)
    assert set(counts) <= set(ys)
    for y, p in zip(ys, mdp.expert_logprob([list(y) for y in ys], start, h).exp().tolist()):
        assert abs(counts.get(y, 0) / n - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-4, y


def test_per_episode_starts_and_horizons_vectorise():
    """A batch of mixed (start, horizon) equals the episodes scored one by one."""
    mdp = KnownRewardMDP(N, H, seed=3, temperature=0.7)
    g = torch.Generator().manual_seed(1)
    starts, hs = [3, 0, 1, 2, 3, 0], [3, 1, 2, 3, 2, 3]
    seqs = mdp.sample_expert(6, g, starts, hs)
    batch_r, batch_lp = mdp.true_return(seqs, starts, hs), mdp.expert_logprob(seqs, starts, hs)
    for i, (s, st, h) in enumerate(zip(seqs, starts, hs)):
        assert len(s) <= h
        assert abs(float(batch_r[i]) - ret(mdp.R, s, st)) < 1e-12
        assert abs(float(batch_lp[i]) - float(mdp.expert_logprob([s], st, h)[0])) < 1e-12
    # answer texts are truncated at each prompt's horizon; malformed ones score that prompt's worst return
    r, ok = mdp.score_texts(["A A A", "B", "X"], [3, 0, 1], [1, 3, 2])
    assert ok.tolist() == [True, True, False]
    assert abs(float(r[0]) - float(mdp.R[3, 0])) < 1e-12  # truncated after 1 action, no EOS reward
    assert abs(float(r[1]) - float(mdp.R[0, 1] + mdp.R[1, 3])) < 1e-12
    assert float(r[2]) == mdp.worst_return(1, 2)
    with pytest.raises(ValueError, match="horizon"):
        mdp.true_return([[0, 0, 0]], 3, 2)
    with pytest.raises(ValueError, match="start"):
        mdp.true_return([[0]], 9, 2)


def test_prompt_space_text_and_parse():
    sp = PromptSpace(2, parse_starts("all", 8), range(4, 9), 8)
    assert len(sp.prompts) == 2 * 9 * 5
    assert len({sp.text(p) for p in sp.prompts}) == len(sp.prompts)
    assert all(sp.parse(sp.text(p)) == p for p in sp.prompts)
    assert sp.text(sp.prompts[0]) == "T0 A h4" and sp.vocabulary()[:3] == ["T0", "T1", "^"]
    one = PromptSpace(1, [8], [8], 8)  # the original benchmark: one empty prompt
    assert one.text(one.prompts[0]) == "" and one.vocabulary() == []
    with pytest.raises(ValueError, match="not in this known_reward prompt space"):
        sp.parse("T7 A h4")
    assert parse_starts(["^", "C"], 8) == [2, 8]
    with pytest.raises(ValueError, match="data.starts"):
        parse_starts(["Z"], 8)


def test_held_out_prompts_are_disjoint_and_cover_every_start():
    sp = PromptSpace(1, parse_starts("all", 8), range(4, 9), 8)
    held, rule = assign_prompts(sp.prompts, seed=0)
    assert rule == "by start"
    sets = {k: set(v) for k, v in held.items()}
    assert (
        not (sets["rl"] & sets["val"])
        and not (sets["rl"] & sets["eval"])
        and not (sets["val"] & sets["eval"])
    )
    assert set.union(*sets.values()) == set(sp.prompts)
    assert {k: len(v) for k, v in held.items()} == {"rl": 27, "val": 9, "eval": 9}
    for split in ("rl", "val", "eval"):  # every start in every split, with different horizons
        assert {p.start for p in held[split]} == set(range(9))
    assert assign_prompts(sp.prompts, seed=0) == (held, rule)
    assert assign_prompts(sp.prompts, seed=1)[0] != held
    # one horizon: 9 prompts, too few per start -> dealt over the whole space, still disjoint
    fixed, rule = assign_prompts(PromptSpace(1, parse_starts("all", 8), [8], 8).prompts, seed=0)
    assert rule == "by prompt" and sum(len(v) for v in fixed.values()) == 9
    assert len(set(fixed["rl"]) | set(fixed["val"]) | set(fixed["eval"])) == 9
    # the original single prompt is shared by every split (nothing to hold out)
    single, rule = assign_prompts(PromptSpace(1, [8], [8], 8).prompts, seed=0)
    assert rule == "shared" and single["rl"] == single["val"] == single["eval"]
    with pytest.raises(ValueError, match="split_fractions"):
        assign_prompts(sp.prompts, 0, {"rl": 0.5, "val": 0.5})


def test_benchmark_rows_are_deterministic_and_match_their_prompts():
    kw = dict(starts="all", min_horizon=4, temperature=0.5, epsilon=0.1)
    sizes = {"sft": 300, "rl": 90, "val": 45, "eval": 45}
    a, b = Benchmark(0, [3, 4], 8, 8, **kw), Benchmark(0, [3, 4], 8, 8, **kw)
    sa = a.splits(sizes)
    assert sa == b.splits(sizes)
    assert torch.equal(a.mdps[0].R, KnownRewardMDP(8, 8, seed=3).R) and not torch.equal(
        a.mdps[0].R, a.mdps[1].R
    )
    assert Benchmark(1, [3, 4], 8, 8, **kw).splits(sizes)["eval"] != sa["eval"]
    for split, rows in sa.items():
        prompts = a.prompts_of(rows)
        allowed = set(a.space.prompts) if split == "sft" else set(a.held[split])
        assert set(prompts) <= allowed
        counts = {p: prompts.count(p) for p in set(prompts)}
        assert max(counts.values()) - min(counts.values()) <= 1  # rows cycle evenly through the prompts
        for r, p in zip(rows, prompts):
            toks, mdp = r["meta"]["tokens"], a.mdps[p.table]
            assert len(toks) <= p.horizon and r["meta"]["reward_seed"] == mdp.seed
            assert (
                abs(r["meta"]["true_return"] - float(mdp.true_return([toks], p.start, p.horizon)[0])) < 1e-12
            )
        got, ok = a.score(rows, [r["response"] for r in rows])
        assert ok.all() and np.allclose(got.numpy(), [r["meta"]["true_return"] for r in rows], atol=1e-12)
    assert set(a.prompts_of(sa["sft"])) == set(a.space.prompts)  # SFT demonstrates every prompt
    refs = a.references(sa["eval"])
    prompts = a.prompts_of(sa["eval"])
    want = np.mean([a.mdps[p.table].best_return(p.start, p.horizon) for p in prompts])
    assert abs(refs["best_true_return"] - want) < 1e-12
    assert (
        refs["worst_true_return"]
        < refs["uniform_true_return"]
        < refs["expert_true_return"]
        < refs["best_true_return"]
    )


def test_task_options_demos_expert_and_manifest_description():
    t = KnownRewardTask(sizes={"sft": 50, "rl": 8, "val": 8, "eval": 8}, starts="all", min_horizon=6,
                        reward_seed=[1, 2], expert={"temperature": 2.0, "epsilon": 0.05}, demos=37)  # fmt: skip
    assert len(t.splits()["sft"]) == 37
    d = t.describe()
    assert d["demos"] == 37 and d["reward_seeds"] == [1, 2] and d["split_rule"] == "by start"
    assert d["expert"] == {"temperature": 2.0, "epsilon": 0.05, "soft_optimal": False}
    assert d["prompt_space"]["prompts"] == 2 * 9 * 3
    tok = t.build_tokenizer()
    row = t.splits()["val"][0]
    ids = encode_prompt(tok, t.messages(row))
    assert tok.convert_ids_to_tokens(ids) == ["<|bos|>", "<|user|>", *row["prompt"].split(), "<|assistant|>"]
    assert tok.unk_token_id not in ids
    fresh = t.fresh_demonstrations(20, 0)
    assert len(fresh) == 20 and fresh != t.splits()["sft"][:20]
    with pytest.raises(ValueError, match="expert has unknown keys"):
        KnownRewardTask(expert={"tau": 2.0})
    with pytest.raises(ValueError, match="data.demos"):
        KnownRewardTask(demos=0)


def test_fidelity_centres_within_prompts():
    """A recovered return equal to the true one plus a constant per prompt (e.g. -V(s0)) ranks answers to
    each prompt perfectly: centred, Pearson is 1; uncentred it is not. One prompt: centring changes nothing."""
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(4), 25)
    true = rng.normal(size=100)
    rec = true + np.array([5.0, -3.0, 0.0, 9.0])[g]
    grouped = probes.fidelity({"a": rec}, {"a": true}, groups={"a": g})
    plain = probes.fidelity({"a": rec}, {"a": true})
    assert grouped["a/pearson"] == pytest.approx(1.0) and grouped["pooled/pearson"] == pytest.approx(1.0)
    assert plain["a/pearson"] < 0.5
    noisy = rec + rng.normal(size=100)
    one = probes.fidelity({"a": noisy}, {"a": true}, groups={"a": np.zeros(100)})
    assert one == pytest.approx(probes.fidelity({"a": noisy}, {"a": true}))
