"""LoRA SFT throughput on the real-model workload: densepath's SFT path vs TRL ``SFTTrainer``, fp32 and
bf16 frozen base.

Run: ``python -m benchmarks sft_lora [--steps 3 --rounds 3 --layers 30 --prompt-len 256 --new-tokens 64
--arms densepath_fp32,densepath_bf16,trl_fp32,trl_bf16] [--check]``. Needs the ``bench`` extra (``trl``)
for the TRL arms. Sized for ~5-8 min on a 2-core CPU at full size: 4 arms x 3 rounds x 4 steps, fp32 steps
~5-10 s, bf16 ~2-3x faster, plus a few seconds per arm to build a fresh model.

Why: the project defaults the frozen LoRA base to bf16 on CPUs with AVX512-BF16 (``model.base_dtype:
auto``); this is the evidence that it pays, and that densepath's SFT step is not slower than TRL's at the
same dtype.

Data: the :class:`~benchmarks.common.Workload`'s 4 prompts (``workload_prompts``, 256 random tokens each)
each followed by a 64-token demonstration (``workload_responses``, the first sample of each prompt's
group); one step = one batch of the 4 sequences (4 x 320 tokens), loss on the 64 response tokens of each
only (mean NLL per response token). The same token ids go to both frameworks; no padding.

Arms (the same random SmolLM2-shaped weights from one seed, a fresh model per arm and round; LoRA r/alpha
on q/k/v/o from the workload, dropout 0, adapters float32; the same attention kernel (``--attn``, sdpa);
gradient checkpointing off; AdamW lr ``--lr`` betas (0.9, 0.95) weight decay 0.01, constant LR, gradient
clipping at 1.0; no autocast anywhere):

- ``densepath_fp32`` / ``densepath_bf16``: :class:`densepath.algos.sft.SFTModule` under a
  ``lightning.Trainer`` (``precision="32-true"``, no logger, checkpoints, validation or progress bar) fed
  by a :class:`~densepath.data.datamodule.DemoDataModule`, on a model from
  ``densepath.models.factory.prepare_policy`` with ``base_dtype`` float32 / bfloat16;
- ``trl_fp32`` / ``trl_bf16``: ``trl.SFTTrainer`` on the same base model cast to float32 / bfloat16 with
  the same peft ``LoraConfig`` (peft keeps the adapters float32), a pre-tokenized dataset (``input_ids`` +
  ``completion_mask``, ``completion_only_loss=True``, no packing), ``bf16=False`` so TRL adds no
  autocast, ``use_cpu=True``, no eval/logging/saving, batch 4, no gradient accumulation.

Every arm's row shows the dtype of a base weight and a LoRA weight and of a projection's output seen in
training (proof of what computed), the attention kernel, gradient checkpointing, trainable parameters,
the threads and the first-step loss (the same weights and tokens: densepath and TRL must agree).

Timing: per round, each arm runs 1 warm-up step (dropped) + ``--steps`` timed steps; step i's time is
end of step i - end of step i-1 (data fetch, logging and other inter-step work included). The report is
the median over all rounds' timed steps; arms run in turn within each round (interleaved).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from benchmarks.common import (
    MatmulPeak,
    Workload,
    add_config_flags,
    default_threads,
    matmul_flops,
    md_table,
    median,
    smollm2_shaped,
    target_line,
    workload_prompts,
    workload_responses,
)

logger = logging.getLogger(__name__)

ARMS: tuple[str, ...] = ("densepath_fp32", "densepath_bf16", "trl_fp32", "trl_bf16")
ARM_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}
MIN_RATIO = 1.0  # target: densepath tokens/s >= TRL's at the same dtype
PROBE = "layers.0.self_attn.q_proj"  # the LoRA-wrapped projection whose dtypes the table shows
TABLE_HEADER = (
    "arm",
    "base weight",
    "LoRA weight",
    "q_proj out",
    "attn",
    "grad ckpt",
    "trainable",
    "threads",
    "first loss",
    "median step s",
    "tok/s all",
    "tok/s response",
    "MFU all",
    "MFU response",
    "step s (timed)",
)


@dataclass(frozen=True)
class SFTLoRAConfig:
    """One setting; every field is a CLI flag (``prompt_len`` -> ``--prompt-len``)."""

    steps: int = 3  # timed steps per arm per round; one warm-up step more is run and dropped
    rounds: int = 3
    layers: int = 30  # SmolLM2-135M; fewer only for smoke tests
    prompt_len: int = 256
    new_tokens: int = 64
    lr: float = 1e-4
    attn: str = "sdpa"
    arms: str = ",".join(ARMS)
    threads: int = dataclasses.field(default_factory=default_threads)
    seed: int = 0

    def arm_list(self) -> list[str]:
        return [a.strip() for a in self.arms.split(",") if a.strip()]

    def validate(self) -> None:
        """Raise ValueError naming the bad flag and a valid choice."""
        for name in ("steps", "rounds", "layers", "prompt_len", "new_tokens", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        arms = self.arm_list()
        bad = [a for a in arms if a not in ARMS]
        if bad or not arms or len(set(arms)) != len(arms):
            raise ValueError(f"--arms {self.arms!r}: give distinct names from {','.join(ARMS)}.")
        if self.attn not in ("sdpa", "eager"):
            raise ValueError(f"--attn {self.attn!r}: choose sdpa or eager.")
        if any(a.startswith("trl") for a in arms):
            try:
                import trl  # noqa: F401
            except ImportError as e:
                raise ValueError(
                    "the TRL arms need trl (pip install -e '.[bench]'); or run "
                    "--arms densepath_fp32,densepath_bf16"
                ) from e

    def workload(self) -> Workload:
        return Workload(layers=self.layers, prompt_len=self.prompt_len, new_tokens=self.new_tokens)


def lora_dict(w: Workload) -> dict:
    """The ``model.lora`` block both sides get (densepath reads it; TRL gets its ``lora_config``)."""
    return {
        "enabled": True,
        "r": w.lora_r,
        "alpha": w.lora_alpha,
        "dropout": 0.0,
        "target_modules": list(w.lora_targets),
    }


def sft_tokens(w: Workload) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompts (4, P), responses (4, T))``: each prompt with the first response of its group."""
    return workload_prompts(w), workload_responses(w)[:: w.k]


