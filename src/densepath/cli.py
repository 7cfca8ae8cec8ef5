"""The `densepath` command: a Hydra app over `conf/`; dispatches the stages named by `algo`."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig


def _conf_dir() -> str:
    """The repo's top-level `conf/` in a source checkout, else the copy shipped inside the wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent.parent / "conf", here / "conf"):
        if (cand / "config.yaml").exists():
            return str(cand)
    raise FileNotFoundError(f"densepath configs not found next to {here}; reinstall the package")


def _set_offline(cfg: DictConfig) -> None:
    """Hub lookups without network stall for ~50 s: stay offline unless the config names a hub id.

    Must run before transformers / datasets are imported (they read these at import time).
    """
    path = str(cfg.model.get("path", "") or "") + " " + str(cfg.data.get("name_or_path", "") or "")
    wants_hub = any(re.fullmatch(r"[\w.-]+/[\w.-]+", p) and not Path(p).exists() for p in path.split() if p)
    if not wants_hub:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")


def run(cfg: DictConfig) -> dict:
    _set_offline(cfg)
    from hydra.core.hydra_config import HydraConfig

    from densepath.stages.runner import run_stages

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    return run_stages(cfg, run_dir)


@hydra.main(config_path=_conf_dir(), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    metrics = run(cfg)
    headline = metrics.get("headline")
    return headline


def main() -> None:
    sys.exit(_hydra_main())


if __name__ == "__main__":
    main()
