"""The decode stage's decoders: beam search (against HF `generate` and brute-force enumeration),
best-of-N (the argmax among candidates), their inference costs, the val choice and the stage itself."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import run_cfg, tiny_llama
from densepath.models.logprobs import response_logprobs
from densepath.sampling.base import left_pad, mask_after_eos
from densepath.sampling.hf import HFSampler
from densepath.sampling.search import beam_search, best_of
from densepath.stages.decode import DecodeStage, choose

EOS, PAD = 1, 0
PROMPTS = [[2, 3, 4], [5, 6], [3, 3, 3, 3, 2], [4]]


def _masked(ids: torch.Tensor) -> list[list[int]]:
    """Token lists up to and including the first EOS (what follows is padding)."""
    ids, mask, _ = mask_after_eos(ids, EOS, PAD)
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)]


@pytest.mark.parametrize("width,horizon", [(2, 3), (3, 5), (5, 4)])
def test_beam_search_returns_what_hf_generate_returns(width, horizon):
    """HF's beam search with length_penalty=0, early_stopping=False and no logits processors."""
    model = tiny_llama(seed=3, vocab=7).float()
    out = beam_search(model, PROMPTS, width=width, max_new_tokens=horizon, eos_id=EOS, pad_id=PAD)
    ids, mask = left_pad(PROMPTS, PAD)
    hf = model.generate(
        input_ids=ids,
        attention_mask=mask,
        num_beams=width,
        do_sample=False,
        length_penalty=0.0,
        early_stopping=False,
        max_new_tokens=horizon,
        eos_token_id=EOS,
        pad_token_id=PAD,
        output_scores=True,
        return_dict_in_generate=True,
        repetition_penalty=1.0,
    )
    assert _masked(out.batch.response_ids) == _masked(hf.sequences[:, ids.shape[1] :])
    torch.testing.assert_close(out.score, hf.sequences_scores, rtol=1e-5, atol=1e-5)
    # the score is the summed log-probability of the answer it returns
    b = out.batch
    logp = response_logprobs(model, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask).logp
    torch.testing.assert_close(logp.sum(-1), out.score, rtol=1e-5, atol=1e-5)
    # the cost is width x the steps the prompt needed; a prompt never needs more than the horizon
    assert torch.all(out.cost % width == 0) and torch.all(out.cost <= width * horizon)
    assert torch.all(out.cost >= width * b.response_mask.sum(-1))


def _all_answers(vocab: int, horizon: int):
    """Every answer: tokens ending in EOS (no EOS before), or `horizon` tokens without EOS."""
    for n in range(1, horizon + 1):
        for body in itertools.product([t for t in range(vocab) if t != EOS], repeat=n - 1):
            yield [*body, EOS]
            if n == horizon:
                for last in (t for t in range(vocab) if t != EOS):
                    yield [*body, last]


@torch.no_grad()
def _sum_logp(model, prompt: list[int], answers: list[list[int]]) -> torch.Tensor:
    from densepath.sampling.base import right_pad

    p_ids, p_mask = left_pad([prompt] * len(answers), PAD)
    r_ids, r_mask = right_pad(answers, PAD)
    return response_logprobs(model, p_ids, p_mask, r_ids, r_mask).logp.sum(-1)  # float64 model


def test_wide_beam_finds_the_exact_argmax_where_greedy_does_not():
    vocab, horizon = 5, 3
    answers = list(_all_answers(vocab, horizon))
    found = None
    for seed, prompt in itertools.product(range(40), ([2, 3], [4], [3, 2, 4])):
        model = tiny_llama(seed=seed, vocab=vocab)  # float64
        best = answers[int(_sum_logp(model, prompt, answers).argmax())]
        greedy = beam_search(model, [prompt], width=1, max_new_tokens=horizon, eos_id=EOS, pad_id=PAD)
        if _masked(greedy.batch.response_ids)[0] != best:
            found = model, prompt, best, greedy
            break
    assert found is not None, "no tiny model where greedy misses the sequence argmax"
    model, prompt, best, greedy = found
    wide = beam_search(model, [prompt], width=vocab**horizon, max_new_tokens=horizon, eos_id=EOS, pad_id=PAD)
    assert _masked(wide.batch.response_ids)[0] == best  # covers every prefix: exact
    assert float(wide.score[0]) == pytest.approx(float(_sum_logp(model, prompt, [best])[0]), abs=1e-5)
    assert float(wide.score[0]) > float(greedy.score[0])  # the narrow beam (width 1) missed it
    # width 1 is greedy decoding, at the cost of the greedy answer's length
    sampler = HFSampler(max_new_tokens=horizon, pad_token_id=PAD, eos_token_id=EOS)
    g = sampler.generate(model, [prompt], greedy=True)
    assert _masked(g.response_ids) == _masked(greedy.batch.response_ids)
    assert int(greedy.cost[0]) == int(g.response_mask.sum())


