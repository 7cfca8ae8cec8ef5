"""Teacher-forced per-token log-probabilities of a response under a causal LM.

This is the single scoring kernel used by the reward models (frozen pi_SFT and
pi_base, no grad) and by the policy loss (pi_theta, with grad). It follows the
project batch layout:

- ``prompt_ids (B, P)`` LEFT-padded, ``prompt_mask (B, P)``;
- ``response_ids (B, T)`` RIGHT-padded, ``response_mask (B, T)`` (EOS is a real
  token; anything after it is 0);
- ``input_ids = cat([prompt_ids, response_ids], 1)`` and
  ``position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)``;
- response token ``t`` (index ``P + t``) is predicted by the hidden state at
  index ``P + t - 1``, so the T needed hidden states sit at ``P-1 .. P+T-2``.

Memory: the backbone runs once over the whole sequence, but the output head is
applied only to the T response-predicting hidden states, and only
``chunk_size`` rows of them at a time. Under autograd each chunk is
checkpointed, so the (chunk_size, V) logits are recomputed in backward instead
of being kept alive: peak extra memory is O(chunk_size * V) in both passes,
never O(B * T * V).

Limitation: the logits are taken as ``model.get_output_embeddings()(h)``.
Models that post-process logits inside ``forward`` (final logit soft-capping,
``logit_scale``) are not reproduced exactly; the Llama-family models used here
do not do that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# auto chunk: 2**24 logits (64 MiB in fp32) per chunk: 341 rows at SmolLM2's 49,152 vocabulary,
# the whole batch at the built-in tasks' ~500 tokens
CHUNK_ELEMENTS = 1 << 24


@dataclass
class TokenLogProbs:
    """Per-token scores of a response.

    ``logp``: (B, T) log pi(y_t | s_t) at the requested temperature, 0 where
    ``response_mask == 0``.
    ``values``: (B, T) soft value V(s_t) = logsumexp_a z(s_t, a) / temperature,
    0 where masked; only filled when ``return_values=True``. The soft
    Q-value of the taken action is ``logp + values``.
    """

    logp: torch.Tensor
    values: torch.Tensor | None = None


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #


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


# --------------------------------------------------------------------------- #
# building blocks
# --------------------------------------------------------------------------- #


def _backbone(model: nn.Module) -> nn.Module:
    """Return the decoder stack without the LM head (``get_decoder()`` or ``model.model``)."""
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        dec = get_decoder()
        if isinstance(dec, nn.Module) and dec is not model:
            return dec
    dec = getattr(model, "model", None)
    if isinstance(dec, nn.Module):
        return dec
    raise TypeError(
        f"cannot find the backbone of {type(model).__name__}: expected a HF causal LM exposing "
        "get_decoder() or .model. Pass a *ForCausalLM model."
    )


def _output_head(model: nn.Module) -> nn.Module:
    """Return the LM head (``get_output_embeddings()``)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise TypeError(
            f"{type(model).__name__}.get_output_embeddings() returned None; pass a *ForCausalLM model "
            "with an lm_head."
        )
    return head


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

    Why: running ``model(...)`` would apply the LM head at every position and materialise
    (B, L, V) logits; we only need the head at the response-predicting positions, in chunks.
    """
    out = _backbone(model)(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
    )
    h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return h  # (B, L, H)


def selective_log_softmax(
    logits_chunk: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(logits[index] - logsumexp(logits), logsumexp(logits))`` along the last dim.

    Why: a full ``log_softmax`` would allocate a second (N, V) tensor just to read one entry per
    row; gathering and subtracting the logsumexp needs only O(N) extra.

    ``logits_chunk`` (N, V) (any leading dims), ``index`` (N,) integer -> ``logp`` (N,), ``lse`` (N,).
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
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _head_chunk(
    head: nn.Module, h_chunk: torch.Tensor, idx_chunk: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits for one chunk of rows, tempered and upcast, reduced to (logp, lse)."""
    z = head(h_chunk)  # (c, V)
    z = z.to(_compute_dtype(z.dtype))
    if temperature != 1.0:
        z = z / temperature
    return selective_log_softmax(z, idx_chunk)


