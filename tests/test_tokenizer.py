"""The built-in tokenizers keep task payloads one character per token and round-trip."""

from __future__ import annotations

import random

import pytest

from densepath.data.formatting import encode_pair, encode_prompt
from densepath.data.sources import ToyTask
from densepath.data.toy import DEFAULT_FAMILIES, FAMILIES, make_splits
from densepath.models.tokenizer import symbol_tokenizer, tokenizer_hash, train_bpe_tokenizer


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    splits = make_splits(0, {"sft": 3000, "rl": 10, "val": 10, "eval": 10})
    texts = [e.prompt for s in splits.values() for e in s] + [e.response for s in splits.values() for e in s]
    return train_bpe_tokenizer(texts, 1024, tmp_path_factory.mktemp("tok")), splits


def _one_token_changed(tok, family: str, pairs: list[tuple[dict, str]]) -> None:
    """Each (meta, demonstration) corrupted once: same token count, exactly one token differs."""
    rng = random.Random(0)
    assert len(pairs) >= 50, family
    for meta, response in pairs:
        bad, _ = FAMILIES[family].corrupt(meta, response, rng)
        a = tok(response, add_special_tokens=False)["input_ids"]
        b = tok(bad, add_special_tokens=False)["input_ids"]
        assert len(a) == len(b), (response, bad)
        assert sum(x != y for x, y in zip(a, b)) == 1, (response, bad)


@pytest.mark.parametrize("family", [f for f in DEFAULT_FAMILIES if f != "words"])
def test_corrupting_one_payload_char_changes_exactly_one_token(bpe, family):
    tok, splits = bpe
    _one_token_changed(tok, family, [(e.meta, e.response) for e in splits["sft"] if e.family == family][:100])


def test_path_corruption_is_one_token_in_its_own_tokenizer(tmp_path):
    """data=paths trains its tokenizer on path prompts alone, which write only the row letters a-d; the
    family's `tokenizer_texts` keep the letters its corruptions write (e-z) one token too."""
    task = ToyTask(
        families=["path"], sizes={"sft": 400, "rl": 8, "val": 8, "eval": 8}, cache_dir=str(tmp_path)
    )
    tok = task.build_tokenizer()
    _one_token_changed(tok, "path", [(r["meta"], r["response"]) for r in task.splits()["sft"][:100]])
    for c in "abcdefghijklmnopqrstuvwxyz":  # (grids hold 0, 1, 2 and 9 only: other digits need not be tokens)
        assert len(tok(f"x {c} y", add_special_tokens=False)["input_ids"]) == 3, c


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


_TRAIN_AT = """
import sys, time
from densepath.models.tokenizer import tokenizer_hash, train_bpe_tokenizer
texts = [f"item {i} costs {i * 7 % 97} coins and {i % 13} gems" for i in range(400)]
while time.time() < float(sys.argv[2]):  # every job trains and publishes at the same moment
    time.sleep(0.005)
print(tokenizer_hash(train_bpe_tokenizer(texts, 200, sys.argv[1])))
"""


def test_concurrent_jobs_training_one_cached_tokenizer_all_succeed(tmp_path):
    """A submitit sweep's jobs train the same tokenizer into one cache at once (the CI failure of stop 26:
    one job moved another's files out of a shared `<key>.tmp`); every job must get the same tokenizer,
    and the cache must hold it alone."""
    import subprocess
    import sys
    import time

    start = f"{time.time() + 8:.3f}"  # after every interpreter has imported transformers
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", _TRAIN_AT, str(tmp_path), start], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    hashes = [job.communicate(timeout=120)[0].strip() for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 4
    assert len(set(hashes)) == 1 and hashes[0]
    (cached,) = tmp_path.iterdir()  # no temp dirs left behind
    assert cached.name.startswith("bpe-") and (cached / "tokenizer.json").exists()


def test_publishing_onto_a_finished_cache_keeps_it_and_a_blocked_one_fails(tmp_path):
    from densepath.models.tokenizer import _publish

    tok = symbol_tokenizer(["a", "b"])
    _publish(tok, tmp_path / "bpe-x")
    _publish(tok, tmp_path / "bpe-x")  # another job got there first: fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bpe-x"]
    (tmp_path / "bpe-y").mkdir()
    (tmp_path / "bpe-y" / "stray.txt").write_text("not a tokenizer")
    with pytest.raises(OSError):
        _publish(tok, tmp_path / "bpe-y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bpe-x", "bpe-y"]