def test_best_of_n_picks_the_argmax_first_among_equals():
    scores = torch.tensor([0.1, 0.7, 0.7, -1.0, 2.0, 1.0, 2.0, 0.0])  # two prompts, n = 4
    assert best_of(scores, 4).tolist() == [1, 0]


def _stage(model, max_new: int = 4) -> DecodeStage:
    st = DecodeStage()
    st.sampler = HFSampler(max_new_tokens=max_new, pad_token_id=PAD, eos_token_id=EOS)
    st.reward, st.device = None, torch.device("cpu")
    return st


def test_best_of_n_decoder_keeps_the_best_candidate_by_policy_logp_and_counts_its_cost():
    model = tiny_llama(seed=5, vocab=7).float()
    st = _stage(model)
    torch.manual_seed(11)
    decoded = {name: out for name, _, out in st.decoders(model, PROMPTS, [1.0], [], [2, 4], ["policy_logp"])}
    torch.manual_seed(11)  # greedy draws nothing: the same 4 candidates per prompt again
    cand = st.sampler.generate(model, PROMPTS, k=4)
    logp = response_logprobs(model, cand.prompt_ids, cand.prompt_mask, cand.response_ids, cand.response_mask)
    scores, lengths = logp.logp.sum(-1).view(4, 4), cand.response_mask.sum(-1).view(4, 4)
    answers = _masked(cand.response_ids)
    for n in (2, 4):
        out = decoded[f"bon{n}_policy_logp"]
        for i in range(len(PROMPTS)):
            distinct = {tuple(answers[i * 4 + j]): float(scores[i, j]) for j in range(n)}
            best = max(distinct, key=distinct.get)
            assert tuple(_masked(out.batch.response_ids)[i]) == best
            assert float(out.score[i]) == pytest.approx(distinct[best], abs=1e-5)
        # generation plus one scoring pass (the policy) over the first n candidates
        assert out.cost.tolist() == (2 * lengths[:, :n].sum(-1)).tolist()
    assert decoded["greedy"].cost.tolist() == decoded["greedy"].batch.response_mask.sum(-1).tolist()
    # one sample at the sampler's temperature is the first of the n draws (no second draw)
    assert _masked(decoded["T1"].batch.response_ids) == [answers[i * 4] for i in range(len(PROMPTS))]
    assert decoded["T1"].cost.tolist() == lengths[:, 0].tolist()


def test_choose_prefers_the_best_val_score_then_the_cheaper_then_the_first():
    val = {"greedy": 0.5, "T0.5": 0.6, "beam4": 0.6, "bon4_policy_logp": 0.6}
    cost = {"greedy": 10, "T0.5": 10, "beam4": 40, "bon4_policy_logp": 80}
    assert choose(val, cost) == "T0.5"
    assert choose({"greedy": 0.6, "T0.5": 0.6}, {"greedy": 10, "T0.5": 10}) == "greedy"
    assert choose({"greedy": 2.0, "T0.5": 1.0}, {"greedy": 10, "T0.5": 10}, higher_is_better=False) == "T0.5"


def test_same_as_mode_counts_identical_greedy_answers():
    texts = {
        "sft": {"beam4": ["a", "b", "c", "d"], "beam16": ["a", "b", "x", "d"]},
        "dpr": {"greedy": ["a", "b", "c", "d"]},
    }
    assert DecodeStage.same_as_mode(texts, "sft", [4, 16]) == {"dpr": 0.75}  # against the widest beam
    assert DecodeStage.same_as_mode(texts, "sft", []) == {}