def non_embedding_params(model: torch.nn.Module) -> int:
    """Base parameters without the (tied) embedding / LM head and without LoRA: the N of ``4 N tokens``."""
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n and "embed_tokens" not in n)


def base_model(w: Workload, cfg: SFTLoRAConfig, dtype: torch.dtype) -> torch.nn.Module:
    """The workload's random-weight model (fp32 init from ``cfg.seed``, then cast) on ``cfg.attn``."""
    model = smollm2_shaped(w, cfg.seed).to(dtype).train()  # both trainers get a model in train mode
    model.set_attn_implementation(cfg.attn)
    torch.manual_seed(cfg.seed)  # the same LoRA A init on both sides (peft draws it from the global RNG)
    return model


class Probe:
    """Records what computed: the dtype of ``PROBE``'s base-layer output in training (autocast would
    turn an fp32 base's output into bf16) and the threads seen at each step."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.act: set[str] = set()
        self.threads: set[int] = set()
        self.base = _find(model, PROBE + ".base_layer")
        self.lora_a = _find(model, PROBE + ".lora_A.default")
        self.handle = self.base.register_forward_hook(
            lambda m, i, o: self.act.add(str(o.dtype).removeprefix("torch."))
        )

    def step(self) -> None:
        self.threads.add(torch.get_num_threads())

    def facts(self, model: torch.nn.Module) -> dict:
        self.handle.remove()
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        return {
            "base_dtype": str(self.base.weight.dtype).removeprefix("torch."),
            "lora_dtype": str(self.lora_a.weight.dtype).removeprefix("torch."),
            "act_dtype": ",".join(sorted(self.act)),
            "attn": inner.config._attn_implementation,
            "grad_ckpt": _checkpointing(inner),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "threads": ",".join(str(t) for t in sorted(self.threads)),
        }


def _checkpointing(model: torch.nn.Module) -> bool:
    """Whether activation (gradient) checkpointing is on; transformers 5 renamed the flag."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def _find(model: torch.nn.Module, suffix: str) -> torch.nn.Module:
    for name, mod in model.named_modules():
        if name.endswith(suffix):
            return mod
    raise RuntimeError(f"no module named *{suffix} in {type(model).__name__}: is LoRA on q_proj?")


