"""Bad input gets a clear error that names the input and the fix; nothing already written changes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from conftest import compose_cfg, run_cfg


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_unknown_config_key_names_the_key():
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(["sft.stepz=3"], None)
    msg = str(e.value) + str(e.value.__cause__)
    assert "stepz" in msg and "+sft.stepz" in msg  # Hydra names the key and how to add one


def test_unknown_group_option_lists_the_choices():
    with pytest.raises(MissingConfigException) as e:
        compose_cfg(["baseline=halfway"], None)
    assert "baseline/halfway" in str(e.value) and "sft_half" in str(e.value)


def test_missing_parent_run(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="parent_run=.*no such run directory"):
        run_cfg(["debug=tiny", "pipeline=dpr", f"parent_run={tmp_path / 'nope'}"], tmp_path / "r")


def test_parent_run_without_sft_artefacts(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"stage `sft` has no artefacts.*pipeline=sft"):
        run_cfg(["debug=tiny", "pipeline=dpr", f"parent_run={tmp_path / 'empty'}"], tmp_path / "r")


def test_missing_checkpoint_file(sft_run: Path, tmp_path: Path):
    from densepath.models.io import load_policy

    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_policy(tmp_path / "nothing_here")


def test_baseline_fraction_not_saved_lists_saved_ones(sft_run: Path, tmp_path: Path):
    before = _digest(sft_run)
    with pytest.raises(FileNotFoundError) as e:
        run_cfg(
            [
                "debug=tiny",
                "pipeline=recover",
                "baseline=sft_fraction",
                "baseline.fraction=0.3",
                f"parent_run={sft_run}",
            ],
            tmp_path / "r",
        )
    msg = str(e.value)
    assert "0.3" in msg and "0.25" in msg and "0.50" in msg and "sft.snapshot_fractions" in msg
    assert _digest(sft_run) == before


def test_tokenizer_mismatch_between_policy_and_scorer(sft_run: Path, tmp_path: Path):
    from densepath.models.tokenizer import symbol_tokenizer
    from densepath.rewards.baselines import load_frozen

    other = symbol_tokenizer(list("ABCDEFGH"))
    with pytest.raises(ValueError, match="tokenizer mismatch.*same SFT run|tokenizer mismatch"):
        load_frozen(sft_run / "sft" / "policy", other, "pi_SFT")


def test_prompt_longer_than_max_names_row_and_fix(tmp_path: Path):
    with pytest.raises(
        ValueError, match=r"split `sft` row 0: prompt is \d+ tokens, over data.max_prompt_len=3"
    ):
        run_cfg(["debug=tiny", "pipeline=sft", "data.max_prompt_len=3"], tmp_path / "r")


def test_empty_split(tmp_path: Path):
    from densepath.data.datamodule import encode_rows

    with pytest.raises(ValueError, match="split `sft` is empty"):
        encode_rows(None, None, [], 10, 10, "sft")


def test_bad_snapshot_fraction(tmp_path: Path):
    with pytest.raises(ValueError, match="snapshot_fractions.*not in \\(0, 1\\)"):
        run_cfg(["debug=tiny", "pipeline=sft", "sft.snapshot_fractions=[1.5]"], tmp_path / "r")


def test_unknown_pipeline_name(tmp_path: Path):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="pipeline/dpo"):
        run_cfg(["debug=tiny", "pipeline=dpo"], tmp_path / "r")


def test_model_hf_missing_path(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="model.path=.*no such directory"):
        run_cfg(
            ["debug=tiny", "pipeline=sft", "model=hf", f"model.path={tmp_path / 'nothing'}"], tmp_path / "r"
        )