def _response_hidden(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """The T hidden states that predict the response tokens, (B, T, H)."""
    P, T = prompt_ids.shape[1], response_ids.shape[1]
    input_ids, attention_mask, position_ids = build_inputs(
        prompt_ids, prompt_mask, response_ids, response_mask
    )
    # The last response token's hidden state predicts nothing we score: drop it (causal model,
    # so the remaining states are unchanged).
    L = P + T - 1
    h = hidden_states(model, input_ids[:, :L], attention_mask[:, :L], position_ids[:, :L])  # (B, L, H)
    return h[:, P - 1 : P + T - 1]  # (B, T, H)


# --------------------------------------------------------------------------- #
# public scorers
# --------------------------------------------------------------------------- #


def response_logprobs(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_values: bool = False,
    chunk_size: int | None = None,
) -> TokenLogProbs:
    """Teacher-forced log pi(y_t | x, y_<t) (and optionally V(s_t)) for every response token.

    The backbone runs once; the LM head is applied to the real response-predicting rows only,
    ``chunk_size`` rows at a time (checkpointed under autograd), so memory is O(chunk_size * V).
    Differentiable w.r.t. the model parameters. Logits are divided by ``temperature`` before
    the softmax. Half-precision logits are upcast to float32 per chunk; float64 models stay float64.
    Returns zeros at masked positions.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use 1.0 for the untempered policy.")
    _check_batch(prompt_ids, prompt_mask, response_ids, response_mask)
    B, T = response_ids.shape
    head = _output_head(model)
    if chunk_size is None:  # auto: a fixed budget of logits per chunk, whatever the vocabulary
        weight = getattr(head, "weight", None)
        vocab = (
            int(weight.shape[0])
            if weight is not None
            else getattr(getattr(model, "config", None), "vocab_size", None)
        )
        chunk_size = max(1, CHUNK_ELEMENTS // int(vocab)) if vocab else 1024
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1 (or None for auto), got {chunk_size}")
    chunk_size = int(chunk_size)

    if T == 0:
        empty = torch.zeros(B, 0, device=response_ids.device, dtype=_compute_dtype(head.weight.dtype))
        return TokenLogProbs(logp=empty, values=empty.clone() if return_values else None)

    h = _response_hidden(model, prompt_ids, prompt_mask, response_ids, response_mask)  # (B, T, H)
    flat_h = h.reshape(B * T, h.shape[-1])  # (B*T, H)
    rows = (response_mask.reshape(-1) != 0).nonzero(as_tuple=True)[0]  # (N,)
    sel_h = flat_h.index_select(0, rows)  # (N, H)
    sel_idx = response_ids.reshape(-1).index_select(0, rows)  # (N,)

    use_ckpt = torch.is_grad_enabled() and (
        sel_h.requires_grad or any(p.requires_grad for p in head.parameters())
    )
    logps, lses = [], []
    for start in range(0, sel_h.shape[0], int(chunk_size)):  # loop over chunks, not tokens
        hc = sel_h[start : start + chunk_size]  # (c, H)
        ic = sel_idx[start : start + chunk_size]  # (c,)
        if use_ckpt:
            lp, lse = checkpoint(_head_chunk, head, hc, ic, float(temperature), use_reentrant=False)
        else:
            lp, lse = _head_chunk(head, hc, ic, float(temperature))
        logps.append(lp)
        lses.append(lse)

    out_dtype = _compute_dtype(flat_h.dtype)
    if logps:
        logp_sel = torch.cat(logps)  # (N,)
        lse_sel = torch.cat(lses)  # (N,)
        out_dtype = logp_sel.dtype
    else:  # every row empty
        logp_sel = flat_h.new_zeros(0, dtype=out_dtype)
        lse_sel = flat_h.new_zeros(0, dtype=out_dtype)

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
    """log-softmax over the whole vocabulary at every response position, (B, T, V).

    WARNING: materialises a B*T*V tensor. Meant for small exact computations only (ensemble
    baseline normaliser, exact KL, entropy). Rows where ``response_mask == 0`` are all zeros.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use 1.0 for the untempered policy.")
    _check_batch(prompt_ids, prompt_mask, response_ids, response_mask)
    B, T = response_ids.shape
    head = _output_head(model)
    if T == 0:
        V = head.weight.shape[0]
        return torch.zeros(B, 0, V, device=response_ids.device, dtype=_compute_dtype(head.weight.dtype))
    h = _response_hidden(model, prompt_ids, prompt_mask, response_ids, response_mask)  # (B, T, H)
    z = head(h)  # (B, T, V)
    z = z.to(_compute_dtype(z.dtype))
    if temperature != 1.0:
        z = z / temperature
    logp = torch.log_softmax(z, dim=-1)  # (B, T, V)
    return torch.where(
        (response_mask != 0).unsqueeze(-1), logp, torch.zeros((), dtype=logp.dtype, device=logp.device)
    )