# ----------------------------------------------------------------------------- densepath
def run_densepath(cfg: SFTLoRAConfig, w: Workload, dtype: torch.dtype) -> dict:
    """Warm-up + ``cfg.steps`` steps of the project's SFT path; step end times, losses and facts."""
    import lightning as L

    from densepath.algos.sft import SFTModule
    from densepath.data.datamodule import DemoDataModule
    from densepath.data.formatting import Encoded
    from densepath.models.factory import prepare_policy

    cfg_model = {
        "gradient_checkpointing": False,
        "base_dtype": str(dtype).removeprefix("torch."),
        "lora": lora_dict(w),
    }
    model = prepare_policy(base_model(w, cfg, torch.float32), cfg_model, "cpu")
    prompts, responses = sft_tokens(w)
    enc = [Encoded(p.tolist(), r.tolist()) for p, r in zip(prompts, responses)]
    dm = DemoDataModule(enc, enc, pad_id=2, batch_size=w.prompts, seed=cfg.seed)
    probe = Probe(model)
    ends: list[float] = []
    losses: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            probe.step()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))
            ends.append(time.perf_counter())

    module = SFTModule(
        model, lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95), constant_lr=True, max_steps=cfg.steps + 1
    )
    trainer = L.Trainer(
        max_steps=cfg.steps + 1,
        accelerator="cpu",
        devices=1,
        precision="32-true",  # no autocast: the base computes in its own dtype, adapters in fp32
        gradient_clip_val=1.0,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_progress_bar=False,
        logger=False,
        callbacks=[Clock()],
    )
    trainer.fit(module, datamodule=dm)
    return {"ends": ends, "losses": losses, **probe.facts(module.model)}


# ----------------------------------------------------------------------------- TRL
def id_tokenizer():
    """A stand-in tokenizer for TRL: the data is pre-tokenized, TRL only reads its pad token (id 2, the
    model's ``pad_token_id``)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
    )


def trl_dataset(w: Workload):
    """The same token ids as densepath's, with a completion mask on the response tokens."""
    from datasets import Dataset

    prompts, responses = sft_tokens(w)
    ids = torch.cat([prompts, responses], dim=1)
    mask = torch.cat([torch.zeros_like(prompts), torch.ones_like(responses)], dim=1)
    return Dataset.from_dict({"input_ids": ids.tolist(), "completion_mask": mask.tolist()})


