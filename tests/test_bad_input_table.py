"""Issue 8's bad-input table: every bad input gets a message that names the input and the fix (or a
defined, logged handling), and no output that already exists changes (sha256 of every file).

`TABLE` holds the inputs that must raise; the tests after it cover the inputs whose handling is not
an error (truncated episodes, zero-length generations, disk full, wandb down, a crashed sweep job,
NaN loss). Existing outputs are the session's `sft_run` (used as the parent run wherever a stage
reads one) plus every file under the test's own tmp dir that existed before the bad call.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException

from conftest import compose_cfg, run_cfg

TINY = ["debug=tiny"]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def tree_hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots` (path -> digest), so a failure names the changed file."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def write_jsonl(path: Path, lines: list[str] | bytes) -> Path:
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def good(i: int) -> str:
    return json.dumps({"prompt": f"p{i}", "response": f"r{i}"})


def sft_on_jsonl(lines: list[str] | bytes, name: str = "bad.jsonl") -> Callable[[Path, Path], None]:
    """A tiny `pipeline=sft data=jsonl` run on a file with these lines, into a fresh run dir."""

    def call(sft_run: Path, tmp: Path) -> None:
        f = tmp / "in" / name
        run_cfg(
            [*TINY, "pipeline=sft", "data=jsonl", f"data.path={f}", f"data.cache_dir={tmp / 'cache'}"],
            tmp / "r",
        )

    call.setup = lambda tmp: write_jsonl(tmp / "in" / name, lines)  # type: ignore[attr-defined]
    return call


def other_tokenizer():
    from densepath.models.tokenizer import symbol_tokenizer

    return symbol_tokenizer(list("ABCDEFGH"))


@dataclass
class Case:
    id: str
    call: Callable[[Path, Path], None]  # (sft_run, tmp) -> raises
    exc: type[BaseException] | tuple[type[BaseException], ...]
    says: list[str]  # substrings of the message: the input, then the fix


def _unknown_key(sft_run, tmp):
    compose_cfg(["sft.stepz=3"], None)


def _unknown_option(sft_run, tmp):
    compose_cfg(["baseline=halfway"], None)


def _missing_policy_dir(sft_run, tmp):
    from densepath.models.io import load_policy

    load_policy(tmp / "no_policy_here")


def _missing_ckpt_file(sft_run, tmp):
    from densepath.callbacks.resume import AtomicCheckpointIO

    AtomicCheckpointIO().load_checkpoint(tmp / "gone.ckpt")


def _tokenizer_mismatch_baseline(sft_run, tmp):
    from densepath.rewards.baselines import SnapshotBaseline

    SnapshotBaseline(0.5).load(sft_run / "sft", other_tokenizer(), "cpu")


def _tokenizer_mismatch_sft(sft_run, tmp):
    from densepath.rewards.dense import DenseReward
    from densepath.rewards.formulations import LogProb

    DenseReward.load(LogProb(), None, sft_run / "sft", other_tokenizer(), "cpu")


def _bad_reward_name(sft_run, tmp):
    from hydra.utils import instantiate

    instantiate(compose_cfg(["reward._target_=densepath.rewards.formulations.LogRation"], None).reward)


def _hf_missing_column(sft_run, tmp):
    from densepath.data.chat import HFDatasetTask

    HFDatasetTask(
        name_or_path=str(tmp / "in" / "ds"), columns={"prompt": "question", "response": "a"}
    ).splits()


def _save_dataset(tmp: Path) -> None:
    import datasets

    rows = [{"q": f"q{i}", "a": f"a{i}"} for i in range(12)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp / "in" / "ds"))


_hf_missing_column.setup = _save_dataset  # type: ignore[attr-defined]


TABLE: list[Case] = [
    # --- data files
    Case(
        "malformed_jsonl",
        sft_on_jsonl([good(0), "{not json"]),
        ValueError,
        ["data.path=", "bad.jsonl line 2", "invalid JSON", "write one JSON object per line"],
    ),
    Case("empty_file", sft_on_jsonl(b""), ValueError, ["bad.jsonl is empty", "one JSON object per line"]),
    Case(
        "blank_lines_only", sft_on_jsonl(b"\n \n\n"), ValueError, ["bad.jsonl has no rows", "one JSON object"]
    ),
    Case(
        "missing_field",
        sft_on_jsonl([good(0), json.dumps({"prompt": "q"})]),
        ValueError,
        ["bad.jsonl line 2", '"response" is missing', 'each row needs "messages" or "prompt"+"response"'],
    ),
    Case(
        "no_known_field",
        sft_on_jsonl([json.dumps({"text": "q"})]),
        ValueError,
        ["line 1", '"messages" is missing', "keys found: ['text']"],
    ),
    Case(
        "wrong_type_response",
        sft_on_jsonl([good(0), json.dumps({"prompt": "q", "response": 5})]),
        ValueError,
        ["bad.jsonl line 2", '"response" must be a string, got int'],
    ),
    Case(
        "wrong_type_messages",
        sft_on_jsonl([json.dumps({"messages": "hi"})]),
        ValueError,
        ["line 1", '"messages" must be a non-empty list of {"role", "content"} objects'],
    ),
    Case(
        "unknown_role",
        sft_on_jsonl(
            [
                json.dumps(
                    {"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]}
                )
            ]
        ),
        ValueError,
        ["line 1", "role is 'human'", "use one of ['system', 'user', 'assistant']"],
    ),
    Case(
        "non_utf8",
        sft_on_jsonl(
            (good(0) + "\n").encode() + '{"prompt": "caf\u00e9", "response": "x"}\n'.encode("latin-1")
        ),
        ValueError,
        ["bad.jsonl is not valid UTF-8", "line 2", "re-encode the file as UTF-8"],
    ),
    Case(
        "empty_response",
        sft_on_jsonl([good(0), json.dumps({"prompt": "q", "response": "  "})]),
        ValueError,
        ["bad.jsonl line 2", "the assistant answer is empty", "drop the row or fill in the assistant answer"],
    ),
    Case(
        "too_few_prompts",
        sft_on_jsonl([good(i) for i in range(3)]),
        ValueError,
        ["bad.jsonl has 3 distinct prompt", "add rows or lower the data.*_fraction values"],
    ),
    Case(
        "data_file_missing",
        lambda s, t: run_cfg([*TINY, "pipeline=sft", "data=jsonl", f"data.path={t / 'nope.jsonl'}"], t / "r"),
        FileNotFoundError,
        ["data.path=", "nope.jsonl does not exist", "pass data.path=/absolute/path"],
    ),
    Case(
        "data_path_is_dir",
        lambda s, t: run_cfg([*TINY, "pipeline=sft", "data=jsonl", f"data.path={t}"], t / "r"),
        IsADirectoryError,
        ["is a directory", "pass the .jsonl file itself"],
    ),
    Case(
        "hf_missing_column",
        _hf_missing_column,
        ValueError,
        [
            "column 'question' (data.columns.prompt) does not exist",
            "available columns: ['q', 'a']",
            "set data.columns.prompt",
        ],
    ),
    # --- lengths
    Case(
        "prompt_over_max_len",
        lambda s, t: run_cfg([*TINY, "pipeline=sft", "data.max_prompt_len=3"], t / "r"),
        ValueError,
        ["split `sft` row 0", "over data.max_prompt_len=3", "raise data.max_prompt_len"],
    ),
    Case(
        "response_over_max_len",
        lambda s, t: run_cfg([*TINY, "pipeline=sft", "data.max_response_len=2"], t / "r"),
        ValueError,
        ["split `sft` row 0", "over data.max_response_len=2", "raise data.max_response_len"],
    ),
    # --- config
    Case("unknown_config_key", _unknown_key, ConfigCompositionException, ["sft.stepz", "+sft.stepz"]),
    Case(
        "unknown_group_option",
        _unknown_option,
        MissingConfigException,
        ["baseline/halfway", "sft_half", "sft_fraction"],
    ),
    Case(
        "unknown_pipeline",
        lambda s, t: run_cfg([*TINY, "pipeline=dpo"], t / "r"),
        MissingConfigException,
        ["pipeline/dpo", "default", "dpr"],
    ),
    Case(
        "stage_without_target",
        lambda s, t: run_cfg([*TINY, "+pipeline.stages.dpo={steps: 1}"], t / "r"),
        ValueError,
        ["pipeline.stages.dpo", "no `_target_`", "+stage@pipeline.stages.dpo="],
    ),
    Case(
        "unknown_reward_name",
        _bad_reward_name,
        InstantiationException,
        ["LogRation", "densepath.rewards.formulations"],
    ),
    Case(
        "bad_snapshot_fraction",
        lambda s, t: run_cfg([*TINY, "pipeline=sft", "sft.snapshot_fractions=[1.5]"], t / "r"),
        ValueError,
        ["snapshot_fractions", "1.5", "not in (0, 1)"],
    ),
    Case(
        "loo_with_one_sample",
        lambda s, t: run_cfg([*TINY, "pipeline=dpr", "dpr.module.k=1", f"parent_run={s}"], t / "r"),
        ValueError,
        ["advantage=loo", "k >= 2", "dpr.module.k"],
    ),
    # --- checkpoints and runs
    Case(
        "missing_checkpoint_dir",
        _missing_policy_dir,
        FileNotFoundError,
        ["no_policy_here", "not found (no config.json)", "parent_run=<dir>"],
    ),
    Case(
        "missing_ckpt_path",
        lambda s, t: run_cfg([*TINY, "pipeline=sft", f"ckpt_path={t / 'nope.ckpt'}"], t / "r"),
        FileNotFoundError,
        ["ckpt_path=", "nope.ckpt", "no such checkpoint"],
    ),
    Case(
        "missing_ckpt_file",
        _missing_ckpt_file,
        FileNotFoundError,
        ["gone.ckpt not found", "pass an existing ckpt_path=... or use resume=auto"],
    ),
    Case(
        "missing_parent_run",
        lambda s, t: run_cfg([*TINY, "pipeline=dpr", f"parent_run={t / 'nope'}"], t / "r"),
        FileNotFoundError,
        ["parent_run=", "nope: no such run directory", "Pass the Hydra output dir"],
    ),
    Case(
        "parent_run_without_sft",
        lambda s, t: run_cfg([*TINY, "pipeline=dpr", f"parent_run={t / 'in'}"], t / "r"),
        FileNotFoundError,
        ["stage `sft` has no artefacts", "Run it first (pipeline=sft)", "parent_run=<dir>"],
    ),
    Case(
        "baseline_fraction_not_saved",
        lambda s, t: run_cfg(
            [*TINY, "pipeline=recover", "baseline=sft_fraction", "baseline.fraction=0.3", f"parent_run={s}"],
            t / "r",
        ),
        FileNotFoundError,
        [
            "baseline.fraction=0.3",
            "saved fractions: ['0.25', '0.50', '0.75']",
            "sft.snapshot_fractions=[...,0.3]",
        ],
    ),
    Case(
        "tokenizer_mismatch_baseline",
        _tokenizer_mismatch_baseline,
        ValueError,
        ["tokenizer mismatch: baseline snapshot 0.5", "frac_0.50", "policy's SFT run"],
    ),
    Case(
        "tokenizer_mismatch_sft",
        _tokenizer_mismatch_sft,
        ValueError,
        ["tokenizer mismatch: pi_SFT", "sft/policy", "all scorers must come from the policy's SFT run"],
    ),
]


@pytest.mark.parametrize("case", TABLE, ids=[c.id for c in TABLE])
def test_bad_input(case: Case, sft_run: Path, tmp_path: Path):
    (tmp_path / "in").mkdir()
    setup = getattr(case.call, "setup", None)
    if setup is not None:
        setup(tmp_path)
    (tmp_path / "in" / "earlier_output.txt").write_text("an output that must survive\n")
    before = tree_hashes(sft_run, tmp_path / "in")
    with pytest.raises(case.exc) as e:
        case.call(sft_run, tmp_path)
    msg = f"{e.value} {e.value.__cause__ or ''}"
    assert "the the" not in msg and "Traceback" not in msg
    for s in case.says:
        assert s in msg, (s, msg)
    assert tree_hashes(sft_run, tmp_path / "in") == before


def test_table_is_big_enough():
    assert len(TABLE) >= 20 and len({c.id for c in TABLE}) == len(TABLE)


# ---------------------------------------------------------------------------------------------
# handled inputs (no error): truncated episodes, zero-length generations
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_all_samples_hit_max_new_tokens_still_trains(sft_run: Path, tmp_path: Path):
    """Rows without EOS are truncated episodes (V(terminal)=0): DPR trains and logs truncated_frac=1."""
    before = tree_hashes(sft_run)
    run = tmp_path / "r"
    metrics = run_cfg(
        [
            *TINY,
            "pipeline=dpr",
            f"parent_run={sft_run}",
            "sampler.max_new_tokens=1",
            "dpr.steps=2",
            "dpr.sample_table_every=0",
            "trainer.log_every_n_steps=1",
        ],
        run,
    )
    assert metrics["dpr/train/truncated_frac_last"] == 1.0 and metrics["dpr/train/length_last"] == 1.0
    with open(run / "dpr" / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/truncated_frac")]
    assert len(rows) == 2
    assert [float(r["train/truncated_frac"]) for r in rows] == [1.0, 1.0]
    assert all(float(r["train/length"]) == 1.0 for r in rows)
    assert all(torch.isfinite(torch.tensor(float(r["train/loss"]))) for r in rows)
    assert tree_hashes(sft_run) == before


def _zero_row_batch(tok, t_len: int = 4):
    """Two prompts; row 1 has a response of 0 real tokens (all padding)."""
    from densepath.sampling.base import left_pad, right_pad

    p = [tok("a b", add_special_tokens=False)["input_ids"] or [0]] * 2
    pid, pm = left_pad(p, tok.pad_token_id)
    rid, rm = right_pad([[5, 6, 7, tok.eos_token_id], []], tok.pad_token_id)
    if rid.shape[1] < t_len:
        rid = torch.nn.functional.pad(rid, (0, t_len - rid.shape[1]), value=tok.pad_token_id)
        rm = torch.nn.functional.pad(rm, (0, t_len - rm.shape[1]))
    return pid, pm, rid, rm


@pytest.mark.parametrize(
    "name,scale,clip",
    [
        ("LogRatio", 1.0, None),
        ("Sparse", 2.0, None),
        ("LogProb", 1.0, 0.5),
        ("SoftBellman", 1.0, None),
    ],
)
def test_zero_length_generation_scores_zero(sft_run: Path, name, scale, clip):
    from densepath.models.io import load_policy
    from densepath.rewards import formulations
    from densepath.rewards.baselines import SnapshotBaseline
    from densepath.rewards.dense import DenseReward

    _, tok = load_policy(sft_run / "sft" / "policy")
    formulation = getattr(formulations, name)(scale=scale, clip=clip)
    reward = DenseReward.load(formulation, SnapshotBaseline(0.5), sft_run / "sft", tok, "cpu")
    pid, pm, rid, rm = _zero_row_batch(tok)
    assert rm[1].sum() == 0 and rm[0].sum() == 4
    r = reward.score(pid, pm, rid, rm)  # (2, T)
    assert r.shape == rid.shape and torch.isfinite(r).all()
    assert torch.equal(r[1], torch.zeros_like(r[1]))
    assert (r[0] != 0).any()  # the real row is scored
    # the empty row does not change the other row's rewards
    alone = reward.score(pid[:1], pm[:1], rid[:1], rm[:1])
    torch.testing.assert_close(r[:1], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["seq_mean", "token_mean"])
def test_zero_length_generation_carries_no_loss(norm: str):
    from densepath.algos.pg_math import advantages, policy_gradient_loss, reward_to_go

    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]])  # row 1: no tokens
    rewards = torch.randn(4, 4, dtype=torch.float64) * mask
    logp = torch.randn(4, 4, dtype=torch.float64)
    logp[1] = float("nan")  # garbage on an empty row must not leak
    logp.requires_grad_(True)
    returns = reward_to_go(rewards, mask)
    adv = advantages(returns, mask, k=2, kind="loo")
    assert torch.equal(adv[1], torch.zeros(4, dtype=torch.float64))
    loss, stats = policy_gradient_loss(logp, adv, mask, norm=norm)
    loss.backward()
    assert torch.isfinite(loss) and torch.equal(logp.grad[1], torch.zeros(4, dtype=torch.float64))
    # reference: direct loops in float64 over the real tokens only
    total, n_tok = 0.0, 0
    for i in range(4):
        for t in range(4):
            if mask[i, t]:
                total += -float(adv[i, t]) * float(logp.detach()[i, t])
                n_tok += 1
    ref = total / (4 if norm == "seq_mean" else n_tok)
    assert abs(float(loss.detach()) - ref) < 1e-12 and float(stats["n_tokens"]) == 6.0
    # an all-empty batch: zero loss, zero gradient, no NaN
    empty = torch.zeros(2, 3)
    lp = torch.full((2, 3), float("nan"), requires_grad=True)
    loss0, _ = policy_gradient_loss(lp, torch.zeros(2, 3), empty, norm=norm)
    loss0.backward()
    assert float(loss0) == 0.0 and torch.equal(lp.grad, torch.zeros(2, 3))


# ---------------------------------------------------------------------------------------------
# disk full while writing
# ---------------------------------------------------------------------------------------------


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device (simulated)")


@pytest.mark.parametrize("where", ["torch.save", "os.replace"])
def test_disk_full_checkpoint_keeps_previous(tmp_path: Path, monkeypatch, where: str):
    import densepath.callbacks.resume as resume

    io = resume.AtomicCheckpointIO()
    last = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, last)
    before = tree_hashes(tmp_path)
    if where == "torch.save":
        monkeypatch.setattr(resume.torch, "save", _enospc)
    else:
        monkeypatch.setattr(resume.os, "replace", _enospc)
    with pytest.raises(OSError) as e:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, last)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert tree_hashes(tmp_path) == before  # the previous checkpoint intact, no temp file left
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    assert io.load_checkpoint(last)["global_step"] == 1


@pytest.mark.parametrize("where", ["model", "tokenizer"])
def test_disk_full_policy_save_keeps_previous(sft_run: Path, tmp_path: Path, monkeypatch, where: str):
    from densepath.models.io import load_policy, save_policy

    model, tok = load_policy(sft_run / "sft" / "policy")
    dest = tmp_path / "policy"
    first = save_policy(model, tok, dest)
    before = tree_hashes(tmp_path)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    target = model if where == "model" else tok
    monkeypatch.setattr(target, "save_pretrained", _enospc)
    with pytest.raises(OSError) as e:
        save_policy(model, tok, dest)
    assert e.value.errno == errno.ENOSPC
    assert tree_hashes(tmp_path) == before  # previous policy intact, no `.tmp` dir left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]
    again, _ = load_policy(dest)
    w0 = dict(load_policy(sft_run / "sft" / "policy")[0].named_parameters())
    assert all(torch.equal(p, w0[n]) for n, p in again.named_parameters())
    assert first["sha256"]


def test_policy_save_replaces_previous_when_disk_ok(sft_run: Path, tmp_path: Path):
    from densepath.models.io import load_policy, save_policy

    model, tok = load_policy(sft_run / "sft" / "policy")
    dest = tmp_path / "policy"
    a = save_policy(model, tok, dest)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    b = save_policy(model, tok, dest)
    assert a["sha256"] != b["sha256"] and sorted(p.name for p in tmp_path.iterdir()) == ["policy"]


# ---------------------------------------------------------------------------------------------
# interrupted wandb
# ---------------------------------------------------------------------------------------------

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"


class _BrokenWandbLogger:
    calls = 0

    def __init__(self, *a, **k):
        type(self).calls += 1
        raise RuntimeError(f"wandb.init() timed out (api_key={FAKE_KEY})")


def test_wandb_start_failure_warns_once_and_falls_back_to_csv(tmp_path: Path, monkeypatch, caplog):
    import lightning.pytorch.loggers as pl_loggers
    from lightning.pytorch.loggers import CSVLogger

    from densepath.tracking import WandbTracking

    monkeypatch.setattr(pl_loggers, "WandbLogger", _BrokenWandbLogger)
    tr = WandbTracking()
    with caplog.at_level(logging.WARNING, logger="densepath.tracking"):
        a = tr.logger(tmp_path / "sft", "sft", "run", {})
        b = tr.logger(tmp_path / "dpr", "dpr", "run", {})
    assert isinstance(a, CSVLogger) and isinstance(b, CSVLogger)
    warnings = [r.getMessage() for r in caplog.records if "wandb failed to start" in r.getMessage()]
    assert len(warnings) == 1 and "falling back to csv" in warnings[0]
    assert FAKE_KEY not in caplog.text and "<redacted>" in warnings[0]
    tr.log_metrics({"x": 1.0})  # no run: a no-op, not a crash
    tr.finish({"x": 1.0})


@pytest.mark.slow
def test_wandb_down_run_still_finishes(tmp_path: Path, monkeypatch, caplog):
    import lightning.pytorch.loggers as pl_loggers

    monkeypatch.setattr(pl_loggers, "WandbLogger", _BrokenWandbLogger)
    run = tmp_path / "r"
    with caplog.at_level(logging.WARNING, logger="densepath.tracking"):
        metrics = run_cfg(
            [
                *TINY,
                "pipeline=sft",
                "logger=wandb",
                "sft.steps=2",
                "sft.val_every=2",
                "callbacks.reward_recovery.enabled=false",
            ],
            run,
        )
    assert (run / "metrics.json").exists() and "sft/train/loss" in metrics
    assert (run / "sft" / "csv" / "metrics.csv").exists()
    assert caplog.text.count("wandb failed to start") == 1


# ---------------------------------------------------------------------------------------------
# a sweep job that crashes; NaN loss
# ---------------------------------------------------------------------------------------------


def test_crashing_job_writes_error_json(tmp_path: Path):
    """The job wrapper (`cli._hydra_main`) records the crash in error.json and exits non-zero.

    The multirun variant with one good and one crashing job is the slow
    `tests/test_sweeps.py` test; here both jobs of a `-m` sweep fail at config validation (cheap).
    """
    sweep = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "densepath",
            "-m",
            *TINY,
            "pipeline=sft",
            "sft.snapshot_fractions=[1.5],[2.5]",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    errors = sorted(sweep.glob("*/error.json"))
    assert len(errors) >= 1, out.stderr[-3000:]
    info = json.loads(errors[0].read_text())
    assert "snapshot_fractions" in info["error"] and "not in (0, 1)" in info["error"]
    assert "Traceback" in info["traceback"]
    assert not any(sweep.glob("*/DONE"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(sft_run: Path, tmp_path: Path, monkeypatch):
    import densepath.algos.sft as sft_mod
    from densepath.algos.sft import NonFiniteError
    from densepath.callbacks.resume import AtomicCheckpointIO

    real = sft_mod.sft_loss
    calls = {"train": 0}

    def nan_after_three(model, batch, loss_name="nll"):
        loss, n = real(model, batch, loss_name)
        if model.training:
            calls["train"] += 1
            if calls["train"] > 3:
                return loss * float("nan"), n
        return loss, n

    monkeypatch.setattr(sft_mod, "sft_loss", nan_after_three)
    before = tree_hashes(sft_run)
    run = tmp_path / "r"
    try:
        run_cfg(
            [
                *TINY,
                "pipeline=sft",
                "max_bad_steps=2",
                "checkpoint.every_n_steps=1",
                "checkpoint.keep_last=20",
                "sft.val_every=100",
                "callbacks.reward_recovery.enabled=false",
            ],
            run,
        )
    except NonFiniteError as e:
        err = str(e)
    else:
        err = None
    assert tree_hashes(sft_run) == before
    io = AtomicCheckpointIO()
    last = io.load_checkpoint(run / "sft" / "ckpt" / "last.ckpt")
    good = io.load_checkpoint(run / "sft" / "ckpt" / "step=3.ckpt")  # the last step with a finite loss
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert all(torch.equal(last["state_dict"][k], v) for k, v in good["state_dict"].items())  # no bad update
    assert err is not None, "SFT ran to the end on NaN losses instead of raising NonFiniteError"
    assert "2 consecutive non-finite losses" in err or "2 consecutive non-finite loss" in err
    assert "Lower sft.lr" in err
    assert not (run / "sft" / "policy").exists()  # no final policy written from a failed run


def test_bad_input_into_an_existing_run_dir_keeps_its_outputs(tmp_path: Path):
    run = tmp_path / "old_run"
    run.mkdir()
    (run / "metrics.json").write_text('{"sft/train/loss": 1.0}\n')
    (run / "manifest.json").write_text('{"config_hash": "abc"}\n')
    before = tree_hashes(run)
    with pytest.raises((FileNotFoundError, FileExistsError)):
        run_cfg([*TINY, "pipeline=sft", "data=jsonl", f"data.path={tmp_path / 'nope.jsonl'}"], run)
    assert tree_hashes(run) == before
