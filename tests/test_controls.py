"""Refusals of silently off-policy or biased RL settings, and strict evaluation (issue 14 items 5-6)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama
from densepath.algos.rl import RLModule
from densepath.data.formatting import answer_text
from densepath.data.sources import KnownRewardTask
from densepath.eval.evaluate import evaluate_policy
from densepath.models.logprobs import response_logprobs
from densepath.sampling.base import SampleBatch
from densepath.sampling.hf import HFSampler


def test_ppo_epochs_without_clip_is_refused():
    with pytest.raises(ValueError, match=r"ppo_epochs=2 without clip_eps.*module.clip_eps"):
        RLModule(tiny_llama(), None, HFSampler(), [], ppo_epochs=2)
    RLModule(tiny_llama(), None, HFSampler(), [], ppo_epochs=2, clip_eps=0.2)  # the trust region is fine


def test_top_p_below_one_is_refused_for_rl_rollouts():
    with pytest.raises(ValueError, match=r"sampler.top_p=0.9 during RL rollouts.*sampler.top_p=1.0"):
        RLModule(tiny_llama(), None, HFSampler(top_p=0.9), [])


def test_policy_logprobs_of_the_update_ignore_dropout():
    """With dropout > 0 the update scores the samples in eval mode, as they were drawn; gradients flow."""
    policy = tiny_llama().float()
    policy.config.attention_dropout = 0.5
    for layer in policy.model.layers:
        layer.self_attn.attention_dropout = 0.5
    mod = RLModule(policy, None, HFSampler(), [])
    g = torch.Generator().manual_seed(0)
    b = SampleBatch(
        torch.randint(3, 37, (2, 5), generator=g).repeat_interleave(2, 0), torch.ones(4, 5, dtype=torch.long),
        torch.randint(3, 37, (4, 6), generator=g), torch.ones(4, 6, dtype=torch.long),
        torch.ones(4, dtype=torch.bool), 2,
    )  # fmt: skip
    policy.train()
    lp1, lp2 = mod.policy_logp(b), mod.policy_logp(b)
    with torch.no_grad():
        ref = response_logprobs(
            policy.eval(), b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask
        ).logp
    torch.testing.assert_close(lp1, lp2, rtol=0, atol=0)
    torch.testing.assert_close(lp1.detach(), ref, rtol=1e-6, atol=1e-6)
    lp1.sum().backward()
    assert policy.lm_head.weight.grad is not None and policy.lm_head.weight.grad.abs().sum() > 0
    policy.train()  # and a train-mode forward with dropout does differ: the check above has teeth
    train_lp = response_logprobs(policy, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask).logp
    assert not torch.allclose(train_lp, ref)


class _FixedSampler:
    """Returns fixed answers, whatever the model: evaluation's scoring path alone."""

    def __init__(self, answers: list[list[int]], pad: int):
        self.answers, self.pad = answers, pad

    def generate(self, model, prompts, *, k=1, greedy=False, temperature=None):
        T = max(map(len, self.answers))
        ids = torch.full((len(self.answers), T), self.pad)
        mask = torch.zeros(len(self.answers), T, dtype=torch.long)
        for i, a in enumerate(self.answers):
            ids[i, : len(a)], mask[i, : len(a)] = torch.tensor(a), 1
        p = torch.ones(len(self.answers), 1, dtype=torch.long)
        return SampleBatch(p, p, ids, mask, torch.ones(len(self.answers), dtype=torch.bool), 1)


def test_strict_evaluation_of_known_reward_answers():
    """Malformed answers score the MDP's worst return (not dropped); special tokens emitted mid-answer are
    not stripped before verification; the malformed count is reported."""
    task = KnownRewardTask(sizes={"sft": 4, "rl": 4, "val": 4, "eval": 3}, n_tokens=3, horizon=3)
    tok = task.build_tokenizer()
    a, b, eos, pad = (*tok.convert_tokens_to_ids(["A", "B"]), tok.eos_token_id, tok.pad_token_id)
    assert answer_text(tok, [a, b, eos]) == "A B" and "A" in answer_text(tok, [a, pad, b, eos])
    answers = [[a, b, eos], [a, pad, b, eos], [tok.bos_token_id, eos]]  # well formed, pad inside, BOS
    rows = task.splits()["eval"][:3]
    m, details = evaluate_policy(None, tok, task, rows, _FixedSampler(answers, pad), modes=("greedy",))
    worst, good = task.bench.mdps[0].worst_return(), float(task.bench.mdps[0].true_return([[0, 1, 3]])[0])
    assert details["greedy"]["scores"]["malformed"].tolist() == [0.0, 1.0, 1.0]
    assert m["eval/greedy/malformed_count"] == 2.0 and m["eval/greedy/malformed"] == pytest.approx(2 / 3)
    assert m["eval/greedy/true_return"] == pytest.approx((good + 2 * worst) / 3, abs=1e-12)
    assert worst < min(task.bench.mdps[0].uniform_mean_return(), good)