def run_trl(cfg: SFTLoRAConfig, w: Workload, dtype: torch.dtype) -> dict:
    """Warm-up + ``cfg.steps`` steps of ``trl.SFTTrainer``; step end times, losses and facts."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from densepath.models.adapters import lora_config

    ends: list[float] = []
    losses: list[float] = []

    class LossTap(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float((loss[0] if return_outputs else loss).detach()))
            return loss

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            probe.step()

        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(
            output_dir=tmp,
            per_device_train_batch_size=w.prompts,
            gradient_accumulation_steps=1,
            max_steps=cfg.steps + 1,
            learning_rate=cfg.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            optim="adamw_torch",
            weight_decay=0.01,
            adam_beta1=0.9,
            adam_beta2=0.95,
            max_grad_norm=1.0,
            completion_only_loss=True,
            packing=False,
            padding_free=False,
            max_length=None,
            activation_checkpointing=False,  # TRL's default (gradient_checkpointing) is True
            bf16=False,  # TRL's default is True (autocast); the base dtype decides, as in densepath
            fp16=False,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=cfg.seed,
        )
        trainer = LossTap(
            model=base_model(w, cfg, dtype),
            args=args,
            train_dataset=trl_dataset(w),
            processing_class=id_tokenizer(),
            peft_config=lora_config(lora_dict(w)),
            callbacks=[Clock()],
        )
        trainer.remove_callback(PrinterCallback)  # it prints TRL's end-of-training metrics into the report
        probe = Probe(trainer.model)
        trainer.train()
    if len(losses) != cfg.steps + 1:
        raise RuntimeError(f"TRL ran {len(losses)} loss computations for {cfg.steps + 1} steps")
    return {"ends": ends, "losses": losses, **probe.facts(trainer.model)}


# ----------------------------------------------------------------------------- driver
def run(cfg: SFTLoRAConfig) -> dict:
    """``cfg.rounds`` rounds of every arm in turn, each on a fresh model; per-arm timed step times."""
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    w = cfg.workload()
    peaks = {name: matmul_flops(dt) for name, dt in ARM_DTYPE.items()}
    n_base = non_embedding_params(smollm2_shaped(w, cfg.seed))
    res: dict = {"arms": {}, "peaks": peaks, "n_params": n_base, "t0": time.perf_counter()}
    for r in range(cfg.rounds):
        for arm in cfg.arm_list():
            side, prec = arm.split("_")
            rec = (run_densepath if side == "densepath" else run_trl)(cfg, w, ARM_DTYPE[prec])
            if len(rec["ends"]) != cfg.steps + 1:
                raise RuntimeError(f"{arm}: {len(rec['ends'])} steps ran, expected {cfg.steps + 1}")
            times = [b - a for a, b in zip(rec["ends"], rec["ends"][1:])]
            prev = res["arms"].setdefault(arm, {**rec, "times": [], "first_loss": rec["losses"][0]})
            prev["times"] += times
            for key in ("base_dtype", "lora_dtype", "act_dtype", "attn", "grad_ckpt", "trainable"):
                if prev[key] != rec[key]:
                    raise RuntimeError(f"{arm}: {key} changed between rounds ({prev[key]} -> {rec[key]})")
            logger.info("round %d %s: steps %s s", r, arm, ", ".join(f"{t:.2f}" for t in times))
            gc.collect()
    res["elapsed_s"] = time.perf_counter() - res["t0"]
    return res


def arm_rows(cfg: SFTLoRAConfig, res: dict) -> dict[str, dict]:
    """Per arm: the facts and the throughput numbers of the table."""
    w = cfg.workload()
    all_tok = w.prompts * (w.prompt_len + w.new_tokens)
    resp_tok = w.prompts * w.new_tokens
    out = {}
    for arm, rec in res["arms"].items():
        peak: MatmulPeak = res["peaks"][arm.split("_")[1]]
        step = median(rec["times"])
        out[arm] = {
            **{
                k: rec[k] for k in ("base_dtype", "lora_dtype", "act_dtype", "attn", "grad_ckpt", "trainable")
            },
            "threads": rec["threads"],
            "first_loss": rec["first_loss"],
            "step_s": step,
            "tok_s_all": all_tok / step,
            "tok_s_resp": resp_tok / step,
            "mfu_all": 4 * res["n_params"] * all_tok / step / peak.flops_per_s,
            "mfu_resp": 4 * res["n_params"] * resp_tok / step / peak.flops_per_s,
            "times": rec["times"],
        }
    return out


def ratios(rows: dict[str, dict]) -> dict[str, float]:
    """densepath/TRL tokens/s per dtype and densepath's bf16/fp32 speedup (only for the arms run)."""
    out = {}
    for prec in ARM_DTYPE:
        if f"densepath_{prec}" in rows and f"trl_{prec}" in rows:
            out[f"densepath/trl {prec}"] = (
                rows[f"densepath_{prec}"]["tok_s_all"] / rows[f"trl_{prec}"]["tok_s_all"]
            )
    for side in ("densepath", "trl"):
        if f"{side}_fp32" in rows and f"{side}_bf16" in rows:
            out[f"{side} bf16/fp32"] = rows[f"{side}_bf16"]["tok_s_all"] / rows[f"{side}_fp32"]["tok_s_all"]
    return out


