"""Periodic validation of a policy on the `val` split, keeping the best-val checkpoint next to the last.

Selection is always on `val`; `eval` is only used for the final report.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import lightning as L
import torch

from densepath.eval.evaluate import evaluate_policy
from densepath.eval.loglik import heldout_nll
from densepath.models.io import save_policy

log = logging.getLogger(__name__)


class ValEvalCallback(L.Callback):
    carry_to_main = True  # `callbacks.spawn` returns best / history from the worker under ddp_spawn

    def __init__(
        self, evaluate_fn, every_n_steps: int, save_dir: Path, tokenizer, metric: str, model_attr: str
    ):
        self.evaluate_fn = evaluate_fn  # model -> float (the val headline, signed so that higher is better)
        self.sign = float(getattr(evaluate_fn, "sign", 1.0))  # signed value * sign = the metric itself
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
        shown = value * self.sign  # the metric as it is (an NLL stays positive)
        self.history.append((step, shown))
        if in_module_log:  # Lightning forbids self.log in on_train_end; the logger call below suffices
            pl_module.log(f"val/{self.metric}", shown, prog_bar=True, rank_zero_only=True)
        if trainer.logger:
            trainer.logger.log_metrics({f"val/{self.metric}": shown}, step=step)
        if value > self.best:
            self.best, self.best_step = value, step
            if trainer.is_global_zero:
                save_policy(model, self.tokenizer, self.save_dir / "best")
                log.info("new best val %s = %.4f at step %d", self.metric, shown, step)

    @property
    def best_value(self) -> float:
        """The best checkpoint's val metric as it is (not sign-flipped)."""
        return self.best * self.sign

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
        self._evaluate(trainer, pl_module, in_module_log=False)


class ValHeadline:
    """model -> the task's val headline, signed so that higher is better (sampled at the sampler's
    temperature; held-out NLL for tasks that cannot judge answers).

    A class, not a closure, so that ddp_spawn can pickle the callback holding it.
    """

    def __init__(self, task, tokenizer, sampler, rows, autocast_kind: str | None):
        self.task, self.tokenizer, self.sampler, self.rows = task, tokenizer, sampler, rows
        self.autocast = autocast_kind
        self.sign = 1.0 if task.higher_is_better else -1.0

    def __call__(self, model) -> float:
        was = model.training
        model.eval()
        amp = (
            torch.autocast(self.autocast, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        )
        sign = self.sign
        try:
            with amp:
                if not self.task.verifiable:
                    return sign * heldout_nll(model, self.tokenizer, self.task, self.rows)[self.task.headline]
                m, _ = evaluate_policy(
                    model, self.tokenizer, self.task, self.rows, self.sampler, split="val", modes=("sampled",)
                )
                return sign * m[f"val/sampled/{self.task.headline}"]
        finally:
            model.train(was)
