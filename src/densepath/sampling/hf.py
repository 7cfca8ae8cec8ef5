"""Batched sampling from a transformers causal LM (KV cache, left padding, EOS stopping).

Two engines produce the same distribution and the same `SampleBatch` layout:
- `loop` (default): a decode loop over the model's forward. Each prompt is prefilled once and its KV
  cache is then repeated for its k samples (`generate(num_return_sequences=k)` prefills every
  prompt k times); tokens are drawn by the Gumbel-max trick, which samples exactly from
  softmax(logits / T), and the loop stops as soon as every row has emitted EOS.
- `generate`: one `model.generate` call per chunk, for models whose forward lacks the cache API
  (and for top_p < 1, which the loop does not implement).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from densepath.sampling.base import SampleBatch, concat_batches, left_pad, mask_after_eos


@dataclass
class HFSampler:
    """`sampler=hf`. Pure sampling: top_k is disabled (HF defaults to 50) so RL stays on-policy."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 256  # prompts*k rows per generate call (memory bound)
    engine: str = "loop"  # loop | generate (see the module docstring)
    pad_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self):
        if self.engine not in ("loop", "generate"):
            raise ValueError(f"sampler.engine={self.engine!r}: choose loop or generate")

    def configure(self, tokenizer) -> HFSampler:
        self.pad_token_id, self.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        return self

    def sync_weights(self, model) -> None: ...  # in-process: generation uses the live parameters

    @torch.no_grad()
    def generate(
        self,
        model,
        prompts: list[list[int]],
        *,
        k: int = 1,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        greedy: bool = False,
        min_new_tokens: int = 0,
    ) -> SampleBatch:
        if self.pad_token_id is None or self.eos_token_id is None:
            raise RuntimeError("HFSampler.configure(tokenizer) must be called before generate()")
        if not prompts:
            raise ValueError("generate() got an empty prompt list")
        max_new = int(max_new_tokens or self.max_new_tokens)
        temp = float(self.temperature if temperature is None else temperature)
        was_training = model.training
        model.eval()
        chunk = max(1, self.batch_size // max(1, k))
        args = (k, max_new, temp, greedy, min_new_tokens, next(model.parameters()).device)
        try:
            parts = [
                self._generate_chunk(model, prompts[s : s + chunk], *args)
                for s in range(0, len(prompts), chunk)
            ]
        finally:
            model.train(was_training)
        return concat_batches(parts, self.pad_token_id, k)

    def _generate_chunk(self, model, prompts, k, max_new, temp, greedy, min_new, device):
        ids, mask = left_pad(prompts, self.pad_token_id, device)
        n = 1 if greedy else k  # greedy is deterministic: one row per prompt, replicated below
        if self.engine == "loop" and self.top_p >= 1.0:
            out = self._decode_loop(model, ids, mask, n, max_new, temp, greedy, min_new)
        else:
            out = self._hf_generate(model, ids, mask, n, max_new, temp, greedy, min_new)
        if n < k:
            out = out.repeat_interleave(k, dim=0)
        resp, rmask, finished = mask_after_eos(out, self.eos_token_id, self.pad_token_id)
        return SampleBatch(
            ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0), resp, rmask, finished, k
        )

    def _hf_generate(self, model, ids, mask, n, max_new, temp, greedy, min_new) -> torch.Tensor:
        """(b*n, T') response tokens from one `model.generate` call."""
        kwargs = dict(max_new_tokens=max_new, min_new_tokens=min_new, num_return_sequences=n, use_cache=True)
        kwargs.update(pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_id)
        if greedy:
            kwargs.update(do_sample=False, top_k=None, top_p=None, temperature=None)
        else:
            kwargs.update(do_sample=True, temperature=temp, top_k=0, top_p=self.top_p)
        return model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, ids.shape[1] :]

    def _decode_loop(self, model, ids, mask, k, max_new, temp, greedy, min_new) -> torch.Tensor:
        """(b*k, T') response tokens, prompt-major; rows that finished carry pad after their EOS."""
        from transformers import DynamicCache

        b, P = ids.shape
        cache = DynamicCache()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens at positions 0..len-1
        kv = dict(cache=cache, use_cache=True)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1, **kv).logits
        logits = logits[:, -1].float()  # (b, V)
        if k > 1:  # one prefill per prompt, then its cache and next-token logits serve all k samples
            cache.batch_repeat_interleave(k)
            logits = logits.repeat_interleave(k, 0)
        n = b * k
        next_pos = mask.sum(-1).repeat_interleave(k, 0)[:, None]  # (n, 1)
        attn = torch.ones(n, P + max_new, dtype=mask.dtype, device=ids.device)
        attn[:, :P] = mask.repeat_interleave(k, 0)
        tokens = torch.full((n, max_new), self.pad_token_id, dtype=torch.long, device=ids.device)
        done = torch.zeros(n, dtype=torch.bool, device=ids.device)
        for t in range(max_new):
            if t < min_new:
                logits[:, self.eos_token_id] = float("-inf")
            if greedy:
                nxt = logits.argmax(-1)
            else:  # Gumbel-max: argmax(z/T + G) ~ softmax(z/T), one fused draw, no host sync
                gumbel = -torch.empty_like(logits).exponential_().log()
                nxt = (logits / temp + gumbel).argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_token_id), nxt)
            tokens[:, t] = nxt
            done = done | (nxt == self.eos_token_id)
            if t == max_new - 1 or bool(done.all()):
                return tokens[:, : t + 1]
            out = model(
                input_ids=nxt[:, None], attention_mask=attn[:, : P + t + 1], position_ids=next_pos + t, **kv
            )
            logits = out.logits[:, -1].float()
        return tokens
