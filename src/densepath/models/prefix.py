"""Prefix sharing: the k sampled responses of a prompt share its forward pass.

An RL step scores k responses per prompt. Run unshared, every model computes each prompt k times. Here
the prompt runs once per unique prompt; its keys and values are expanded k times (``repeat_interleave``,
differentiable: the prompt states' gradient is the sum over the k responses; done per layer as it runs)
and the responses run on top of them. The result equals the unshared forward up to float rounding (tests/test_prefix_sharing.py:
log-probs and gradients to 1e-4 relative in fp32), provided:

- the k rows of a group carry the identical prompt (checked: `prompt_groups`);
- no dropout is active (the callers run the models in eval mode);
- positions continue the prompt's: response token t sits at position ``len(prompt) + t``, as in
  ``logprobs.build_inputs`` for every real token (positions of padding after EOS differ, but no real
  token attends to them);
- every layer attends to the whole context (no sliding window): `supports_prefix_sharing`.

Gradient checkpointing: HF drops the cache inside a checkpointed layer (with a one-off warning), which
would silently cut the responses off their prompt. The caches below never change on a second call
(the prompt's cache overwrites, the responses' cache only reads), so a recompute in backward sees the
same states, and `checkpointing_in_eval` lets the layers keep them (``_can_checkpoint_with_cache``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer


class _CaptureLayer(DynamicLayer):
    """Stores the prompt's keys/values; a second call (a checkpoint recompute) overwrites them."""

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states
        return key_states, value_states


class _ReadLayer(DynamicLayer):
    """A fixed prefix: returns prefix + new states without storing the new ones (idempotent).

    The prefix is kept once per prompt and expanded to its k rows inside `update`, so only the layer
    being run holds the expanded copy (not every layer at once: 30 layers x 64 rows x 256 prompt tokens
    of SmolLM2 keys and values would be ~750 MiB in fp32)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, k: int):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values, self.k = keys, values, int(k)

    def update(self, key_states, value_states, *args, **kwargs):
        k = self.k
        return (
            torch.cat([self.keys.repeat_interleave(k, dim=0), key_states], dim=-2),
            torch.cat([self.values.repeat_interleave(k, dim=0), value_states], dim=-2),
        )


def _capture_cache() -> DynamicCache:
    cache = DynamicCache()
    cache.layer_class_to_replicate = _CaptureLayer
    return cache


def _read_cache(captured: DynamicCache, k: int) -> DynamicCache:
    """The captured prompt states, repeated k times along the batch (prompt-major, like the rows) as each
    layer reads them."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = None
    cache.layers = [_ReadLayer(layer.keys, layer.values, k) for layer in captured.layers]
    return cache


