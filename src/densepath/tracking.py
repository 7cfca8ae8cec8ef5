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
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    _run = None

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
                group=self.group,
                job_type=stage,
                tags=list(self.tags),
                config=config,
                reinit="finish_previous",
            )
            self._run = wl.experiment  # start now so a failure surfaces here, not mid-training
            return wl
        except Exception as e:  # noqa: BLE001 - tracking must never kill training
            log.warning("wandb failed to start (%s); falling back to csv logging for this stage", e)
            return CSVTracking().logger(stage_dir, stage, run_name, config)

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
