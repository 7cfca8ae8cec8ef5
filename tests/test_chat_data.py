"""`data=jsonl` / `data=hf`: validation errors, prompt-disjoint deterministic splits, chat encoding."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from densepath.data.chat import HFDatasetTask, JsonlTask  # noqa: E402
from densepath.data.formatting import encode_pair  # noqa: E402
from densepath.models.tokenizer import train_bpe_tokenizer  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
]


def _msgs_row(i: int) -> dict:
    """Row i; prompts repeat every 30 rows so several rows share a prompt (tests grouping)."""
    p = i % 30
    conv = [
        {"role": "user", "content": f"say {WORDS[p % 13]} {p}"},
        {"role": "assistant", "content": f"{WORDS[i % 13]} {i}"},
    ]
    if p % 3 == 0:  # multi-turn with a system prompt
        conv = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": f"hello {p}"},
            {"role": "assistant", "content": f"hi {WORDS[p % 13]}"},
        ] + conv
    return {"messages": conv}


def _write(path: Path, rows: list, raw: bool = False) -> Path:
    path.write_text("".join((r if raw else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def msgs_file(tmp_path) -> Path:
    return _write(tmp_path / "chat.jsonl", [_msgs_row(i) for i in range(60)])


def _key(r: dict) -> str:
    return json.dumps(r["meta"]["messages"], sort_keys=True)


def test_messages_file_splits_disjoint_deterministic_cover(msgs_file, tmp_path):
    task = JsonlTask(path=str(msgs_file), cache_dir=str(tmp_path))
    s = task.splits()
    assert set(s) == {"sft", "rl", "val", "eval"}
    # 30 distinct prompts: val round(1.5)=2, eval 3, rl 6, sft 19 groups, 2 rows per group
    assert {k: len(v) for k, v in s.items()} == {"val": 4, "eval": 6, "rl": 12, "sft": 38}
    keys = {k: {_key(r) for r in v} for k, v in s.items()}
    names = list(keys)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not keys[a] & keys[b], (a, b)
    responses = sorted(r["response"] for v in s.values() for r in v)
    assert responses == sorted(_msgs_row(i)["messages"][-1]["content"] for i in range(60))
    again = JsonlTask(path=str(msgs_file), cache_dir=str(tmp_path)).splits()
    assert again == s
    other = JsonlTask(path=str(msgs_file), seed=1).splits()
    assert [_key(r) for r in other["eval"]] != [_key(r) for r in s["eval"]]
    # rows: prompt conversation without the answer; display prompt = last user message
    r = next(r for r in s["sft"] if len(r["meta"]["messages"]) == 4)
    assert [m["role"] for m in task.messages(r)] == ["system", "user", "assistant", "user"]
    assert r["prompt"] == task.messages(r)[-1]["content"] and r["prompt"].startswith("say")
    assert r["family"] == "chat" and task.score(s["eval"], ["x"] * len(s["eval"])) == {}
    assert task.verifiable is False and task.headline == "nll" and task.higher_is_better is False


def test_prompt_response_file_and_family(tmp_path):
    rows = [
        {"prompt": f"q {i}", "response": f"a {i}", "family": "math" if i % 2 else "code"} for i in range(20)
    ]
    task = JsonlTask(
        path=str(_write(tmp_path / "pr.jsonl", rows)), val_fraction=0.1, eval_fraction=0.1, rl_fraction=0.1
    )
    s = task.splits()
    assert {k: len(v) for k, v in s.items()} == {"val": 2, "eval": 2, "rl": 2, "sft": 14}
    r = s["sft"][0]
    i = int(r["prompt"].split()[1])
    assert task.messages(r) == [{"role": "user", "content": f"q {i}"}]
    assert r["response"] == f"a {i}" and r["family"] == ("math" if i % 2 else "code")


def test_encoding_masks_only_final_answer(msgs_file, tmp_path):
    task = JsonlTask(path=str(msgs_file))
    tok = train_bpe_tokenizer(task.corpus(), 256, tmp_path)
    gen = tok.apply_chat_template(
        [{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False
    )
    gen_id = tok.convert_tokens_to_ids("<|assistant|>")
    multi = [r for v in task.splits().values() for r in v if len(task.messages(r)) == 4]
    assert multi and gen.endswith("<|assistant|>")
    for r in multi[:5] + task.splits()["val"]:
        enc = encode_pair(tok, task.messages(r), r["response"], where="test")
        assert enc.prompt_ids[-1] == gen_id
        assert enc.response_ids[-1] == tok.eos_token_id
        assert tok.eos_token_id not in enc.response_ids[:-1]
        assert tok.decode(enc.response_ids, skip_special_tokens=True).strip() == r["response"]
    # the earlier assistant turn is in the prompt, not the trained span
    r = multi[0]
    enc = encode_pair(tok, task.messages(r), r["response"])
    prompt_text = tok.decode(enc.prompt_ids, skip_special_tokens=True)
    assert task.messages(r)[2]["content"] in prompt_text  # "hi <word>"
    assert tok.decode(enc.prompt_ids).count("<|assistant|>") == 2


def test_fresh_demonstrations_seeded(msgs_file):
    task = JsonlTask(path=str(msgs_file))
    sft = task.splits()["sft"]
    a, b = task.fresh_demonstrations(10, 3), task.fresh_demonstrations(10, 3)
    assert a == b and len(a) == 10 and all(r in sft for r in a)
    assert len({id(r) for r in a}) == 10  # without replacement when n <= len
    big = task.fresh_demonstrations(len(sft) + 5, 0)
    assert len(big) == len(sft) + 5 and all(r in sft for r in big)


def _good(i=0):
    return json.dumps({"prompt": f"p{i}", "response": f"r{i}"})


BAD = [
    # (name, lines or bytes, expected substrings)
    ("bad_json", [_good(0), "{not json"], ["bad_json.jsonl line 2", "invalid JSON"]),
    (
        "missing",
        [_good(0), _good(1), json.dumps({"text": "x"})],
        ["line 3", '"messages" is missing', '"prompt"+"response"'],
    ),
    ("no_response", [json.dumps({"prompt": "x"})], ["line 1", '"response" is missing']),
    ("msgs_type", [json.dumps({"messages": "hello"})], ["line 1", '"messages" must be a non-empty list']),
    (
        "content_type",
        [json.dumps({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]})],
        ["line 1", "content must be a string"],
    ),
    (
        "bad_role",
        [
            json.dumps(
                {"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]}
            )
        ],
        ["line 1", "'human'", "use one of"],
    ),
    (
        "resp_type",
        [_good(0), json.dumps({"prompt": "q", "response": 5})],
        ["line 2", '"response" must be a string'],
    ),
    (
        "empty_answer",
        [_good(i) for i in range(4)]
        + [
            json.dumps(
                {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}
            )
        ],
        ["line 5", "the assistant answer is empty", "drop the row"],
    ),
    (
        "empty_response",
        [json.dumps({"prompt": "q", "response": ""})],
        ["line 1", "the assistant answer is empty"],
    ),
    (
        "last_user",
        [
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"},
                        {"role": "user", "content": "more"},
                    ]
                }
            )
        ],
        ["line 1", "must be the assistant's answer"],
    ),
    (
        "only_answer",
        [json.dumps({"messages": [{"role": "assistant", "content": "a"}]})],
        ["line 1", "prompt is empty", "add the user turn"],
    ),
    ("not_object", [json.dumps([1, 2])], ["line 1", "expected a JSON object"]),
    (
        "family_type",
        [json.dumps({"prompt": "q", "response": "a", "family": 3})],
        ["line 1", '"family" must be a non-empty string'],
    ),
    (
        "both_styles",
        [json.dumps({"prompt": "q", "response": "a", "messages": []})],
        ["line 1", "keep one style"],
    ),
    (
        "latin1",
        (_good(0) + "\n" + _good(1) + "\n").encode()
        + '{"prompt": "caf\u00e9", "response": "x"}\n'.encode("latin-1"),
        ["latin1.jsonl is not valid UTF-8", "line 3", "byte offset", "re-encode the file as UTF-8"],
    ),
    ("empty", b"", ["empty.jsonl is empty"]),
    ("blank", b"\n  \n\n", ["blank.jsonl", "has no rows"]),
    ("too_small", [_good(i) for i in range(3)], ["too_small.jsonl has 3 distinct prompt", "add rows"]),
    (
        "dup_prompts",
        [json.dumps({"prompt": "same", "response": f"r{i}"}) for i in range(10)],
        ["1 distinct prompt", "add rows"],
    ),
]


@pytest.mark.parametrize("name,content,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_jsonl_inputs(tmp_path, name, content, expected):
    f = tmp_path / f"{name}.jsonl"
    if isinstance(content, bytes):
        f.write_bytes(content)
    else:
        f.write_text("\n".join(content) + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as e:
        JsonlTask(path=str(f)).splits()
    msg = str(e.value)
    assert f"data.path={f}" in msg
    for s in expected:
        assert s in msg, (s, msg)


def test_blank_lines_skipped_and_line_numbers_count_them(tmp_path):
    f = tmp_path / "gaps.jsonl"
    f.write_text("\n".join([_good(i) if i % 2 else "" for i in range(1, 30)] + ["{bad"]) + "\n")
    with pytest.raises(ValueError, match=r"gaps.jsonl line 30: invalid JSON"):
        JsonlTask(path=str(f)).splits()
    f.write_text("\n\n".join(_good(i) for i in range(12)) + "\n\n")
    assert sum(len(v) for v in JsonlTask(path=str(f)).splits().values()) == 12


def test_missing_file_and_bad_fractions(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.path=.*nope.jsonl does not exist.*pass data.path="):
        JsonlTask(path=str(tmp_path / "nope.jsonl")).splits()
    f = _write(tmp_path / "ok.jsonl", [{"prompt": f"p{i}", "response": "r"} for i in range(20)])
    with pytest.raises(ValueError, match=r"sum below 1"):
        JsonlTask(path=str(f), val_fraction=0.4, eval_fraction=0.4, rl_fraction=0.3).splits()
    with pytest.raises(ValueError, match=r"data.rl_fraction=0.0 must be in \(0, 1\)"):
        JsonlTask(path=str(f), rl_fraction=0.0).splits()


# ------------------------------------------------------------------ data=hf


def test_hf_messages_and_prompt_response_columns(tmp_path):
    import datasets

    d1 = tmp_path / "ds_msgs"
    datasets.Dataset.from_list([_msgs_row(i) for i in range(40)]).save_to_disk(str(d1))
    task = HFDatasetTask(name_or_path=str(d1))
    s = task.splits()
    assert sum(len(v) for v in s.values()) == 40 and all(s.values())
    ref = JsonlTask(path=str(_write(tmp_path / "same.jsonl", [_msgs_row(i) for i in range(40)]))).splits()
    strip = lambda sp: {k: [(r["response"], _key(r)) for r in v] for k, v in sp.items()}  # noqa: E731
    assert strip(s) == strip(ref)  # same carving code as jsonl

    d2 = tmp_path / "ds_dict"
    rows = [{"question": f"q {i}", "answer": f"a {i}", "topic": "t"} for i in range(30)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(d2))
    task = HFDatasetTask(
        name_or_path=str(d2),
        columns={"prompt": "question", "response": "answer", "family": "topic"},
        max_rows=20,
    )
    s = task.splits()
    assert sum(len(v) for v in s.values()) == 20
    r = s["sft"][0]
    assert task.messages(r) == [{"role": "user", "content": r["prompt"]}] and r["family"] == "t"
    assert r["response"] == "a " + r["prompt"].split()[1]
    with pytest.raises(ValueError, match=r"no split 'test'.*\['train'\]"):
        HFDatasetTask(
            name_or_path=str(d2), split="test", columns={"prompt": "question", "response": "answer"}
        ).splits()


def test_hf_errors_name_dataset_row_column(tmp_path):
    import datasets

    d = tmp_path / "ds"
    rows = [{"q": f"q {i}", "a": f"a {i}"} for i in range(12)]
    rows[7]["a"] = ""
    datasets.Dataset.from_list(rows).save_to_disk(str(d))
    with pytest.raises(ValueError) as e:
        HFDatasetTask(name_or_path=str(d)).splits()  # default columns: messages
    assert "column 'messages'" in str(e.value) and "available columns: ['q', 'a']" in str(e.value)
    with pytest.raises(ValueError) as e:
        HFDatasetTask(name_or_path=str(d), columns={"prompt": "q", "response": "a"}).splits()
    msg = str(e.value)
    assert f"data.name_or_path={d} row 7" in msg and "assistant answer is empty" in msg and '"a"' in msg
    with pytest.raises(ValueError, match=r"must map either `messages` or both"):
        HFDatasetTask(name_or_path=str(d), columns={"prompt": "q"}).splits()


# ------------------------------------------------------------------ config


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_compose_real_configs(msgs_file, tmp_path):
    from hydra.utils import instantiate

    cfg = _compose(["data=jsonl", f"data.path={msgs_file}", f"data.cache_dir={tmp_path}"])
    task = instantiate(cfg.data)
    assert isinstance(task, JsonlTask) and len(task.splits()["sft"]) == 38

    import datasets

    d = tmp_path / "ds"
    datasets.Dataset.from_list([{"q": f"q {i}", "a": f"a {i}"} for i in range(20)]).save_to_disk(str(d))
    cfg = _compose(
        ["data=hf", f"data.name_or_path={d}", "~data.columns", "+data.columns={prompt: q, response: a}"]
    )
    task = instantiate(cfg.data)
    assert isinstance(task, HFDatasetTask) and sum(len(v) for v in task.splits().values()) == 20


def test_end_to_end_tiny_sft_on_jsonl(msgs_file, tmp_path):
    from densepath.stages.runner import run_stages

    # the whole chain, recovery included (no verifier: the token-corruption probe on held-out demonstrations)
    cfg = _compose(
        [
            "debug=tiny",
            "pipeline=default",
            "data=jsonl",
            f"data.path={msgs_file}",
            f"data.cache_dir={tmp_path}",
            "eval.val_size=4",
            "eval.eval_size=4",
        ]
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_stages(cfg, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "recover/configured/reward/token_mean" in metrics
    for kind in ("random", "sampled"):  # the real-text probe: numbers, not dashes
        assert 0.0 <= metrics[f"recover/configured/probe/{kind}/token_auroc"] <= 1.0
        assert 0.0 <= metrics[f"recover/configured/probe/{kind}/detection_rate"] <= 1.0
    assert "dpr/eval/nll" in metrics
    # the decode stage needs a verifier: in a chain it is skipped and says why
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "judges answers" in manifest["stages"]["decode"]["skipped"]
    for k in ("sft/train/loss", "sft/val/loss", "sft/eval/nll"):
        assert k in metrics, sorted(metrics)
        assert 0.0 < metrics[k] < 20.0, (
            k,
            metrics[k],
        )  # finite; a 256-token BPE gives ~log(256)=5.5 untrained
