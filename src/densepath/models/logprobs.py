"""Teacher-forced per-token log-probabilities of a response under a causal LM.

The single scoring kernel of the reward models (frozen, no grad) and of the policy loss (with
grad). Batch layout: ``prompt_ids (B, P)`` LEFT-padded with ``prompt_mask (B, P)``;
``response_ids (B, T)`` RIGHT-padded with ``response_mask (B, T)`` (EOS is a real token, anything
after it 0); ``position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)``; response token ``t``
(index ``P + t``) is predicted by the hidden state at ``P + t - 1``.

Memory: the backbone runs once; the output head is applied only to the real response-predicting
hidden states, ``chunk_size`` rows at a time, each chunk checkpointed under autograd, so peak
extra memory is O(chunk_size * V), never O(B * T * V).

Limitation: logits are ``model.get_output_embeddings()(h)``, so models that post-process logits
inside ``forward`` (soft-capping, ``logit_scale``) are not reproduced exactly; Llama models do not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from densepath.models.prefix import (
    adapter_rows,
    checkpointing_in_eval,
    shared_prefix_hidden,
    supports_prefix_sharing,
)

logger = logging.getLogger(__name__)

# auto chunk: 2**24 logits (64 MiB in fp32) per chunk: 341 rows at SmolLM2's 49,152 vocabulary,
# the whole batch at the built-in tasks' ~500 tokens
CHUNK_ELEMENTS = 1 << 24


@dataclass
class TokenLogProbs:
    """Per-token scores of a response, 0 where ``response_mask == 0``.

    ``logp``: (B, T) log pi(y_t | s_t) at the requested temperature. ``values``: (B, T) soft value
    V(s_t) = logsumexp_a z(s_t, a) / temperature, only with ``return_values=True``; the soft
    Q-value of the taken action is ``logp + values``.
    """

    logp: torch.Tensor
    values: torch.Tensor | None = None


def _check_batch(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> None:
    """Fail early and loudly on layout mistakes, which otherwise give silently wrong scores."""
    if prompt_ids.dim() != 2 or response_ids.dim() != 2:
        raise ValueError(
            f"prompt_ids and response_ids must be 2-D (B, P) / (B, T); got shapes "
            f"{tuple(prompt_ids.shape)} and {tuple(response_ids.shape)}. Add a batch dim with .unsqueeze(0)."
        )
    if prompt_mask.shape != prompt_ids.shape:
        raise ValueError(
            f"prompt_mask shape {tuple(prompt_mask.shape)} != prompt_ids shape {tuple(prompt_ids.shape)}; "
            "pass the attention mask that matches prompt_ids."
        )
    if response_mask.shape != response_ids.shape:
        raise ValueError(
            f"response_mask shape {tuple(response_mask.shape)} != response_ids shape "
            f"{tuple(response_ids.shape)}; pass the mask that matches response_ids."
        )
    if prompt_ids.shape[0] != response_ids.shape[0]:
        raise ValueError(
            f"batch sizes differ: prompt_ids has {prompt_ids.shape[0]} rows, response_ids has "
            f"{response_ids.shape[0]}; repeat the prompts (repeat_interleave) to match the responses."
        )
    if prompt_ids.shape[1] < 1:
        raise ValueError("prompt_ids has no columns; every prompt needs at least one real token (BOS).")
    if not bool((prompt_mask[:, -1] != 0).all()):
        raise ValueError(
            "prompt_mask[:, -1] has zeros: prompts must be LEFT-padded with at least one real token "
            "(BOS), so that index P-1 is real in every row. Re-tokenize with padding_side='left'."
        )
    check_right_padded(response_mask, "response_mask")


def check_right_padded(mask: torch.Tensor, name: str = "mask") -> None:
    """Raise if ``mask`` (B, T) is not a contiguous run of ones from column 0.

    Why: terminal handling (V(s_{T_i}) = 0, the last real token) assumes right padding.
    """
    if mask.dim() != 2:
        raise ValueError(f"{name} must be 2-D (B, T); got shape {tuple(mask.shape)}.")
    m = mask != 0  # (B, T)
    if m.shape[1] > 1 and bool((m[:, 1:] & ~m[:, :-1]).any()):
        raise ValueError(
            f"{name} is not right-padded: a 1 follows a 0 in some row. Responses must be RIGHT-padded "
            "with every token after EOS masked to 0."
        )


def _backbone(model: nn.Module) -> nn.Module:
    """Return the decoder stack without the LM head (``get_decoder()`` or ``model.model``)."""
    get_decoder = getattr(model, "get_decoder", None)
    dec = get_decoder() if callable(get_decoder) else None
    if isinstance(dec, nn.Module) and dec is not model:
        return dec
    dec = getattr(model, "model", None)
    if isinstance(dec, nn.Module):
        return dec
    raise TypeError(
        f"cannot find the backbone of {type(model).__name__}: expected a HF causal LM exposing "
        "get_decoder() or .model. Pass a *ForCausalLM model."
    )


def build_inputs(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate prompt and response into ``(input_ids, attention_mask, position_ids)``, each (B, P+T).

    Why a function: every scorer must use identical position ids so that a response scores the
    same whatever padding surrounds it.
    """
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)  # (B, L)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1).long()  # (B, L)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)
    return input_ids, attention_mask, position_ids


