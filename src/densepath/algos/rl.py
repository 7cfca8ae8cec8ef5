"""Dense-Path REINFORCE (method.md section 4) and its sequence-level control (RLOO).

One training step:
  1. take `prompts_per_step` prompts from the `rl` split (a DistributedSampler splits them by rank);
  2. sample k responses each from pi_theta (eval mode, no grad, temperature tau);
  3. score them with the frozen DenseReward (temperature 1);
  4. reward-to-go G_t (gamma), or for RLOO the sequence return on every token;
  5. advantages (leave-one-out over the k samples of a prompt by default), optional whitening;
  6. REINFORCE loss -(1/N) sum A_t log pi_theta^tau(y_t|.) over generated tokens, + KL to pi_SFT
     (k3 in the loss, or k1 in the reward), reusing the reward forward's log pi_SFT;
  7. clip gradients, one optimiser step (or several PPO-style epochs with a clipped ratio).

The module holds the optimisation logic only; sampling, scoring and verification are injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import lightning as L
import torch

from densepath.algos.pg_math import (
    advantages,
    k1_in_reward,
    kl_k3,
    policy_gradient_loss,
    reward_to_go,
    whiten,
)
from densepath.algos.sft import NonFiniteError, sum_counters_over_ranks
from densepath.models.logprobs import response_logprobs


def _token_weighted(parts: list[tuple[int, dict]]) -> dict:
    """Per-token statistics of micro-batches combined, each weighted by its real-token count."""
    if len(parts) == 1:
        return parts[0][1]
    total = max(1, sum(n for n, _ in parts))
    keys = set.intersection(*(set(st) for _, st in parts))
    return {k: sum(st[k] * n for n, st in parts) / total for k in keys}


def sequence_level_returns(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RLOO control: every real token gets the whole sequence's return. (B, T)"""
    total = (rewards * mask).sum(-1, keepdim=True)  # (B, 1)
    return total * mask


