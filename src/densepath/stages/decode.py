"""The decoding control: every policy decoded greedily, at each temperature, by beam search and by
best-of-N, each setting's score with its inference cost per answer; the best decoder per policy is
chosen on `val`, every setting is reported on `eval` (the frontier).

An RL gain over SFT may be nothing more than a sharper distribution (a temperature) or SFT's
sequence mode (a beam search finds it without training). Costs: `densepath.sampling.search`.

Settings: the `decode` node (`temperatures`, `beam_widths`, `best_of_n`, `rerank`, `policies`, `search_policies`,
`reference`); `max_new_tokens` and the best-of-N sampling temperature are the sampler's.
Metric keys, per policy `<p>` and decoder `<d>` (`greedy`, `T0.5`, `beam4`, `bon4_policy_logp`,
`bon4_reward`):
  `decode/<p>/<split>/<d>/<metric>[_lo|_hi]`   split in {val, eval}; metric: the task's, `cost`, `length`
  `decode/<p>/best/<metric>`                    eval, at the decoder chosen on val (named in the manifest)
  `decode/<p>/greedy_same_as_mode`              share of eval prompts whose greedy answer equals the
                                                reference policy's widest-beam answer
Files in the stage dir: `frontier.csv`, `frontier.md`, `frontier.png`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from densepath.data.formatting import encode_prompt
from densepath.eval.evaluate import score_answers
from densepath.eval.frontier import frontier_table, plot_frontier, write_csv
from densepath.eval.report import fmt
from densepath.models.device import autocast_for, device_for
from densepath.models.io import load_policy
from densepath.models.logprobs import response_logprobs
from densepath.rewards.builder import build_reward
from densepath.sampling.search import Decoded, beam_search, best_of, select_rows
from densepath.stages.base import Stage, available_policies, policy_path
from densepath.stages.common import build_sampler

log = logging.getLogger(__name__)
RERANKS = ("policy_logp", "reward")


def choose(val: dict[str, float], cost: dict[str, float], higher_is_better: bool = True) -> str:
    """The best decoder on val; ties go to the cheaper one, then to the first listed (greedy first)."""
    sign, order = (1.0 if higher_is_better else -1.0), {d: i for i, d in enumerate(val)}
    return min(val, key=lambda d: (-sign * val[d], cost[d], order[d]))


def _lengths(batch) -> torch.Tensor:
    return batch.response_mask.sum(-1)


@dataclass
class Grid:
    temps: list[float]
    widths: list[int]
    ns: list[int]
    reranks: list[str]

    @classmethod
    def from_node(cls, node, name: str) -> Grid:
        g = cls(
            sorted(float(t) for t in node.temperatures),
            sorted(int(w) for w in node.beam_widths),
            sorted(int(n) for n in node.best_of_n),
            list(node.rerank),
        )
        if min(g.temps, default=1) <= 0 or min(g.widths + g.ns, default=1) < 1:
            raise ValueError(
                f"{name}: temperatures={g.temps} must be > 0 (greedy is always included), "
                f"beam_widths={g.widths} and best_of_n={g.ns} >= 1"
            )
        if bad := [r for r in g.reranks if r not in RERANKS]:
            raise ValueError(f"{name}.rerank: {bad} unknown; choose from {list(RERANKS)}")
        return g


class DecodeStage(Stage):
    def run(self, ctx) -> dict[str, float]:
        cfg, task, node, name = ctx.cfg, ctx.task, ctx.cfg[self.name], self.name
        if not task.verifiable:
            why = (
                f"the `{name}` stage needs a task that judges answers; data={task.name} reports held-out "
                "NLL, which does not depend on how answers are decoded"
            )
            if len(ctx.stages) == 1:  # asked for alone: an error; in a chain: skipped, and said so
                raise ValueError(f"pipeline: {why}")
            log.warning("%s: skipped (%s)", name, why)
            ctx.record(name, {}, {"skipped": why})
            return {}
        grid = Grid.from_node(node, name)
        available = available_policies(ctx)
        wanted = available if node.policies is None else list(node.policies)
        if not wanted or (unknown := [p for p in wanted if p not in available]):
            raise ValueError(
                f"{name}.policies: {unknown if wanted else '[]'} have no policy in this run or its parent_run "
                f"({ctx.run_dir}, parent_run={ctx.parent_run}); available: {available}"
            )
        wanted.sort(key=lambda p: p != node.reference)  # the reference first, the others in pipeline order
        search = node.get("search_policies")
        if search is not None:
            search = list(search)
            if unknown := [p for p in search if p not in wanted]:
                raise ValueError(
                    f"{name}.search_policies: {unknown} are not decoded here (policies: {wanted})"
                )
            if grid.widths and node.reference not in search:
                raise ValueError(
                    f"{name}.search_policies: {search} leaves out the reference `{node.reference}`, whose "
                    "widest beam the others' greedy answers are compared with; add it"
                )
        self.sampler, self.device = build_sampler(ctx), device_for(cfg.trainer)
        self.reward = None
        if grid.ns and "reward" in grid.reranks:
            sft_dir = ctx.artefact_dir("sft")
            self.reward = build_reward(cfg.reward, cfg.baseline, sft_dir, ctx.tokenizer, self.device)
        splits = task.splits()
        sizes = {
            s: [n for n in (node.get(f"{s}_size"), cfg.eval.get(f"{s}_size")) if n] for s in ("val", "eval")
        }
        size = {s: min(n) if n else None for s, n in sizes.items()}  # never more than eval.<split>_size
        rows = {s: splits[s][: size[s]] for s in ("val", "eval")}
        metrics, table, texts, chosen = {}, [], {}, {}
        bar = tqdm(total=2 * len(wanted), desc=f"{name}: policies x splits", disable=None)
        for order, policy in enumerate(wanted):
            model = load_policy(policy_path(ctx, policy))[0].to(self.device).eval()
            with autocast_for(cfg.trainer):
                res = {}
                for split in ("val", "eval"):
                    bar.set_postfix_str(f"{policy} {split}")
                    mine = (
                        grid if search is None or policy in search else Grid(grid.temps, [], [], grid.reranks)
                    )
                    res.update(self.decode_split(ctx, model, rows[split], f"{policy}/{split}", mine))
                    bar.update()
            metrics.update({k: v for r in res.values() for k, v in r["metrics"].items()})
            chosen[policy], more = self.choose_and_tabulate(res, policy, order, task, table)
            metrics.update(more)
            texts[policy] = {dec: r["texts"] for (split, dec), r in res.items() if split == "eval"}
            del model
        bar.close()
        same = self.same_as_mode(texts, str(node.reference), grid.widths)
        metrics.update({f"{p}/greedy_same_as_mode": v for p, v in same.items()})
        self.report(ctx, table, same, task.headline, str(node.reference))
        manifest = {
            "temperatures": grid.temps,
            "beam_widths": grid.widths,
            "best_of_n": grid.ns,
            "rerank": grid.reranks,
            "search_policies": search,
            "chosen": chosen,
            "sizes": {s: len(r) for s, r in rows.items()},
            "reference": f"{node.reference} beam{max(grid.widths)}" if grid.widths else None,
            "reward": self.reward.describe() if self.reward is not None else None,
        }
        ctx.record(name, metrics, manifest)
        return metrics

    def decode_split(self, ctx, model, rows, prefix: str, grid: Grid) -> dict:
        """{(split, decoder): {"kind", "metrics", "texts"}} for every decoder of the grid on `rows`."""
        prompts = [encode_prompt(ctx.tokenizer, ctx.task.messages(r)) for r in rows]
        split, out = prefix.rsplit("/", 1)[1], {}
        for dec, kind, d in self.decoders(model, prompts, grid.temps, grid.widths, grid.ns, grid.reranks):
            cost = d.cost.float().cpu().numpy()
            extra = lambda _batch, c=cost: {"cost": c}  # noqa: E731
            m, det = score_answers(ctx.tokenizer, ctx.task, rows, d.batch, f"{prefix}/{dec}", extra)
            out[split, dec] = {"kind": kind, "metrics": m, "texts": det["texts"]}
        return out

    @staticmethod
    def choose_and_tabulate(res: dict, policy: str, order: int, task, table: list) -> tuple[str, dict]:
        """The decoder chosen on val, its eval metrics as `<policy>/best/<metric>`, and one frontier
        row per decoder appended to `table`."""
        head = task.headline

        def get(split, dec, key):
            return res[split, dec]["metrics"].get(f"{policy}/{split}/{dec}/{key}")

        decs = [dec for split, dec in res if split == "val"]
        best = choose(
            {d: get("val", d, head) for d in decs},
            {d: get("val", d, "cost") for d in decs},
            task.higher_is_better,
        )
        prefix = f"{policy}/eval/{best}/"
        more = {
            f"{policy}/best/{k.removeprefix(prefix)}": v
            for k, v in res["eval", best]["metrics"].items()
            if "/" not in k.removeprefix(prefix)
        }
        for d in decs:
            table.append(
                dict(
                    policy=policy,
                    policy_order=order,
                    decoder=d,
                    kind=res["eval", d]["kind"],
                    val=get("val", d, head),
                    eval=get("eval", d, head),
                    lo=get("eval", d, f"{head}_lo"),
                    hi=get("eval", d, f"{head}_hi"),
                    cost=get("eval", d, "cost"),
                    malformed=get("eval", d, "malformed_count"),
                    chosen=d == best,
                )
            )
        return best, more

    def decoders(self, model, prompts, temps, widths, ns, reranks):
        """(name, kind, Decoded) for every setting of the grid on these prompts."""
        s, B = self.sampler, len(prompts)
        greedy = s.generate(model, prompts, greedy=True)
        yield "greedy", "greedy", Decoded(greedy, _lengths(greedy), torch.zeros(B))
        n_max = max(
            ns, default=0
        )  # one draw of n_max samples per prompt; best-of-n uses its first n (i.i.d.)
        cand = s.generate(model, prompts, k=n_max) if n_max else None
        for t in temps:
            if cand is not None and t == float(s.temperature):  # the first of the n_max draws is one sample
                b = select_rows(cand, torch.arange(B, device=cand.response_ids.device) * n_max)
            else:
                b = s.generate(model, prompts, temperature=t)
            yield f"T{t:g}", "temperature", Decoded(b, _lengths(b), torch.zeros(B))
        for w in widths:
            yield (
                f"beam{w}",
                "beam",
                beam_search(
                    model,
                    prompts,
                    width=w,
                    max_new_tokens=s.max_new_tokens,
                    eos_id=s.eos_token_id,
                    pad_id=s.pad_token_id,
                    batch_rows=s.batch_size,
                ),
            )
        if cand is None:
            return
        lengths = _lengths(cand).view(-1, n_max)
        for rr in reranks:
            scores, n_models = self.scores(model, cand, rr)
            for n in ns:
                pick = best_of(scores.view(-1, n_max)[:, :n].reshape(-1), n)
                rows = torch.arange(B, device=pick.device) * n_max + pick
                cost = lengths[:, :n].sum(-1) * (1 + n_models)  # generation + each scoring model
                yield f"bon{n}_{rr}", "best_of_n", Decoded(select_rows(cand, rows), cost, scores[rows])

    @torch.no_grad()
    def scores(self, model, batch, rerank: str) -> tuple[torch.Tensor, int]:
        """(B*k,) summed sequence score of each candidate, and how many models computed it."""
        out, step = [], max(1, self.sampler.batch_size)
        for i in range(0, batch.response_ids.shape[0], step):
            part = [
                x[i : i + step]
                for x in (batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)
            ]
            if rerank == "policy_logp":
                out.append(response_logprobs(model, *part).logp.float().sum(-1))
            else:
                out.append(self.reward.score(*(x.to(self.device) for x in part)).float().sum(-1))
        return torch.cat(out).to(
            batch.response_ids.device
        ), 1 if rerank == "policy_logp" else self.reward.n_models

    @staticmethod
    def same_as_mode(texts, reference: str, widths) -> dict[str, float]:
        """For every other policy: the share of eval prompts whose greedy answer is the reference's
        widest-beam answer."""
        if not widths or reference not in texts:
            return {}
        mode = texts[reference][f"beam{max(widths)}"]
        return {
            p: sum(a == b for a, b in zip(t["greedy"], mode)) / len(mode)
            for p, t in texts.items()
            if p != reference
        }

    def report(self, ctx, table, same, head, reference) -> None:
        stage_dir = ctx.stage_dir(self.name)
        lines = [
            f"| policy | decoder chosen on val | val {head} | eval {head} (95% CI) | cost / answer | "
            "greedy = reference's widest beam |",
            "|---|---|---|---|---|---|",
        ]
        for r in (r for r in table if r["chosen"]):
            lines.append(
                f"| {r['policy']} | {r['decoder']} | {fmt(r['val'])} | {fmt(r['eval'])} "
                f"[{fmt(r['lo'])}, {fmt(r['hi'])}] | {r['cost']:.1f} | "
                f"{'(reference)' if r['policy'] == reference else fmt(same.get(r['policy']))} |"
            )
        best = "\n".join(lines)
        front = frontier_table(table, head)
        (stage_dir / "frontier.md").write_text(
            "## Best decoder per policy (chosen on `val`)\n\n"
            + best
            + "\n\n## Every decoder on `eval` (the frontier)\n\n"
            + front
            + "\n"
        )
        write_csv(stage_dir / "frontier.csv", table)
        if all(math.isfinite(r["eval"]) for r in table):
            plot_frontier(stage_dir / "frontier.png", table, head)
        print(f"\n### Best decoder per policy (chosen on `val`, reported on `eval`)\n\n{best}\n", flush=True)
        print(
            f"\n### Every decoder on `eval`: score against inference cost\n\n{front}\n\n"
            f"files: {stage_dir}/frontier.{{md,csv,png}}\n",
            flush=True,
        )
