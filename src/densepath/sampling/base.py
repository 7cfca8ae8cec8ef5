"""The sampler interface shared by evaluation and RL, and the padded batch layout it returns.

Layout (project-wide): prompts LEFT-padded, responses RIGHT-padded, exactly what HF `generate`
returns. The EOS token is a real response token (it is an action and carries reward); tokens after
EOS are padding (mask 0).

A vLLM sampler plugs in by implementing `Sampler.generate` with the same return type; after each
optimiser step the RL module calls `sampler.sync_weights(model)` (a no-op for in-process samplers
that share the policy's parameters).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch


@dataclass
class SampleBatch:
    prompt_ids: torch.Tensor  # (B*k, P) left-padded
    prompt_mask: torch.Tensor  # (B*k, P)
    response_ids: torch.Tensor  # (B*k, T) right-padded
    response_mask: torch.Tensor  # (B*k, T) 1 on real tokens incl. EOS
    finished: torch.Tensor  # (B*k,) bool: ended with EOS (False = truncated at max_new_tokens)
    k: int  # samples per prompt; rows are prompt-major (row i = prompt i // k)

    def to(self, device) -> SampleBatch:
        return SampleBatch(*(getattr(self, f.name).to(device) for f in fields(self)[:-1]), self.k)


class Sampler(Protocol):
    """What evaluation and RL call on a sampler (`HFSampler` is the in-process implementation).

    ``generate(model, prompts, *, k=1, max_new_tokens=None, temperature=None, greedy=False)``
    draws k responses for every prompt (token id lists) and returns them as a `SampleBatch`,
    rows prompt-major; None means the sampler's configured value, ``greedy`` takes the argmax.
    """

    def generate(self, model, prompts: list[list[int]], **kwargs: Any) -> SampleBatch: ...
    def sync_weights(self, model) -> None: ...


def _pad(seqs: list[list[int]], pad_id: int, device, left: bool, min_width: int = 0):
    width = max(min_width, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        start = width - len(s) if left else 0
        ids[i, start : start + len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, start : start + len(s)] = 1
    return ids.to(device), mask.to(device)


def left_pad(seqs: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (ids, mask)."""
    return _pad(seqs, pad_id, device, left=True)


def right_pad(seqs: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into (ids, mask); an all-empty batch gets width 1 (all masked)."""
    return _pad(seqs, pad_id, device, left=False, min_width=1)


def mask_after_eos(
    response_ids: torch.Tensor, eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, finished): tokens up to and including the first EOS; everything after becomes padding."""
    is_eos = response_ids == eos_id  # (B, T)
    seen_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # (B, T)
    return response_ids.masked_fill(seen_before, pad_id), (~seen_before).long(), is_eos.any(-1)


def concat_batches(parts: list[SampleBatch], pad_id: int, k: int) -> SampleBatch:
    """One batch from consecutive chunks of prompts (all with the same k), padded to the widest."""
    if len(parts) == 1:
        return parts[0]

    def cat(name: str, value: int, left: bool) -> torch.Tensor:
        """The `name` tensors of all parts, padded to the widest (prompts on the left, responses right)."""
        xs = [getattr(p, name) for p in parts]
        width = max(x.shape[1] for x in xs)
        pads = [(width - x.shape[1], 0) if left else (0, width - x.shape[1]) for x in xs]
        return torch.cat([torch.nn.functional.pad(x, pad, value=value) for x, pad in zip(xs, pads)])

    prompts = cat("prompt_ids", pad_id, True), cat("prompt_mask", 0, True)
    responses = cat("response_ids", pad_id, False), cat("response_mask", 0, False)
    return SampleBatch(*prompts, *responses, torch.cat([p.finished for p in parts]), k)
