"""End-to-end runs of the real configs on tiny settings: artefacts, metrics, lineage, stage reuse."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from conftest import run_cfg
from densepath.models.io import load_policy, save_policy


def _json(p: Path) -> dict:
    return json.loads(p.read_text())


def test_sft_run_writes_policy_snapshots_manifest(sft_run: Path):
    m = _json(sft_run / "metrics.json")
    man = _json(sft_run / "manifest.json")
    assert m["sft/train/steps"] == 8
    for key in (
        "sft/eval/success",
        "sft/eval/greedy/success",
        "sft/eval/sampled/success_lo",
        "sft/val/sampled/success",
    ):
        assert key in m, key
    assert 0.0 <= m["sft/eval/success"] <= 1.0
    # snapshots at 0.25/0.5/0.75 of 8 steps -> steps 2, 4, 6; plus the model before SFT
    snaps = man["stages"]["sft"]["snapshots"]
    assert {k: v["step"] for k, v in snaps.items()} == {"base": 0, "0.25": 2, "0.50": 4, "0.75": 6}
    assert snaps["0.50"]["samples_seen"] == 4 * 8
    for name in ("policy", "snapshot_0.50", "snapshot_base"):
        info = man["checkpoints"][f"sft/{name}"]
        assert Path(info["path"]).is_dir() and len(info["sha256"]) == 64
    assert len(man["config_hash"]) == 64 and len(man["tokenizer_hash"]) == 64
    # the recovery callback ran at the end of SFT and wrote its artefacts
    assert (sft_run / "sft" / "recovery" / "final" / "reward_manifest.json").exists()
    assert "sft/recovery/probe/detection_rate" in m


def test_policy_and_tokenizer_round_trip(sft_run: Path, tmp_path: Path):
    model, tok = load_policy(sft_run / "sft" / "policy")
    info = save_policy(model, tok, tmp_path / "copy")
    model2, tok2 = load_policy(info["path"])
    ids = torch.tensor([[tok.bos_token_id, 5, 7, 9]])
    assert torch.equal(model(ids).logits, model2(ids).logits)
    text = "Add the reversed numbers: 3 2 1 + 6 5 4"
    assert tok(text)["input_ids"] == tok2(text)["input_ids"]
    assert tok.chat_template == tok2.chat_template


def test_recover_stage_alone_from_parent_run(sft_run: Path, tmp_path: Path, capsys):
    run_dir = tmp_path / "rec"
    run_cfg(["debug=tiny", "pipeline=recover", f"parent_run={sft_run}"], run_dir)
    out = capsys.readouterr().out
    assert "Reward recovery" in out and "log_ratio@0.25" in out and "soft_bellman" in out
    man = _json(run_dir / "manifest.json")
    assert man["parent_runs"] == [str(sft_run)]
    files = man["stages"]["recover"]["files"]
    assert Path(files["heatmap"]).read_text().count('class="tok"') > 0
    table = pq.read_table(files["rewards_parquet"]["path"])
    assert {"prompt_ids", "response_ids", "rewards", "source", "family"} <= set(table.column_names)
    assert {"demo", "corrupted", "sft"} <= set(table.column("source").to_pylist())
    rm = _json(run_dir / "recover" / "reward_manifest.json")
    assert rm["formulation"] == "log_ratio" and rm["baseline"]["fraction"] == 0.5
    assert len(rm["sft"]["sha256"][0]) == 64 and rm["tokenizer_hash"] == man["tokenizer_hash"]


def test_logprob_reward_records_baseline_none(sft_run: Path, tmp_path: Path):
    run_dir = tmp_path / "rec"
    run_cfg(
        [
            "debug=tiny",
            "pipeline=recover",
            "reward=logprob",
            "baseline=uniform",
            "recover.compare_all=false",
            f"parent_run={sft_run}",
        ],
        run_dir,
    )
    man = _json(run_dir / "manifest.json")
    assert man["stages"]["recover"]["baseline"] == "none"
    assert _json(run_dir / "recover" / "reward_manifest.json")["baseline"] == "none"


def test_full_pipeline_tiny(tmp_path: Path, capsys):
    run_dir = tmp_path / "pipe"
    run_cfg(["debug=tiny"], run_dir)
    out = capsys.readouterr().out
    assert "Final comparison" in out
    m = _json(run_dir / "metrics.json")
    for stage in ("sft", "dpr", "continued_sft", "rloo"):
        assert f"{stage}/eval/sampled/success" in m, stage
    assert m["eval/success"] == m["dpr/eval/success"]
    # compute report and the compute-matched control
    assert m["dpr/train/steps"] == 2 and m["dpr/train/generated_tokens"] > 0
    assert m["continued_sft/train/steps"] == m["dpr/train/steps"]
    assert (
        abs(m["continued_sft/train/trained_tokens"] - m["dpr/train/trained_tokens"])
        <= 0.1 * m["dpr/train/trained_tokens"] + 12
    )
    man = _json(run_dir / "manifest.json")
    assert set(man["stages"]) == {"sft", "recover", "dpr", "continued_sft", "rloo", "decode"}
    # the decode stage ends the default chain; the comparison shows each policy's val-chosen decoder
    chosen = man["stages"]["decode"]["chosen"]
    assert set(chosen) == {"sft", "dpr", "continued_sft", "rloo"}
    assert "best decoder (val)" in out and "| dpr | " in out
    for p in ("dpr", "continued_sft", "rloo"):
        assert 0.0 <= m[f"decode/{p}/greedy_same_as_mode"] <= 1.0
        assert m[f"decode/{p}/best/success"] == m[f"decode/{p}/eval/{chosen[p]}/success"]
    assert Path(man["checkpoints"]["dpr/best"]["path"]).is_dir()
    assert Path(man["checkpoints"]["dpr/last"]["path"]).is_dir()
    # the per-step sample table / heatmap of the RL stages
    html = (run_dir / "dpr" / "samples" / "step_00000.html").read_text()
    assert html.count('class="tok"') > 0 and "advantages" in html


@pytest.mark.parametrize("stage", ["dpr", "rloo", "continued_sft"])
def test_rl_stages_alone_from_parent(sft_run: Path, tmp_path: Path, stage: str):
    run_dir = tmp_path / stage
    run_cfg(["debug=tiny", f"pipeline={stage}", f"parent_run={sft_run}"], run_dir)
    m = _json(run_dir / "metrics.json")
    assert f"{stage}/eval/sampled/success" in m
    assert m[f"{stage}/train/steps"] == 2


def test_known_reward_pipeline_tiny(tmp_path: Path):
    run_dir = tmp_path / "kr"
    run_cfg(
        ["debug=tiny", "data=known_reward", "sampler.max_new_tokens=9", "pipeline=sft_recover_dpr"], run_dir
    )
    m = _json(run_dir / "metrics.json")
    assert "sft/eval/sampled/true_return" in m and "dpr/eval/sampled/true_return" in m
    assert m["sft/eval/expert_true_return"] > m["sft/eval/uniform_true_return"]
    # the broadened benchmark (data=known_reward's defaults): references per split, the task in the manifest
    assert m["sft/val/best_true_return"] > m["sft/val/expert_true_return"] > m["sft/val/worst_true_return"]
    task = _json(run_dir / "manifest.json")["task"]
    assert task["split_rule"] == "by start" and task["prompt_space"]["prompts"] == 45
    assert task["reward_seeds"] == [0] and task["expert"]["soft_optimal"] is True
    assert "recover/configured/fidelity/expert/pearson" in m
    assert "recover/logprob/fidelity/within/pearson_mean" in m
