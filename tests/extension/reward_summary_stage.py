"""A new stage: the configured reward on a few held-out demonstrations, its settings in its own node."""

from __future__ import annotations

from densepath.data.datamodule import Collator, encode_rows
from densepath.rewards.builder import build_reward
from densepath.stages.base import Stage


class RewardSummaryStage(Stage):
    def run(self, ctx) -> dict[str, float]:
        node, task, tok = ctx.cfg[self.name], ctx.task, ctx.tokenizer
        reward = build_reward(ctx.cfg.reward, ctx.cfg.baseline, ctx.artefact_dir("sft"), tok, "cpu")
        rows = task.splits()["val"][: node.n_demos]
        enc = encode_rows(tok, task, rows, task.max_prompt_len, task.max_response_len, "val")
        b = Collator(tok.pad_token_id)(enc)
        r = reward.score(b["prompt_ids"], b["prompt_mask"], b["response_ids"], b["response_mask"])
        m = b["response_mask"].float()
        metrics = {"mean_token_reward": float((r * m).sum() / m.sum()), "n_demos": float(len(rows))}
        ctx.record(self.name, metrics, {"reward": reward.describe()})
        return metrics