def summarize(cfg: SFTLoRAConfig, res: dict) -> tuple[str, dict[str, float]]:
    """The report (setup lines, one table, ratios) and the ratios."""
    w = cfg.workload()
    rows = arm_rows(cfg, res)
    rat = ratios(rows)
    peaks = res["peaks"]
    n = res["n_params"]
    lines = [
        "## LoRA SFT throughput: densepath SFTModule vs TRL SFTTrainer, fp32 and bf16 frozen base",
        w.describe(),
        f"SFT: batch = the {w.prompts} prompts, each + its {w.new_tokens}-token demonstration "
        f"({w.prompt_len}+{w.new_tokens} = {w.prompt_len + w.new_tokens} tokens, no padding) -> "
        f"{w.prompts * (w.prompt_len + w.new_tokens)} tokens/step, loss on the {w.prompts * w.new_tokens} response "
        f"tokens only; LoRA dropout 0, adapters fp32; attention {cfg.attn}; gradient checkpointing off; AdamW "
        f"lr={cfg.lr:g} betas=(0.9, 0.95) wd=0.01, constant LR, grad clip 1.0; no autocast (Lightning "
        "precision 32-true, TRL bf16=False): the base computes in its stored dtype",
        f"timing: per round and arm 1 warm-up step (dropped) + {cfg.steps} timed steps, {cfg.rounds} rounds "
        f"(arms interleaved, fresh model from seed {cfg.seed} each); step time = end of step - end of previous "
        f"step; medians over {cfg.steps * cfg.rounds} timed steps; threads={cfg.threads}; wall "
        f"{res['elapsed_s']:.0f} s",
        f"measured matmul peak ({peaks['fp32'].n}^3): fp32 {peaks['fp32'].flops_per_s / 1e9:.1f} GFLOP/s, "
        f"bf16 {peaks['bf16'].flops_per_s / 1e9:.1f} GFLOP/s",
        f"MFU = 4 N tokens / step time / that dtype's matmul peak, N = {n / 1e6:.2f}M non-embedding base "
        "parameters (decoder layers; the tied embedding / LM head excluded, as in the conventional 6N "
        "estimate; attention scores and the adapters' own FLOPs ignored). 4N, not 6N: LoRA trains no base "
        "weight, so the backward needs the input gradients (2N per token) but no weight gradients (2N more). "
        "'all' counts every processed token, 'response' only the trained ones.",
        "",
        md_table(
            TABLE_HEADER,
            [
                [
                    arm,
                    r["base_dtype"],
                    r["lora_dtype"],
                    r["act_dtype"],
                    r["attn"],
                    "on" if r["grad_ckpt"] else "off",
                    r["trainable"],
                    r["threads"],
                    f"{r['first_loss']:.5f}",
                    r["step_s"],
                    r["tok_s_all"],
                    r["tok_s_resp"],
                    r["mfu_all"],
                    r["mfu_resp"],
                    ", ".join(f"{t:.2f}" for t in r["times"]),
                ]
                for arm, r in rows.items()
            ],
        ),
        "",
    ]
    lines += [f"ratio {name} (tokens/s): {v:.3f}" for name, v in rat.items()]
    return "\n".join(lines), rat


def check_lines(rat: dict[str, float]) -> tuple[list[str], bool]:
    """The two targets (densepath >= TRL at bf16 and at fp32); a target whose arms did not run is missed."""
    out, ok = [], True
    for prec in ("bf16", "fp32"):
        name = f"densepath/trl {prec}"
        if name not in rat:
            out.append(
                f"target {name} tokens/s >= {MIN_RATIO:g}: NOT RUN (needs densepath_{prec} and trl_{prec})"
            )
            ok = False
            continue
        line, met = target_line(f"{name} tokens/s", rat[name], MIN_RATIO, lower_is_better=False)
        out.append(line)
        ok = ok and met
    return out, ok


def parse_args(argv: Sequence[str]) -> tuple[SFTLoRAConfig, bool]:
    """CLI flags for every :class:`SFTLoRAConfig` field, plus ``--check``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks sft_lora", description=__doc__.split("\n")[0])
    add_config_flags(p, SFTLoRAConfig)
    p.add_argument(
        "--check", action="store_true", help="exit 1 if densepath tokens/s < TRL's at bf16 or at fp32"
    )
    ns = vars(p.parse_args(list(argv)))
    check = ns.pop("check")
    return SFTLoRAConfig(**ns), check


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the report, and with ``--check`` return 1 when a target is missed."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "densepath.models.factory"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg, check = parse_args(sys.argv[1:] if argv is None else argv)
    report, rat = summarize(cfg, run(cfg))
    targets, ok = check_lines(rat)
    sys.stdout.write(report + "\n" + "\n".join(targets) + "\n")
    return 0 if ok or not check else 1


if __name__ == "__main__":
    sys.exit(main())
