"""The recovery stage (`algo=recover`, and inside the default pipeline after SFT).

Scores held-out data with every reward formulation side by side, so a user sees which reward carries
signal before spending compute on RL; writes the heatmap and the reward artefact of the configured
formulation.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from hydra.utils import instantiate

from densepath.eval.heatmap import write_heatmap
from densepath.models.io import sha256_file
from densepath.rewards.artefact import write_manifest, write_reward_parquet
from densepath.rewards.baselines import (
    BaseModelBaseline,
    SnapshotBaseline,
    UniformBaseline,
    available_fractions,
    load_frozen,
)
from densepath.rewards.dense import DenseReward, RewardSpec
from densepath.rewards.recovery import (
    corruption_report,
    demo_report,
    fidelity_report,
    heatmap_rows,
    sample_policy,
    score_encoded,
    separation_report,
)
from densepath.stages.common import autocast_for, device_for

log = logging.getLogger(__name__)


def variants(ctx, sft_dir: Path) -> list[tuple[str, RewardSpec, object]]:
    """(label, spec, baseline) for the configured reward and every alternative worth comparing."""
    cfg_spec = instantiate(ctx.cfg.reward)
    cfg_base = instantiate(ctx.cfg.baseline) if cfg_spec.uses_baseline else None
    out = [("configured", cfg_spec, cfg_base)]
    if ctx.cfg.recover.compare_all:
        out += [
            ("logprob", RewardSpec("logprob", False), None),
            ("soft_bellman", RewardSpec("soft_bellman", False), None),
        ]
        for frac in available_fractions(sft_dir):
            out.append((f"log_ratio@{frac}", RewardSpec("log_ratio", True), SnapshotBaseline(float(frac))))
        out.append(("log_ratio@base", RewardSpec("log_ratio", True), BaseModelBaseline()))
        out.append(("log_ratio@uniform", RewardSpec("log_ratio", True), UniformBaseline()))
    return out


def _known_reward_policies(ctx, sft_model, sft_dir, sampler, n: int, device) -> dict[str, list[list[int]]]:
    task = ctx.task
    mdp = task.mdp
    g = torch.Generator().manual_seed(ctx.cfg.seed)
    pols = {"expert": mdp.sample_expert(n, g), "uniform": mdp.sample_uniform(n, g)}
    rows = [{"family": task.name, "prompt": "", "response": "", "meta": {}}] * n
    models = {"sft": sft_model}
    snaps = available_fractions(sft_dir)
    if snaps:
        models["baseline"] = load_frozen(
            sft_dir / "snapshots" / f"frac_{snaps[len(snaps) // 2]}", ctx.tokenizer, "baseline"
        ).to(device)
    for name, model in models.items():
        _, texts = sample_policy(model, ctx.tokenizer, task, rows, sampler)
        seqs = [mdp.episode_from_text(t) for t in texts]
        pols[name] = [s for s in seqs if s is not None]
    return pols


def recovery_pass(ctx, sft_model, sft_dir: Path, out_dir: Path, device) -> dict[str, float]:
    """The configured reward only: probe/fidelity metrics, heatmap and artefact into `out_dir`
    (used by RewardRecoveryCallback on the live SFT model)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tok, task = ctx.tokenizer, ctx.task
    spec = instantiate(ctx.cfg.reward)
    baseline = instantiate(ctx.cfg.baseline) if spec.uses_baseline else None
    if baseline is not None:
        baseline.load(sft_dir, tok, device)
    reward = DenseReward(spec, sft_model, baseline, None)
    sampler = instantiate(ctx.cfg.sampler).configure(tok)
    val_rows = task.splits()["val"][: ctx.cfg.recover.probe_size]
    samples = None
    with autocast_for(ctx):
        if task.has_verifier:
            m, details = corruption_report(reward, task, tok, val_rows, device, seed=ctx.cfg.seed)
            samples = sample_policy(sft_model, tok, task, val_rows, sampler)
            m.update(separation_report(reward, task, tok, val_rows, samples[0], samples[1], device))
        elif hasattr(task, "mdp"):
            pols = _known_reward_policies(
                ctx, sft_model, sft_dir, sampler, ctx.cfg.recover.fidelity_samples, device
            )
            m, details = fidelity_report(reward, task, tok, pols, device), {}
        else:
            m, details = demo_report(reward, task, tok, val_rows, device), {}
        rows = heatmap_rows(tok, details, ctx.cfg.recover.heatmap_rows)
        if rows:
            write_heatmap(
                out_dir / "heatmap.html", rows, title=f"{spec.name} rewards (baseline {reward.baseline_name})"
            )
            if ctx.tracking:
                ctx.tracking.log_html("recover/heatmap", out_dir / "heatmap.html")
        _write_artefact(ctx, reward, details, samples, out_dir, device)
    write_manifest(out_dir / "metrics.json", m)  # read back by the SFT stage (also after ddp_spawn)
    return m


