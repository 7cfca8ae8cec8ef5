"""The sharpening control: each finished policy's best decoding temperature, chosen on `val`, then
reported on `eval`.

An RL gain over SFT sampled at T=1 may be nothing more than a sharper distribution. This stage
evaluates every policy the run (or its parent) holds at `eval.temperatures` and greedily on `val`,
picks the best setting there (ties go to the higher temperature: more diverse), and evaluates that
setting once on `eval`. It never looks at `eval` to choose.

Metric keys, per policy stage `<p>` (sft, dpr, continued_sft, rloo):
  `temperature/<p>/val/T<t>/<metric>`   val score per temperature (`T0` = greedy)
  `temperature/<p>/best_temperature`    the chosen temperature (0 = greedy)
  `temperature/<p>/eval/<metric>[_lo|_hi]`, `temperature/<p>/eval/<family>/<metric>`  at that setting
"""

from __future__ import annotations

import logging

from hydra.utils import instantiate

from densepath.eval.evaluate import evaluate_policy
from densepath.models.io import load_policy
from densepath.stages.common import autocast_for, device_for

log = logging.getLogger(__name__)

POLICY_DIRS = {"sft": "policy", "dpr": "best", "continued_sft": "best", "rloo": "best"}


def _policy_path(ctx, stage: str):
    try:
        return ctx.artefact_dir(stage) / POLICY_DIRS[stage]
    except FileNotFoundError:
        return None


def choose(val_scores: dict[float, float]) -> float:
    """The best temperature on val; ties go to the higher temperature."""
    return max(val_scores, key=lambda t: (val_scores[t], t))


def run(ctx) -> dict[str, float]:
    cfg, task = ctx.cfg, ctx.task
    head = task.headline
    if head == "nll":
        raise ValueError(
            f"algo.stages: `temperature` needs a task with a verifier or a true reward; data={cfg.data.name} "
            "reports held-out NLL, which does not depend on the decoding temperature"
        )
    temps = sorted(float(t) for t in cfg.eval.get("temperatures", [0.25, 0.5, 0.75, 1.0]))
    if not temps or min(temps) <= 0:
        raise ValueError(f"eval.temperatures={temps}: give positive temperatures (greedy is always included)")
    wanted = list(cfg.eval.get("temperature_policies", list(POLICY_DIRS)))
    unknown = [p for p in wanted if p not in POLICY_DIRS]
    if unknown:
        raise ValueError(f"eval.temperature_policies: unknown {unknown}; choose from {sorted(POLICY_DIRS)}")
    device = device_for(ctx)
    sampler = instantiate(cfg.sampler).configure(ctx.tokenizer)
    splits = task.splits()
    val_rows = splits["val"][: cfg.eval.get("val_size") or None]
    eval_rows = splits["eval"][: cfg.eval.get("eval_size") or None]
    metrics: dict[str, float] = {}
    chosen: dict[str, float] = {}
    lines = [
        f"| policy | val {head} greedy | "
        + " | ".join(f"T={t:g}" for t in temps)
        + f" | chosen | eval {head} at chosen (95% CI) |",
        "|---|---|" + "---|" * len(temps) + "---|---|",
    ]
    for stage in wanted:
        path = _policy_path(ctx, stage)
        if path is None:
            continue
        model, _ = load_policy(path)
        model.to(device).eval()
        val_scores: dict[float, float] = {}
        with autocast_for(ctx):
            m, _ = evaluate_policy(
                model, ctx.tokenizer, task, val_rows, sampler, split="val", modes=("greedy",)
            )
            val_scores[0.0] = m[f"val/greedy/{head}"]
            for t in temps:
                m, _ = evaluate_policy(
                    model,
                    ctx.tokenizer,
                    task,
                    val_rows,
                    sampler,
                    split="val",
                    modes=("sampled",),
                    temperature=t,
                )
                val_scores[t] = m[f"val/sampled/{head}"]
            best = choose(val_scores)
            mode = "greedy" if best == 0.0 else "sampled"
            m, _ = evaluate_policy(
                model,
                ctx.tokenizer,
                task,
                eval_rows,
                sampler,
                split="eval",
                modes=(mode,),
                temperature=best if best > 0 else 1.0,
            )
        for t, v in val_scores.items():
            metrics[f"{stage}/val/T{t:g}/{head}"] = v
        metrics[f"{stage}/best_temperature"] = best
        prefix = f"eval/{mode}/"
        for k, v in m.items():
            if k.startswith(prefix):
                metrics[f"{stage}/eval/{k[len(prefix) :]}"] = v
        chosen[stage] = best
        e = lambda s, p=stage: metrics.get(f"{p}/eval/{head}{s}", float("nan"))  # noqa: E731
        lines.append(
            f"| {stage} | {val_scores[0.0]:.3f} | "
            + " | ".join(f"{val_scores[t]:.3f}" for t in temps)
            + f" | {'greedy' if best == 0 else f'T={best:g}'} | {e(''):.3f} [{e('_lo'):.3f}, {e('_hi'):.3f}] |"
        )
        log.info("temperature: %s best on val = %s", stage, best)
    if not chosen:
        raise FileNotFoundError(
            f"temperature: none of the policies {wanted} has artefacts in {ctx.run_dir}"
            + (f" or parent_run={ctx.parent_run}" if ctx.parent_run else "")
            + "; run the training stages first or pass parent_run=<their run dir>"
        )
    print(
        "\n### Best decoding temperature per policy (chosen on `val`, reported on `eval`)\n\n"
        + "\n".join(lines)
        + "\n",
        flush=True,
    )
    ctx.record("temperature", metrics, {"temperatures": temps, "chosen": chosen})
    return metrics
