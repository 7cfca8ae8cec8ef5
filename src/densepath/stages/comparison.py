"""The end-of-pipeline comparison: one row per policy stage of the run, on held-out `eval`, with each
policy's best decoder (chosen on `val` by the `decode` stage, when the pipeline has one) and its cost."""

from __future__ import annotations

from densepath.eval.report import print_final_table
from densepath.stages.base import Stage


class ComparisonStage(Stage):
    def __init__(self, decode: str = "decode"):
        self.decode = decode  # the decode stage whose choices the table shows

    def run(self, ctx) -> dict[str, float]:
        policies = [name for name, st in ctx.stages.items() if st.policy_dir is not None]
        info = ctx.manifest.get("stages", {}).get(self.decode, {})
        print_final_table(ctx.metrics, policies, ctx.task.headline, ctx.run_dir, self.decode, info)
        return {}
