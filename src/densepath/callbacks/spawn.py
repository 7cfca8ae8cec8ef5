"""ddp_spawn that returns the workers' results to the main process (`trainer=ddp_cpu`).

With `start_method="spawn"` the main process keeps a stale copy of the module and callbacks.
Lightning's multiprocessing launcher already ships `trainer.callback_metrics` back from rank 0
through `get_extra_results` / `update_main_process_results`; this launcher adds the module's
run counters (`module.run_counters()`, summed over ranks by the module) and the state of every
callback that sets `carry_to_main = True`, so a stage reads the same objects after `fit` whether it
ran in one process or several. (The subprocess launcher re-runs `sys.argv`, which breaks under
pytest and Hydra multirun.)
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher


class _CarryingLauncher(_MultiProcessingLauncher):
    def get_extra_results(self, trainer) -> dict[str, Any]:
        extra = super().get_extra_results(trainer)
        module = trainer.lightning_module
        extra["densepath"] = {
            "counters": module.run_counters() if hasattr(module, "run_counters") else {},
            "callbacks": {
                cb.state_key: cb.state_dict()
                for cb in trainer.callbacks
                if getattr(cb, "carry_to_main", False)
            },
        }
        return extra

    def update_main_process_results(self, trainer, extra: dict[str, Any]) -> None:
        super().update_main_process_results(trainer, extra)
        state = extra.get("densepath", {})
        for name, value in state.get("counters", {}).items():
            setattr(trainer.lightning_module, name, value)
        carried = state.get("callbacks", {})
        for cb in trainer.callbacks:
            if cb.state_key in carried:
                cb.load_state_dict(carried[cb.state_key])


class DDPSpawnStrategy(DDPStrategy):
    """`DDPStrategy(start_method="spawn")` whose launcher carries densepath's results back."""

    def __init__(self, **kwargs):
        kwargs.setdefault("start_method", "spawn")
        super().__init__(**kwargs)

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _MultiProcessingLauncher):
            self._launcher = _CarryingLauncher(self, start_method=self._start_method)