def test_exact_kl_matches_a_loop_over_states_and_vocabulary():
    """KL(pi || pi_SFT) per response state over the whole vocabulary, against a float64 loop."""
    import math

    from densepath.models.logprobs import exact_kl

    pi, ref = tiny_llama(seed=1), tiny_llama(seed=2)
    g = torch.Generator().manual_seed(3)
    P, T = 4, 5
    prompt, resp = torch.randint(3, 37, (3, P), generator=g), torch.randint(3, 37, (3, T), generator=g)
    pmask, rmask = torch.ones(3, P, dtype=torch.long), torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [0] * 5])
    pmask[0, 0] = 0  # ragged left padding
    kl = exact_kl(pi, ref, prompt, pmask, resp, rmask, chunk_size=2)
    for b in range(3):
        for t in range(T):
            if not rmask[b, t]:
                assert kl[b, t] == 0
                continue
            ids = torch.cat([prompt[b][pmask[b].bool()], resp[b, :t]]).unsqueeze(0)
            lp, lq = (torch.log_softmax(m(ids).logits[0, -1].double(), -1) for m in (pi, ref))
            want = sum(math.exp(lp[a]) * (lp[a] - lq[a]) for a in range(lp.shape[0]))
            assert abs(float(kl[b, t]) - float(want)) < 1e-9, (b, t)
    assert torch.equal(exact_kl(pi, pi, prompt, pmask, resp, rmask), torch.zeros_like(kl))  # KL(p || p) = 0


def test_consumed_indices_are_what_the_loader_served(monkeypatch):
    from densepath.data.loader import ResumableLoader, ResumableSampler, consumed_indices

    n, bs, steps = 23, 4, 9  # 5 batches per epoch: the run crosses an epoch boundary
    loader = ResumableLoader(list(range(n)), bs, seed=5)
    served = [
        i for _, batch in zip(range(steps), (b for _ in range(3) for b in loader)) for i in batch.tolist()
    ]
    assert consumed_indices(n, 5, bs, steps) == served
    want = []  # two ranks (ddp): each consumes 4 batches of 2 from its share of the sampler's order
    for rank in (0, 1):
        monkeypatch.setattr(ResumableSampler, "_rank_world", staticmethod(lambda r=rank: (r, 2)))
        want += list(ResumableSampler(n, seed=5))[:8]
    assert consumed_indices(n, 5, 2, 4, world=2) == want and len(set(want)) == 16


def test_continued_sft_on_seen_demonstrations_draws_only_consumed_ones(sft_run, tmp_path):
    import json

    from conftest import run_cfg
    from densepath.data.loader import consumed_indices

    sft_man = json.loads((sft_run / "sft" / "manifest.json").read_text())
    order = sft_man["data_order"]
    seen = set(consumed_indices(**order))
    assert len(seen) < order["n"] / 2  # the SFT run consumed under half of its split
    run_cfg(["debug=tiny", "pipeline=continued_sft", "continued_sft.demos=seen", f"parent_run={sft_run}"],
            tmp_path / "r")  # fmt: skip
    man = json.loads((tmp_path / "r" / "continued_sft" / "manifest.json").read_text())
    assert man["demos"] == "seen" and man["seen_pool"] == len(seen)
    assert man["demo_indices"] and set(man["demo_indices"]) <= seen
    fresh = tmp_path / "f"
    run_cfg(["debug=tiny", "pipeline=continued_sft", f"parent_run={sft_run}"], fresh)
    assert json.loads((fresh / "continued_sft" / "manifest.json").read_text())["demos"] == "fresh"


def test_half_data_baseline_is_sft_on_exactly_half_of_the_demonstrations(sft_run, tmp_path):
    """sft.half_data=true trains pi_base on a recorded random half of the `sft` split for half the steps;
    baseline=half_data scores with it and the reward manifest names it."""
    import json

    from conftest import run_cfg

    man = json.loads((sft_run / "manifest.json").read_text())["stages"]
    n = man["sft"]["data_order"]["n"]
    half = man["sft_half_data"]["demo_indices"]
    assert len(half) == n // 2 == len(set(half)) and all(0 <= i < n for i in half)
    assert man["sft_half_data"]["steps"] == man["sft"]["data_order"]["steps"] // 2
    assert "policy" not in man["sft_half_data"]  # a baseline, not a policy the controls would decode
    run_cfg(["debug=tiny", "pipeline=recover", "baseline=half_data", f"parent_run={sft_run}"], tmp_path / "r")
    rm = json.loads((tmp_path / "r" / "recover" / "reward_manifest.json").read_text())
    assert rm["baseline"]["name"] == "half_data" and rm["baseline"]["path"].endswith("sft_half_data/policy")


def test_half_data_baseline_without_its_sft_names_the_fix(tmp_path):
    from densepath.rewards.baselines import HalfDataBaseline

    (tmp_path / "sft").mkdir()
    with pytest.raises(FileNotFoundError, match=r"baseline=half_data.*sft.half_data=true.*baseline=sft_half"):
        HalfDataBaseline().load(tmp_path / "sft", None, "cpu")
