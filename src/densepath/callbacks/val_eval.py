"""Periodic validation of a policy on the `val` split, keeping the best-val checkpoint next to the last.

Selection is always on `val`; `eval` is only used for the final report.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L

from densepath.eval.evaluate import evaluate_policy
from densepath.models.io import save_policy

log = logging.getLogger(__name__)


class ValEvalCallback(L.Callback):
    def __init__(self, evaluate_fn, every_n_steps: int, save_dir: Path, tokenizer, metric: str, get_model):
        self.evaluate_fn = evaluate_fn  # model -> float (the val headline, sampled)
        self.every = max(1, int(every_n_steps))
        self.save_dir = Path(save_dir)
        self.tokenizer = tokenizer
        self.metric = metric
        self.get_model = get_model
        self.best = -math.inf
        self.best_step = -1
        self.history: list[tuple[int, float]] = []

    def _evaluate(self, trainer, pl_module):
        step = trainer.global_step
        if self.history and self.history[-1][0] == step:
            return
        model = self.get_model(pl_module)
        value = float(self.evaluate_fn(model))
        self.history.append((step, value))
        pl_module.log(f"val/{self.metric}", value, prog_bar=True, rank_zero_only=True)
        if trainer.logger:
            trainer.logger.log_metrics({f"val/{self.metric}": value}, step=step)
        if trainer.is_global_zero and value > self.best:
            self.best, self.best_step = value, step
            save_policy(model, self.tokenizer, self.save_dir / "best")
            log.info("new best val %s = %.4f at step %d", self.metric, value, step)

    def on_train_start(self, trainer, pl_module):
        if trainer.global_step == 0:  # step 0: the starting policy competes too (not again on resume)
            self._evaluate(trainer, pl_module)

    def state_dict(self):
        return {"best": self.best, "best_step": self.best_step, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state):
        self.best, self.best_step = float(state["best"]), int(state["best_step"])
        self.history = [tuple(h) for h in state["history"]]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self._evaluate(trainer, pl_module)


def val_headline_fn(ctx, sampler, split_rows):
    from densepath.stages.common import autocast_for

    task = ctx.task

    def fn(model) -> float:
        was = model.training
        model.eval()
        if not task.has_verifier and task.headline == "nll":  # no verifier: select on held-out likelihood
            from densepath.eval.loglik import heldout_nll

            with autocast_for(ctx):
                value = -heldout_nll(model, ctx.tokenizer, task, split_rows)["nll"]
            model.train(was)
            return value
        with autocast_for(ctx):
            m, _ = evaluate_policy(
                model,
                ctx.tokenizer,
                task,
                split_rows,
                sampler,
                split="val",
                modes=("sampled",),
                temperature=ctx.cfg.eval.temperature,
            )
        model.train(was)
        return m[f"val/sampled/{task.headline}"]

    return fn