def run(ctx) -> dict[str, float]:
    cfg, rcfg = ctx.cfg, ctx.cfg.recover
    stage_dir = ctx.stage_dir("recover")
    device = device_for(ctx)
    sft_dir = ctx.artefact_dir("sft")
    tok, task = ctx.tokenizer, ctx.task
    sft_model = load_frozen(sft_dir / "policy", tok, "pi_SFT").to(device)
    sampler = instantiate(cfg.sampler).configure(tok)
    val_rows = task.splits()["val"][: rcfg.probe_size]
    if ctx.tracking:
        from densepath.stages.common import flat_config

        ctx.tracking.logger(stage_dir, "recover", ctx.run_name, flat_config(cfg))
        if (parent := ctx.parent_artifact("sft")) is not None:
            ctx.tracking.use_artifact(parent)
    metrics: dict[str, float] = {}
    table = []
    with autocast_for(ctx):
        samples = None
        if task.has_verifier:
            samples = sample_policy(sft_model, tok, task, val_rows, sampler)
        elif hasattr(task, "mdp"):
            pols = _known_reward_policies(ctx, sft_model, sft_dir, sampler, rcfg.fidelity_samples, device)
        configured = None
        for label, spec, baseline in variants(ctx, sft_dir):
            if spec.uses_baseline:
                baseline.load(sft_dir, tok, device)
            else:
                log.info("reward=%s uses no baseline: baseline recorded as none", spec.name)
            reward = DenseReward(spec, sft_model, baseline, sft_dir / "policy")
            if task.has_verifier:
                m, details = corruption_report(reward, task, tok, val_rows, device, seed=cfg.seed)
                m.update(separation_report(reward, task, tok, val_rows, samples[0], samples[1], device))
            elif hasattr(task, "mdp"):
                m, details = fidelity_report(reward, task, tok, pols, device), {}
            else:
                m, details = demo_report(reward, task, tok, val_rows, device), {}
            name = f"{spec.name}" if label == "configured" else label
            metrics.update({f"{label}/{k}": v for k, v in m.items()})
            table.append(
                (f"{name} (baseline: {reward.baseline_name})" if label == "configured" else label, m)
            )
            if label == "configured":
                configured = (reward, details)
        reward, details = configured
        rows = heatmap_rows(tok, details, rcfg.heatmap_rows)
        files = {}
        if rows:
            files["heatmap"] = str(
                write_heatmap(
                    stage_dir / "heatmap.html",
                    rows,
                    title=f"{reward.spec.name} rewards (baseline {reward.baseline_name}): clean vs corrupted",
                )
            )
            if ctx.tracking:
                ctx.tracking.log_html("recover/heatmap", stage_dir / "heatmap.html")
        files.update(_write_artefact(ctx, reward, details, samples, stage_dir, device))
        # the SFT policy's own samples on eval: its recovered reward for the final table (KL = 0)
        eval_rows = task.splits()["eval"][: cfg.eval.eval_size]
        enc, _ = sample_policy(sft_model, tok, task, eval_rows, sampler)
        r, m = score_encoded(reward, enc, tok.pad_token_id, device)
        ctx.metrics["sft/eval/sampled/reward"] = float((r * m).sum(-1).mean())
        ctx.metrics["sft/eval/sampled/kl_to_sft"] = 0.0
    _print_table(table, task.has_verifier)
    manifest = {
        "reward": reward.describe(),
        "baseline": reward.baseline_name,
        "tokenizer_hash": ctx.manifest.get("tokenizer_hash"),
        "files": files,
        "parent_sft": str(sft_dir),
    }
    if ctx.tracking:
        ctx.tracking.log_metrics({f"recover/{k}": v for k, v in metrics.items()})
        manifest["wandb_artifact"] = ctx.artifact_name("recover")
        ctx.tracking.log_artifact(
            manifest["wandb_artifact"], "reward", stage_dir, {"formulation": reward.spec.name}
        )
        ctx.tracking.finish(
            {f"final/{k}": v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)}
        )
    ctx.record("recover", metrics, manifest)
    return metrics