class RLModule(L.LightningModule):
    def __init__(
        self,
        policy,
        reward,
        sampler,
        prompts: list[list[int]],
        *,
        k: int = 8,
        lr: float = 1e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        gamma: float = 1.0,
        advantage: str = "loo",
        whiten: bool = False,
        norm: str = "seq_mean",
        kl: str = "k3",
        kl_coef: float = 1.0,
        sequence_level: bool = False,
        ppo_epochs: int = 1,
        clip_eps: float | None = None,
        grad_clip: float = 1.0,
        max_bad_steps: int = 5,
        optimizer: str = "adamw",
        prefix_sharing: bool = True,
        micro_batch: int | None = None,
        verify: Callable | None = None,
        check_params: Callable | None = None,
    ):
        super().__init__()
        if kl not in ("k1", "k3", "none"):
            raise ValueError(f"kl={kl!r}: choose k3 (in the loss), k1 (in the reward) or none")
        if ppo_epochs > 1 and clip_eps is None:
            raise ValueError(
                f"ppo_epochs={ppo_epochs} without clip_eps: epochs after the first update on samples of an "
                "older policy (off-policy, unclipped). Set the stage's module.clip_eps (e.g. 0.2) or ppo_epochs=1"
            )
        if float(getattr(sampler, "top_p", 1.0)) < 1.0:
            raise ValueError(
                f"sampler.top_p={sampler.top_p} during RL rollouts: nucleus sampling draws from a truncated "
                "pi_theta, so REINFORCE on it is biased. Set sampler.top_p=1.0 for RL"
            )
        if micro_batch is not None and int(micro_batch) < 1:
            raise ValueError(
                f"micro_batch={micro_batch}: prompts per backward pass must be >= 1 (or null: all)"
            )
        if k < 2 and advantage == "loo":
            raise ValueError(
                "advantage=loo needs k >= 2 samples per prompt: set the stage's module.k, e.g. dpr.module.k=8"
            )
        self.policy = policy
        self.reward = reward
        self.sampler = sampler
        self.prompts = prompts
        self.verify = verify  # (prompt indices, SampleBatch) -> {metric: per-sample values}
        self.check_params = check_params  # shared base: asserts that exactly the policy adapter trains
        self.save_hyperparameters(ignore=["policy", "reward", "sampler", "prompts", "verify", "check_params"])
        self.automatic_optimization = False
        self.generated_tokens = 0
        self.trained_tokens = 0
        self.bad_steps = 0
        self.keep_samples = 8
        self.last_samples: dict | None = None

    # ------------------------------------------------------------------ pieces
    def sample(self, prompt_idx: list[int]):
        prompts = [self.prompts[i] for i in prompt_idx]
        return self.sampler.generate(
            self.policy, prompts, k=self.hparams.k
        )  # the sampler's decoding settings

    def group(self, b) -> int:
        """Rows per prompt group for prefix sharing (models.prefix): the batch's k (rows are prompt-major,
        k per prompt: the SampleBatch contract), or 1 (unshared)."""
        return int(b.k) if self.hparams.prefix_sharing else 1

    def policy_logp(self, b, rows: slice | None = None) -> torch.Tensor:
        # Why eval mode: the samples came from the policy without dropout; a train-mode forward with
        # dropout > 0 would score them under another policy (off-policy). Gradients flow either way, and
        # gradient checkpointing still applies (models.prefix.checkpointing_in_eval).
        self.policy.eval()
        rows = rows or slice(None)
        return response_logprobs(
            self.policy,
            b.prompt_ids[rows],
            b.prompt_mask[rows],
            b.response_ids[rows],
            b.response_mask[rows],
            temperature=self.sampler.temperature,  # tempered like the samples: the update stays on-policy
            group=self.group(b),
        ).logp

    def row_chunks(self, n_rows: int, k: int) -> list[slice]:
        """The update's micro-batches: `micro_batch` prompts (k rows each) per backward pass."""
        per = n_rows if not self.hparams.micro_batch else int(self.hparams.micro_batch) * int(k)
        return [slice(i, min(i + per, n_rows)) for i in range(0, n_rows, per)]

    def advantages_for(self, rewards, mask):
        hp = self.hparams
        if hp.sequence_level:
            returns = sequence_level_returns(rewards, mask)
        else:
            returns = reward_to_go(rewards, mask, hp.gamma)
        adv = advantages(returns, mask, hp.k, hp.advantage)
        if hp.whiten:
            adv = whiten(adv, mask, reduce_fn=self._all_reduce_sum)
        return returns, adv

    def _world(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def _all_reduce_sum(self, t: torch.Tensor):
        if self._world() > 1:
            torch.distributed.all_reduce(t)
        return t

    # ------------------------------------------------------------------ step
    def training_step(self, batch, batch_idx):
        hp = self.hparams
        opt = self.optimizers()
        t0 = time.perf_counter()
        step = self.global_step  # before the optimiser step increments it
        prompt_idx = batch.tolist() if torch.is_tensor(batch) else list(batch)
        b = self.sample(prompt_idx).to(self.device)
        mask = b.response_mask.float()  # (B, T)
        t_gen = time.perf_counter()
        r = self.reward.score_full(
            b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask, group=self.group(b)
        )
        rewards = r.rewards.float()  # (B, T)
        t_score = time.perf_counter()
        if self.check_params is not None:
            self.check_params()

        chunks = self.row_chunks(mask.shape[0], b.k)
        if len(chunks) == 1:
            logp = self.policy_logp(b)  # (B, T) with grad
            old_logp = logp.detach()
        else:  # micro-batches: the whole batch's log-probs first (no grad), each chunk's backward later
            logp = None
            with torch.no_grad():
                old_logp = torch.cat([self.policy_logp(b, c) for c in chunks])
        if hp.kl == "k1" and hp.kl_coef:
            rewards = k1_in_reward(rewards, old_logp, r.logp_sft.float(), hp.kl_coef, mask=mask)
        returns, adv = self.advantages_for(rewards, mask)
        # DDP averages gradients over ranks (equal local batches), so a rank normalises its local
        # sum by its own sequence count (seq_mean) or by the all-reduced token count / world size
        # (token_mean): the average of the rank gradients is then the union-batch gradient. Micro-batches
        # use the whole local batch's normaliser, so their summed gradients equal the one-pass gradient.
        n_seqs, token_count = mask.shape[0], mask.sum().detach()
        if hp.norm == "token_mean" and self._world() > 1:
            tok = mask.sum().detach().clone()
            torch.distributed.all_reduce(tok)
            token_count = tok / self._world()

        for epoch in range(max(1, hp.ppo_epochs)):
            opt.zero_grad(set_to_none=True)
            loss, parts = torch.zeros((), device=mask.device), []
            for c in chunks:
                lp = logp if (logp is not None and epoch == 0) else self.policy_logp(b, c)
                kl = kl_k3(lp, r.logp_sft[c].float()) * mask[c] if hp.kl == "k3" else None
                part, stats = policy_gradient_loss(
                    lp,
                    adv[c],
                    mask[c],
                    n_seqs=n_seqs,
                    token_count=token_count,
                    norm=hp.norm,
                    kl=kl,
                    kl_coef=hp.kl_coef if hp.kl == "k3" else 0.0,
                    old_logp=old_logp[c] if hp.clip_eps is not None else None,
                    clip_eps=hp.clip_eps,
                )
                if not torch.isfinite(part):
                    return self._bad_step("loss", opt)
                self.manual_backward(part)
                loss = loss + part.detach()
                parts.append((int(mask[c].sum()), stats))
            stats = _token_weighted(parts)
            gnorm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), hp.grad_clip)
            if not torch.isfinite(gnorm):
                return self._bad_step("gradient", opt)
            opt.step()
        self.sampler.sync_weights(self.policy)  # a no-op in process; a vLLM sampler pushes weights here
        self.bad_steps = 0
        t_upd = time.perf_counter()

        n_tok = int(b.response_mask.sum())
        self.generated_tokens += n_tok
        self.trained_tokens += n_tok * max(1, hp.ppo_epochs)
        seq_reward = (r.rewards.float() * mask).sum(-1)  # (B,)
        log = {
            "train/reward": seq_reward.mean(),
            "train/reward_per_token": (r.rewards.float() * mask).sum() / mask.sum().clamp(min=1),
            "train/return_t0": returns[:, 0].mean(),
            "train/adv_mean": (adv * mask).sum() / mask.sum().clamp(min=1),
            "train/adv_std": adv[mask.bool()].std() if mask.sum() > 1 else torch.zeros(()),
            "train/kl_to_sft": ((old_logp - r.logp_sft.float()) * mask).sum(-1).mean(),
            "train/entropy_est": -(old_logp * mask).sum() / mask.sum().clamp(min=1),
            "train/length": mask.sum(-1).mean(),
            "train/truncated_frac": (~b.finished).float().mean(),
            "train/grad_norm": gnorm,
            "train/loss": loss.detach(),
            "train/tokens_per_s": torch.tensor(n_tok / max(t_upd - t0, 1e-9)),
            "time/generate_s": torch.tensor(t_gen - t0),
            "time/score_s": torch.tensor(t_score - t_gen),
            "time/update_s": torch.tensor(t_upd - t_score),
        }
        log.update(
            {f"train/{k}": v for k, v in stats.items() if k in ("clip_frac", "approx_kl_old", "kl_mean")}
        )
        truth = self.verify(prompt_idx, b) if self.verify is not None else {}
        for name, vals in truth.items():  # ground truth of the same samples, next to the recovered reward
            log[f"train/true_{name}"] = torch.as_tensor(vals, dtype=torch.float32).nanmean()
        n_keep = min(self.keep_samples, mask.shape[0])
        self.last_samples = {  # a few rows for the sample table / heatmap callback (CPU, detached)
            "step": step,
            "prompt_ids": b.prompt_ids[:n_keep].cpu(),
            "prompt_mask": b.prompt_mask[:n_keep].cpu(),
            "response_ids": b.response_ids[:n_keep].cpu(),
            "response_mask": b.response_mask[:n_keep].cpu(),
            "rewards": r.rewards[:n_keep].float().cpu(),
            "advantages": adv[:n_keep].detach().float().cpu(),
            "truth": {k: list(v[:n_keep]) for k, v in truth.items()},
        }
        self.log_dict(
            {k: torch.as_tensor(v, dtype=torch.float32) for k, v in log.items()},
            prog_bar=False,
            sync_dist=True,
            batch_size=mask.shape[0],
        )
        self.log("reward", seq_reward.mean(), prog_bar=True, batch_size=mask.shape[0])
        return loss.detach()

    def _bad_step(self, what: str, opt):
        opt.zero_grad(set_to_none=True)
        self.bad_steps += 1
        self.print(f"non-finite {what} at step {self.global_step}: step skipped ({self.bad_steps} in a row)")
        if self.bad_steps >= self.hparams.max_bad_steps:
            raise NonFiniteError(
                f"{self.bad_steps} consecutive non-finite {what}s; stopping. Lower algo.lr, set reward.clip, "
                "or check the reward models"
            )
        return None

    optimiser_steps = 0  # set at the end of fit (the trainer's global step)

    def on_train_end(self):
        self.optimiser_steps = int(self.global_step)
        sum_counters_over_ranks(self, ("generated_tokens", "trained_tokens"))

    def run_counters(self) -> dict[str, int]:
        """Totals over ranks after fit (carried to the main process under ddp_spawn)."""
        return {
            "optimiser_steps": self.optimiser_steps,
            "trained_tokens": self.trained_tokens,
            "generated_tokens": self.generated_tokens,
        }

    def on_save_checkpoint(self, checkpoint):
        checkpoint["densepath"] = {
            "generated_tokens": self.generated_tokens,
            "trained_tokens": self.trained_tokens,
            "bad_steps": self.bad_steps,
        }

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("densepath", {})
        self.generated_tokens = int(state.get("generated_tokens", 0))
        self.trained_tokens = int(state.get("trained_tokens", 0))
        self.bad_steps = int(state.get("bad_steps", 0))

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if hp.optimizer == "sgd":  # plain SGD: the update is exactly -lr * grad (used by the DDP test)
            return torch.optim.SGD(params, lr=hp.lr)
        return torch.optim.AdamW(
            [p for p in self.policy.parameters() if p.requires_grad],
            lr=hp.lr,
            betas=tuple(hp.betas),
            weight_decay=hp.weight_decay,
        )
