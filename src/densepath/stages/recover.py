"""The recovery stage (`pipeline=recover parent_run=<dir>`, and in the default pipeline after SFT).

Scores held-out data with every reward formulation side by side, so a user sees which reward carries
signal before spending compute on RL; writes the heatmap and the reward artefact of the configured
formulation.
"""

from __future__ import annotations

import logging
import math

from densepath.eval.recovery import sample_policy, score_encoded
from densepath.eval.recovery_pass import ProbeInputs, proposal_for, reference_models, write_artefacts
from densepath.eval.report import fmt
from densepath.models.device import autocast_for, device_for
from densepath.rewards.baselines import (
    BaseModelBaseline,
    SnapshotBaseline,
    UniformBaseline,
    available_fractions,
    load_frozen,
)
from densepath.rewards.builder import build_reward
from densepath.rewards.dense import DenseReward
from densepath.rewards.formulations import LogProb, LogRatio, SoftBellman
from densepath.stages.base import Stage
from densepath.stages.common import build_sampler, flat_config

log = logging.getLogger(__name__)


def alternatives(sft_dir) -> list[tuple[str, object, object]]:
    """(label, formulation, baseline) of every reward worth comparing with the configured one."""
    out = [("logprob", LogProb(), None), ("soft_bellman", SoftBellman(), None)]
    for frac in available_fractions(sft_dir):
        out.append((f"log_ratio@{frac}", LogRatio(), SnapshotBaseline(float(frac))))
    out.append(("log_ratio@base", LogRatio(), BaseModelBaseline()))
    out.append(("log_ratio@uniform", LogRatio(), UniformBaseline()))
    return out


class RecoverStage(Stage):
    def run(self, ctx) -> dict[str, float]:
        cfg, rcfg = ctx.cfg, ctx.cfg[self.name]
        stage_dir = ctx.stage_dir(self.name)
        device = device_for(cfg.trainer)
        sft_dir = ctx.artefact_dir("sft")
        tok, task = ctx.tokenizer, ctx.task
        sft_model = load_frozen(sft_dir / "policy", tok, "pi_SFT").to(device)
        sampler = build_sampler(ctx)
        if ctx.tracking:
            ctx.tracking.logger(stage_dir, self.name, ctx.run_name, flat_config(cfg))
            if (parent := ctx.parent_artifact("sft")) is not None:
                ctx.tracking.use_artifact(parent)
        metrics: dict[str, float] = {}
        table = []
        with autocast_for(cfg.trainer):
            rows = task.splits()["val"][: rcfg.probe_size]
            reward = build_reward(cfg.reward, cfg.baseline, sft_dir, tok, device, sft_model=sft_model)
            inputs = ProbeInputs(
                task,
                tok,
                sft_model,
                sampler,
                rows,
                seed=cfg.seed,
                n_reference=rcfg.fidelity_samples,
                others=reference_models(task, sft_dir, tok, device),
                proposal=proposal_for(reward),
            )
            m, details = inputs.report(reward, device)
            metrics.update({f"configured/{k}": v for k, v in m.items()})
            table.append((f"{reward.formulation.name} (baseline: {reward.baseline_name})", m))
            for label, formulation, baseline in alternatives(sft_dir) if rcfg.compare_all else []:
                alt = DenseReward.load(formulation, baseline, sft_dir, tok, device, sft_model=sft_model)
                m, _ = inputs.report(alt, device)
                metrics.update({f"{label}/{k}": v for k, v in m.items()})
                table.append((label, m))
            files = write_artefacts(
                stage_dir,
                reward,
                details,
                inputs,
                ctx.manifest.get("tokenizer_hash"),
                device,
                ctx.tracking,
                rcfg.heatmap_rows,
            )
            # the SFT policy's own samples on eval: its recovered reward for the final table (KL = 0)
            enc, _ = sample_policy(sft_model, tok, task, task.splits()["eval"][: cfg.eval.eval_size], sampler)
            r, m = score_encoded(reward, enc, tok.pad_token_id, device)
            ctx.metrics["sft/eval/sampled/reward"] = float((r * m).sum(-1).mean())
            ctx.metrics["sft/eval/sampled/kl_to_sft"] = ctx.metrics["sft/eval/sampled/kl_exact"] = 0.0
        _print_table(table, task.recovery_probe, inputs)
        manifest = {
            "reward": reward.describe(),
            "baseline": reward.baseline_name,
            "tokenizer_hash": ctx.manifest.get("tokenizer_hash"),
            "files": files,
            "parent_sft": str(sft_dir),
        }
        if ctx.tracking:
            ctx.tracking.log_metrics({f"recover/{k}": v for k, v in metrics.items()})
            manifest["wandb_artifact"] = ctx.artifact_name(self.name)
            ctx.tracking.log_artifact(
                manifest["wandb_artifact"], "reward", stage_dir, {"formulation": reward.formulation.name}
            )
            ctx.tracking.finish(
                {f"final/{k}": v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)}
            )
        ctx.record(self.name, metrics, manifest)
        return metrics


