"""One reward-recovery pass: the probe that fits the task, run for one or several rewards.

The task names its probe (`Task.recovery_probe`): `corruption` (verifiable answers: the paper's
Figure 1 plus correct-vs-wrong separation of SFT's samples), `fidelity` (a known reward: recovered
vs true return within reference policies), `corruption_tokens` (chat data, no verifier: Figure 1 in
token ids, one token replaced by a random token or by a draw from a proposal model, plus the
`demos` statistics) or `demos` (reward statistics on held-out demonstrations only).
The inputs a probe needs (SFT samples, reference policies, corrupted demonstrations) are drawn once
and shared by every reward scored against them. Used by the `recover` stage and by `RewardRecoveryCallback`.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch

from densepath.eval.heatmap import write_heatmap
from densepath.eval.recovery import (
    build_token_corruptions,
    corruption_report,
    demo_report,
    fidelity_report,
    heatmap_rows,
    sample_policy,
    score_encoded,
    separation_report,
    token_corruption_report,
)
from densepath.models.io import sha256_file
from densepath.rewards.artefact import write_manifest, write_reward_parquet
from densepath.rewards.baselines import available_fractions, load_frozen
from densepath.rewards.builder import build_reward


def reference_models(task, sft_dir: Path, tokenizer, device) -> dict:
    """Extra policies the fidelity probe samples: the middle saved SFT snapshot, when there is one."""
    snaps = available_fractions(sft_dir) if task.recovery_probe == "fidelity" else []
    if not snaps:
        return {}
    path = Path(sft_dir) / "snapshots" / f"frac_{snaps[len(snaps) // 2]}"
    return {"baseline": load_frozen(path, tokenizer, "baseline").to(device)}


def proposal_for(reward) -> tuple[str, object]:
    """(name, model) the `corruption_tokens` probe samples replacement tokens from: the reward's
    pi_base when its baseline is one model (a snapshot, the base or the half-data model), else pi_SFT
    (no baseline, the uniform one, or an ensemble)."""
    model = getattr(reward.baseline, "model", None)
    if model is not None:
        return f"pi_base ({reward.baseline_name})", model
    return "pi_SFT", reward.sft


class ProbeInputs:
    """What the task's probe needs, drawn once from the SFT model (and reference models).

    ``proposal`` (name, model): where `corruption_tokens` samples its plausible replacement tokens
    (`proposal_for(configured reward)`); None: pi_SFT.
    """

    def __init__(
        self,
        task,
        tokenizer,
        sft_model,
        sampler,
        rows,
        *,
        seed: int,
        n_reference: int,
        others=None,
        proposal=None,
    ):
        if task.recovery_probe not in _PROBES:
            raise ValueError(
                f"task {task.name!r} names recovery_probe={task.recovery_probe!r}; use one of {sorted(_PROBES)}"
            )
        self.task, self.tok, self.rows, self.seed = task, tokenizer, rows, seed
        self.samples = None  # (encoded, texts) of SFT's own answers to `rows`
        self.policies = None  # name -> answers, for the fidelity probe
        self.corruptions = None  # TokenCorruptions, for the corruption_tokens probe
        if task.recovery_probe == "corruption_tokens":
            name, model = proposal or ("pi_SFT", sft_model)
            self.corruptions = build_token_corruptions(task, tokenizer, rows, model, name, seed)
        elif task.recovery_probe == "corruption":
            self.samples = sample_policy(sft_model, tokenizer, task, rows, sampler)
        elif task.recovery_probe == "fidelity":
            g = torch.Generator().manual_seed(seed)
            if not rows:
                raise ValueError("the fidelity probe needs val rows; set data.sizes.val >= 1")
            self.rows = [rows[i % len(rows)] for i in range(n_reference)]  # every policy answers these
            self.policies = task.reference_samples(self.rows, g)
            for name, model in {"sft": sft_model, **(others or {})}.items():
                self.policies[name] = sample_policy(model, tokenizer, task, self.rows, sampler)[1]

    def report(self, reward, device) -> tuple[dict[str, float], dict]:
        """(metrics, details for the heatmap and artefact) of one reward."""
        return _PROBES[self.task.recovery_probe](self, reward, device)


def _corruption(p: ProbeInputs, reward, device):
    m, details = corruption_report(reward, p.task, p.tok, p.rows, device, seed=p.seed)
    m.update(separation_report(reward, p.task, p.tok, p.rows, p.samples[0], p.samples[1], device))
    return m, details


def _fidelity(p: ProbeInputs, reward, device):
    return fidelity_report(reward, p.task, p.tok, p.rows, p.policies, device), {}


def _demos(p: ProbeInputs, reward, device):
    return demo_report(reward, p.task, p.tok, p.rows, device), {}


def _corruption_tokens(p: ProbeInputs, reward, device):
    return token_corruption_report(reward, p.tok, p.corruptions, device)


_PROBES = {
    "corruption": _corruption,
    "fidelity": _fidelity,
    "demos": _demos,
    "corruption_tokens": _corruption_tokens,
}


def write_artefacts(
    out_dir: Path, reward, details, inputs: ProbeInputs, tokenizer_hash, device, tracking, n_heat
):
    """Heatmap (clean vs corrupted), `rewards.parquet` and `reward_manifest.json` under `out_dir`.
    Parquet sources: "demo", "corrupted" (the corruption probe's or the random-token copy),
    "corrupted_sampled" (the proposal-sampled copy), "sft" (SFT's samples)."""
    tok, files = inputs.tok, {}
    if rows := heatmap_rows(tok, details, n_heat):
        title = f"{reward.formulation.name} rewards (baseline {reward.baseline_name}): clean vs corrupted"
        files["heatmap"] = str(write_heatmap(out_dir / "heatmap.html", rows, title=title))
        if tracking:
            tracking.log_html("recover/heatmap", out_dir / "heatmap.html")
    P, R, W, S, F = [], [], [], [], []

    def add(enc, r, m, source, families):
        for i, e in enumerate(enc):
            n = int(m[i].sum())
            for col, v in zip((P, R, W, S, F), (e.prompt_ids, e.response_ids[:n], r[i, :n].tolist(), source,
                                                families[i]["family"])):  # fmt: skip
                col.append(v)

    if details:
        for key, src in (
            ("clean", "demo"),
            ("corrupt", "corrupted"),
            ("corrupt_sampled", "corrupted_sampled"),
        ):
            if key in details:
                add(*details[key], src, details["rows"])
    if inputs.samples is not None:
        enc = inputs.samples[0]
        add(enc, *score_encoded(reward, enc, tok.pad_token_id, device), "sft", inputs.rows)
    if P:
        path = write_reward_parquet(out_dir / "rewards.parquet", P, R, W, S, F)
        files["rewards_parquet"] = {"path": str(path), "sha256": sha256_file(path)}
    probe = {"name": inputs.task.recovery_probe}
    if inputs.corruptions is not None:
        probe["proposal"] = inputs.corruptions.proposal  # where the sampled replacement tokens come from
    write_manifest(
        out_dir / "reward_manifest.json",
        {**reward.describe(), "tokenizer_hash": tokenizer_hash, "files": dict(files), "probe": probe},
    )
    files["reward_manifest"] = str(out_dir / "reward_manifest.json")
    return files


class RecoveryPass:
    """The configured reward on a live SFT model: probe metrics, heatmap and artefact into a folder.

    Holds only plain settings, the task and the tokenizer, so ddp_spawn can pickle the callback
    that holds it.
    """

    def __init__(
        self,
        *,
        reward_cfg,
        baseline_cfg,
        sampler,
        task,
        tokenizer,
        sft_dir,
        probe_size,
        n_reference,
        n_heat,
        seed,
        autocast_kind,
        tokenizer_hash,
        tracking=None,
    ):
        self.__dict__.update(locals())
        del self.__dict__["self"]

    def __call__(self, model, out_dir: Path, device) -> dict[str, float]:
        out_dir.mkdir(parents=True, exist_ok=True)
        frozen = copy.deepcopy(model)  # the live model keeps training
        reward = build_reward(
            self.reward_cfg, self.baseline_cfg, self.sft_dir, self.tokenizer, device, sft_model=frozen
        )
        rows = self.task.splits()["val"][: self.probe_size]
        kind = self.autocast_kind
        with torch.autocast(kind, dtype=torch.bfloat16) if kind else contextlib.nullcontext():
            others = reference_models(self.task, self.sft_dir, self.tokenizer, device)
            inputs = ProbeInputs(
                self.task,
                self.tokenizer,
                frozen,
                self.sampler,
                rows,
                seed=self.seed,
                n_reference=self.n_reference,
                others=others,
                proposal=proposal_for(reward),
            )
            metrics, details = inputs.report(reward, device)
            write_artefacts(
                out_dir, reward, details, inputs, self.tokenizer_hash, device, self.tracking, self.n_heat
            )
        return metrics
