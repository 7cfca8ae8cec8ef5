"""The end-of-pipeline comparison: one row per policy stage of the run, on held-out `eval`."""

from __future__ import annotations

from densepath.eval.report import print_final_table
from densepath.stages.base import Stage


class ComparisonStage(Stage):
    def run(self, ctx) -> dict[str, float]:
        policies = [name for name, st in ctx.stages.items() if st.policy_dir is not None]
        print_final_table(ctx.metrics, policies, ctx.task.headline, ctx.run_dir)
        return {}