def supports_prefix_sharing(model: nn.Module) -> bool:
    """True when every attention layer sees the whole context (no sliding-window or chunked layers)."""
    cfg = getattr(model, "config", None)
    types = getattr(cfg, "layer_types", None) if cfg is not None else None
    if types is not None:
        return all(t == "full_attention" for t in types)
    return getattr(cfg, "sliding_window", None) is None


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, k: int) -> int:
    """Number of prompt groups when rows come as k consecutive copies of each prompt; raise otherwise."""
    B = prompt_ids.shape[0]
    if k < 1 or B % k:
        raise ValueError(f"prefix sharing with k={k}: the batch has {B} rows, not a multiple of k")
    ids = prompt_ids.view(B // k, k, -1)
    mask = prompt_mask.view(B // k, k, -1)
    if not (bool((ids == ids[:, :1]).all()) and bool((mask == mask[:, :1]).all())):
        raise ValueError(
            f"prefix sharing with k={k}: rows are not groups of k identical prompts (prompt-major order, "
            "as the sampler returns them). Pass k=1 to score without sharing"
        )
    return B // k


def _checkpoint_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]


@contextmanager
def checkpointing_in_eval(model: nn.Module, *, with_cache: bool = False):
    """Let HF's gradient checkpointing run while the model is in eval mode (no dropout).

    HF checkpoints a decoder layer only when that layer's ``training`` flag is set; the RL update runs
    the policy in eval mode (its samples came from it without dropout), so `gradient_checkpointing`
    would silently do nothing there. This sets ``training`` on the checkpointed layers alone (not on
    their children, whose dropout stays off) while grad is enabled, and with ``with_cache`` lets them keep
    the idempotent prefix caches above. Restored on exit.
    """
    layers = _checkpoint_layers(model) if torch.is_grad_enabled() else []
    saved = [(m, m.training, m.__dict__.get("_can_checkpoint_with_cache")) for m in layers]
    try:
        for m in layers:
            m.training = True
            if with_cache:
                m._can_checkpoint_with_cache = True
        yield
    finally:
        for m, training, flag in saved:
            m.training = training
            if flag is None:
                m.__dict__.pop("_can_checkpoint_with_cache", None)
            else:
                m._can_checkpoint_with_cache = flag


@contextmanager
def adapter_rows(model: nn.Module, adapter_names: list[str] | None):
    """Per-row LoRA adapters for the forwards inside (peft's mixed-adapter batches): row i uses
    ``adapter_names[i]`` alone, ``"__base__"`` none. The forwards may call the backbone directly."""
    if adapter_names is None:
        yield
        return
    hooks = getattr(model, "_enable_peft_forward_hooks", None)
    if hooks is None:
        raise TypeError(f"adapter_names needs a peft model; got {type(model).__name__}")
    was_training = model.training
    model.eval()  # peft refuses per-row adapters in training mode; these are frozen scorers
    try:
        with hooks(adapter_names=list(adapter_names)):
            yield
    finally:
        model.train(was_training)


def shared_prefix_hidden(
    model: nn.Module,
    backbone: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    k: int,
    adapter_names: list[str] | None = None,
) -> torch.Tensor:
    """The T hidden states that predict the response tokens, (B, T, H), running each prompt once.

    Rows are prompt-major groups of k (`prompt_groups`). Equal to the unshared
    ``logprobs._response_hidden`` (module docstring for the conditions). ``adapter_names`` (one per
    row, constant within a group) selects a LoRA adapter per row (`adapter_rows`).
    """
    G = prompt_groups(prompt_ids, prompt_mask, k)
    P, T = prompt_ids.shape[1], response_ids.shape[1]
    up, um = prompt_ids[::k], prompt_mask[::k].long()  # (G, P)
    pos = (um.cumsum(-1) - 1).clamp(min=0)  # (G, P)
    captured = _capture_cache()
    names = None if adapter_names is None else list(adapter_names)
    if names is not None and any(names[i] != names[i - i % k] for i in range(len(names))):
        raise ValueError("prefix sharing: every row of a prompt group must use the same adapter")
    with adapter_rows(model, names and names[::k]), checkpointing_in_eval(model, with_cache=True):
        out = backbone(input_ids=up, attention_mask=um, position_ids=pos, cache=captured, use_cache=True)
    h_prompt = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (G, P, H)
    first = h_prompt[:, P - 1 : P].repeat_interleave(k, dim=0)  # (B, 1, H): predicts response token 0
    if T == 1:
        return first
    if len(captured.layers) == 0:
        raise RuntimeError("prefix sharing: the backbone filled no cache; this model is not supported")
    lengths = um.sum(-1).repeat_interleave(k)  # (B,)
    rid = response_ids[:, : T - 1]  # (B, T-1): the tokens whose states predict tokens 1..T-1
    rpos = lengths.unsqueeze(1) + torch.arange(T - 1, device=rid.device)  # (B, T-1)
    mask = torch.cat([um.repeat_interleave(k, dim=0), response_mask[:, : T - 1].long()], dim=1)  # (B, P+T-1)
    with adapter_rows(model, names), checkpointing_in_eval(model, with_cache=True):
        out = backbone(
            input_ids=rid,
            attention_mask=mask,
            position_ids=rpos,
            cache=_read_cache(captured, k),
            use_cache=True,
        )
    h_resp = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, T-1, H)
    assert G * k == h_resp.shape[0]
    return torch.cat([first, h_resp], dim=1)  # (B, T, H)
