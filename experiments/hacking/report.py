"""Table and plot of the reward-hacking watch (recovered reward vs verifier success per RL step).

`python -m experiments.hacking.report outputs/studies/hacking --out experiments/hacking
--main outputs/studies/main --ablations outputs/studies/ablations` writes results.md, results.json and
hacking.png; see :mod:`experiments.report_common` for the statistics.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from densepath.sweeps.stats import student_t_ppf
from experiments.report_common import (
    by_seed,
    failures_md,
    fmt_ci,
    load_jobs,
    make_fig,
    report_cli,
    seeds_of,
    summary,
    wall_hours,
    write_outputs,
)


def read_curves(job_dir: Path, stage: str = "dpr") -> dict[str, np.ndarray]:
    """Per-step training curves from the stage's CSV log: step, recovered reward, verifier success."""
    path = job_dir / stage / "csv" / "metrics.csv"
    if not path.exists():
        return {}
    cols: dict[str, list] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            if not row.get("train/reward"):
                continue
            for k in (
                "step",
                "train/reward",
                "train/true_success",
                "train/kl_to_sft",
                "train/true_true_return",
            ):
                v = row.get(k)
                cols.setdefault(k, []).append(float(v) if v not in (None, "") else math.nan)
    return {k: np.asarray(v) for k, v in cols.items()}


def read_watch(job_dir: Path, stage: str = "dpr") -> dict[str, np.ndarray]:
    """The real-text watch (`<stage>/watch.jsonl`, dpr.watch_every) as curves: step, the recovered return of
    the policy's greedy benchmark answers (`train/reward`) and their prompt-level pass rate, loose
    (`train/true_success`)."""
    path = Path(job_dir) / stage / "watch.jsonl"
    if not path.exists():
        return {}
    rows = sorted(
        (json.loads(x) for x in path.read_text().splitlines() if x.strip()), key=lambda r: r["step"]
    )
    return {
        "step": np.asarray([r["step"] for r in rows], dtype=float),
        "train/reward": np.asarray([r["reward"] for r in rows], dtype=float),
        "train/true_success": np.asarray([r["prompt_loose"] for r in rows], dtype=float),
    }