def test_decode_stage_from_parent(sft_run: Path, tmp_path: Path, capsys):
    run = tmp_path / "dec"
    m = run_cfg(
        [
            "debug=tiny",
            "pipeline=decode",
            f"parent_run={sft_run}",
            "decode.temperatures=[0.5]",
            "decode.beam_widths=[2]",
            "decode.best_of_n=[2]",
            "decode.rerank=[policy_logp,reward]",
        ],
        run,
    )
    out = capsys.readouterr().out
    assert "Best decoder per policy" in out and "score against inference cost" in out
    decs = ["greedy", "T0.5", "beam2", "bon2_policy_logp", "bon2_reward"]
    for split in ("val", "eval"):
        for d in decs:
            assert 0.0 <= m[f"decode/sft/{split}/{d}/success"] <= 1.0
            assert m[f"decode/sft/{split}/{d}/cost"] > 0
    # costs: beam 2 = 2 x steps >= 2 x length; best-of-2 by the reward = 2 samples x (1 + pi_SFT + pi_base)
    assert m["decode/sft/eval/beam2/cost"] >= 2 * m["decode/sft/eval/beam2/length"] - 1e-9
    assert m["decode/sft/eval/bon2_reward/cost"] == pytest.approx(
        1.5 * m["decode/sft/eval/bon2_policy_logp/cost"]
    )
    man = json.loads((run / "decode" / "manifest.json").read_text())
    best = man["chosen"]["sft"]
    val = {d: m[f"decode/sft/val/{d}/success"] for d in decs}
    assert val[best] == max(val.values())  # chosen on val ...
    assert m["decode/sft/best/success"] == m[f"decode/sft/eval/{best}/success"]  # ... reported on eval
    # greedy decoding is deterministic: the same val number the SFT stage reported
    parent = json.loads((sft_run / "metrics.json").read_text())
    assert m["decode/sft/val/greedy/success"] == pytest.approx(parent["sft/val/greedy/success"])
    assert not any(k.startswith("decode/dpr/") for k in m)  # the parent has no DPR policy
    assert man["reward"]["baseline"]["name"] == "sft_frac_0.50"
    rows = (run / "decode" / "frontier.csv").read_text().splitlines()
    assert len(rows) == 1 + len(decs) and rows[0].startswith("policy,decoder,kind")
    assert (run / "decode" / "frontier.png").stat().st_size > 0
    assert not any(math.isnan(v) for k, v in m.items() if k.endswith("/cost"))


def test_decode_stage_refuses_a_bad_grid(sft_run: Path, tmp_path: Path):
    with pytest.raises(ValueError, match=r"decode.rerank: \['likelihood'\] unknown"):
        run_cfg(
            ["debug=tiny", "pipeline=decode", f"parent_run={sft_run}", "decode.rerank=[likelihood]"],
            tmp_path / "a",
        )
    with pytest.raises(ValueError, match=r"decode.policies: \['ppo'\] have no policy"):
        run_cfg(
            ["debug=tiny", "pipeline=decode", f"parent_run={sft_run}", "decode.policies=[sft,ppo]"],
            tmp_path / "b",
        )


def test_decode_search_policies_give_beams_to_the_listed_policies_only(sft_run: Path, tmp_path: Path):
    """decode.search_policies=[sft]: SFT gets the whole grid, every other policy greedy and temperatures."""
    import shutil

    parent = tmp_path / "parent"
    shutil.copytree(sft_run, parent)
    man = json.loads((parent / "manifest.json").read_text())
    (parent / "twin").mkdir()  # a second policy: SFT's own checkpoint under another stage name
    twin = {"stage": "twin", "policy": str(parent / "sft" / "policy")}
    (parent / "twin" / "manifest.json").write_text(json.dumps(twin))
    man["stages"]["twin"] = {"policy": str(parent / "sft" / "policy")}
    (parent / "manifest.json").write_text(json.dumps(man))
    base = ["debug=tiny", "pipeline=decode", f"parent_run={parent}", "decode.temperatures=[0.5]"]
    grid = ["decode.beam_widths=[2]", "decode.best_of_n=[2]", "decode.rerank=[policy_logp]"]
    m = run_cfg([*base, *grid, "decode.search_policies=[sft]"], tmp_path / "dec")
    assert {k.split("/")[3] for k in m if k.startswith("decode/twin/eval/")} == {"greedy", "T0.5"}
    assert {k.split("/")[3] for k in m if k.startswith("decode/sft/eval/")} == {
        "greedy",
        "T0.5",
        "beam2",
        "bon2_policy_logp",
    }
    # the twin is SFT itself: its greedy answers are SFT's, and they are compared with SFT's widest beam
    assert m["decode/twin/eval/greedy/success"] == m["decode/sft/eval/greedy/success"]
    assert 0.0 <= m["decode/twin/greedy_same_as_mode"] <= 1.0
    with pytest.raises(ValueError, match=r"leaves out the reference `sft`"):
        run_cfg([*base, *grid, "decode.search_policies=[twin]"], tmp_path / "bad")
    with pytest.raises(ValueError, match=r"search_policies: \['dpr'\] are not decoded here"):
        run_cfg([*base, *grid, "decode.search_policies=[sft,dpr]"], tmp_path / "bad2")
