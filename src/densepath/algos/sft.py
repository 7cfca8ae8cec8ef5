"""Supervised fine-tuning: teacher-forced cross-entropy on response tokens only.

Read as inverse soft-Q learning (method.md section 2), this maximises sum_t log pi(y_t | x, y_<t)
over demonstrations, so the trained logits are a soft Q-function with an implicit dense reward.

`loss="dft"` is Dynamic Fine-Tuning (Wu et al. 2025, "On the Generalization of SFT"): each token's
NLL is weighted by its own probability, detached, -sum_t sg(pi(y_t)) log pi(y_t) / n_tokens. Its
gradient is the SFT gradient with every token reweighted by how likely the policy already finds it.
"""

from __future__ import annotations

import logging
import math

import lightning as L
import torch

from densepath.models.logprobs import response_logprobs

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    pass


def sum_counters_over_ranks(module: L.LightningModule, names: tuple[str, ...]) -> None:
    """Replace host-side counters by their sum over ranks (DDP), on every rank; then every rank
    leaves training together (a rank exiting while rank 0 still works can abort gloo's teardown)."""
    if module.trainer.world_size <= 1:
        return
    vals = torch.tensor([float(getattr(module, n)) for n in names], dtype=torch.float64, device=module.device)
    torch.distributed.all_reduce(vals)
    for n, v in zip(names, vals.cpu().tolist()):
        setattr(module, n, int(v))
    torch.distributed.barrier()


LOSSES = ("nll", "dft")


def sft_loss(model, batch: dict[str, torch.Tensor], loss: str = "nll") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean negative log-likelihood per response token (prompt tokens and padding carry no loss);
    `loss="dft"` weights each token's term by its detached probability (module docstring).

    Returns (loss, number of trained tokens).
    """
    if loss not in LOSSES:
        raise ValueError(f"sft.loss={loss!r} is not a known SFT loss; use one of {list(LOSSES)}")
    out = response_logprobs(
        model, batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["response_mask"]
    )
    mask = batch["response_mask"].to(out.logp.dtype)  # (B, T)
    if loss == "dft":
        mask = mask * out.logp.detach().exp()
    n_tok = batch["response_mask"].sum().to(out.logp.dtype)
    return -(out.logp * mask).sum() / n_tok.clamp(min=1), n_tok


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up, then cosine decay to `min_ratio` (a constant LR leaves noisy
    final checkpoints at this scale: findings.md)."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class SFTModule(L.LightningModule):
    def __init__(
        self,
        model,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 30,
        min_lr_ratio: float = 0.1,
        max_steps: int = 700,
        constant_lr: bool = False,
        max_bad_steps: int = 5,
        loss: str = "nll",
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"sft.loss={loss!r} is not a known SFT loss; use one of {list(LOSSES)}")
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        self.trained_tokens = 0
        self.bad_steps = 0

    def training_step(self, batch, batch_idx):
        loss, n_tok = sft_loss(self.model, batch, self.hparams.loss)
        if not torch.isfinite(loss):
            self._bad_step("loss")
            return None  # Lightning skips the optimiser step
        self.trained_tokens += int(batch["response_mask"].sum())  # known on host from the collator
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["response_ids"].shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer):
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:  # the loss was skipped (non-finite): nothing to check, keep the bad-step count
            return
        if not torch.isfinite(torch.stack([g.detach().abs().sum() for g in grads]).sum()):
            for p in self.model.parameters():
                p.grad = None  # AdamW skips parameters without a gradient: the step is skipped
            self._bad_step("gradient")
        else:
            self.bad_steps = 0

    def _bad_step(self, what: str) -> None:
        self.bad_steps += 1
        log.warning(
            "non-finite %s at step %d: step skipped (%d in a row)", what, self.global_step, self.bad_steps
        )
        if self.bad_steps >= self.hparams.max_bad_steps:
            raise NonFiniteError(
                f"{self.bad_steps} consecutive non-finite {what}s in SFT; stopping. Lower sft.lr or check the data"
            )

    optimiser_steps = 0  # set at the end of fit (the trainer's global step)

    def on_train_end(self):
        self.optimiser_steps = int(self.global_step)
        sum_counters_over_ranks(self, ("trained_tokens",))

    def run_counters(self) -> dict[str, int]:
        """Totals over ranks after fit (carried to the main process under ddp_spawn)."""
        return {"optimiser_steps": self.optimiser_steps, "trained_tokens": self.trained_tokens}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["densepath"] = {"trained_tokens": self.trained_tokens, "bad_steps": self.bad_steps}

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("densepath", {})
        self.trained_tokens = int(state.get("trained_tokens", 0))
        self.bad_steps = int(state.get("bad_steps", 0))

    def validation_step(self, batch, batch_idx):
        loss, n_tok = sft_loss(self.model, batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["response_ids"].shape[0])

    def configure_optimizers(self):
        hp = self.hparams
        decay = [p for n, p in self.model.named_parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.requires_grad and p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr,
            betas=tuple(hp.betas),
        )
        if hp.constant_lr:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, hp.warmup_steps, hp.max_steps, hp.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def final_lr(self) -> float:
        hp = self.hparams
        return (
            hp.lr
            if hp.constant_lr
            else hp.lr * warmup_cosine(hp.max_steps, hp.warmup_steps, hp.max_steps, hp.min_lr_ratio)
        )
