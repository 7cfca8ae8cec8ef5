"""Mode-seeking decoders for the `decode` stage: beam search and best-of-N, each with its inference cost.

Cost per answer = token positions run through a model for that answer, prompt excluded: greedy or
sampled, the answer's length; beam W, W x the decoding steps that prompt needs; best-of-N, the N
candidates' lengths summed, once for generation and once per scoring model.

`beam_search` ranks by the summed log-probability (HF's `num_beams=W, length_penalty=0,
early_stopping=False` with no logits processors; it returns the same answers as `model.generate`,
tested). It is written on the model's forward, like the sampler's loop, because `generate` runs
every prompt of a batch until the last one is done and does not tell how many steps each prompt
needed, which is the cost; it also prefills each prompt once instead of W times.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from densepath.sampling.base import SampleBatch, concat_batches, left_pad, mask_after_eos

NEG = -1.0e9  # HF's "impossible" score: a candidate that may not continue or finish


@dataclass
class Decoded:
    batch: SampleBatch  # one answer per prompt
    cost: torch.Tensor  # (B,) token positions run through a model per answer, prompt excluded
    score: torch.Tensor  # (B,) the score that chose the answer (beam: summed log-prob)


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[b, idx[b, j], ...] for x (B, N, ...) and idx (B, M)."""
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))


def beam_search(
    model,
    prompts: list[list[int]],
    *,
    width: int,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    batch_rows: int = 256,
) -> Decoded:
    """The best of `width` beams per prompt by summed log pi at T=1; EOS ends a hypothesis.
    Prompts go in chunks of `batch_rows // width` (memory bound)."""
    if width < 1 or max_new_tokens < 1:
        raise ValueError(f"beam_search: width={width} and max_new_tokens={max_new_tokens} must be >= 1")
    step = max(1, batch_rows // width)
    args = (width, max_new_tokens, eos_id, pad_id)
    parts = [_beam_chunk(model, prompts[i : i + step], *args) for i in range(0, len(prompts), step)]
    return Decoded(
        concat_batches([p.batch for p in parts], pad_id, 1),
        torch.cat([p.cost for p in parts]),
        torch.cat([p.score for p in parts]),
    )


@torch.no_grad()
def _beam_chunk(model, prompts, width, max_new_tokens, eos_id, pad_id) -> Decoded:
    from transformers import DynamicCache

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    (b, P), W, T = ids.shape, width, max_new_tokens
    cache = DynamicCache()
    kv = dict(cache=cache, use_cache=True)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    try:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1, **kv).logits
        logp = torch.log_softmax(logits[:, -1].float(), -1).repeat_interleave(W, 0)  # (b*W, V)
        cache.batch_repeat_interleave(W)  # one prefill per prompt serves its W beams
        V = logp.shape[-1]
        run_scores = torch.zeros(b, W, device=device)
        run_scores[:, 1:] = NEG  # all beams start equal: expand only the first
        run_seq = torch.full((b, W, T), pad_id, dtype=torch.long, device=device)
        fin_seq, fin_scores = run_seq.clone(), torch.full((b, W), NEG, device=device)
        fin_done = torch.zeros(b, W, dtype=torch.bool, device=device)
        searching = torch.ones(b, dtype=torch.bool, device=device)
        steps = torch.full((b,), T, dtype=torch.long, device=device)
        may_finish = torch.arange(2 * W, device=device) < W  # only the top W candidates may finish
        attn = torch.ones(b * W, P + T, dtype=mask.dtype, device=device)
        attn[:, :P] = mask.repeat_interleave(W, 0)
        next_pos = mask.sum(-1).repeat_interleave(W, 0)[:, None]
        for t in range(T):
            acc = (logp.view(b, W, V) + run_scores[:, :, None]).view(b, W * V)
            top, idx = acc.topk(2 * W)  # (b, 2W) best continuations over all beams
            src, tok = idx // V, idx % V
            cand = _gather(run_seq, src)
            cand[:, :, t] = tok
            hits = (tok == eos_id) | (t == T - 1)  # the candidate ends here (EOS or the horizon)
            running = top + hits.float() * NEG
            keep = running.topk(W).indices  # (b, W) best candidates that continue
            run_seq, run_scores = _gather(cand, keep), running.gather(1, keep)
            beam_idx = (src.gather(1, keep) + torch.arange(b, device=device)[:, None] * W).view(-1)
            finished = hits & may_finish
            new = top + (~finished).float() * NEG + (~searching[:, None]).float() * NEG
            merged = torch.cat([fin_scores, new], 1).topk(W).indices
            fin_scores = torch.cat([fin_scores, new], 1).gather(1, merged)
            fin_seq = _gather(torch.cat([fin_seq, cand], 1), merged)
            fin_done = torch.cat([fin_done, finished], 1).gather(1, merged)
            # done when W hypotheses are finished and no running beam can beat the worst (scores only fall)
            worst = torch.where(fin_done, fin_scores.min(1, keepdim=True).values, NEG)
            still = searching & (run_scores[:, :1] > worst).any(-1)
            steps = torch.where(searching & ~still, torch.full_like(steps, t + 1), steps)
            searching = still
            if t == T - 1 or not bool(searching.any()):
                break
            cache.reorder_cache(beam_idx)
            step_ids = run_seq[:, :, t].reshape(-1, 1)
            out = model(
                input_ids=step_ids, attention_mask=attn[:, : P + t + 1], position_ids=next_pos + t, **kv
            )
            logp = torch.log_softmax(out.logits[:, -1].float(), -1)
    finally:
        model.train(was_training)
    resp, rmask, done = mask_after_eos(fin_seq[:, 0, : int(steps.max())], eos_id, pad_id)
    return Decoded(SampleBatch(ids, mask, resp, rmask, done, 1), cost=W * steps, score=fin_scores[:, 0])


def best_of(scores: torch.Tensor, n: int) -> torch.Tensor:
    """(B,) the index (0..n-1) of each prompt's best candidate: the argmax of (B*n,) scores, rows
    prompt-major; identical candidates score alike, so ties go to the first drawn."""
    return scores.view(-1, n).argmax(-1)


def select_rows(batch: SampleBatch, rows: torch.Tensor) -> SampleBatch:
    """The sub-batch of `rows` (one per prompt), k = 1."""
    parts = (batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask, batch.finished)
    return SampleBatch(*(x.index_select(0, rows) for x in parts), 1)
