"""Periodic validation of a policy on the `val` split, keeping the best-val checkpoint next to the last.

Selection is always on `val`; `eval` is only used for the final report.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import lightning as L

from densepath.eval.evaluate import evaluate_policy
from densepath.models.io import save_policy

log = logging.getLogger(__name__)


class ValEvalCallback(L.Callback):
    def __init__(
        self, evaluate_fn, every_n_steps: int, save_dir: Path, tokenizer, metric: str, model_attr: str
    ):
        self.evaluate_fn = evaluate_fn  # model -> float (the val headline, sampled)
        self.every = max(1, int(every_n_steps))
        self.save_dir = Path(save_dir)
        self.tokenizer = tokenizer
        self.metric = metric
        self.model_attr = model_attr  # the module attribute holding the policy (a name: picklable)
        self.best = -math.inf
        self.best_step = -1
        self.history: list[tuple[int, float]] = []

    def _evaluate(self, trainer, pl_module, in_module_log: bool = True):
        step = trainer.global_step
        if self.history and self.history[-1][0] == step:
            return
        model = getattr(pl_module, self.model_attr)
        value = float(self.evaluate_fn(model))
        self.history.append((step, value))
        if in_module_log:  # Lightning forbids self.log in on_train_end; the logger call below suffices
            pl_module.log(f"val/{self.metric}", value, prog_bar=True, rank_zero_only=True)
        if trainer.logger:
            trainer.logger.log_metrics({f"val/{self.metric}": value}, step=step)
        if value > self.best:
            self.best, self.best_step = value, step
            if trainer.is_global_zero:
                save_policy(model, self.tokenizer, self.save_dir / "best")
                log.info("new best val %s = %.4f at step %d", self.metric, value, step)
        if trainer.is_global_zero:  # on disk too: with ddp_spawn the main process never sees this object
            (self.save_dir / "val_state.json").write_text(json.dumps(self.state_dict()))

    def on_train_start(self, trainer, pl_module):
        if trainer.global_step == 0:  # step 0: the starting policy competes too (not again on resume)
            self._evaluate(trainer, pl_module)

    def state_dict(self):
        return {"best": self.best, "best_step": self.best_step, "history": [list(h) for h in self.history]}

    def reload(self) -> None:
        """Pick up the state rank 0 wrote (after ddp_spawn the main process holds a stale copy)."""
        p = self.save_dir / "val_state.json"
        if p.exists():
            self.load_state_dict(json.loads(p.read_text()))

    def load_state_dict(self, state):
        self.best, self.best_step = float(state["best"]), int(state["best_step"])
        self.history = [tuple(h) for h in state["history"]]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self._evaluate(trainer, pl_module, in_module_log=False)


class ValHeadline:
    """model -> the val headline (sampled success / true return, or -NLL without a verifier).

    A class, not a closure, so that ddp_spawn can pickle the callback holding it.
    """

    def __init__(self, ctx, sampler, split_rows):
        from densepath.stages.common import autocast_kind

        self.task, self.tokenizer, self.sampler, self.rows = ctx.task, ctx.tokenizer, sampler, split_rows
        self.temperature = float(ctx.cfg.eval.temperature)
        self.autocast = autocast_kind(ctx)

    def __call__(self, model) -> float:
        import contextlib

        import torch

        was = model.training
        model.eval()
        amp = (
            torch.autocast(self.autocast, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        )
        try:
            with amp:
                if not self.task.has_verifier and self.task.headline == "nll":
                    from densepath.eval.loglik import heldout_nll

                    return -heldout_nll(model, self.tokenizer, self.task, self.rows)["nll"]
                m, _ = evaluate_policy(
                    model,
                    self.tokenizer,
                    self.task,
                    self.rows,
                    self.sampler,
                    split="val",
                    modes=("sampled",),
                    temperature=self.temperature,
                )
                return m[f"val/sampled/{self.task.headline}"]
        finally:
            model.train(was)


def val_headline_fn(ctx, sampler, split_rows) -> ValHeadline:
    return ValHeadline(ctx, sampler, split_rows)
