"""What every stage shares: the run dir, the task and tokenizer, metrics.json and manifest.json.

Layout of a run dir (Hydra's output dir):
    .hydra/                 Hydra's resolved config and overrides
    metrics.json            flat final metrics of every stage (`<stage>/<key>`) plus the headline keys
    manifest.json           config hash, git rev, tokenizer hash, checkpoints + sha256, parent runs
    <stage>/                one folder per stage (sft/, recover/, dpr/, ...) with its artefacts
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from densepath.data.formatting import default_system_prompt
from densepath.models.tokenizer import tokenizer_hash

log = logging.getLogger(__name__)


def config_hash(cfg: DictConfig) -> str:
    """Hash of the resolved config, without keys that do not change results (paths, resume flags)."""
    d = OmegaConf.to_container(cfg, resolve=True)
    for k in ("parent_run", "resume", "ckpt_path", "hydra", "logger"):
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def git_revision() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def atomic_write_json(path: Path, data: dict) -> None:
    """Non-finite floats become null (strict JSON); written to `<name>.tmp`, then renamed."""
    safe = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in data.items()}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(safe, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


@dataclass
class RunContext:
    cfg: DictConfig
    run_dir: Path
    task: object = None
    tokenizer: object = None
    metrics: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    tracking: object = None
    parent_run: Path | None = None
    run_name: str = ""
    stages: dict = field(default_factory=dict)  # name -> Stage of the running pipeline

    @classmethod
    def create(cls, cfg: DictConfig, run_dir: Path) -> RunContext:
        ctx = cls(cfg=cfg, run_dir=Path(run_dir))
        ctx.parent_run = Path(cfg.parent_run).expanduser().resolve() if cfg.get("parent_run") else None
        if ctx.parent_run is not None and not ctx.parent_run.is_dir():
            raise FileNotFoundError(
                f"parent_run={cfg.parent_run}: no such run directory. Pass the Hydra output dir of an "
                "earlier run, e.g. parent_run=outputs/2026-01-01/12-00-00"
            )
        ctx.task = instantiate(cfg.data)
        ctx.manifest = {
            "config_hash": config_hash(cfg),
            "git_revision": git_revision(),
            "run_dir": str(ctx.run_dir),
            "parent_runs": [str(ctx.parent_run)] if ctx.parent_run else [],
            "stages": {},
            "checkpoints": {},
        }
        if describe := getattr(ctx.task, "describe", None):
            ctx.manifest["task"] = describe()
        ctx.tracking = instantiate(cfg.logger) if cfg.get("logger") else None
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        old, old_metrics = ctx.run_dir / "manifest.json", ctx.run_dir / "metrics.json"
        if old.exists() and cfg.get("resume") != "auto":
            raise FileExistsError(
                f"{ctx.run_dir} already holds a run (manifest.json); a new run never reuses a run dir. "
                "Continue it with resume=auto, or choose another hydra.run.dir"
            )
        if old.exists():  # resume=auto, continuing this run dir: keep what it recorded
            prev = json.loads(old.read_text())
            ctx.manifest["stages"] = prev.get("stages", {})
            ctx.manifest["checkpoints"] = prev.get("checkpoints", {})
            if old_metrics.exists():
                ctx.metrics = json.loads(old_metrics.read_text())
        ctx.flush()  # the config hash is on disk from the start: resume=auto can find an unfinished run
        return ctx

    def stage_finished(self, stage: str) -> bool:
        """True when this run dir already holds the stage's final manifest (written after evaluation)."""
        if not (self.run_dir / stage / "manifest.json").exists():
            return False
        if stage == "sft":  # later stages need the tokenizer
            from densepath.models.io import load_tokenizer

            self.set_tokenizer(load_tokenizer(self.run_dir / "sft" / "policy"))
        return True

    def stage_dir(self, stage: str) -> Path:
        (d := self.run_dir / stage).mkdir(parents=True, exist_ok=True)
        return d

    def artefact_dir(self, stage: str) -> Path:
        """Where an earlier stage's artefacts live: this run if it ran the stage, else the parent run."""
        mine = self.run_dir / stage
        if (mine / "manifest.json").exists():
            return mine
        for cand in (self.parent_run / stage, self.parent_run) if self.parent_run is not None else ():
            man = cand / "manifest.json"
            if man.exists() and json.loads(man.read_text()).get("stage") == stage:
                return cand
        raise FileNotFoundError(
            f"stage `{stage}` has no artefacts in {self.run_dir}"
            + (f" or in parent_run={self.parent_run}" if self.parent_run else "")
            + f". Run it first (pipeline={stage}) and pass that run dir as parent_run=<dir>."
        )

    def artifact_name(self, stage: str) -> str:
        return f"{stage}-{self.run_dir.name}"

    def parent_artifact(self, stage: str) -> str | None:
        """The wandb artifact name an earlier stage logged (this run or the parent run)."""
        try:
            man = json.loads((self.artefact_dir(stage) / "manifest.json").read_text())
        except FileNotFoundError:
            return None
        return man.get("wandb_artifact")

    def set_tokenizer(self, tok) -> None:
        """The run's tokenizer; a chat task fits its splits to the length limits now (`fit_lengths`, once
        per tokenizer, for every stage alike) and the manifest records the task's counts and the system
        prompt the chat template injects (the same for every policy: they share this tokenizer)."""
        self.tokenizer = tok
        self.manifest["tokenizer_hash"] = tokenizer_hash(tok)
        if fit := getattr(self.task, "fit_lengths", None):
            fit(tok)
            self.manifest["task"] = self.task.describe()
        self.manifest["chat"] = {"system_prompt": default_system_prompt(tok)}

    def record(self, stage: str, metrics: dict[str, float], manifest: dict) -> None:
        """Merge a finished stage's metrics/manifest and rewrite the run-level files."""
        self.metrics.update({f"{stage}/{k}": v for k, v in metrics.items()})
        self.manifest["stages"][stage] = manifest
        for name, info in manifest.get("checkpoints", {}).items():
            self.manifest["checkpoints"][f"{stage}/{name}"] = info
        stage_dir = self.stage_dir(stage)
        atomic_write_json(stage_dir / "metrics.json", metrics)
        atomic_write_json(stage_dir / "manifest.json", {"stage": stage, **manifest})
        self.flush()

    def flush(self) -> None:
        atomic_write_json(self.run_dir / "metrics.json", self.metrics)
        atomic_write_json(self.run_dir / "manifest.json", self.manifest)
