"""What a task can do: the `Task` protocol every `data=` option implements.

A task owns its prompt splits (`sft` with demonstrations, `rl`, `val`, `eval`: rows
`{"family", "prompt", "response", "meta"}`), its chat formatting and tokenizer, and its ground truth.
Stages and reports ask the protocol, never the concrete class. The built-in tasks subclass it and
inherit its defaults (no horizon, no reference metrics). The probes a task names need more:
`corruption` uses `corrupt(row, response, rng)` and a `success` score; `fidelity` uses
`reference_samples(rows, generator)` and `scored_answers(rows, texts)`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Task(Protocol):
    name: str
    headline: str  # the metric reports lead with: "success", "true_return", "nll", ...
    higher_is_better: bool  # direction of the headline (checkpoint selection, the Optuna objective)
    verifiable: bool  # `score` judges answers; False: evaluation falls back to held-out NLL
    # the reward-recovery report that fits: "corruption" | "fidelity" | "corruption_tokens" (chat data:
    # one token of a held-out demonstration replaced in token ids, no verifier needed) | "demos"
    recovery_probe: str
    max_answer_tokens: int | None = None  # a horizon no answer may exceed (EOS included); None: no limit
    max_prompt_len: int
    max_response_len: int

    def splits(self) -> dict[str, list[dict]]: ...

    def messages(self, row: dict) -> list[dict]:
        """The prompt conversation of a row (without the answer)."""
        ...

    def build_tokenizer(self): ...

    def score(self, rows: list[dict], texts: list[str]) -> dict[str, np.ndarray]:
        """Per-answer ground truth (`success`, `true_return`, ...); {} when answers cannot be judged."""
        ...

    def reference_metrics(self, rows: list[dict]) -> dict[str, float]:
        """Exact references for these rows' prompts (e.g. the expert's and the best return, averaged);
        {} when there are none."""
        return {}

    def describe(self) -> dict:
        """What the run's manifest records about the task beyond its config (e.g. the expert); {} if nothing."""
        return {}

    def fresh_demonstrations(self, n: int, seed: int) -> list[dict]:
        """Demonstrations beyond the SFT split where the task can make them (continued SFT)."""
        ...


def check_rollout_length(task: Task, max_new_tokens: int, data_name: str = "") -> None:
    """A task with a horizon refuses rollouts longer than its answers can be."""
    limit = task.max_answer_tokens
    if limit is not None and int(max_new_tokens) > limit:
        raise ValueError(
            f"sampler.max_new_tokens={max_new_tokens} exceeds the horizon of data={data_name or task.name}: "
            f"its answers are at most {limit} tokens (EOS included). Set sampler.max_new_tokens<={limit}"
        )
