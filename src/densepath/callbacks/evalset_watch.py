"""The reward-hacking watch on real text: every N RL steps (and before the first), the policy answers a fixed
subset of a held-out benchmark's prompts (IFBench) greedily; the answers are scored by the benchmark's own
checkers and by the recovered reward. Does the recovered reward of the policy's answers keep rising while
their pass rate falls?

Each point is a row of `<stage>/watch.jsonl` ({"step", "prompt_loose", "prompt_strict", "instruction_loose",
"instruction_strict", "reward", "length", "truncated", "n"}) and is logged as `watch/<set>/<metric>`. It never
selects a checkpoint: it runs after the step is taken, on prompts no stage trains or selects on.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import numpy as np
import torch

from densepath.eval.evalsets import read_answers

log = logging.getLogger(__name__)


class EvalSetWatch(L.Callback):
    def __init__(
        self,
        evalset,
        tokenizer,
        prompts,
        records,
        sampler,
        reward,
        every: int,
        out: Path,
        autocast=nullcontext,
    ):
        self.es, self.tok, self.prompts, self.records = evalset, tokenizer, prompts, records
        self.sampler, self.reward, self.every, self.out = sampler, reward, int(every), Path(out)
        self.autocast = autocast  # () -> the run's autocast context (the evalset stage decodes under it too)
        self.done: set[int] = set()
        self.last = -1  # the last step watched

    def on_train_start(self, trainer, pl_module):
        # a resumed run keeps the points up to where it resumes; later ones (from an attempt that stopped
        # before its next checkpoint) are measured again
        step = int(trainer.global_step)
        if self.out.exists() and trainer.is_global_zero:
            rows = [json.loads(x) for x in self.out.read_text(encoding="utf-8").splitlines() if x.strip()]
            rows = [r for r in rows if r["step"] <= step]
            self.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            self.done = {r["step"] for r in rows}
            self.last = max(self.done, default=-1)
        self._watch(trainer, pl_module, step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = int(trainer.global_step)  # may advance by more than 1 per batch (ppo_epochs > 1)
        crossed = self.every > 0 and step // self.every > max(self.last, 0) // self.every
        if crossed or step >= trainer.max_steps:
            self._watch(trainer, pl_module, step)

    @torch.no_grad()
    def _watch(self, trainer, pl_module, step: int) -> None:
        if self.every <= 0 or step in self.done or not trainer.is_global_zero:
            return
        model = pl_module.policy
        was_training = model.training
        model.eval()
        max_new = int(self.es.max_new_tokens)
        texts, lengths, truncated, rewards = [], [], [], []
        bs = max(1, int(self.es.batch_size))
        for i in range(0, len(self.prompts), bs):
            with self.autocast():
                b = self.sampler.generate(
                    model, self.prompts[i : i + bs], k=1, greedy=True, max_new_tokens=max_new
                )
                r = self.reward.score(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask)
            rewards.extend(float(v) for v in (r.float() * b.response_mask).sum(-1).cpu())
            for out, x in zip((texts, lengths, truncated), read_answers(self.tok, b, max_new)):
                out.extend(x)
        if was_training:
            model.train()
        _, summary, _, _ = self.es.score(self.records, texts)
        row = {"step": step, "n": len(texts)}
        for k in ("prompt_loose", "prompt_strict", "instruction_loose", "instruction_strict"):
            row[k] = float(summary[k]["acc"])
        row.update(
            reward=float(np.mean(rewards)),
            length=float(np.mean(lengths)),
            truncated=float(np.mean(truncated)),
        )
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with self.out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self.done.add(step)
        self.last = max(self.last, step)
        # straight to the loggers: every point, whatever trainer.log_every_n_steps (and allowed at train start)
        logged = {f"watch/{self.es.name}/{k}": v for k, v in row.items() if k not in ("step", "n")}
        for lg in trainer.loggers:
            lg.log_metrics(logged, step=step)
        log.info("watch at step %d: %s", step, {k: round(v, 3) for k, v in row.items() if k != "step"})
