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
from pathlib import Path

import lightning as L
import numpy as np
import torch

log = logging.getLogger(__name__)


class EvalSetWatch(L.Callback):
    def __init__(self, evalset, tokenizer, prompts, records, sampler, reward, every: int, out: Path):
        self.es, self.tok, self.prompts, self.records = evalset, tokenizer, prompts, records
        self.sampler, self.reward, self.every, self.out = sampler, reward, int(every), Path(out)
        self.done: set[int] = set()
        if self.out.exists():  # a resumed run keeps its earlier points
            self.done = {json.loads(x)["step"] for x in self.out.read_text().splitlines() if x.strip()}

    def on_train_start(self, trainer, pl_module):
        self._watch(
            trainer, pl_module, int(trainer.global_step), log_metrics=False
        )  # Lightning: no log() here

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = int(trainer.global_step)
        if self.every > 0 and (step % self.every == 0 or step == trainer.max_steps):
            self._watch(trainer, pl_module, step)

    @torch.no_grad()
    def _watch(self, trainer, pl_module, step: int, log_metrics: bool = True) -> None:
        if self.every <= 0 or step in self.done or not trainer.is_global_zero:
            return
        model = pl_module.policy
        was_training = model.training
        model.eval()
        eos, max_new = self.tok.eos_token_id, int(self.es.max_new_tokens)
        texts, lengths, truncated, rewards = [], [], [], []
        bs = max(1, int(self.es.batch_size))
        for i in range(0, len(self.prompts), bs):
            b = self.sampler.generate(
                model, self.prompts[i : i + bs], k=1, greedy=True, max_new_tokens=max_new
            )
            r = self.reward.score(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask)
            rewards.extend(float(v) for v in (r.float() * b.response_mask).sum(-1).cpu())
            for ids, m in zip(b.response_ids.cpu(), b.response_mask.cpu().bool()):
                ids = ids[m].tolist()
                ended = bool(ids) and ids[-1] == eos
                truncated.append(float(not ended and len(ids) >= max_new))
                lengths.append(float(len(ids)))
                texts.append(self.tok.decode(ids[:-1] if ended else ids, skip_special_tokens=True))
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
        for k, v in row.items():
            if log_metrics and k not in ("step", "n"):
                pl_module.log(f"watch/{self.es.name}/{k}", v, on_step=True, on_epoch=False)
        log.info("watch at step %d: %s", step, {k: round(v, 3) for k, v in row.items() if k != "step"})
