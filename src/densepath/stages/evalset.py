"""The `evalset` stage: every policy of the run (and of its parent run), plus the untrained base model,
answers a held-out benchmark's prompts (`evalset=ifbench`), scored by the benchmark's own checkers.

Greedy decoding, `evalset.max_new_tokens` new tokens, `evalset.batch_size` prompts per generate call;
the truncation rate (answers that hit the limit without EOS) is reported beside the accuracy. The
base model's answers do not depend on the run, so they are cached (`evalset.cache_dir`) and reused.
With `evalset.fidelity`, the recovered sequence reward of SFT's answers is checked against the
benchmark: does it rank passing answers above failing ones (AUROC, bootstrap 95% CI)?

`evalset.decoders` (e.g. [beam4, bon4]) also answers with SFT's mode-seeking decoders (`evalset.decode_policies`,
default [sft]): beam search by summed log-prob, best-of-N samples (T = the sampler's) reranked by the policy's
own summed log-prob; each scored like a policy, as `<policy>@<decoder>`, with its inference cost per
answer (token positions run through a model, prompt excluded; greedy: the answer's length), so DPR
decoded once can be placed on SFT's score-vs-cost frontier.

Files in the stage dir: `<policy>/responses.jsonl` (the upstream evaluator's input format),
`<policy>/results.jsonl` (per-prompt checker results), `<policy>/summary.json`, `table.md`.
Metrics: `evalset/<policy>/<name>/<level>_<mode>[_lo|_hi|_n]`, `.../truncated`, `.../length`, `.../cost`.
Selection never looks at these numbers: they are computed after every policy is fixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from densepath.data.formatting import encode_prompt
from densepath.eval.evalsets import build_evalset, read_answers
from densepath.models.device import autocast_for, device_for
from densepath.models.io import load_policy
from densepath.models.logprobs import response_logprobs
from densepath.rewards.artefact import atomic_write
from densepath.sampling.search import beam_search, best_of, select_rows
from densepath.stages.base import Stage, available_policies, policy_path
from densepath.stages.common import build_sampler

log = logging.getLogger(__name__)


def parse_decoder(spec: str) -> tuple[str, str, int]:
    """`beam<W>` or `bon<N>` -> (spec, kind, W or N)."""
    for prefix, kind in (("beam", "beam"), ("bon", "best_of_n")):
        if spec.startswith(prefix) and spec[len(prefix) :].isdigit() and int(spec[len(prefix) :]) >= 1:
            return spec, kind, int(spec[len(prefix) :])
    raise ValueError(f"evalset.decoders: {spec!r} is not beam<W> or bon<N> (e.g. [beam4, bon4])")


def _cache_root(node) -> Path:
    return Path(node.get("cache_dir") or Path.home() / ".cache" / "densepath" / "evalsets").expanduser()


class EvalSetStage(Stage):
    def run(self, ctx) -> dict[str, float]:
        cfg, name = ctx.cfg, self.name
        node = cfg.get("evalset")
        if node is None:
            raise ValueError(
                f"the `{name}` stage needs an evaluation set: add evalset=ifbench (the options are the files in conf/evalset/)"
            )
        es = build_evalset(node)
        records = es.records()
        es.check(records)  # unknown instruction ids fail here, before any generation
        policies = available_policies(ctx)
        if not policies and not es.base:
            raise ValueError(
                f"{name}: no policy in {ctx.run_dir} or parent_run={ctx.parent_run}; run a training stage first "
                "or pass parent_run=<run dir>"
            )
        self.sampler, self.device = build_sampler(ctx), device_for(cfg.trainer)
        tok = ctx.tokenizer
        prompts = [encode_prompt(tok, es.messages(r)) for r in records]
        out_dir = ctx.stage_dir(name)
        metrics: dict[str, float] = {}
        summaries: dict[str, dict] = {}
        results_by: dict[str, list[dict]] = {}
        texts_by: dict[str, list[str]] = {}
        decoders = [parse_decoder(d) for d in node.get("decoders") or []]
        decode_for = list(node.get("decode_policies") or ["sft"]) if decoders else []
        if missing := [p for p in decode_for if p not in policies]:
            raise ValueError(f"{name}.decode_policies: {missing} not among this run's policies {policies}")
        todo = (["base"] if es.base else []) + policies
        todo += [f"{p}@{d}" for p in decode_for for d, _, _ in decoders]
        model, loaded = None, None
        for policy in tqdm(todo, desc=f"{name}: {es.name} per policy", disable=None):
            if policy == "base":
                texts, lengths, truncated = self._base_answers(ctx, es, prompts, records)
                cost = lengths
            else:
                src, _, dec = policy.partition("@")
                if loaded != src:
                    model = None  # the previous policy goes before the next one loads
                    model = load_policy(policy_path(ctx, src))[0].to(self.device).eval()
                    loaded = src
                if dec:
                    texts, lengths, truncated, cost = self.decode(ctx, model, prompts, es, parse_decoder(dec))
                else:
                    texts, lengths, truncated = self.answer(ctx, model, prompts, es, policy)
                    cost = lengths
            results, summary, flat, md = es.score(records, texts)
            d = out_dir / policy
            es.write_responses(d / "responses.jsonl", records, texts)
            (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results), encoding="utf-8")
            summary.update(
                {
                    "truncated": float(np.mean(truncated)),
                    "length": float(np.mean(lengths)),
                    "cost": float(np.mean(cost)),
                }
            )
            (d / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
            (d / "table.md").write_text(md, encoding="utf-8")
            metrics.update({f"{policy}/{k}": float(v) for k, v in flat.items()})
            metrics[f"{policy}/{es.name}/truncated"] = summary["truncated"]
            metrics[f"{policy}/{es.name}/length"] = summary["length"]
            metrics[f"{policy}/{es.name}/cost"] = summary["cost"]
            summaries[policy], results_by[policy], texts_by[policy] = summary, results, texts
        del model
        fidelity = {}
        if es.fidelity and "sft" in texts_by:
            fidelity = self.fidelity(ctx, es, records, prompts, texts_by["sft"], results_by["sft"])
            metrics.update({f"sft/{es.name}/{k}": v for k, v in fidelity.items() if isinstance(v, float)})
        table = comparison_table(summaries, es, len(records), fidelity)
        (out_dir / "table.md").write_text(table, encoding="utf-8")
        print("\n" + table + "\n", flush=True)
        manifest = {
            "evalset": OmegaConf.to_container(node, resolve=True),
            "n_prompts": len(records),
            "keys": [r["key"] for r in records],
            "policies": todo,
            "decoding": {"greedy": True, "max_new_tokens": int(es.max_new_tokens)},
            "system_prompt": ctx.manifest.get("chat", {}).get("system_prompt"),
            "fidelity": fidelity,
        }
        ctx.record(name, metrics, manifest)
        return metrics

    @torch.no_grad()
    def answer(self, ctx, model, prompts, es, policy: str):
        """Greedy answers in batches of `evalset.batch_size`: (texts, lengths, truncated flags)."""
        texts, lengths, truncated = [], [], []
        bs = max(1, int(es.batch_size))
        with autocast_for(ctx.cfg.trainer):
            for s in tqdm(range(0, len(prompts), bs), desc=f"{policy}: answering", leave=False, disable=None):
                batch = self.sampler.generate(
                    model, prompts[s : s + bs], k=1, greedy=True, max_new_tokens=int(es.max_new_tokens)
                )
                for out, x in zip(
                    (texts, lengths, truncated), read_answers(ctx.tokenizer, batch, int(es.max_new_tokens))
                ):
                    out.extend(x)
        return texts, lengths, truncated

    @torch.no_grad()
    def decode(self, ctx, model, prompts, es, decoder: tuple[str, str, int]):
        """Answers of a mode-seeking decoder (beam W, or best-of-N by the policy's own summed log-prob):
        (texts, lengths, truncated flags, cost per answer)."""
        name, kind, n = decoder
        s, bs, max_new = self.sampler, max(1, int(es.batch_size)), int(es.max_new_tokens)
        torch.manual_seed(
            int(ctx.cfg.seed)
        )  # best-of-N draws do not depend on what ran before (cache, resume)
        texts, lengths, truncated, cost = [], [], [], []
        with autocast_for(ctx.cfg.trainer):
            for i in tqdm(range(0, len(prompts), bs), desc=f"{name}: answering", leave=False, disable=None):
                part = prompts[i : i + bs]
                if kind == "beam":
                    d = beam_search(
                        model,
                        part,
                        width=n,
                        max_new_tokens=max_new,
                        eos_id=s.eos_token_id,
                        pad_id=s.pad_token_id,
                        batch_rows=bs * n,
                    )
                    batch, c = d.batch, d.cost
                else:
                    cand = s.generate(model, part, k=n, max_new_tokens=max_new)
                    logp = response_logprobs(
                        model, cand.prompt_ids, cand.prompt_mask, cand.response_ids, cand.response_mask
                    ).logp.float()
                    pick = best_of(logp.sum(-1), n)
                    rows = torch.arange(len(part), device=pick.device) * n + pick
                    batch = select_rows(cand, rows)
                    c = cand.response_mask.sum(-1).view(-1, n).sum(-1) * 2  # generation + one scoring model
                for out, x in zip(
                    (texts, lengths, truncated), read_answers(ctx.tokenizer, batch, int(es.max_new_tokens))
                ):
                    out.extend(x)
                cost.extend(float(v) for v in c.cpu())
        return texts, lengths, truncated, cost

    def _base_answers(self, ctx, es, prompts, records):
        """The untrained base model's answers, cached by what determines them (model, tokenizer, prompts,
        decoding; the seed too when the model is built from scratch rather than loaded)."""
        spec = instantiate(ctx.cfg.model)
        pretrained = spec.load_tokenizer() is not None
        key = {
            "model": OmegaConf.to_container(ctx.cfg.model, resolve=True),
            "tokenizer": ctx.manifest.get("tokenizer_hash"),
            "prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(),
            "max_new_tokens": int(es.max_new_tokens),
            "seed": None if pretrained else int(ctx.cfg.seed),
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = _cache_root(ctx.cfg.evalset) / es.name / f"base-{digest}.json"
        if path.exists():
            got = json.loads(path.read_text())
            log.info("%s: the base model's answers come from the cache %s", self.name, path)
            return got["texts"], got["lengths"], got["truncated"]
        torch.manual_seed(int(ctx.cfg.seed))
        model = spec.build(ctx.tokenizer).to(self.device).eval()
        texts, lengths, truncated = self.answer(ctx, model, prompts, es, "base")
        payload = json.dumps({"key": key, "texts": texts, "lengths": lengths, "truncated": truncated})
        atomic_write(path, lambda tmp: Path(tmp).write_text(payload))  # concurrent seeds share this cache
        return texts, lengths, truncated

    def fidelity(self, ctx, es, records, prompts, texts, results) -> dict:
        """AUROC of SFT's recovered sequence reward for passing vs failing answers (prompt level, loose)."""
        from densepath.data.formatting import Encoded
        from densepath.eval.probes import sequence_auroc
        from densepath.eval.recovery import score_encoded
        from densepath.stages.rl import load_reward

        try:
            reward = load_reward(ctx, self.device)
        except (FileNotFoundError, ValueError) as e:
            log.warning("%s: no recovered reward for the fidelity check (%s)", self.name, e)
            return {"skipped": f"no recovered reward ({e})"}
        passed = es.passed(results)
        keep = [i for i, p in enumerate(passed) if p is not None]
        eos = ctx.tokenizer.eos_token_id
        enc = []
        for i in keep:
            ids = ctx.tokenizer.encode(texts[i], add_special_tokens=False) + [eos]
            enc.append(Encoded(prompts[i], ids))
        r, m = score_encoded(reward, enc, ctx.tokenizer.pad_token_id, self.device, batch_size=8)
        seq = (r * m).sum(-1).numpy()
        y = np.asarray([bool(passed[i]) for i in keep])
        out = {
            "n": float(len(keep)),
            "n_pass": float(y.sum()),
            "formulation": reward.describe().get("name", ""),
        }
        if 0 < y.sum() < len(y):
            auc, lo, hi = sequence_auroc(seq, y)
            out.update(
                {
                    "seq_reward_auroc": float(auc),
                    "seq_reward_auroc_lo": float(lo),
                    "seq_reward_auroc_hi": float(hi),
                }
            )
        else:
            out["why"] = "every answer passed or every answer failed: the AUROC is undefined"
        return out


