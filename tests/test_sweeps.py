"""Hydra multirun sweeps: one run dir and one wandb run per stage per job, aggregation, launchers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF, compose_cfg

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "densepath"]


def _env(tmp_path: Path) -> dict:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }


def _run(args: list[str], tmp_path: Path, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [*CLI, *args], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=1200
    )
    if check:
        assert out.returncode == 0, out.stderr[-4000:]
    return out


@pytest.mark.slow
def test_multirun_two_configs_two_seeds_wandb_offline_and_aggregate(tmp_path: Path):
    sweep = tmp_path / "sweep"
    _run(
        [
            "-m",
            "debug=tiny",
            "pipeline=sft",
            "+stage@pipeline.stages.recover=recover",
            "reward=log_ratio,logprob",
            "seed=0,1",
            "logger=wandb",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert len(jobs) == 4
    run_ids = set()
    for job in jobs:
        assert (job / "metrics.json").exists() and (job / "DONE").exists()
        for stage in ("sft", "recover"):
            files = list((job / stage).glob("wandb/offline-run-*/run-*.wandb"))
            assert len(files) == 1, (job, stage, files)
            run_ids.add(files[0].parent.name)
    assert len(run_ids) == 8  # one distinct offline run per stage of each job

    from densepath.sweeps.aggregate import aggregate

    stats = aggregate(sweep, metric="recover/configured/probe/token_auroc", reference="reward=log_ratio")
    out = (sweep / "aggregate" / "summary.md").read_text()
    assert "reward=log_ratio" in out and "reward=logprob" in out
    # independent check of the numbers
    vals: dict[str, dict[int, float]] = {}
    for job in jobs:
        ov = (job / ".hydra" / "overrides.yaml").read_text()
        cfg = "reward=logprob" if "reward=logprob" in ov else "reward=log_ratio"
        seed = 1 if "seed=1" in ov else 0
        vals.setdefault(cfg, {})[seed] = json.loads((job / "metrics.json").read_text())[
            "recover/configured/probe/token_auroc"
        ]
    from scipy import stats as st

    rows = list(csv.DictReader((sweep / "aggregate" / "summary.csv").open()))
    assert len(rows) == 2
    for cfg, by_seed in vals.items():
        x = np.array([by_seed[0], by_seed[1]])
        row = next(r for r in rows if r["configuration"] == cfg)
        assert float(row["mean"]) == pytest.approx(x.mean(), abs=1e-9)
        half = st.t.ppf(0.975, 1) * x.std(ddof=1) / np.sqrt(2)
        assert float(row["ci95_halfwidth"]) == pytest.approx(half, abs=1e-9)
    d = np.array([vals["reward=logprob"][s] - vals["reward=log_ratio"][s] for s in (0, 1)])
    assert stats is not None and "paired" in (sweep / "aggregate" / "summary.md").read_text().lower()
    assert f"{d.mean():.3f}" in out or f"{d.mean():.4f}" in out


@pytest.mark.slow
def test_failing_job_is_recorded_and_others_run(tmp_path: Path):
    sweep = tmp_path / "sweep"
    out = _run(
        [
            "-m",
            "debug=tiny",
            "pipeline=sft",
            "sft.snapshot_fractions=[0.5],[1.5]",
            "callbacks.reward_recovery.enabled=false",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        check=False,
    )
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert len(jobs) == 2
    ok = [j for j in jobs if (j / "metrics.json").exists() and (j / "DONE").exists()]
    bad = [j for j in jobs if (j / "error.json").exists()]
    assert len(ok) == 1 and len(bad) == 1, out.stderr[-2000:]
    assert "snapshot_fractions" in json.loads((bad[0] / "error.json").read_text())["error"]
    agg = subprocess.run(
        [sys.executable, "-m", "densepath.sweeps.aggregate", str(sweep), "--metric", "eval/success"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
    )
    assert agg.returncode == 0, agg.stderr
    jobs_csv = (sweep / "aggregate" / "jobs.csv").read_text()
    assert "failed" in jobs_csv and "snapshot_fractions" in jobs_csv


@pytest.mark.slow
def test_resume_auto_skips_finished_jobs(tmp_path: Path):
    args = [
        "-m",
        "debug=tiny",
        "pipeline=sft",
        "seed=0,1",
        "callbacks.reward_recovery.enabled=false",
        f"data.cache_dir={tmp_path / 'cache'}",
        "resume=auto",
    ]
    _run(args, tmp_path)
    sweeps = list((tmp_path / "multirun").glob("*/*/multirun.yaml"))
    assert len(sweeps) == 1
    job0 = sweeps[0].parent / "0"
    stamp = (job0 / "metrics.json").stat().st_mtime_ns
    (sweeps[0].parent / "1" / "DONE").unlink()  # job 1 "did not finish"
    out = _run(args, tmp_path)
    assert "continuing the sweep" in out.stderr
    assert len(list((tmp_path / "multirun").glob("*/*/multirun.yaml"))) == 1
    assert (job0 / "metrics.json").stat().st_mtime_ns == stamp  # skipped
    assert (sweeps[0].parent / "1" / "DONE").exists()  # re-run


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_tiny_sweep(tmp_path: Path):
    sweep = tmp_path / "sweep"
    _run(
        [
            "-m",
            "hydra/launcher=submitit_local",
            "debug=tiny",
            "pipeline=sft",
            "seed=0,1",
            "callbacks.reward_recovery.enabled=false",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    assert len(list(sweep.glob("*/metrics.json"))) == 2


def _hydra_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_launcher_configs_compose():
    slurm = _hydra_cfg(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"]).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.partition == "gpu"
    for key in ("timeout_min", "gpus_per_node", "array_parallelism", "tasks_per_node", "setup"):
        assert key in slurm
    local = _hydra_cfg(["hydra/launcher=submitit_local"]).hydra.launcher
    assert local._target_.endswith("LocalLauncher")


def test_optuna_search_optimises_validation():
    cfg = _hydra_cfg(["hparams_search=optuna_dpr"])
    sw = cfg.hydra.sweeper
    assert sw._target_.endswith("OptunaSweeper") and sw.direction == "maximize" and sw.n_trials <= 10
    assert set(sw.params) >= {"dpr.module.lr", "dpr.module.kl_coef", "sampler.temperature", "dpr.module.k"}
    assert list(cfg.pipeline.stages) == ["dpr"]


def test_objective_is_the_validation_headline(sft_run: Path, tmp_path: Path):
    from conftest import run_cfg

    m = run_cfg(["debug=tiny", "pipeline=dpr", f"parent_run={sft_run}"], tmp_path / "r")
    assert m["objective"] == m["dpr/val/success"] == m["val/success"]
    assert m["eval/success"] == m["dpr/eval/success"]
    assert compose_cfg(["resume=auto"], None).resume == "auto"


@pytest.mark.slow
def test_optuna_sweep_runs_and_reads_the_validation_objective(sft_run: Path, tmp_path: Path):
    sweep = tmp_path / "optuna"
    _run(
        [
            "-m",
            "hparams_search=optuna_dpr",
            "debug=tiny",
            f"parent_run={sft_run}",
            "hydra.sweeper.n_trials=2",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    results = sweep / "optimization_results.yaml"
    assert results.exists()
    import yaml

    best = yaml.safe_load(results.read_text())
    assert "dpr.module.lr" in best["best_params"]
    objectives = [
        json.loads((j / "metrics.json").read_text())["objective"]
        for j in sweep.iterdir()
        if (j / "DONE").exists()
    ]
    assert len(objectives) == 2 and best["best_value"] == pytest.approx(max(objectives))


@pytest.mark.slow
def test_the_controls_compose_with_a_sweep(sft_run: Path, tmp_path: Path):
    """Continued SFT's `demos`, the half-data baseline and the decode grid as sweep axes."""
    sweep = tmp_path / "controls"
    _run(
        [
            "-m",
            "debug=tiny",
            "pipeline=continued_sft",
            "+stage@pipeline.stages.decode=decode",
            f"parent_run={sft_run}",
            "continued_sft.demos=fresh,seen",
            "decode.beam_widths=[2],[2,3]",
            "decode.best_of_n=[2]",
            "baseline=half_data",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert len(jobs) == 4
    seen = set()
    for job in jobs:
        man = json.loads((job / "manifest.json").read_text())["stages"]
        m = json.loads((job / "metrics.json").read_text())
        widths = man["decode"]["beam_widths"]
        seen.add((man["continued_sft"]["demos"], tuple(widths)))
        assert man["decode"]["reward"]["baseline"]["name"] == "half_data"
        assert man["decode"]["reference"] == f"sft beam{max(widths)}"
        assert set(man["decode"]["chosen"]) == {"sft", "continued_sft"}
        assert all(f"decode/continued_sft/eval/beam{w}/cost" in m for w in widths)
    assert seen == {(d, w) for d in ("fresh", "seen") for w in ((2,), (2, 3))}
