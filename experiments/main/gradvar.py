"""Gradient variance of the policy-gradient estimators at a fixed policy.

`python -m experiments.main.gradvar <run dir with sft/> [--batches 12 --prompts 16 --k 8]`

Why: whether DPR can beat a baseline at a given budget depends on how noisy its gradient is. At
the SFT policy, draw `batches` independent minibatches (16 prompts x k samples from the `rl`
split), score each once with every reward, and compute each estimator's gradient on the *same*
samples. Reported per estimator: the squared norm of the mean gradient (signal), the total
variance of one minibatch gradient (trace of its covariance, noise), their ratio (the
signal-to-noise ratio of one step) and the cosine between each batch gradient and the mean of
the others (held-out agreement). Estimators:

- `dpr log_ratio` / `dpr logprob`: dense reward-to-go, per-position leave-one-out baseline;
- `dpr log_ratio, no baseline`: reward-to-go without the LOO baseline (advantage none);
- `rloo log_ratio`: the sequence return on every token, leave-one-out (the RLOO control);
- `verifier rloo`: the verifier's success as a sequence reward, leave-one-out (the oracle).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

ESTIMATORS = (
    ("dpr log_ratio", "log_ratio", False, "loo"),
    ("dpr logprob", "logprob", False, "loo"),
    ("dpr log_ratio, no baseline", "log_ratio", False, "none"),
    ("rloo log_ratio", "log_ratio", True, "loo"),
    ("verifier rloo", "verifier", True, "loo"),
)


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]).double()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.main.gradvar", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path, help="a run dir holding sft/ (policy and snapshots)")
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--out", type=Path, default=None, help="write the table and JSON here")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.batches < 3:
        raise SystemExit("--batches must be >= 3 (variance and held-out cosines need several batches)")

    from omegaconf import OmegaConf

    from densepath.algos.pg_math import advantages, policy_gradient_loss, reward_to_go
    from densepath.algos.rl import sequence_level_returns
    from densepath.data.formatting import encode_prompt
    from densepath.eval.verifier import Verifier
    from densepath.models import attention
    from densepath.models.io import load_policy
    from densepath.models.logprobs import response_logprobs
    from densepath.rewards.builder import build_reward
    from densepath.sampling.hf import HFSampler

    cfg_path = a.run_dir / ".hydra" / "config.yaml"
    if not (a.run_dir / "sft" / "policy").is_dir() or not cfg_path.exists():
        raise SystemExit(f"{a.run_dir}: expected a run dir with sft/policy and .hydra/config.yaml")
    cfg = OmegaConf.load(cfg_path)
    torch.manual_seed(a.seed)
    attention.configure("auto", "cpu")
    policy, tok = load_policy(a.run_dir / "sft" / "policy")
    from hydra.utils import instantiate

    task = instantiate(cfg.data)
    rows = task.splits()["rl"]
    prompts = [encode_prompt(tok, task.messages(r)) for r in rows]
    verify = Verifier(tok, task, rows)
    rewards = {}
    half = {"_target_": "densepath.rewards.baselines.SnapshotBaseline", "fraction": 0.5}
    for name, target in (("log_ratio", "LogRatio"), ("logprob", "LogProb")):
        formulation = {"_target_": f"densepath.rewards.formulations.{target}"}
        rewards[name] = build_reward(formulation, half, a.run_dir / "sft", tok, "cpu")
    sampler = HFSampler(max_new_tokens=a.max_new_tokens).configure(tok)
    rng = np.random.default_rng(a.seed)
    grads: dict[str, list[torch.Tensor]] = {e[0]: [] for e in ESTIMATORS}
    for bi in range(a.batches):
        idx = rng.choice(len(prompts), a.prompts, replace=False).tolist()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b = sampler.generate(policy, [prompts[i] for i in idx], k=a.k)
        mask = b.response_mask.float()
        with torch.no_grad():
            r = {
                n: rw.score_full(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask).rewards.float()
                for n, rw in rewards.items()
            }
        truth = verify(idx, b)
        key = "success" if "success" in truth else next(iter(truth))
        succ = torch.as_tensor(np.nan_to_num(np.asarray(truth[key], dtype=np.float64)), dtype=torch.float32)
        last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & mask.bool()
        r["verifier"] = torch.where(last, succ[:, None].expand_as(mask), torch.zeros_like(mask))
        for name, rew, seq, adv_kind in ESTIMATORS:
            returns = sequence_level_returns(r[rew], mask) if seq else reward_to_go(r[rew], mask, 1.0)
            adv = advantages(returns, mask, a.k, adv_kind)
            policy.zero_grad(set_to_none=True)
            logp = response_logprobs(
                policy, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask
            ).logp
            loss, _ = policy_gradient_loss(logp.float(), adv, mask, norm="seq_mean")
            loss.backward()
            grads[name].append(flat_grad(policy))
        sys.stderr.write(f"batch {bi + 1}/{a.batches}\n")
    results = {}
    lines = [
        f"Gradient statistics at the SFT policy of `{a.run_dir}`: {a.batches} independent minibatches of "
        f"{a.prompts} prompts x {a.k} samples (max {a.max_new_tokens} tokens), the same samples for every estimator.",
        "",
        "| estimator | signal ‖E g‖² | noise tr Cov(g) | SNR = signal/noise | held-out cosine (mean ± sd) "
        "| cosine of mean gradient with the verifier's |",
        "|---|---:|---:|---:|---|---:|",
    ]
    g_verifier = torch.stack(grads["verifier rloo"]).mean(0)
    for name, *_ in ESTIMATORS:
        G = torch.stack(grads[name])  # (M, P)
        M = G.shape[0]
        mean = G.mean(0)
        noise = float(((G - mean) ** 2).sum(1).sum() / (M - 1))
        # unbiased ||E g||^2: ||mean||^2 - tr(Cov)/M
        signal = float(mean.pow(2).sum()) - noise / M
        cos = []
        for i in range(M):
            rest = (G.sum(0) - G[i]) / (M - 1)
            cos.append(float(torch.nn.functional.cosine_similarity(G[i], rest, dim=0)))
        results[name] = {
            "signal": signal,
            "noise": noise,
            "snr": signal / noise if noise else math.nan,
            "cos_mean": float(np.mean(cos)),
            "cos_sd": float(np.std(cos, ddof=1)),
            "cos_verifier": float(torch.nn.functional.cosine_similarity(mean, g_verifier, dim=0)),
        }
        s = results[name]
        lines.append(
            f"| {name} | {s['signal']:.4g} | {s['noise']:.4g} | {s['snr']:.4f} | "
            f"{s['cos_mean']:.3f} ± {s['cos_sd']:.3f} | {s['cos_verifier']:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "gradvar.md").write_text(text)
        (a.out / "gradvar.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