_COLUMNS = {  # per probe: column title -> metric key
    "fidelity": {
        "Pearson within expert": "fidelity/expert/pearson", "within SFT": "fidelity/sft/pearson",
        "within baseline": "fidelity/baseline/pearson", "within uniform": "fidelity/uniform/pearson",
        "pooled Pearson": "fidelity/pooled/pearson", "pooled Spearman": "fidelity/pooled/spearman",
    },
    "corruption": {
        "detection rate": "probe/detection_rate", "chance": "probe/chance",
        "corrupted-token AUROC": "probe/token_auroc", "correct-vs-wrong AUROC": "samples/correct_vs_wrong_auroc",
        "mean seq reward": "samples/reward",
    },
    "corruption_tokens": {
        "random token: detection": "probe/random/detection_rate", "chance": "probe/chance",
        "random token: AUROC": "probe/random/token_auroc",
        "sampled token: detection": "probe/sampled/detection_rate",
        "sampled token: AUROC": "probe/sampled/token_auroc",
        "mean token reward": "reward/token_mean", "mean sequence reward": "reward/seq_sum_mean",
    },
    "demos": {
        "mean token reward": "reward/token_mean", "token std": "reward/token_std",
        "mean sequence reward": "reward/seq_sum_mean",
    },
}  # fmt: skip


def _has(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def recovery_table(table, probe: str, inputs=None) -> str:
    """The markdown table of the probe's metrics, one row per reward; a column no reward has a value
    for (e.g. no SFT sample was wrong, no snapshot to compare) is left out rather than shown as `-`."""
    cols = {t: k for t, k in _COLUMNS[probe].items() if any(_has(m.get(k)) for _, m in table)}
    if not cols:
        n = table[0][1].get("probe/n") if table else None
        return (
            f"(no probe results: {'no held-out demonstration could be probed' if n == 0 else 'no metrics'})"
        )
    lines = ["| reward | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {name} | " + " | ".join(fmt(m.get(k)) for k in cols.values()) + " |" for name, m in table]
    out = "\n".join(lines)
    c = getattr(inputs, "corruptions", None)
    if probe == "corruption_tokens" and c is not None and c.clean:
        out += (
            f"\n\n{len(c.clean)} held-out demonstrations, one response token each (not EOS) replaced by a "
            f"uniformly random token, or by a token sampled from {c.proposal} (the original excluded). "
            "Detection: the altered token has the lowest reward of its response; chance = mean 1/length. "
            "AUROC: altered tokens vs every clean token (1 = always lower)."
        )
    return out


def _print_table(table, probe: str, inputs=None) -> None:
    print(
        "\n## Reward recovery: which reward carries signal? (val split)\n\n"
        + recovery_table(table, probe, inputs)
        + "\n",
        flush=True,
    )
