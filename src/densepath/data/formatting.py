"""Chat formatting and tokenization: prompt ids and response ids by prefix difference.

The response ids are what the model must produce after the generation prompt: the assistant content
and the EOS token (anything the template appends after EOS, such as a newline, is dropped, so the
trained sequence ends exactly where generation stops). This works for any chat template, with or
without `{% generation %}` markers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Encoded:
    prompt_ids: list[int]
    response_ids: list[int]  # ends with EOS when a response was given


def _ids(out) -> list[int]:
    # transformers 5: apply_chat_template(tokenize=True) returns a BatchEncoding
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    return _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


def encode_pair(tokenizer, messages: list[dict], response: str, *, where: str = "") -> Encoded:
    """Tokenize a prompt and its demonstration; `where` names the row in error messages."""
    prompt = encode_prompt(tokenizer, messages)
    full = _ids(
        tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=True)
    )
    if full[: len(prompt)] != prompt:
        raise ValueError(
            f"{where}: the chat template renders the prompt differently with and without the answer; "
            "prefix-difference tokenization needs a template whose generation prompt is a prefix "
            "of the full conversation"
        )
    return Encoded(prompt, _until_eos(full[len(prompt) :], tokenizer.eos_token_id))


def _until_eos(resp: list[int], eos: int) -> list[int]:
    """The response up to and including its first EOS, which is appended when missing."""
    return resp[: resp.index(eos) + 1] if eos in resp else resp + [eos]


def encode_many(tokenizer, rows: list[tuple[list[dict], str]]) -> list[Encoded]:
    """Batch version: render strings with the template, tokenize in one fast call.

    Falls back to per-row `encode_pair` when a rendered prompt is not a token prefix of the rendered
    conversation (rare templates).
    """
    prompts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m, _ in rows]
    fulls = [
        tokenizer.apply_chat_template(m + [{"role": "assistant", "content": r}], tokenize=False)
        for m, r in rows
    ]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    f_ids = tokenizer(fulls, add_special_tokens=False)["input_ids"]
    return [
        Encoded(p, _until_eos(f[len(p) :], tokenizer.eos_token_id))
        if f[: len(p)] == p
        else encode_pair(tokenizer, rows[i][0], rows[i][1], where=f"row {i}")
        for i, (p, f) in enumerate(zip(p_ids, f_ids))
    ]


def answer_text(tokenizer, ids: list[int]) -> str:
    """The text a verifier judges: the answer's tokens without its final EOS. Special tokens emitted
    mid-answer stay in the text (as their literal strings), so they fail verification (strict)."""
    if ids and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=False)