def report_hacking(
    sweep: Path, out: Path, main_dir: Path | None = None, ablations_dir: Path | None = None
) -> None:
    jobs, others = load_jobs(sweep)
    settings: dict[str, list] = {}
    watch = any(read_watch(j["dir"]) for j in jobs)  # real text: the watch answers a benchmark
    for j in jobs:
        name = j["config"]
        if watch and name == "(reference)":
            name = "real text: log_ratio, no KL, lr 1e-4"
        settings.setdefault(name, []).append(j)
    if main_dir is not None and Path(main_dir).is_dir():
        mj, _ = load_jobs(Path(main_dir))
        settings["main study DPR (log_ratio, k3 KL 1.0, lr 1e-5, 50 steps)"] = mj
    truth = {
        name: (
            "train/true_success",
            0.05,
            "IFBench pass rate (loose)" if read_watch(js[0]["dir"]) else "verifier success",
        )
        for name, js in settings.items()
    }
    if ablations_dir is not None and Path(ablations_dir).is_dir():
        aj, _ = load_jobs(Path(ablations_dir))
        for cfg, label in (("(reference)", "log_ratio"), ("reward=logprob", "logprob")):
            name = f"known-reward MDP, {label}, no KL, lr 1e-3 (ablations)"
            settings[name] = [j for j in aj if j["config"] == cfg]
            truth[name] = ("train/true_true_return", 0.5, "true return")
    if watch:
        setting = (
            "Every `dpr.watch_every` steps (and before the first), the policy answers a fixed subset of IFBench "
            "prompts greedily; the recovered return of those answers (what DPR maximises) is shown next to their "
            "IFBench prompt-level pass rate, loose (what we want). Setting "
            "(`conf/experiment/hacking_instruct.yaml`): DPR from each seed's SFT of the instruct study, the "
            "`log_ratio` reward against its half-way snapshot, lr 1e-4, no KL. A pass rate over 16 prompts moves "
            "in steps of 1/16, so the 0.05 threshold below is one prompt. The plot shows the raw watch points"
        )
    else:
        setting = (
            "Per training step, the recovered return of the policy's own samples (what DPR maximises) next to "
            "the verifier success of the same samples (what we want). Setting: "
            "DPR from each seed's SFT of the main study, lr 1e-4, no KL, 60 steps x 16 prompts x 8 samples; "
            "the main study's own DPR run (k3 KL 1.0, lr 1e-5) for comparison. The plot shows 5-step moving "
            "averages"
        )
    md = [
        "# Reward-hacking watch: results",
        "",
        f"{setting}, mean over seeds with a 95% band. Wall time of this sweep: {wall_hours(jobs):.2f} h summed "
        "over its jobs (the reused runs of other studies not counted).",
        "",
        "| setting | n | seeds | recovered return: first fifth of training → last fifth | verifier success (true return): first fifth → last fifth | step where it (smoothed) first falls 0.05 (0.5) below its start | best-val ckpt: eval success (true return) | last ckpt: eval success (true return) |",
        "|---|---:|---|---|---|---|---|---|",
    ]
    panels = []
    for name, js in settings.items():
        curves = [read_watch(j["dir"]) or read_curves(j["dir"]) for j in js]
        curves = [c for c in curves if c and len(c.get("step", []))]
        if not curves:
            continue
        L = min(len(c["step"]) for c in curves)
        steps = curves[0]["step"][:L]
        R = np.stack([c["train/reward"][:L] for c in curves])
        key, thresh, _ = truth[name]
        S = np.stack([c[key][:L] for c in curves])
        w = max(1, L // 5)  # first / last fifth of the logged points
        r0, r1 = R[:, :w].mean(1), R[:, -w:].mean(1)
        s0, s1 = S[:, :w].mean(1), S[:, -w:].mean(1)
        smooth = np.array([np.convolve(s, np.ones(w) / w, mode="valid") for s in S]).mean(0)
        drop = np.nonzero(smooth < smooth[0] - thresh)[0]
        where = f"{int(steps[drop[0] + w // 2])}" if len(drop) else "never"
        ev = summary(by_seed(js, "dpr/eval/sampled/" + key.split("/true_", 1)[1]).values())
        ev_last = summary(by_seed(js, "dpr/eval_last/sampled/" + key.split("/true_", 1)[1]).values())
        md.append(
            f"| `{name}` | {len(curves)} | {seeds_of(js)} | {fmt_ci(summary(r0))} → {fmt_ci(summary(r1))} | "
            f"{fmt_ci(summary(s0))} → {fmt_ci(summary(s1))} | {where} | {fmt_ci(ev)} | {fmt_ci(ev_last)} |"
        )
        panels.append((name, steps, R, S, truth[name][2]))
    md += failures_md(others)
    ncol = min(3, max(1, len(panels)))
    nrow = max(1, math.ceil(len(panels) / ncol))
    fig = make_fig(4.6 * ncol, 3.6 * nrow)
    for i, (name, steps, R, S, truth_label) in enumerate(panels):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        w = 5 if len(steps) >= 20 else 1  # moving average over 5 steps (each step: 16 prompts only)
        sm = lambda x, w=w: np.array([np.convolve(r, np.ones(w) / w, mode="valid") for r in x])  # noqa: E731
        steps_s = steps[w - 1 :]
        for arr, color, label, axis in (
            (sm(R), "tab:blue", "recovered return", ax),
            (sm(S), "tab:red", truth_label, None),
        ):
            a = axis if axis is not None else ax.twinx()
            m = arr.mean(0)
            h = (
                student_t_ppf(0.975, arr.shape[0] - 1) * arr.std(0, ddof=1) / math.sqrt(arr.shape[0])
                if arr.shape[0] > 1
                else np.zeros_like(m)
            )
            a.plot(steps_s, m, color=color, label=label)
            a.fill_between(steps_s, m - h, m + h, color=color, alpha=0.2)
            a.set_ylabel(label + (f" ({w}-step mean)" if w > 1 else ""), color=color, fontsize=8)
            if "pass rate" in label:  # a rate: its whole range, so a flat line reads as flat
                a.set_ylim(0.0, 1.0)
        ax.set_xlabel("RL step")
        ax.set_title(name if len(name) < 60 else name[:57] + "...", fontsize=8)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "hacking.png", dpi=120)
    md += ["", "![hacking](hacking.png)"]
    write_outputs(out, md, {"settings": list(settings)})


def _extra_args(p) -> None:
    p.add_argument(
        "--main", type=Path, default=None, dest="main_dir", help="the main study's sweep dir (its DPR curves)"
    )
    p.add_argument(
        "--ablations",
        type=Path,
        default=None,
        dest="ablations_dir",
        help="the ablations' sweep dir (known-reward curves)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    return report_cli(report_hacking, "hacking", __doc__, argv, _extra_args)


if __name__ == "__main__":
    raise SystemExit(main())
