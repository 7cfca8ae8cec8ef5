"""Reward recovery probes: does the recovered dense reward carry signal?

- Corruption probe (the paper's Figure 1), verifiable tasks: score held-out demonstrations and
  copies with one verifier-checked character altered; report how often the altered token gets the
  lowest reward in its response (vs chance 1/length) and the AUROC of corrupted vs clean tokens.
- Fidelity, tasks with a known reward: Pearson/Spearman of recovered vs true return within each policy's samples
  (expert, SFT, baseline, uniform) and pooled.
- Separation, verifiable tasks: AUROC of the sequence reward between correct and wrong SFT samples.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

from densepath.data.datamodule import Collator
from densepath.data.formatting import Encoded, answer_text, encode_many, encode_prompt
from densepath.eval import probes

log = logging.getLogger(__name__)


def score_encoded(
    reward, encoded: list[Encoded], pad_id: int, device, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score token lists in batches; returns right-padded (N, T) rewards and mask on the CPU."""
    collate = Collator(pad_id)
    outs, masks = [], []
    for s in range(0, len(encoded), batch_size):
        b = {k: v.to(device) for k, v in collate(encoded[s : s + batch_size]).items()}
        outs.append(
            reward.score(b["prompt_ids"], b["prompt_mask"], b["response_ids"], b["response_mask"])
            .float()
            .cpu()
        )
        masks.append(b["response_mask"].cpu())
    T = max(o.shape[1] for o in outs)
    r = torch.cat([torch.nn.functional.pad(o, (0, T - o.shape[1])) for o in outs])
    m = torch.cat([torch.nn.functional.pad(o, (0, T - o.shape[1])) for o in masks])
    return r, m


def build_corruption_probe(
    task, tokenizer, rows: list[dict], seed: int
) -> tuple[list[Encoded], list[Encoded], list[int], list[dict]]:
    """Clean demonstrations, corrupted copies and the token index of the altered character.

    The token index is where the two token sequences differ; rows where a corruption does not map
    to exactly one token (e.g. a corrupted word splitting into several BPE pieces) are dropped.
    """
    rng = random.Random(seed)
    pairs, kept = [], []
    for r in rows:
        try:
            bad, _ = task.corrupt(r, r["response"], rng)
        except (ValueError, AttributeError):
            continue
        if task.score([r], [bad])["success"][0] != 0:
            raise AssertionError(f"corruption of {r['response']!r} -> {bad!r} still verifies")
        pairs.append((r, bad))
    clean = encode_many(tokenizer, [(task.messages(r), r["response"]) for r, _ in pairs])
    corrupt = encode_many(tokenizer, [(task.messages(r), b) for r, b in pairs])
    out_c, out_b, pos = [], [], []
    for (r, _), c, b in zip(pairs, clean, corrupt):
        if len(c.response_ids) != len(b.response_ids):
            continue
        diff = [i for i, (x, y) in enumerate(zip(c.response_ids, b.response_ids)) if x != y]
        if len(diff) != 1:
            continue
        out_c.append(c)
        out_b.append(b)
        pos.append(diff[0])
        kept.append(r)
    return out_c, out_b, pos, kept


def corruption_report(reward, task, tokenizer, rows, device, seed: int = 0) -> tuple[dict[str, float], dict]:
    clean, bad, pos, kept = build_corruption_probe(task, tokenizer, rows, seed)
    if not clean:
        return {"probe/n": 0.0}, {}
    rc, mc = score_encoded(reward, clean, tokenizer.pad_token_id, device)
    rb, mb = score_encoded(reward, bad, tokenizer.pad_token_id, device)
    positions = torch.tensor(pos)
    det = probes.detection_rate(rb, mb, positions)
    metrics = {
        "probe/n": float(len(clean)),
        "probe/detection_rate": det["detection_rate"],
        "probe/chance": det["chance"],
        "probe/token_auroc": probes.corrupted_token_auroc(rc, mc, rb, mb, positions),
        "probe/seq_auroc": probes.auroc(
            (rc * mc).sum(-1).numpy(), (rb * mb).sum(-1).numpy()
        ),  # corrupted responses should score lower as a whole
    }
    metrics.update({f"reward/{k}": v for k, v in probes.reward_stats(rc, mc).items()})
    fams = np.array([r["family"] for r in kept])
    for f in sorted(set(fams)):
        idx = torch.tensor(np.nonzero(fams == f)[0])
        d = probes.detection_rate(rb[idx], mb[idx], positions[idx])
        metrics[f"probe/{f}/detection_rate"] = d["detection_rate"]
    details = {"clean": (clean, rc, mc), "corrupt": (bad, rb, mb), "positions": pos, "rows": kept}
    return metrics, details


