"""The built-in tokenizers keep task payloads one character per token and round-trip."""

from __future__ import annotations

import random

import pytest

from densepath.data.formatting import encode_pair, encode_prompt
from densepath.data.toy import FAMILIES, make_splits
from densepath.models.tokenizer import symbol_tokenizer, tokenizer_hash, train_bpe_tokenizer


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    splits = make_splits(0, {"sft": 3000, "rl": 10, "val": 10, "eval": 10})
    texts = [e.prompt for s in splits.values() for e in s] + [e.response for s in splits.values() for e in s]
    return train_bpe_tokenizer(texts, 1024, tmp_path_factory.mktemp("tok")), splits


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "words"])
def test_corrupting_one_payload_char_changes_exactly_one_token(bpe, family):
    tok, splits = bpe
    rng = random.Random(0)
    rows = [e for e in splits["sft"] if e.family == family][:100]
    for e in rows:
        bad, _ = FAMILIES[family].corrupt(e.meta, e.response, rng)
        a = tok(e.response, add_special_tokens=False)["input_ids"]
        b = tok(bad, add_special_tokens=False)["input_ids"]
        assert len(a) == len(b), (e.response, bad)
        assert sum(x != y for x, y in zip(a, b)) == 1, (e.response, bad)


def test_digits_and_letters_are_single_tokens(bpe):
    tok, _ = bpe
    for c in "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
        assert len(tok(f"x {c} y", add_special_tokens=False)["input_ids"]) == 3, c
    assert len(tok("975", add_special_tokens=False)["input_ids"]) == 3  # never a multi-digit token


def test_chat_round_trip_and_eos(bpe):
    tok, splits = bpe
    e = splits["eval"][0]
    msgs = [{"role": "user", "content": e.prompt}]
    enc = encode_pair(tok, msgs, e.response)
    assert enc.prompt_ids == encode_prompt(tok, msgs)
    assert enc.response_ids[-1] == tok.eos_token_id
    assert tok.decode(enc.response_ids, skip_special_tokens=True) == e.response
    assert tok.decode(enc.prompt_ids, skip_special_tokens=True).strip() == e.prompt


def test_cache_returns_the_same_tokenizer(tmp_path):
    texts = ["a b c", "sort 3 1 2"] * 20
    t1 = train_bpe_tokenizer(texts, 200, tmp_path)
    t2 = train_bpe_tokenizer(texts, 200, tmp_path)
    assert tokenizer_hash(t1) == tokenizer_hash(t2)
    assert tokenizer_hash(
        train_bpe_tokenizer(texts + ["brand new words here"] * 10, 200, tmp_path)
    ) != tokenizer_hash(t1)


def test_symbol_tokenizer_prompt_is_bos_only():
    tok = symbol_tokenizer(list("ABCDEFGH"))
    msgs = [{"role": "user", "content": ""}]
    assert encode_prompt(tok, msgs) == [tok.bos_token_id]
    enc = encode_pair(tok, msgs, "A C H")
    assert tok.convert_ids_to_tokens(enc.response_ids) == ["A", "C", "H", "<|eos|>"]