def comparison_table(summaries: dict[str, dict], es, n: int, fidelity: dict) -> str:
    """One row per policy: prompt- and instruction-level accuracy (strict, loose; %, Wilson 95% CI)."""
    from densepath.eval.report import markdown_table

    def cell(s: dict) -> str:
        if not s["n"]:
            return "-"
        return f"{100 * s['acc']:.1f} [{100 * s['lo']:.1f}, {100 * s['hi']:.1f}]"

    header = [
        "policy",
        "prompt strict",
        "prompt loose",
        "instruction strict",
        "instruction loose",
        "truncated",
        "length",
        "cost / answer",
    ]
    rows = [
        [
            p,
            *(
                cell(s[k])
                for k in ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")
            ),
            f"{100 * s['truncated']:.0f}%",
            f"{s['length']:.0f}",
            f"{s.get('cost', s['length']):.0f}",
        ]
        for p, s in summaries.items()
    ]
    lines = [
        f"## {es.name} on {n} prompts (greedy unless `@decoder`, max {es.max_new_tokens} new tokens; accuracy %, "
        "Wilson 95% CI; cost = token positions run through a model per answer)",
        "",
    ]
    lines += markdown_table(header, rows)
    any_s = next(iter(summaries.values()), None)
    if any_s and any_s.get("unscorable_instructions"):
        lines.append(
            f"\n{any_s['unscorable_instructions']} instructions in {any_s['unscorable_prompts']} prompts could not be "
            f"scored (checker data missing: {', '.join(any_s['unscorable_ids'])}); they are left out above."
        )
    if "seq_reward_auroc" in fidelity:
        lines.append(
            f"\nRecovered reward vs {es.name} (SFT's answers, n={int(fidelity['n'])}, {int(fidelity['n_pass'])} pass): "
            f"sequence-reward AUROC {fidelity['seq_reward_auroc']:.3f} "
            f"[{fidelity['seq_reward_auroc_lo']:.3f}, {fidelity['seq_reward_auroc_hi']:.3f}] (0.5 = no signal)"
        )
    elif fidelity.get("why") or fidelity.get("skipped"):
        lines.append(
            f"\nRecovered reward vs {es.name}: not computed ({fidelity.get('why') or fidelity.get('skipped')})"
        )
    return "\n".join(lines)