def sample_policy(model, tokenizer, task, rows, sampler, k: int = 1):
    prompts = [encode_prompt(tokenizer, task.messages(r)) for r in rows]
    b = sampler.generate(model, prompts, k=k)
    ids, mask = b.response_ids.cpu(), b.response_mask.cpu().bool()
    enc = [
        Encoded(list(map(int, b.prompt_ids[i][b.prompt_mask[i].bool()].tolist())), ids[i][mask[i]].tolist())
        for i in range(ids.shape[0])
    ]
    texts = [answer_text(tokenizer, e.response_ids) for e in enc]
    return enc, texts


def separation_report(reward, task, tokenizer, rows, enc, texts, device) -> dict[str, float]:
    """AUROC of the sequence reward: correct vs wrong SFT samples (1 = reward ranks correct higher)."""
    succ = task.score(rows, texts)["success"]
    r, m = score_encoded(reward, enc, tokenizer.pad_token_id, device)
    seq = (r * m).sum(-1).numpy()
    out = {"samples/success": float(succ.mean()), "samples/reward": float(seq.mean())}
    if (succ == 1).any() and (succ == 0).any():  # graded success: full marks vs none only
        # "positives" score lower: wrong answers are the positives here
        out["samples/correct_vs_wrong_auroc"] = probes.auroc(seq[succ == 1], seq[succ == 0])
    return out


def fidelity_report(
    reward, task, tokenizer, rows: list[dict], policies: dict[str, list[str]], device
) -> dict[str, float]:
    """Known reward: recovered vs true return within each policy's answers to ``rows`` and pooled,
    both centred per prompt (a recovered reward may differ from the true one by a constant per start
    state, e.g. -V(s0) for `logprob`; with one prompt centring changes nothing). Malformed answers are
    left out here (the task reads each well-formed answer as it scores it)."""
    rec, true, groups = {}, {}, {}
    for name, texts in policies.items():
        kept, answers, returns = task.scored_answers(rows, texts)
        pairs = [(task.messages(r), a) for r, a in zip(kept, answers)]
        enc = encode_many(tokenizer, pairs)
        r, m = score_encoded(reward, enc, tokenizer.pad_token_id, device)
        rec[name] = (r * m).sum(-1).numpy().astype(np.float64)
        true[name] = np.asarray(returns, dtype=np.float64)
        groups[name] = np.asarray([r["prompt"] for r in kept])
    out = {f"fidelity/{k}": v for k, v in probes.fidelity(rec, true, groups=groups).items()}
    for name in policies:
        out[f"fidelity/{name}/true_return"] = float(true[name].mean())
        out[f"fidelity/{name}/recovered_return"] = float(rec[name].mean())
    return out


def heatmap_rows(tokenizer, details: dict, n: int = 40) -> list[dict]:
    rows = []
    if not details:
        return rows
    clean, rc, mc = details["clean"]
    bad, rb, mb = details["corrupt"]
    for i in range(min(n, len(clean))):
        for enc, r, m, label in (
            (clean[i], rc[i], mc[i], "clean"),
            (bad[i], rb[i], mb[i], f"corrupted @{details['positions'][i]}"),
        ):
            L = int(m.sum())
            rows.append(
                {
                    "prompt": details["rows"][i]["prompt"],
                    "tokens": tokenizer.convert_ids_to_tokens(enc.response_ids[:L]),
                    "rewards": [float(x) for x in r[:L]],
                    "label": f"{label} (sum {float(r[:L].sum()):.2f})",
                }
            )
    return rows


def demo_report(reward, task, tokenizer, rows, device) -> dict[str, float]:
    """Chat data without a verifier: reward statistics on held-out demonstrations."""
    enc = encode_many(tokenizer, [(task.messages(r), r["response"]) for r in rows])
    r, m = score_encoded(reward, enc, tokenizer.pad_token_id, device)
    return {f"reward/{k}": v for k, v in probes.reward_stats(r, m).items()}
