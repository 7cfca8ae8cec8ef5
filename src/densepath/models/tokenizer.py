"""Tokenizers for the built-in tasks: a locally trained BPE and a fixed symbol vocabulary.

Both are wrapped as transformers fast tokenizers with a chat template, so the rest of the
framework treats them exactly like a hub tokenizer (``apply_chat_template``, ``save_pretrained``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import string
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)

PAD, BOS, EOS, UNK = "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"
USER, ASSISTANT, SYSTEM = "<|user|>", "<|assistant|>", "<|system|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, USER, ASSISTANT, SYSTEM]

# `{% generation %}` marks the assistant span so HF can return an assistant mask; the EOS is part of it
# (the model must learn to stop).
CHAT_TEMPLATE = (
    "{{ '<|bos|>' }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{ '<|user|>' + message['content'] }}"
    "{%- elif message['role'] == 'system' -%}{{ '<|system|>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '<|assistant|>' }}"
    "{% generation %}{{ message['content'] + '<|eos|>' }}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)

# The symbol tokenizer (known_reward): BOS, then the prompt words between role markers when the prompt is
# not empty (an empty prompt, the original benchmark, is BOS alone), then the answer.
SYMBOL_CHAT_TEMPLATE = (
    "{{ '<|bos|>' }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' and message['content'] -%}"
    "{{ '<|user|> ' + message['content'] + ' <|assistant|>' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] + ' <|eos|>' }}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def _wrap(tok: Tokenizer, template: str) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )
    fast.add_special_tokens({"additional_special_tokens": [USER, ASSISTANT, SYSTEM]})
    fast.chat_template = template
    fast.padding_side = "left"
    return fast


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, cache_dir: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """Train (or load from `cache_dir`) a BPE tokenizer on `texts`; the cache key hashes the corpus and
    the settings, so a changed task generator retrains."""
    texts = list(texts)
    payload = json.dumps({"v": 1, "vocab_size": vocab_size, "texts": texts})
    key = hashlib.sha256(payload.encode()).hexdigest()[:16]
    target = Path(cache_dir) / f"bpe-{key}" if cache_dir is not None else None
    if target is not None and (target / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(target))

    tok = Tokenizer(models.BPE(unk_token=UNK))
    # Words split at spaces; every digit is its own pre-token (with its leading space if any), and
    # punctuation is isolated: task payloads (digits, letters written space-separated) become one
    # token per character, which keeps arithmetic learnable and the corruption probe well defined.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
            pre_tokenizers.Split(Regex("▁?[0-9]"), behavior="isolated"),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    alphabet = list(string.ascii_letters + string.digits + "▁")
    kw = dict(special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet, min_frequency=2, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(vocab_size=vocab_size, **kw))
    fast = _wrap(tok, CHAT_TEMPLATE)
    if target is not None:
        _publish(fast, target)
        log.info("trained BPE tokenizer (%d tokens) cached at %s", len(fast), target)
    return fast


def _publish(fast: PreTrainedTokenizerFast, target: Path) -> None:
    """Save into a private temp dir, then rename it to `target` in one step. Concurrent sweep jobs train
    the same tokenizer at once: each writes its own dir, the first rename wins, and a reader never sees
    a half-written cache (the old shared `<target>.tmp` let one job move the files of another)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        fast.save_pretrained(str(tmp))
        try:
            tmp.rename(target)  # atomic; also replaces an empty dir left by an older version
        except OSError:
            if not (target / "tokenizer.json").exists():
                raise  # not another job's finished copy: something else is in the way
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def symbol_tokenizer(symbols: list[str]) -> PreTrainedTokenizerFast:
    """A fixed word-level tokenizer: special tokens plus one token per symbol (known_reward)."""
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *symbols])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return _wrap(tok, SYMBOL_CHAT_TEMPLATE)


def tokenizer_hash(tok: PreTrainedTokenizerFast) -> str:
    """A content hash of the vocabulary, merges, special tokens and chat template."""
    payload = tok.backend_tokenizer.to_str() + (tok.chat_template or "")
    return hashlib.sha256(payload.encode()).hexdigest()
