"""The controls next to DPR on chat data: DFT and low-LR SFT, the reported checkpoint (last, not the
best-NLL one), the sign of the logged val NLL, and tables without `nan` cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import compose_cfg


def _chat_file(path: Path, n: int = 80) -> Path:
    words = ["alpha", "beta", "gamma", "delta", "echo", "foxtrot", "golf", "hotel"]
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"repeat {words[i % 8]} {i % 40}"},
                {"role": "assistant", "content": f"{words[i % 8]} {words[(i + 1) % 8]} {i % 40}"},
            ]
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory) -> tuple[Path, str, dict]:
    import contextlib
    import io

    from densepath.stages.runner import run_stages

    tmp = tmp_path_factory.mktemp("chat_controls")
    cfg = compose_cfg(
        [
            "debug=tiny",
            "pipeline=sft_recover_dpr",
            "+stage@pipeline.stages.continued_sft=continued_sft",
            "+stage@pipeline.stages.dft=dft",
            "+stage@pipeline.stages.sft_lowlr=sft_lowlr",
            "continued_sft.demos=seen",
            "data=jsonl",
            f"data.path={_chat_file(tmp / 'chat.jsonl')}",
            f"data.cache_dir={tmp}",
            "eval.val_size=4",
            "eval.eval_size=4",
            "dpr.steps=3",
            "dpr.selection_every=1",
        ]
    )
    run_dir = tmp / "run"
    run_dir.mkdir()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_stages(cfg, run_dir)
    return run_dir, out.getvalue(), json.loads((run_dir / "metrics.json").read_text())


def test_chat_rl_and_continuations_report_the_last_checkpoint(chat_run):
    run_dir, _, metrics = chat_run
    for stage in ("dpr", "continued_sft", "dft"):
        m = json.loads((run_dir / stage / "manifest.json").read_text())
        assert m["reported_checkpoint"] == "last", stage
        assert m["policy"].endswith("/last"), (stage, m["policy"])
        # the best-NLL checkpoint is kept as a secondary row
        assert f"{stage}/eval_best/nll" in metrics and f"{stage}/eval/nll" in metrics
        assert metrics[f"{stage}/report/last_checkpoint"] == 1.0


def test_val_nll_is_logged_with_its_sign(chat_run):
    run_dir, out, metrics = chat_run
    man = json.loads((run_dir / "dpr" / "manifest.json").read_text())
    history = [v for _, v in man["val_history"]]
    assert len(history) == 4 and all(v > 0 for v in history), history  # steps 0..3, NLL > 0
    assert metrics["dpr/val/best"] == pytest.approx(min(history))
    assert "new best val nll = -" not in out


def test_dft_and_low_lr_sft_controls(chat_run):
    run_dir, _, metrics = chat_run
    dft = json.loads((run_dir / "dft" / "manifest.json").read_text())
    cont = json.loads((run_dir / "continued_sft" / "manifest.json").read_text())
    assert dft["loss"] == "dft" and dft["demos"] == "seen" and cont["loss"] == "nll"
    # DFT is matched to DPR's compute like continued SFT `seen`: same steps, same batch size
    assert metrics["dft/train/steps"] == metrics["dpr/train/steps"] == metrics["continued_sft/train/steps"]
    assert metrics["dft/train/batch_size"] == metrics["continued_sft/train/batch_size"]
    low = json.loads((run_dir / "sft_lowlr" / "manifest.json").read_text())
    sft_lr = 1.0e-3  # conf/sft/default.yaml
    assert low["lr"] == pytest.approx(0.1 * sft_lr) and low["lr_factor"] == 0.1
    assert metrics["sft_lowlr/train/steps"] == metrics["sft/train/steps"]
    assert Path(low["policy"]).is_dir() and "sft_lowlr/eval/nll" in metrics
    # a tenth of the learning rate from the same start fits the demonstrations less in as many steps
    assert metrics["sft_lowlr/eval/nll"] > metrics["sft/eval/nll"]


def test_tables_have_no_nan_cells(chat_run):
    _, out, _ = chat_run
    assert "held-out nll / token" in out
    assert "nan" not in out.lower()


def test_half_data_sft_draws_from_the_length_fitted_split(tmp_path):
    """sft.half_data on chat data whose long rows are dropped: the half is drawn from the rows that fit."""
    from densepath.stages.runner import run_stages

    path = _chat_file(tmp_path / "chat.jsonl")
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for i in range(0, len(rows), 3):  # a third of the answers far over data.max_response_len
        rows[i]["messages"][-1]["content"] = " ".join(["word"] * 200)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose_cfg(
        ["debug=tiny", "pipeline=sft", "sft.half_data=true", "data=jsonl", f"data.path={path}",
         f"data.cache_dir={tmp_path}", "data.max_response_len=24", "eval.val_size=4", "eval.eval_size=4"]
    )  # fmt: skip
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_stages(cfg, run_dir)
    man = json.loads((run_dir / "manifest.json").read_text())
    fit = man["task"]["overlong"]["splits"]["sft"]
    assert fit["dropped_response"] > 0 and fit["rows_out"] == fit["rows_in"] - fit["dropped_response"]
    half = json.loads((run_dir / "sft_half_data" / "manifest.json").read_text())["demo_indices"]
    assert len(half) == fit["rows_out"] // 2 and max(half) < fit["rows_out"]