def hidden_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
) -> torch.Tensor:
    """Final-layer hidden states (B, L, H) from the backbone only.

    Why: ``model(...)`` would apply the LM head at every position and materialise (B, L, V) logits.
    """
    out = _backbone(model)(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    )
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, L, H)


def selective_log_softmax(
    logits_chunk: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits[index] - logsumexp(logits), logsumexp(logits))`` along the last dim.

    ``logits_chunk`` (N, V) (any leading dims), ``index`` (N,) integer -> ``logp`` (N,), ``lse`` (N,).
    Why: a full ``log_softmax`` would allocate a second (N, V) tensor to read one entry per row.
    """
    if index.shape != logits_chunk.shape[:-1]:
        raise ValueError(
            f"index shape {tuple(index.shape)} must equal logits shape without the vocab dim "
            f"{tuple(logits_chunk.shape[:-1])}."
        )
    lse = torch.logsumexp(logits_chunk, dim=-1)  # (N,)
    picked = logits_chunk.gather(-1, index.long().unsqueeze(-1)).squeeze(-1)  # (N,)
    return picked - lse, lse


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Upcast half precisions to float32 for the softmax; keep float32/float64 as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _tempered_logits(head: nn.Module, h: torch.Tensor, temperature: float) -> torch.Tensor:
    """``head(h)`` upcast by ``_compute_dtype`` and divided by ``temperature``, (..., V)."""
    z = head(h)  # (..., V)
    z = z.to(_compute_dtype(z.dtype))
    if temperature != 1.0:
        z = z / temperature
    return z


def _head_chunk(
    head: nn.Module, h_chunk: torch.Tensor, idx_chunk: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits for one chunk of rows, tempered and upcast, reduced to (logp, lse), each (c,)."""
    return selective_log_softmax(_tempered_logits(head, h_chunk, temperature), idx_chunk)


