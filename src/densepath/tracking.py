"""Experiment tracking backends (`logger=`): wandb (offline unless configured), csv, none.

Each returns a Lightning logger per stage and is finished per stage, so a pipeline job gives one
tracking run per stage and multirun jobs never merge into one run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class NoTracking:
    """`logger=none`: no Lightning logger; every tracking call is a no-op."""

    def logger(self, stage_dir: Path, stage: str, run_name: str, config: dict):
        return False

    def log_metrics(self, metrics: dict) -> None: ...
    def log_artifact(self, name: str, kind: str, path: Path, metadata: dict | None = None) -> None: ...
    def use_artifact(self, name: str) -> None: ...
    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None: ...
    def log_html(self, name: str, path: Path) -> None: ...
    def finish(self, summary: dict | None = None) -> None: ...


@dataclass
class CSVTracking(NoTracking):
    def logger(self, stage_dir: Path, stage: str, run_name: str, config: dict):
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(stage_dir), name="csv", version="")


@dataclass
class WandbTracking(NoTracking):
    """wandb in offline mode unless the user configured otherwise (WANDB_MODE / logger.mode). A failure
    to start wandb (no network, bad key) never kills training: it warns once and falls back to csv."""

    project: str = "densepath"
    entity: str | None = None
    mode: str | None = None  # None: $WANDB_MODE if set, else offline
    group: str | None = None  # None: the multirun sweep id (sweep dir name), else no group
    tags: list[str] = field(default_factory=list)
    log_checkpoints: bool = True  # checkpoints and reward artefacts as wandb artifacts
    _run = None
    _warned = False

    def __getstate__(self):  # a live wandb run cannot cross a ddp_spawn boundary
        return {**self.__dict__, "_run": None}

    def _mode(self) -> str:
        return self.mode or os.environ.get("WANDB_MODE", "offline")

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

    def _guarded(self, failure: str, action: Callable[[Any], object]) -> None:
        """`action(wandb)` on the live run; a failure is logged as "<failure>: <error>", never raised."""
        if self._run is None:
            return
        try:
            import wandb

            action(wandb)
        except Exception as e:  # noqa: BLE001 - tracking must never kill training
            log.warning("%s: %s", failure, _redact(str(e)))

    def _log(self, failure: str, data: Callable[[Any], dict]) -> None:
        self._guarded(failure, lambda wandb: self._run.log(data(wandb)))

    def log_metrics(self, metrics: dict) -> None:
        self._log("wandb log failed", lambda wandb: metrics)

    def log_artifact(self, name: str, kind: str, path: Path, metadata: dict | None = None) -> None:
        """Log a checkpoint dir / reward artefact; lineage in wandb's graph (SFT -> reward -> DPR)."""

        def log_it(wandb):
            art = wandb.Artifact(_artifact_name(name), type=kind, metadata=metadata or {})
            art.add_dir(str(path)) if Path(path).is_dir() else art.add_file(str(path))
            self._run.log_artifact(art)

        if self.log_checkpoints:
            self._guarded(f"wandb artifact {name} not logged", log_it)

    def use_artifact(self, name: str) -> None:
        """Declare the parent's artefact as an input. wandb refuses this offline: skipped there."""
        if self._mode() == "online":
            use = f"{_artifact_name(name)}:latest"
            self._guarded(f"wandb use_artifact({name}) failed", lambda wandb: self._run.use_artifact(use))

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        self._log("wandb table logging failed", lambda wandb: {name: wandb.Table(columns=columns, data=rows)})

    def log_html(self, name: str, path: Path) -> None:
        self._log("wandb html logging failed", lambda wandb: {name: wandb.Html(Path(path).read_text())})

    def finish(self, summary: dict | None = None) -> None:
        def finish_it(wandb):
            for k, v in (summary or {}).items():
                self._run.summary[k] = v
            self._run.finish()

        try:
            self._guarded("wandb finish failed", finish_it)
        finally:
            self._run = None


def _sweep_id() -> str | None:
    """The multirun id (sweep dir name) groups the jobs of one sweep in wandb."""
    with contextlib.suppress(Exception):  # outside a Hydra app
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return Path(hc.sweep.dir).name if Path(hc.sweep.dir).name not in ("", ".") else str(hc.sweep.dir)
    return None


def _config_tags(config: dict) -> list[str]:
    """The reward formulation and the task, by class name (e.g. LogRatio, ToyTask)."""
    targets = (str(config.get(f"{k}._target_", "")) for k in ("reward", "data"))
    return [t.rsplit(".", 1)[-1] for t in targets if t]


def _artifact_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:120]


def _redact(text: str) -> str:
    """Never echo a wandb key (40 hex chars) into logs."""
    return re.sub(r"[0-9a-f]{40}", "<redacted>", text)
