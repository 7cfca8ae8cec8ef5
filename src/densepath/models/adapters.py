"""One frozen base for the DPR policy and both frozen scorers (LoRA runs).

When SFT trains LoRA, every saved policy directory also holds its adapter alone under `adapter/`
(`save_adapter`; the merged copy beside it is still what export and every other loader read). DPR then
needs one copy of the base weights instead of three:

    pi_theta = base + sft adapter (frozen) + policy adapter (trainable, fresh; today's semantics)
    pi_SFT   = base + sft adapter
    pi_base  = base + the baseline's adapter (a snapshot, the half-data run), or the bare base

The base is `<sft>/snapshots/base` (the model SFT started from). The two scorers run in one no-grad
forward with per-row adapters (peft's mixed-adapter batches, `models.prefix.adapter_rows`); the policy
forward has `sft` and `policy` active together. peft's `set_adapter` also sets `requires_grad` on the
adapters it activates, so the set is chosen once, the frozen ones are frozen again, and
`assert_trainable` (called every RL step) checks that exactly the policy adapter trains. DDP fixes its
parameter set when it wraps the module: the flags are right before it wraps.

dtype: the base has one dtype for all three models (`model.base_dtype`; `auto`: bfloat16 where the
device has fast bf16 matmuls, see `resolve_base_dtype`); adapters and optimiser state stay float32.
`reward.dtype` is then the base's: an explicit, different `reward.dtype` is an error (the scorers are
not separate copies that could run in another precision).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ADAPTER_SUBDIR = "adapter"
SFT, BASELINE, POLICY, BARE = "sft", "baseline", "policy", "__base__"


def single_adapter_model(model) -> bool:
    """A peft model with exactly one adapter (what SFT trains)."""
    try:
        from peft import PeftModel
    except ImportError:  # peft is optional
        return False
    return isinstance(model, PeftModel) and len(model.peft_config) == 1


def save_adapter(model, policy_dir: str | Path) -> Path | None:
    """Write a single-adapter peft model's adapter (safetensors) to `policy_dir/adapter`; None otherwise."""
    if not single_adapter_model(model):
        return None
    out = Path(policy_dir) / ADAPTER_SUBDIR
    name = next(iter(model.peft_config))
    model.save_pretrained(str(out), selected_adapters=[name], safe_serialization=True)
    if name != "default":  # peft nests non-default adapters in a sub-folder
        (out / name).replace(out.with_name(ADAPTER_SUBDIR + ".tmp"))
        out.rmdir()
        out.with_name(ADAPTER_SUBDIR + ".tmp").replace(out)
    return out


def adapter_dir(policy_dir: str | Path) -> Path | None:
    """`policy_dir/adapter` when the policy was saved with its LoRA adapter, else None."""
    path = Path(policy_dir) / ADAPTER_SUBDIR
    return path if (path / "adapter_config.json").exists() else None


