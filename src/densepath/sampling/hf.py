"""Batched sampling with transformers `generate` (KV cache, left padding, EOS stopping)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from densepath.sampling.base import SampleBatch, left_pad, mask_after_eos


@dataclass
class HFSampler:
    """`sampler=hf`. Pure sampling: top_k is disabled (HF defaults to 50) so RL stays on-policy."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 256  # prompts*k rows per generate call (memory bound)
    pad_token_id: int | None = None
    eos_token_id: int | None = None

    def configure(self, tokenizer) -> HFSampler:
        self.pad_token_id = tokenizer.pad_token_id
        self.eos_token_id = tokenizer.eos_token_id
        return self

    def sync_weights(self, model) -> None:  # in-process: generation uses the live parameters
        return None

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
        device = next(model.parameters()).device
        chunk = max(1, self.batch_size // max(1, k))
        parts = []
        try:
            for start in range(0, len(prompts), chunk):
                parts.append(
                    self._generate_chunk(
                        model,
                        prompts[start : start + chunk],
                        k,
                        max_new,
                        temp,
                        greedy,
                        min_new_tokens,
                        device,
                    )
                )
        finally:
            model.train(was_training)
        return _concat(parts, self.pad_token_id, k)

    def _generate_chunk(self, model, prompts, k, max_new, temp, greedy, min_new, device):
        ids, mask = left_pad(prompts, self.pad_token_id, device)
        kwargs = dict(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new,
            min_new_tokens=min_new,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
            use_cache=True,
            num_return_sequences=1 if greedy else k,
        )
        if greedy:
            kwargs.update(do_sample=False, top_k=None, top_p=None, temperature=None)
        else:
            kwargs.update(do_sample=True, temperature=temp, top_k=0, top_p=self.top_p)
        out = model.generate(**kwargs)  # (b*k, P + T')
        P = ids.shape[1]
        if greedy and k > 1:  # greedy is deterministic: replicate rather than recompute
            out = out.repeat_interleave(k, dim=0)
        resp, rmask, finished = mask_after_eos(out[:, P:], self.eos_token_id, self.pad_token_id)
        reps = k
        return SampleBatch(
            ids.repeat_interleave(reps, 0), mask.repeat_interleave(reps, 0), resp, rmask, finished, k
        )


def _concat(parts: list[SampleBatch], pad_id: int, k: int) -> SampleBatch:
    if len(parts) == 1:
        return parts[0]
    P = max(p.prompt_ids.shape[1] for p in parts)
    T = max(p.response_ids.shape[1] for p in parts)

    def pad(x, width, value, left):
        extra = width - x.shape[1]
        if extra == 0:
            return x
        fill = torch.full((x.shape[0], extra), value, dtype=x.dtype, device=x.device)
        return torch.cat([fill, x] if left else [x, fill], 1)

    return SampleBatch(
        torch.cat([pad(p.prompt_ids, P, pad_id, True) for p in parts]),
        torch.cat([pad(p.prompt_mask, P, 0, True) for p in parts]),
        torch.cat([pad(p.response_ids, T, pad_id, False) for p in parts]),
        torch.cat([pad(p.response_mask, T, 0, False) for p in parts]),
        torch.cat([p.finished for p in parts]),
        k,
    )
