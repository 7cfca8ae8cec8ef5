"""The non-editable install: build the wheel, install it in a fresh venv, run the CLI elsewhere."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_conf_and_cli_runs_from_another_directory(tmp_path: Path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], check=True
    )
    wheel = next(dist.glob("densepath-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "densepath/conf/config.yaml" in names and "densepath/conf/pipeline/default.yaml" in names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    # dependencies come from the test venv's site-packages (no network, no torch download); its
    # editable densepath is not visible there because nested .pth files are not processed
    sp = subprocess.run(
        [str(py), "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(sp, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ""}
    out = subprocess.run(
        [
            str(env_dir / "bin" / "densepath"),
            "debug=tiny",
            "pipeline=sft",
            f"data.cache_dir={tmp_path / 'cache'}",
            "hydra.run.dir=run",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    where = subprocess.run(
        [str(py), "-c", "import densepath, sys; print(densepath.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    assert str(env_dir) in where, where  # the wheel's copy ran, not the source tree
    m = json.loads((work / "run" / "metrics.json").read_text())
    assert "sft/eval/success" in m
