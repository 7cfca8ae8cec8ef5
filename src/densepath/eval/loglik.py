"""Held-out log-likelihood of demonstrations (the evaluation of tasks without a verifier)."""

from __future__ import annotations

import torch

from densepath.data.datamodule import Collator, encode_rows
from densepath.models.logprobs import response_logprobs


@torch.no_grad()
def heldout_nll(model, tokenizer, task, rows: list[dict], batch_size: int = 64) -> dict[str, float]:
    """Mean negative log-likelihood per response token and per sequence."""
    enc = encode_rows(tokenizer, task, rows, task.max_prompt_len, task.max_response_len, "heldout")
    collate = Collator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    tot, n_tok, seq = 0.0, 0, []
    for s in range(0, len(enc), batch_size):
        b = {k: v.to(device) for k, v in collate(enc[s : s + batch_size]).items()}
        lp = response_logprobs(
            model, b["prompt_ids"], b["prompt_mask"], b["response_ids"], b["response_mask"]
        ).logp
        m = b["response_mask"].float()
        tot += float(-(lp.float() * m).sum())
        n_tok += int(m.sum())
        seq.extend((-(lp.float() * m).sum(-1)).tolist())
    return {"nll": tot / max(1, n_tok), "seq_nll": sum(seq) / max(1, len(seq))}