def fast_bf16(device: torch.device | str) -> bool:
    """Whether bf16 matmuls are native on `device` (CUDA with bf16 support; a CPU with AVX512-BF16 or AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def resolve_base_dtype(name: str | None, device) -> torch.dtype:
    """`model.base_dtype`: float32 | bfloat16 | auto (bfloat16 where `fast_bf16`, else float32).

    Measured (benchmarks/README.md, "Shared base"): on this project's 2-core AVX512-BF16 CPU a bf16
    matmul runs ~3.4x faster than fp32 and LoRA SFT on a bf16 base faster than on fp32, so auto picks
    bf16 there; on CUDA bf16 is the tensor-core path.
    """
    name = "auto" if name in (None, "") else str(name)
    if name == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"model.base_dtype={name!r}: choose auto, float32 or bfloat16")
    return getattr(torch, name)


def lora_config(lora: dict):
    from peft import LoraConfig

    return LoraConfig(
        r=int(lora.get("r", 8)),
        lora_alpha=int(lora.get("alpha", 16)),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=list(lora.get("target_modules", ["q_proj", "v_proj"])),
        task_type="CAUSAL_LM",
    )


class SharedBase:
    """The policy and both scorers on one frozen base (module docstring).

    `model` is the peft model to train (`sft` + `policy` active); `baseline` is the adapter name of pi_base
    (`baseline`, or `__base__` for the bare base), None when the reward reads no pi_base model.
    """

    def __init__(self, base, sft_adapter: Path, baseline: Path | str | None, lora: dict, dtype: torch.dtype):
        from peft import PeftModel

        base = base.to(dtype)
        for p in base.parameters():
            p.requires_grad_(False)
        model = PeftModel.from_pretrained(base, str(sft_adapter), adapter_name=SFT, is_trainable=False)
        self.baseline = None
        if baseline == BARE:
            self.baseline = BARE
        elif baseline is not None:
            model.load_adapter(str(baseline), adapter_name=BASELINE, is_trainable=False)
            self.baseline = BASELINE
        model.add_adapter(POLICY, lora_config(lora))
        model.base_model.set_adapter([SFT, POLICY])  # also sets requires_grad on both: undone below
        for name, p in model.named_parameters():
            p.requires_grad_(f".{POLICY}." in name)
        self.model = model
        self.dtype = dtype
        self.policy_params = {n for n, p in model.named_parameters() if p.requires_grad}
        for name, p in model.named_parameters():
            if "lora_" in name and p.dtype != torch.float32:
                raise RuntimeError(f"adapter weight {name} is {p.dtype}: adapters must stay float32")
        self.assert_trainable()
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info(
            "shared base (%s): policy adapter %d trainable parameters; adapters: %s",
            dtype,
            n_train,
            ", ".join(model.peft_config),
        )

    def assert_trainable(self) -> None:
        """Exactly the policy adapter's parameters require grad (peft's set_adapter can flip them)."""
        now = {n for n, p in self.model.named_parameters() if p.requires_grad}
        if now != self.policy_params or not now:
            extra, missing = sorted(now - self.policy_params)[:3], sorted(self.policy_params - now)[:3]
            raise RuntimeError(
                "shared base: the trainable parameters changed (something called set_adapter?): "
                f"unexpected {extra}, frozen {missing}. Only the `policy` adapter may train"
            )

    def scorer_rows(self, n: int, with_baseline: bool) -> list[str]:
        """Adapter names for a stacked batch: n rows of pi_SFT, then (with_baseline) n rows of pi_base."""
        return [SFT] * n + ([self.baseline] * n if with_baseline else [])

    def describe(self) -> dict:
        return {"dtype": str(self.dtype).removeprefix("torch."), "adapters": list(self.model.peft_config)}


def shared_base_for(
    sft_dir: Path,
    cfg_model,
    device,
    baseline: Path | str | None,
    mode: str = "auto",
    *,
    unsupported: str | None = None,
) -> SharedBase | None:
    """The shared base for a stage that trains on top of pi_SFT, or None for today's separate copies.

    `mode`: auto (shared when possible, else separate copies, logged) | true (shared or an error naming
    why not) | false (separate copies). Possible when SFT trained LoRA (its `policy/adapter` exists), the
    base it started from is saved (`snapshots/base`) and the baseline has an adapter or is the bare base
    (`unsupported` names the baseline that has neither, e.g. an ensemble).
    """
    from densepath.models.io import load_policy

    mode = str(mode).lower()
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"shared_base={mode!r}: choose auto, true or false")
    if mode == "false":
        return None
    sft_dir = Path(sft_dir)
    lora = dict(cfg_model.get("lora") or {})
    why = []
    if not lora.get("enabled", False):
        why.append("model.lora.enabled=false (full fine-tuning keeps separate copies)")
    if adapter_dir(sft_dir / "policy") is None:
        why.append(f"{sft_dir / 'policy'} has no LoRA adapter (SFT did not train LoRA)")
    if not (sft_dir / "snapshots" / "base" / "config.json").exists():
        why.append(f"{sft_dir / 'snapshots' / 'base'} (the base SFT started from) is missing")
    if unsupported:
        why.append(unsupported)
    if why:
        if mode == "true":
            raise ValueError("shared_base=true, but: " + "; ".join(why) + ". Set shared_base=auto or false")
        log.info("separate scorer copies: %s", "; ".join(why))
        return None
    base = load_policy(sft_dir / "snapshots" / "base")[0]
    if cfg_model.get("gradient_checkpointing", False):
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.config.use_cache = False
    dtype = resolve_base_dtype(cfg_model.get("base_dtype"), device)
    return SharedBase(base, adapter_dir(sft_dir / "policy"), baseline, lora, dtype)
