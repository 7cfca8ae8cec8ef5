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
    response_ids: list[int]  # ends with EOS when a response was given, unless truncated
    truncated: bool = False  # the response was cut at data.max_response_len: no EOS (the model must not stop)


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


def prompt_ids_many(tokenizer, messages: list[list[dict]]) -> list[list[int]]:
    """The generation-prompt ids of many conversations (rendered with the template, one tokenizer call)."""
    prompts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    return tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []


def encode_many(
    tokenizer, rows: list[tuple[list[dict], str]], prompt_ids: list[list[int]] | None = None
) -> list[Encoded]:
    """Batch version: render strings with the template, tokenize in one fast call.

    `prompt_ids` (from `prompt_ids_many` on the same rows) skips tokenizing the prompts again. Falls back
    to per-row `encode_pair` when a rendered prompt is not a token prefix of the rendered conversation
    (rare templates).
    """
    p_ids = prompt_ids_many(tokenizer, [m for m, _ in rows]) if prompt_ids is None else prompt_ids
    fulls = [
        tokenizer.apply_chat_template(m + [{"role": "assistant", "content": r}], tokenize=False)
        for m, r in rows
    ]
    f_ids = tokenizer(fulls, add_special_tokens=False)["input_ids"] if fulls else []
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


_SYSTEM_PROBE = "densepath-system-probe-7f3a"
_USER_PROBE = "densepath-user-probe-7f3a"


def default_system_prompt(tokenizer) -> str | None:
    """The system message the chat template renders when a conversation brings none, or None.

    SmolLM2's template injects "You are a helpful AI assistant named SmolLM, trained by Hugging Face"; the
    built-in BPE templates inject nothing. Found by rendering a user turn with and without a probe system
    message: with one the text is `pre + probe + post`, so a template that injects a default renders
    `pre + default + post` without one. Every policy of a run and the IFBench evaluation share the run's
    tokenizer and chat template, so this one value holds for all of them.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    from jinja2 import TemplateError

    user = [{"role": "user", "content": _USER_PROBE}]
    try:
        bare = tokenizer.apply_chat_template(user, tokenize=False)
        with_sys = tokenizer.apply_chat_template(
            [{"role": "system", "content": _SYSTEM_PROBE}, *user], tokenize=False
        )
    except TemplateError:  # e.g. a template that refuses the system role: it cannot inject one either
        return None
    if with_sys.count(_SYSTEM_PROBE) != 1:
        return None  # the template drops (or repeats) system messages
    pre, post = with_sys.split(_SYSTEM_PROBE)
    if len(bare) > len(pre) + len(post) and bare.startswith(pre) and bare.endswith(post):
        return bare[len(pre) : len(bare) - len(post)]
    return None
