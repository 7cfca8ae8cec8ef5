"""Experiment tracking backends (`logger=`): wandb (offline unless configured), csv, none.

Each returns a Lightning logger per stage and is finished per stage, so a pipeline job gives one
tracking run per stage and multirun jobs never merge into one run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class NoTracking:
    def logger(self, stage_dir: Path, stage: str, run_name: str, config: dict):
        return False

    def log_metrics(self, metrics: dict) -> None:
        return None

    def log_artifact(self, name: str, kind: str, path: Path, metadata: dict | None = None) -> None:
        return None

    def use_artifact(self, name: str) -> None:
        return None

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        return None

    def log_html(self, name: str, path: Path) -> None:
        return None

    def finish(self, summary: dict | None = None) -> None:
        return None


@dataclass
class CSVTracking(NoTracking):
    def logger(self, stage_dir: Path, stage: str, run_name: str, config: dict):
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(stage_dir), name="csv", version="")


@dataclass
class WandbTracking(NoTracking):
    """wandb in offline mode unless the user configured otherwise (WANDB_MODE / logger.mode).

    A failure to start wandb (no network, bad key) never kills training: it warns once and falls
    back to csv.
    """

    project: str = "densepath"
    entity: str | None = None
    mode: str | None = None  # None: $WANDB_MODE if set, else offline
    group: str | None = None  # None: the multirun sweep id (sweep dir name), else no group
    tags: list[str] = field(default_factory=list)
    log_checkpoints: bool = True  # checkpoints and reward artefacts as wandb artifacts
    _run = None
    _warned = False

    def __getstate__(self):  # a live wandb run cannot cross a ddp_spawn boundary
        state = dict(self.__dict__)
        state["_run"] = None
        return state

    def _mode(self) -> str:
        if self.mode:
            return self.mode
        return os.environ.get("WANDB_MODE", "offline")

    def logger(self, stage_dir: Path, stage: str, run_name: str, config: dict):
        try:
            from lightning.pytorch.loggers import WandbLogger

            wl = WandbLogger(
                project=self.project,
                entity=self.entity,
                name=f"{run_name}-{stage}" if run_name else stage,
                save_dir=str(stage_dir),
                mode=self._mode(),
                group=self.group or _sweep_id(),
                job_type=stage,
                tags=[*self.tags, stage, *_config_tags(config)],
                config=config,
                reinit="finish_previous",
            )
            self._run = wl.experiment  # start now so a failure surfaces here, not mid-training
            return wl
        except Exception as e:  # noqa: BLE001 - tracking must never kill training
            if not self._warned:
                log.warning("wandb failed to start (%s); falling back to csv logging", _redact(str(e)))
                self._warned = True
            return CSVTracking().logger(stage_dir, stage, run_name, config)

    def log_metrics(self, metrics: dict) -> None:
        if self._run is not None:
            try:
                self._run.log(metrics)
            except Exception as e:  # noqa: BLE001
                log.warning("wandb log failed: %s", _redact(str(e)))

    def log_artifact(self, name: str, kind: str, path: Path, metadata: dict | None = None) -> None:
        """Log a checkpoint dir / reward artefact; lineage in wandb's graph (SFT -> reward -> DPR)."""
        if self._run is None or not self.log_checkpoints:
            return
        try:
            import wandb

            art = wandb.Artifact(_artifact_name(name), type=kind, metadata=metadata or {})
            p = Path(path)
            art.add_dir(str(p)) if p.is_dir() else art.add_file(str(p))
            self._run.log_artifact(art)
        except Exception as e:  # noqa: BLE001
            log.warning("wandb artifact %s not logged: %s", name, _redact(str(e)))

    def use_artifact(self, name: str) -> None:
        """Declare the parent's artefact as an input. wandb refuses this offline: skipped there."""
        if self._run is None or self._mode() != "online":
            return
        try:
            self._run.use_artifact(f"{_artifact_name(name)}:latest")
        except Exception as e:  # noqa: BLE001
            log.warning("wandb use_artifact(%s) failed: %s", name, _redact(str(e)))

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        if self._run is None:
            return
        try:
            import wandb

            self._run.log({name: wandb.Table(columns=columns, data=rows)})
        except Exception as e:  # noqa: BLE001
            log.warning("wandb table logging failed: %s", e)

    def log_html(self, name: str, path: Path) -> None:
        if self._run is None:
            return
        try:
            import wandb

            self._run.log({name: wandb.Html(Path(path).read_text())})
        except Exception as e:  # noqa: BLE001
            log.warning("wandb html logging failed: %s", e)

    def finish(self, summary: dict | None = None) -> None:
        if self._run is None:
            return
        try:
            if summary:
                for k, v in summary.items():
                    self._run.summary[k] = v
            self._run.finish()
        except Exception as e:  # noqa: BLE001
            log.warning("wandb finish failed: %s", e)
        finally:
            self._run = None


def _sweep_id() -> str | None:
    """The multirun id (sweep dir name) groups the jobs of one sweep in wandb."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return Path(hc.sweep.dir).name if Path(hc.sweep.dir).name not in ("", ".") else str(hc.sweep.dir)
    except Exception:  # noqa: BLE001 - outside a Hydra app
        return None
    return None


def _config_tags(config: dict) -> list[str]:
    tags = []
    for key in ("algo.name", "reward.name", "data.name"):
        if config.get(key):
            tags.append(str(config[key]))
    target = str(config.get("data._target_", ""))
    if target:
        tags.append(target.rsplit(".", 1)[-1])
    return tags


def _artifact_name(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:120]


def _redact(text: str) -> str:
    """Never echo a wandb key (40 hex chars) into logs."""
    import re

    return re.sub(r"[0-9a-f]{40}", "<redacted>", text)