def _checked_head(model: nn.Module, temperature: float, *batch: torch.Tensor) -> nn.Module:
    """Validate the temperature and ``batch`` (prompt_ids, prompt_mask, response_ids, response_mask);
    return the model's LM head."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use 1.0 for the untempered policy.")
    _check_batch(*batch)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise TypeError(
            f"{type(model).__name__}.get_output_embeddings() returned None; pass a *ForCausalLM model "
            "with an lm_head."
        )
    return head


def _response_hidden(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    group: int = 1,
    adapter_names: list[str] | None = None,
) -> torch.Tensor:
    """The T hidden states that predict the response tokens, (B, T, H).

    ``group`` > 1: rows are prompt-major groups of ``group`` copies of a prompt, which runs once
    (`models.prefix`); models with sliding-window layers fall back to the unshared forward.
    ``adapter_names``: one peft adapter per row (`models.prefix.adapter_rows`).
    """
    if group > 1 and supports_prefix_sharing(model):
        return shared_prefix_hidden(
            model,
            _backbone(model),
            prompt_ids,
            prompt_mask,
            response_ids,
            response_mask,
            group,
            adapter_names,
        )
    P, T = prompt_ids.shape[1], response_ids.shape[1]
    # The last response token's hidden state predicts nothing we score: drop it (causal model).
    L = P + T - 1
    inputs = build_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    with adapter_rows(model, adapter_names), checkpointing_in_eval(model):
        h = hidden_states(model, *(x[:, :L] for x in inputs))  # (B, L, H)
    return h[:, P - 1 : P + T - 1]  # (B, T, H)


def response_logprobs(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    return_values: bool = False,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    group: int = 1,
    adapter_names: list[str] | None = None,
) -> TokenLogProbs:
    """Teacher-forced log pi(y_t | x, y_<t) (and optionally V(s_t)) for every response token.

    Differentiable w.r.t. the model parameters; logits are divided by ``temperature`` and
    half-precision ones upcast to float32 per chunk (module docstring). Zeros at masked positions.
    ``group`` > 1 runs each of the B/group prompts once (prefix sharing, `models.prefix`);
    ``adapter_names`` picks a peft adapter per row (frozen scorers sharing one base).
    """
    head = _checked_head(model, temperature, prompt_ids, prompt_mask, response_ids, response_mask)
    B, T = response_ids.shape
    if chunk_size is None:  # auto: a fixed budget of logits per chunk, whatever the vocabulary
        weight, config = getattr(head, "weight", None), getattr(model, "config", None)
        vocab = int(weight.shape[0]) if weight is not None else getattr(config, "vocab_size", None)
        chunk_size = max(1, CHUNK_ELEMENTS // int(vocab)) if vocab else 1024
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1 (or None for auto), got {chunk_size}")
    chunk_size = int(chunk_size)

    if T == 0:
        empty = torch.zeros(B, 0, device=response_ids.device, dtype=_compute_dtype(head.weight.dtype))
        return TokenLogProbs(logp=empty, values=empty.clone() if return_values else None)

    h = _response_hidden(
        model, prompt_ids, prompt_mask, response_ids, response_mask, int(group), adapter_names
    )  # (B, T, H)
    flat_h = h.reshape(B * T, h.shape[-1])  # (B*T, H)
    rows = (response_mask.reshape(-1) != 0).nonzero(as_tuple=True)[0]  # (N,)
    sel_h = flat_h.index_select(0, rows)  # (N, H)
    sel_idx = response_ids.reshape(-1).index_select(0, rows)  # (N,)

    use_ckpt = torch.is_grad_enabled() and (
        sel_h.requires_grad or any(p.requires_grad for p in head.parameters())
    )
    chunks = []
    for start in range(0, sel_h.shape[0], chunk_size):  # loop over chunks, not tokens
        hc, ic = sel_h[start : start + chunk_size], sel_idx[start : start + chunk_size]  # (c, H), (c,)
        args = (head, hc, ic, float(temperature))
        chunks.append(checkpoint(_head_chunk, *args, use_reentrant=False) if use_ckpt else _head_chunk(*args))
    out_dtype = _compute_dtype(flat_h.dtype)
    logp_sel = lse_sel = flat_h.new_zeros(0, dtype=out_dtype)  # every row empty
    if chunks:
        logp_sel, lse_sel = (torch.cat(parts) for parts in zip(*chunks))  # (N,), (N,)
        out_dtype = logp_sel.dtype

    zeros = torch.zeros(B * T, device=flat_h.device, dtype=out_dtype)
    logp = zeros.index_put((rows,), logp_sel).view(B, T)  # (B, T)
    values = zeros.index_put((rows,), lse_sel).view(B, T) if return_values else None  # (B, T)
    return TokenLogProbs(logp=logp, values=values)


def full_distribution_logprobs(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log-softmax over the whole vocabulary at every response position, (B, T, V); 0 where masked.

    WARNING: materialises a B*T*V tensor; for small exact computations only (ensemble normaliser, KL).
    """
    head = _checked_head(model, temperature, prompt_ids, prompt_mask, response_ids, response_mask)
    B, T = response_ids.shape
    if T == 0:
        V = head.weight.shape[0]
        return torch.zeros(B, 0, V, device=response_ids.device, dtype=_compute_dtype(head.weight.dtype))
    h = _response_hidden(model, prompt_ids, prompt_mask, response_ids, response_mask)  # (B, T, H)
    logp = torch.log_softmax(_tempered_logits(head, h, temperature), dim=-1)  # (B, T, V)
    real = (response_mask != 0).unsqueeze(-1)  # (B, T, 1)
    return torch.where(real, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))


@torch.no_grad()
def exact_kl(
    policy: nn.Module,
    ref: nn.Module,
    *batch: torch.Tensor,
    chunk_size: int | None = None,
    ref_adapter: str | None = None,
):
    """KL(policy(.|s) || ref(.|s)) over the whole vocabulary at every response state, (B, T); 0 where
    masked. Summed along a sample it is the measured KL of that path, not a one-token estimate.

    ``batch`` = (prompt_ids, prompt_mask, response_ids, response_mask); rows are chunked, so no full
    (B, T, V) copy is held. ``ref_adapter``: the reference is ``ref`` with that peft adapter alone (a
    scorer on a shared base; models.adapters).
    """
    heads = [_checked_head(m, 1.0, *batch) for m in (policy, ref)]
    real = batch[3] != 0  # (B, T)
    names = None if ref_adapter is None else [ref_adapter] * batch[0].shape[0]
    hs = [
        _response_hidden(m, *batch, adapter_names=n)[real] for m, n in ((policy, None), (ref, names))
    ]  # (N, H) each
    step = int(chunk_size or max(1, CHUNK_ELEMENTS // int(heads[0].weight.shape[0])))
    parts = [hs[0].new_zeros(0, dtype=_compute_dtype(hs[0].dtype))]
    for s in range(0, hs[0].shape[0], step):
        lp, lq = (
            torch.log_softmax(_tempered_logits(hd, h[s : s + step], 1.0), -1) for hd, h in zip(heads, hs)
        )
        parts.append((lp.exp() * (lp - lq)).sum(-1))  # (c,)
    kl = torch.cat(parts)
    return torch.zeros(real.shape, dtype=kl.dtype, device=kl.device).index_put((real,), kl)
