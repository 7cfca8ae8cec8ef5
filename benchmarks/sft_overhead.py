"""SFT throughput: the Lightning SFT stage vs a plain PyTorch loop on the same model and batches.

Run: ``python -m benchmarks sft_overhead [--model 1m|5m --batch-size 64 --steps 12 --rounds 3
--precision bf16|fp32] [--check]``.

Both variants train a fresh copy of the same random-weight model on the same batches in the same
order (``DemoDataModule.train_dataloader()``, seeded shuffle, the project collator), with the same
loss (:func:`densepath.algos.sft.sft_loss`), autocast, AdamW parameter groups, warm-up/cosine LR
schedule and gradient clipping at 1.0:

- ``lightning``: :class:`densepath.algos.sft.SFTModule` under a ``lightning.Trainer`` configured like
  ``conf/trainer/cpu.yaml`` (bf16-mixed, ``gradient_clip_val=1.0``, ``log_every_n_steps=10``,
  progress bar on) without a logger, checkpoints or validation;
- ``plain``: ``for batch in loader: with autocast: loss = sft_loss(...); backward; clip; step``.

Timing: each block runs ``steps`` optimiser steps; the first ``warmup`` steps are dropped and the
time runs from the start of step ``warmup`` to the end of the last step (inter-step work such as
collation and Lightning's logging is inside it). Blocks alternate ``rounds`` times; the report is
the median tokens/s (response tokens, the trained ones) per variant and the overhead
``plain tok/s / lightning tok/s - 1``. The first-step losses of the two variants are compared.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from benchmarks.common import (
    MODEL_PRESETS,
    add_config_flags,
    build_llama,
    chat_messages,
    check_model_and_precision,
    default_threads,
    md_table,
    median,
    n_params,
    target_line,
    toy_tokenizer_and_rows,
)

logger = logging.getLogger(__name__)

MAX_OVERHEAD = 0.10  # target: Lightning's overhead <= 10% of the plain loop's time per token


@dataclass(frozen=True)
class SFTBenchConfig:
    """One setting; every field is a CLI flag (``batch_size`` -> ``--batch-size``)."""

    model: str = "1m"  # conf/model/tiny.yaml, the default pipeline's model
    batch_size: int = 64  # conf/config.yaml sft.batch_size
    steps: int = 12
    warmup: int = 2
    rounds: int = 3
    precision: str = "bf16"
    threads: int = dataclasses.field(default_factory=default_threads)
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the bad field and a valid choice."""
        check_model_and_precision(self.model, self.precision)
        if not 0 <= self.warmup < self.steps:
            raise ValueError(f"--warmup ({self.warmup}) must be in [0, --steps={self.steps}).")
        for name in ("batch_size", "rounds", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")


def make_datamodule(cfg: SFTBenchConfig):
    """Tokenizer and a :class:`DemoDataModule` over ``batch_size * steps`` toy demonstrations."""
    from densepath.data.datamodule import DemoDataModule
    from densepath.data.formatting import encode_pair

    tok, rows = toy_tokenizer_and_rows(cfg.batch_size * cfg.steps, cfg.seed)
    enc = [
        encode_pair(tok, chat_messages(r.prompt), r.response, where=f"row {i}") for i, r in enumerate(rows)
    ]
    return tok, DemoDataModule(enc, enc[:8], tok.pad_token_id, cfg.batch_size, cfg.seed)


def _module(model, cfg: SFTBenchConfig):
    from densepath.algos.sft import SFTModule

    return SFTModule(model, max_steps=cfg.steps)  # the SFT stage's defaults for lr, betas, schedule


def run_lightning(cfg: SFTBenchConfig, model, dm) -> dict:
    """One Lightning block; returns step start/end times, tokens per step and the first loss."""
    import lightning as L

    starts: list[float] = []
    ends: list[float] = []
    losses: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            ends.append(time.perf_counter())
            if not losses:
                losses.append(float(outputs["loss"]))

    tokens: list[int] = []

    class Tokens(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            tokens.append(int(batch["response_mask"].sum()))

    trainer = L.Trainer(  # conf/trainer/cpu.yaml, minus logger / checkpoints / validation
        max_steps=cfg.steps,
        accelerator="cpu",
        devices=1,
        precision="bf16-mixed" if cfg.precision == "bf16" else "32-true",
        gradient_clip_val=1.0,
        log_every_n_steps=10,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_progress_bar=True,
        logger=False,
        callbacks=[Tokens(), Clock()],
    )
    trainer.fit(_module(model, cfg), datamodule=dm)
    return {"starts": starts, "ends": ends, "tokens": tokens, "first_loss": losses[0]}


def run_plain(cfg: SFTBenchConfig, model, dm) -> dict:
    """One plain-PyTorch block with the same optimiser, schedule, clipping, autocast and batches."""
    from densepath.algos.sft import sft_loss

    opt_cfg = _module(model, cfg).configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    model.train()
    starts: list[float] = []
    ends: list[float] = []
    tokens: list[int] = []
    first_loss = float("nan")
    it = iter(dm.train_dataloader())
    for step in range(cfg.steps):
        starts.append(time.perf_counter())
        batch = next(it)
        tokens.append(int(batch["response_mask"].sum()))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            loss, _ = sft_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step == 0:
            first_loss = float(loss.detach())
        ends.append(time.perf_counter())
    return {"starts": starts, "ends": ends, "tokens": tokens, "first_loss": first_loss}


def block_tokens_per_s(rec: dict, warmup: int) -> float:
    """Trained tokens per second over steps ``warmup..end`` of one block."""
    return sum(rec["tokens"][warmup:]) / (rec["ends"][-1] - rec["starts"][warmup])


def run(cfg: SFTBenchConfig) -> dict:
    """Alternate ``rounds`` Lightning and plain blocks, each on a fresh copy of the same model."""
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    tok, dm = make_datamodule(cfg)
    out: dict = {"lightning": [], "plain": [], "first_loss": {}, "tokens": {}}
    for r in range(cfg.rounds):
        for name, fn in (("lightning", run_lightning), ("plain", run_plain)):
            model = build_llama(cfg.model, tok, cfg.seed)
            rec = fn(cfg, model, dm)
            out[name].append(block_tokens_per_s(rec, cfg.warmup))
            out["first_loss"][name] = rec["first_loss"]
            out["tokens"][name] = rec["tokens"]
        logger.info(
            "round %d: lightning %.0f tok/s, plain %.0f tok/s", r, out["lightning"][-1], out["plain"][-1]
        )
    out["n_params"] = n_params(model)
    out["vocab"] = len(tok)
    return out


def summarize(cfg: SFTBenchConfig, res: dict) -> tuple[str, float]:
    """The report and the overhead ``plain/lightning - 1`` (of medians)."""
    if res["tokens"]["lightning"] != res["tokens"]["plain"]:
        raise AssertionError("the two variants saw different batches; the loaders must share seed and order.")
    hidden, layers, heads, inter = MODEL_PRESETS[cfg.model]
    ml, mp = median(res["lightning"]), median(res["plain"])
    overhead = mp / ml - 1
    lines = [
        "## SFT throughput: Lightning SFTModule vs plain PyTorch loop",
        f"model={cfg.model} (Llama: hidden {hidden}, {layers} layers, {heads} heads, MLP {inter}) "
        f"params={res['n_params'] / 1e6:.2f}M vocab={res['vocab']} batch={cfg.batch_size} steps/block={cfg.steps} "
        f"(first {cfg.warmup} dropped) rounds={cfg.rounds} precision={cfg.precision} threads={cfg.threads} "
        f"torch={torch.__version__}",
        f"response tokens per block (timed steps): {sum(res['tokens']['plain'][cfg.warmup :])}; first-step loss "
        f"lightning {res['first_loss']['lightning']:.5f} plain {res['first_loss']['plain']:.5f}",
        "",
        md_table(
            ["variant", "median tok/s", "per-round tok/s"],
            [[n, median(res[n]), ", ".join(f"{v:.0f}" for v in res[n])] for n in ("lightning", "plain")],
        ),
        f"\nLightning overhead (plain tok/s / lightning tok/s - 1): {overhead:+.3f}",
    ]
    return "\n".join(lines), overhead


def parse_args(argv: Sequence[str]) -> tuple[SFTBenchConfig, bool]:
    """CLI flags for every :class:`SFTBenchConfig` field, plus ``--check``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks sft_overhead", description=__doc__.split("\n")[0])
    add_config_flags(p, SFTBenchConfig)
    p.add_argument("--check", action="store_true", help=f"exit 1 if the overhead > {MAX_OVERHEAD}")
    ns = vars(p.parse_args(list(argv)))
    check = ns.pop("check")
    return SFTBenchConfig(**ns), check


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the report, and with ``--check`` return 1 when the target is missed."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "densepath.models.factory"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg, check = parse_args(sys.argv[1:] if argv is None else argv)
    report, overhead = summarize(cfg, run(cfg))
    line, ok = target_line("Lightning SFT overhead", overhead, MAX_OVERHEAD)
    sys.stdout.write(report + "\n" + line + "\n")
    return 0 if ok or not check else 1


if __name__ == "__main__":
    sys.exit(main())
