"""Reward recovery probes: does the recovered dense reward carry signal?

- Corruption probe (the paper's Figure 1), verifiable tasks: score held-out demonstrations and
  copies with one verifier-checked character altered; report how often the altered token gets the
  lowest reward in its response (vs chance 1/length) and the AUROC of corrupted vs clean tokens.
- Fidelity, tasks with a known reward: Pearson/Spearman of recovered vs true return within each policy's samples
  (expert, SFT, baseline, uniform) and pooled.
- Separation, verifiable tasks: AUROC of the sequence reward between correct and wrong SFT samples.
- Token corruption probe, chat data without a verifier (`corruption_tokens`): in token ids, one
  response token per held-out demonstration (a uniform position, never EOS or a special token) is
  replaced by (a) a uniformly random non-special vocabulary token and (b) a token sampled from a
  proposal model at that position (pi_base of the configured reward, else pi_SFT), the original
  excluded from both; the same detection rate / chance / token AUROC as the corruption probe.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np
import torch

from densepath.data.datamodule import Collator, encode_demonstrations
from densepath.data.formatting import Encoded, answer_text, encode_many, encode_prompt
from densepath.eval import probes
from densepath.eval.heatmap import token_strings
from densepath.models.logprobs import build_inputs, hidden_states

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


_HEAT_VARIANTS = (  # details key -> heatmap label of its rows (the altered position appended)
    ("clean", "clean"),
    ("corrupt", "corrupted"),
    ("corrupt_sampled", "sampled token"),
)


def heatmap_rows(tokenizer, details: dict, n: int = 40) -> list[dict]:
    """Heatmap rows of the first `n` probed demonstrations: clean, then each corrupted copy."""
    rows = []
    if not details:
        return rows
    labels = details.get("labels", {})
    for i in range(min(n, len(details["clean"][0]))):
        for key, default in _HEAT_VARIANTS:
            if key not in details:
                continue
            enc, r, m = (x[i] for x in details[key])
            label = labels.get(key, default) + ("" if key == "clean" else f" @{details['positions'][i]}")
            L = int(m.sum())
            rows.append(
                {
                    "prompt": details["rows"][i]["prompt"],
                    "tokens": token_strings(tokenizer, enc.response_ids[:L]),
                    "rewards": [float(x) for x in r[:L]],
                    "label": f"{label} (sum {float(r[:L].sum()):.2f})",
                }
            )
    return rows


def demo_report(reward, task, tokenizer, rows, device) -> dict[str, float]:
    """Chat data without a verifier: reward statistics on held-out demonstrations."""
    enc = encode_demonstrations(tokenizer, task, rows)
    r, m = score_encoded(reward, enc, tokenizer.pad_token_id, device)
    return {f"reward/{k}": v for k, v in probes.reward_stats(r, m).items()}


# ---------------------------------------------------------------- token corruption (chat data)
def special_token_ids(tokenizer) -> list[int]:
    """Every special token id: the named ones and added tokens flagged special (chat role markers)."""
    ids = set(int(i) for i in tokenizer.all_special_ids)
    ids |= {int(i) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    return sorted(ids)


def replaceable_ids(tokenizer, vocab_limit: int) -> torch.Tensor:
    """Sorted ids a corruption may write: below `vocab_limit` (the scorer's output size; a padded
    embedding matrix has rows no token uses) and len(tokenizer), and not special. (n,) long."""
    n = min(int(vocab_limit), len(tokenizer))
    keep = torch.ones(n, dtype=torch.bool)
    keep[[i for i in special_token_ids(tokenizer) if i < n]] = False
    if int(keep.sum()) < 2:
        raise ValueError(
            f"the tokenizer has {int(keep.sum())} non-special token(s) below id {n}; the token corruption "
            "probe needs at least 2 to replace a token by a different one."
        )
    return torch.nonzero(keep).squeeze(1)


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) long ids right-padded with `pad_id`, and the (B, T) bool mask of real tokens."""
    T = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), T), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, x in enumerate(seqs):  # per row, not per token
        ids[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
        mask[i, : len(x)] = True
    return ids, mask


def draw_positions(
    ids: torch.Tensor, mask: torch.Tensor, special: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One uniformly drawn replaceable position per row: a real token that is not the last one (EOS)
    and not a special token. Returns positions (B,) and ok (B,) bool (False: the row has none; its
    position is 0 and meaningless)."""
    B, T = ids.shape
    last = mask.sum(1, keepdim=True) - 1  # (B, 1) index of the final token (EOS)
    eligible = mask & (torch.arange(T)[None, :] < last) & ~torch.isin(ids, special)  # (B, T)
    ok = eligible.any(1)  # (B,)
    weights = torch.where(ok[:, None], eligible.double(), torch.ones((), dtype=torch.float64))
    return torch.multinomial(weights, 1, generator=gen).squeeze(1), ok  # (B,)


def random_replacements(original: torch.Tensor, allowed: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Uniform draws from `allowed` (sorted (n,)) excluding each row's `original` token, (B,).

    Why the shift: draw j among n - 1 slots and skip the original's slot, exact and vectorised.
    """
    n = allowed.numel()
    k = torch.searchsorted(allowed, original).clamp(max=n - 1)  # (B,) slot of the original if present
    present = allowed[k] == original  # (B,)
    j = (torch.rand(original.shape, generator=gen, dtype=torch.float64) * (n - present.long())).long()
    j = torch.minimum(j, n - 1 - present.long())  # guard the rand() == 1 - eps rounding edge
    return allowed[j + (present & (j >= k)).long()]


def sampled_replacements(
    logits: torch.Tensor, original: torch.Tensor, allowed: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """A draw from softmax(logits) restricted to `allowed` minus each row's `original`, (B,).

    ``logits`` (B, V) float on the CPU: the proposal model's next-token logits at the altered position.
    """
    B, V = logits.shape
    ok = torch.zeros(V, dtype=torch.bool)
    ok[allowed[allowed < V]] = True
    ok = ok.expand(B, V).clone()  # (B, V)
    ok[torch.arange(B), original.clamp(max=V - 1)] &= original >= V  # the original is never drawn
    z = torch.where(ok, logits.double(), -torch.inf)  # (B, V)
    probs = torch.softmax(z, dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(1)  # (B,)


@torch.no_grad()
def position_logits(
    model, encoded: list[Encoded], positions: torch.Tensor, pad_id: int, batch_size: int = 64
) -> torch.Tensor:
    """Next-token logits (B, V) float32 on the CPU of `model` at response index `positions[i]` of row i
    (teacher-forced on the clean response: the state before the altered token)."""
    device = next(model.parameters()).device
    head, collate, out = model.get_output_embeddings(), Collator(pad_id), []
    for s in range(0, len(encoded), batch_size):
        b = {k: v.to(device) for k, v in collate(encoded[s : s + batch_size]).items()}
        h = hidden_states(model, *build_inputs(**b))  # (b, P+T, H)
        at = b["prompt_ids"].shape[1] - 1 + positions[s : s + batch_size].to(device)  # (b,) predicts pos
        out.append(head(h[torch.arange(h.shape[0], device=device), at]).float().cpu())  # (b, V)
    return torch.cat(out)


@dataclass
class TokenCorruptions:
    """Held-out demonstrations and two corrupted copies of each, differing from it in one token."""

    clean: list[Encoded]
    random: list[Encoded]  # the token at `positions[i]` replaced by a uniform random token
    sampled: list[Encoded]  # ... by a draw from the proposal model (original excluded)
    positions: torch.Tensor  # (N,) response index of the altered token
    rows: list[dict]
    proposal: str  # which model the sampled tokens come from


def build_token_corruptions(
    task, tokenizer, rows: list[dict], proposal_model, proposal: str, seed: int, chunk: int = 64
) -> TokenCorruptions:
    """Corrupt one response token of each row in token ids (no detokenise / retokenise round trip,
    which would move positions); rows whose response has no replaceable token are dropped.
    Deterministic in `seed` (one CPU generator; positions, then random tokens, then samples)."""
    if not rows:
        raise ValueError(
            "the corruption_tokens probe needs held-out demonstrations; the val split is empty "
            "(raise data.val_fraction or data.sizes.val, and recover.probe_size >= 1)"
        )
    enc = encode_demonstrations(tokenizer, task, rows)
    ids, mask = pad_right([e.response_ids for e in enc], tokenizer.pad_token_id)  # (B, T)
    gen = torch.Generator().manual_seed(int(seed))
    special = torch.tensor(special_token_ids(tokenizer), dtype=torch.long)
    positions, ok = draw_positions(ids, mask, special, gen)
    if not bool(ok.all()):
        log.info(
            "corruption_tokens: %d of %d responses have no replaceable token; dropped",
            int((~ok).sum()),
            len(rows),
        )
    keep = torch.nonzero(ok).squeeze(1)
    enc, rows, ids, positions = (
        [enc[i] for i in keep.tolist()],
        [rows[i] for i in keep.tolist()],
        ids[keep],
        positions[keep],
    )
    if not enc:
        return TokenCorruptions([], [], [], positions, [], proposal)
    original = ids[torch.arange(len(enc)), positions]  # (N,)
    vocab = proposal_model.get_output_embeddings().weight.shape[0]
    allowed = replaceable_ids(tokenizer, vocab)
    rand_tok = random_replacements(original, allowed, gen)
    samp_tok = torch.cat(
        [  # chunks of rows keep the (rows, V) logits small whatever the vocabulary
            sampled_replacements(
                position_logits(
                    proposal_model, enc[s : s + chunk], positions[s : s + chunk], tokenizer.pad_token_id
                ),
                original[s : s + chunk],
                allowed,
                gen,
            )
            for s in range(0, len(enc), chunk)
        ]
    )

    def swapped(new: torch.Tensor) -> list[Encoded]:
        out = []
        for e, p, t in zip(enc, positions.tolist(), new.tolist()):  # per row
            out.append(Encoded(list(e.prompt_ids), [*e.response_ids[:p], int(t), *e.response_ids[p + 1 :]]))
        return out

    return TokenCorruptions(enc, swapped(rand_tok), swapped(samp_tok), positions, rows, proposal)


def token_corruption_report(
    reward, tokenizer, corruptions: TokenCorruptions, device
) -> tuple[dict[str, float], dict]:
    """Detection rate (vs chance) and corrupted-token AUROC of one reward on both corruption kinds,
    plus the reward statistics of the clean demonstrations; metrics that do not apply are omitted."""
    c = corruptions
    if not c.clean:
        return {"probe/n": 0.0}, {}
    pad = tokenizer.pad_token_id
    rc, mc = score_encoded(reward, c.clean, pad, device)
    metrics: dict[str, float] = {"probe/n": float(len(c.clean))}
    details = {"clean": (c.clean, rc, mc), "positions": c.positions.tolist(), "rows": c.rows}
    details["labels"] = {"corrupt": "random token", "corrupt_sampled": f"token sampled from {c.proposal}"}
    for kind, enc, key in (("random", c.random, "corrupt"), ("sampled", c.sampled, "corrupt_sampled")):
        rb, mb = score_encoded(reward, enc, pad, device)
        det = probes.detection_rate(rb, mb, c.positions)
        metrics["probe/chance"] = det["chance"]  # the same rows and lengths for both kinds
        metrics[f"probe/{kind}/detection_rate"] = det["detection_rate"]
        metrics[f"probe/{kind}/token_auroc"] = probes.corrupted_token_auroc(rc, mc, rb, mb, c.positions)
        details[key] = (enc, rb, mb)
    metrics.update({f"reward/{k}": v for k, v in probes.reward_stats(rc, mc).items()})
    return metrics, details