def _write_artefact(ctx, reward, details, samples, stage_dir: Path, device) -> dict:
    tok = ctx.tokenizer
    P, R, W, S, F = [], [], [], [], []
    if details:
        for key, src in (("clean", "demo"), ("corrupt", "corrupted")):
            enc, r, m = details[key]
            for i, e in enumerate(enc):
                L = int(m[i].sum())
                P.append(e.prompt_ids)
                R.append(e.response_ids[:L])
                W.append(r[i, :L].tolist())
                S.append(src)
                F.append(details["rows"][i]["family"])
    if samples is not None:
        enc, _ = samples
        r, m = score_encoded(reward, enc, tok.pad_token_id, device)
        for i, e in enumerate(enc):
            L = int(m[i].sum())
            P.append(e.prompt_ids)
            R.append(e.response_ids[:L])
            W.append(r[i, :L].tolist())
            S.append("sft")
            F.append(ctx.task.splits()["val"][i]["family"])
    out = {}
    if P:
        path = write_reward_parquet(stage_dir / "rewards.parquet", P, R, W, S, F)
        out["rewards_parquet"] = {"path": str(path), "sha256": sha256_file(path)}
    write_manifest(
        stage_dir / "reward_manifest.json",
        {**reward.describe(), "tokenizer_hash": ctx.manifest.get("tokenizer_hash"), "files": out},
    )
    out["reward_manifest"] = str(stage_dir / "reward_manifest.json")
    return out


def _f(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _print_table(table, verifiable: bool) -> None:
    if verifiable or not any(k.startswith("fidelity/") for _, m in table for k in m):
        head = "| reward | detection rate (chance) | corrupted-token AUROC | correct-vs-wrong AUROC | mean seq reward |"
        lines = [head, "|---|---|---|---|---|"]
        for name, m in table:
            lines.append(
                f"| {name} | {_f(m.get('probe/detection_rate'))} ({_f(m.get('probe/chance'))}) | "
                f"{_f(m.get('probe/token_auroc'))} | {_f(m.get('samples/correct_vs_wrong_auroc'))} | {_f(m.get('samples/reward'))} |"
            )
    else:
        head = "| reward | Pearson within expert | within SFT | within baseline | within uniform | pooled Pearson | pooled Spearman |"
        lines = [head, "|---|---|---|---|---|---|---|"]
        for name, m in table:
            g = lambda k, m=m: m.get(f"fidelity/{k}")  # noqa: E731
            lines.append(
                f"| {name} | {_f(g('expert/pearson'))} | {_f(g('sft/pearson'))} | {_f(g('baseline/pearson'))} | "
                f"{_f(g('uniform/pearson'))} | {_f(g('pooled/pearson'))} | {_f(g('pooled/spearman'))} |"
            )
    print(
        "\n## Reward recovery: which reward carries signal? (val split)\n\n" + "\n".join(lines) + "\n",
        flush=True,
    )
