"""Per-sample extras for `evaluate_policy`: the entropy estimate, the recovered reward, the KL to SFT."""

from __future__ import annotations

import torch

from densepath.models.logprobs import exact_kl, response_logprobs


def entropy_per_token(logp: torch.Tensor, mask: torch.Tensor):
    """Per-sample entropy estimate of the sampling policy: mean over response tokens of -log pi. (B,)"""
    m = mask.float()
    return (-(logp.float() * m).sum(-1) / m.sum(-1).clamp(min=1)).cpu().numpy()


def _policy_logp(policy, b):
    return response_logprobs(policy, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask).logp


class EntropyExtra:
    """The entropy estimate of each sample."""

    def __init__(self, policy):
        self.policy = policy

    @torch.no_grad()
    def __call__(self, b):
        b = b.to(next(self.policy.parameters()).device)
        return {"entropy_est": entropy_per_token(_policy_logp(self.policy, b), b.response_mask)}


class RewardExtra(EntropyExtra):
    """Recovered reward of each sample, its KL to pi_SFT and the entropy estimate.

    `kl_to_sft` is the one-sample estimate (sum over the taken tokens of log pi - log pi_SFT);
    `kl_exact` is the measured KL: the exact per-state KL(pi || pi_SFT) over the vocabulary, summed
    along the sample. Compare RL results at equal `kl_exact`."""

    def __init__(self, reward, policy):
        super().__init__(policy)
        self.reward = reward

    @torch.no_grad()
    def __call__(self, b):
        b = b.to(next(self.policy.parameters()).device)
        args = (b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask)
        out = self.reward.score_full(*args)
        lp = _policy_logp(self.policy, b)
        m = b.response_mask.float()
        ref, adapter = self.reward.sft_model()
        return {
            "reward": (out.rewards.float() * m).sum(-1).cpu().numpy(),
            "kl_to_sft": ((lp.float() - out.logp_sft.float()) * m).sum(-1).cpu().numpy(),
            "kl_exact": (exact_kl(self.policy, ref, *args, ref_adapter=adapter).float() * m)
            .sum(-1)
            .cpu()
            .numpy(),
            "entropy_est": entropy_per_token(lp, m),
        }
