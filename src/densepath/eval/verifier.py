"""Ground truth of RL samples, logged next to the recovered reward (never trained on)."""

from __future__ import annotations

from densepath.data.formatting import answer_text


class Verifier:
    """(prompt indices, SampleBatch) -> {metric: per-sample values} from the task's `score`.

    Picklable: ddp_spawn ships the module holding it to worker processes.
    """

    def __init__(self, tokenizer, task, rows):
        self.tok, self.task, self.rows = tokenizer, task, rows

    def __call__(self, prompt_idx, b):
        ids, mask = b.response_ids.cpu(), b.response_mask.cpu().bool()
        texts = [answer_text(self.tok, ids[i][mask[i]].tolist()) for i in range(ids.shape[0])]
        rws = [self.rows[prompt_idx[i // b.k]] for i in range(ids.shape[0])]
        return self.task.score(rws, texts)
