"""The `densepath` command: a Hydra app over `conf/`; runs the stages `pipeline` lists."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import traceback
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


@hydra.main(config_path=_conf_dir(), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    """One job. Returns the VALIDATION headline (the Optuna objective; eval is never optimised).

    A crash is written to `error.json` in the job dir (so sweep aggregation lists it as failed);
    in a multirun the other jobs still run.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    if cfg.get("resume") == "auto" and hc.mode == RunMode.MULTIRUN and (run_dir / "DONE").exists():
        logging.getLogger(__name__).info("resume=auto: job %s already finished, skipped", run_dir)
        return json.loads((run_dir / "metrics.json").read_text()).get("objective")
    try:
        _set_offline(cfg)
        from densepath.stages.runner import run_stages

        metrics = run_stages(cfg, run_dir)
    except Exception as e:
        (run_dir / "error.json").write_text(
            json.dumps({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}, indent=2)
        )
        raise
    (run_dir / "DONE").write_text("finished\n")
    return metrics.get("objective")


def _newest(paths) -> Path | None:
    """The most recently modified of `paths` (the first of equals), None when there are none."""
    return max(paths, key=lambda f: f.stat().st_mtime, default=None)


def _resume_sweep_dir(argv: list[str]) -> list[str]:
    """`densepath -m ... resume=auto`: reuse the newest sweep dir launched with the same overrides,
    so that finished jobs are skipped and a long sweep can be completed in several sittings."""
    if not any(a in ("-m", "--multirun") for a in argv) or "resume=auto" not in argv:
        return argv
    if any(a.startswith("hydra.sweep.dir=") for a in argv):
        return argv
    import yaml

    wanted = sorted(a for a in argv if "=" in a and not a.startswith("-") and a != "resume=auto")

    def same_overrides(f: Path) -> bool:
        try:
            task = yaml.safe_load(f.read_text())["hydra"]["overrides"]["task"]
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            return False
        return sorted(o for o in task if o != "resume=auto") == wanted

    best = _newest(f for f in Path("multirun").glob("*/*/multirun.yaml") if same_overrides(f))
    if best is None:
        return argv
    logging.getLogger(__name__).warning("resume=auto: continuing the sweep in %s", best.parent)
    print(f"resume=auto: continuing the sweep in {best.parent}", file=sys.stderr)
    return [*argv, f"hydra.sweep.dir={best.parent}"]


def _resume_run_dir(argv: list[str]) -> list[str]:
    """`densepath ... resume=auto` (single run): continue the newest unfinished run dir whose
    resolved-config hash matches, else start a new one. Logs which directory it picked."""
    if any(a in ("-m", "--multirun") for a in argv) or "resume=auto" not in argv:
        return argv
    if any(a.startswith("hydra.run.dir=") for a in argv):
        return argv
    from hydra import compose, initialize_config_dir

    from densepath.context import config_hash

    overrides = [a for a in argv if "=" in a and not a.startswith("-") and not a.startswith("hydra.")]
    with initialize_config_dir(config_dir=_conf_dir(), version_base="1.3"):
        want = config_hash(compose(config_name="config", overrides=overrides))

    def unfinished_match(man: Path) -> bool:
        if (man.parent / "DONE").exists() or not (man.parent / ".hydra").is_dir():
            return False
        try:
            return json.loads(man.read_text()).get("config_hash") == want
        except (OSError, ValueError):
            return False

    best = _newest(m for m in Path("outputs").glob("**/manifest.json") if unfinished_match(m))
    if best is None:
        print("resume=auto: no unfinished run with this configuration; starting a new one", file=sys.stderr)
        return argv
    print(f"resume=auto: continuing {best.parent}", file=sys.stderr)
    return [*argv, f"hydra.run.dir={best.parent}"]


def main() -> None:
    sys.argv = [sys.argv[0], *_resume_run_dir(_resume_sweep_dir(sys.argv[1:]))]
    _hydra_main()


if __name__ == "__main__":
    main()
