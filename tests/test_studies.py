"""The study reports of experiments/<study>/report.py and the gradvar probe on hand-made sweeps and runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from densepath.sweeps.stats import t_interval
from experiments.ablations.report import report_ablations
from experiments.hacking.report import read_curves
from experiments.main.report import report_main


def _job(root: Path, name: str, overrides: list[str], metrics: dict) -> None:
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "DONE").write_text("")


def test_main_report_tables_and_plot(tmp_path: Path):
    sweep = tmp_path / "sweep"
    vals = {"sft": [0.30, 0.35, 0.32], "dpr": [0.31, 0.37, 0.36]}
    for s in range(3):
        m = {}
        for p, v in vals.items():
            m[f"{p}/eval/sampled/success"] = v[s]
            m[f"{p}/eval/greedy/success"] = v[s] + 0.2
            m[f"{p}/eval/sampled/add/success"] = v[s] / 2
        m["decode/sft/best/success"] = 0.5
        _job(sweep, f"seed{s}", ["experiment=main", f"seed={s}"], m)
        (sweep / f"seed{s}" / "decode").mkdir()
        (sweep / f"seed{s}" / "decode" / "manifest.json").write_text(json.dumps({"chosen": {"sft": "beam4"}}))
    (sweep / "seed9" / ".hydra").mkdir(parents=True)  # unfinished: listed, not counted
    (sweep / "seed9" / ".hydra" / "overrides.yaml").write_text("- seed=9\n")
    out = tmp_path / "out"
    report_main(sweep, out)
    md = (out / "results.md").read_text()
    mean, half = t_interval(vals["dpr"])
    assert f"| dpr sampled T=1 | 3 | {mean:.3f} ± {half:.3f} |" in md
    d = np.array(vals["dpr"]) - np.array(vals["sft"])
    assert f"| dpr sampled T=1 | 3 | {d.mean():.3f} |" in md  # paired vs sft sampled
    assert "seed9" in md and (out / "main.png").stat().st_size > 0
    assert "| sft best decoder (val) | 3 | 0.500" in md
    assert "sft: beam4, beam4, beam4" in md


def test_gradvar_runs_on_a_tiny_sft_run(sft_run: Path, tmp_path: Path):
    import shutil

    from experiments.main import gradvar

    run = tmp_path / "run"
    shutil.copytree(sft_run, run)
    (run / ".hydra").mkdir(exist_ok=True)
    from omegaconf import OmegaConf

    from conftest import compose_cfg

    OmegaConf.save(compose_cfg(["debug=tiny"], tmp_path), run / ".hydra" / "config.yaml")
    assert (
        gradvar.main(
            [
                str(run),
                "--batches",
                "3",
                "--prompts",
                "2",
                "--k",
                "2",
                "--max-new-tokens",
                "6",
                "--out",
                str(tmp_path / "gv"),
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "gv" / "gradvar.json").read_text())
    assert set(res) == {e[0] for e in gradvar.ESTIMATORS}
    for r in res.values():
        assert r["noise"] >= 0 and -1 <= r["cos_verifier"] <= 1 and math.isfinite(r["signal"])
    assert res["verifier rloo"]["cos_verifier"] == pytest.approx(1.0) or res["verifier rloo"]["noise"] == 0


def test_ablations_report_pairs_by_seed_and_finds_the_parent_sft(tmp_path: Path):
    parent_root = tmp_path / "beyond"
    for s in range(3):
        (parent_root / f"seed{s}").mkdir(parents=True)
        (parent_root / f"seed{s}" / "metrics.json").write_text(
            json.dumps({"sft/eval/sampled/true_return": 5.0 + s, "sft/eval/greedy/true_return": 10.0})
        )
    sweep = tmp_path / "abl"
    ref = [1.0, 2.0, 3.0]
    alt = [4.0, 4.5, 7.0]
    for s in range(3):
        for name, vals, extra in (("ref", ref, []), ("alt", alt, ["reward=logprob"])):
            d = sweep / f"{name}{s}"
            _job(
                sweep,
                f"{name}{s}",
                ["experiment=ablate", *extra, f"seed={s}"],
                {"dpr/eval/sampled/true_return": vals[s], "dpr/eval_last/sampled/true_return": vals[s] - 1},
            )
            (d / ".hydra" / "config.yaml").write_text(f"seed: {s}\nparent_run: {parent_root}/seed${{seed}}\n")
    out = tmp_path / "out"
    report_ablations(sweep, out)
    md = (out / "results.md").read_text()
    assert "SFT (the starting point): sampled 6.000" in md  # parents' mean of 5, 6, 7
    d = np.array(alt) - np.array(ref)
    mean, half = t_interval(d)
    assert f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]" in md
    assert (out / "ablations.png").stat().st_size > 0


def test_read_curves_takes_the_logged_training_rows(tmp_path: Path):
    d = tmp_path / "job" / "dpr" / "csv"
    d.mkdir(parents=True)
    (d / "metrics.csv").write_text(
        "step,train/reward,train/true_success,val/success\n0,1.5,0.25,\n1,2.5,0.5,\n1,,,0.4\n"
    )
    c = read_curves(tmp_path / "job")
    assert c["step"].tolist() == [0.0, 1.0] and c["train/reward"].tolist() == [1.5, 2.5]
    assert c["train/true_success"].tolist() == [0.25, 0.5]
