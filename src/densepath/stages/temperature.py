"""The sharpening control: each finished policy's best decoding temperature, chosen on `val`, then
reported on `eval`.

An RL gain over SFT sampled at T=1 may be nothing more than a sharper distribution. This stage
evaluates every policy the run (or its parent) holds at `temperature.temperatures` and greedily on `val`,
picks the best setting there (ties go to the higher temperature: more diverse), and evaluates that
setting once on `eval`. It never looks at `eval` to choose.

Settings: the `temperature` node (`temperatures`, `policies`: stage names whose policy is decoded).
Metric keys, per policy stage `<p>` (sft, dpr, continued_sft, rloo):
  `temperature/<p>/val/T<t>/<metric>`   val score per temperature (`T0` = greedy)
  `temperature/<p>/best_temperature`    the chosen temperature (0 = greedy)
  `temperature/<p>/eval/<metric>[_lo|_hi]`, `temperature/<p>/eval/<family>/<metric>`  at that setting
"""

from __future__ import annotations

import logging

from densepath.eval.evaluate import evaluate_policy
from densepath.models.device import autocast_for, device_for
from densepath.models.io import load_policy
from densepath.stages.base import Stage, available_policies, policy_path
from densepath.stages.common import build_sampler

log = logging.getLogger(__name__)


def choose(val_scores: dict[float, float]) -> float:
    """The best temperature on val; ties go to the higher temperature."""
    return max(val_scores, key=lambda t: (val_scores[t], t))


class TemperatureStage(Stage):
    def run(self, ctx) -> dict[str, float]:
        cfg, task, node, name = ctx.cfg, ctx.task, ctx.cfg[self.name], self.name
        head = task.headline
        if not task.verifiable:
            raise ValueError(
                f"pipeline: the `{name}` stage needs a task that judges answers; data={task.name} reports "
                "held-out NLL, which does not depend on the decoding temperature"
            )
        temps = sorted(float(t) for t in node.temperatures)
        if not temps or min(temps) <= 0:
            raise ValueError(
                f"{name}.temperatures={temps}: give positive temperatures (greedy is always included)"
            )
        available = available_policies(ctx)
        wanted = available if node.policies is None else list(node.policies)
        if not wanted or (unknown := [p for p in wanted if p not in available]):
            raise ValueError(
                f"{name}.policies: {unknown if wanted else '[]'} have no policy in this run or its parent_run "
                f"({ctx.run_dir}, parent_run={ctx.parent_run}); available: {available}"
            )
        sampler, splits = build_sampler(ctx), task.splits()
        rows = {s: splits[s][: cfg.eval.get(f"{s}_size") or None] for s in ("val", "eval")}
        metrics, chosen = {}, {}
        lines = [
            f"| policy | val {head} greedy | {' | '.join(f'T={t:g}' for t in temps)} | chosen | "
            f"eval {head} at chosen (95% CI) |",
            "|---|---|" + "---|" * len(temps) + "---|---|",
        ]
        for stage in wanted:
            model = load_policy(policy_path(ctx, stage))[0].to(device_for(cfg.trainer)).eval()

            def score(split: str, t: float, model=model) -> dict[str, float]:  # t = 0: greedy
                mode = "greedy" if t == 0 else "sampled"
                m, _ = evaluate_policy(
                    model,
                    ctx.tokenizer,
                    task,
                    rows[split],
                    sampler,
                    split=split,
                    modes=(mode,),
                    temperature=t or None,
                )
                return {
                    k.removeprefix(f"{split}/{mode}/"): v
                    for k, v in m.items()
                    if k.startswith(f"{split}/{mode}/")
                }

            with autocast_for(cfg.trainer):
                val = {t: score("val", t)[head] for t in (0.0, *temps)}
                best = choose(val)
                ev = score("eval", best)
            metrics.update({f"{stage}/val/T{t:g}/{head}": v for t, v in val.items()})
            metrics[f"{stage}/best_temperature"] = best
            metrics.update({f"{stage}/eval/{k}": v for k, v in ev.items()})
            chosen[stage] = best
            lines.append(
                f"| {stage} | {' | '.join(f'{v:.3f}' for v in val.values())} | "
                f"{'greedy' if best == 0 else f'T={best:g}'} | "
                f"{ev[head]:.3f} [{ev[f'{head}_lo']:.3f}, {ev[f'{head}_hi']:.3f}] |"
            )
            log.info("%s: %s best on val = %s", name, stage, best)
        print(
            "\n### Best decoding temperature per policy (chosen on `val`, reported on `eval`)\n", flush=True
        )
        print("\n".join(lines) + "\n", flush=True)
        ctx.record(name, metrics, {"temperatures": temps, "chosen": chosen})
        return metrics
