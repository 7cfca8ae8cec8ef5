"""The reward-recovery report on real text: the token corruption probe for chat data, `sequence_auroc`,
and heatmaps that show each token as the text it stands for.

Everything runs on a byte-level BPE tokenizer (GPT-2 style: `Ġ` marks a leading space, `Ċ` a newline)
trained in the test, and tiny GPT-2 models; no network, a few seconds on a CPU.
"""

from __future__ import annotations

import copy
import math
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast  # noqa: E402

from densepath.data.datamodule import Collator  # noqa: E402
from densepath.eval.heatmap import token_heatmap_html, token_strings  # noqa: E402
from densepath.eval.probes import sequence_auroc  # noqa: E402
from densepath.eval.recovery import (  # noqa: E402
    build_token_corruptions,
    heatmap_rows,
    random_replacements,
    replaceable_ids,
    sampled_replacements,
    special_token_ids,
    token_corruption_report,
)
from densepath.eval.recovery_pass import ProbeInputs, proposal_for  # noqa: E402
from densepath.models.logprobs import response_logprobs  # noqa: E402
from densepath.models.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, train_bpe_tokenizer  # noqa: E402
from densepath.rewards.baselines import Baseline  # noqa: E402
from densepath.rewards.dense import DenseReward  # noqa: E402
from densepath.rewards.formulations import LogProb, LogRatio  # noqa: E402
from densepath.stages.recover import recovery_table  # noqa: E402

TOPICS = [
    "skin",
    "hair",
    "sleep",
    "tea",
    "rain",
    "bread",
    "music",
    "bikes",
    "maps",
    "clocks",
    "boats",
    "bees",
]
ADVICE = ["rest well", "drink water", "go slowly", "read more", "stay warm", "ask often"]


def _row(i: int) -> dict:
    t, a = TOPICS[i % len(TOPICS)], ADVICE[i % len(ADVICE)]
    response = f"Your {t} likes care.\nTry to {a} every day, and your {t} will thank you."
    prompt = f"Tell me about {t}, please."
    return {
        "family": "chat",
        "prompt": prompt,
        "response": response,
        "meta": {"messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": prompt}]},
    }


ROWS = [_row(i) for i in range(12)]


class ChatTask:
    """The part of a chat task the probes read."""

    name, recovery_probe = "chat_test", "corruption_tokens"

    def messages(self, row: dict) -> list[dict]:
        return row["meta"]["messages"]


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style) with the project's special tokens and chat template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [m["content"] for r in ROWS for m in r["meta"]["messages"]] + [r["response"] for r in ROWS]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
    )
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[4:]})
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def _gpt2(tok, seed: int = 0) -> GPT2LMHeadModel:
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg).eval()


class ModelBaseline(Baseline):
    """pi_base given as a model (what SnapshotBaseline holds after `load`)."""

    def __init__(self, model, name: str = "base"):
        self.model, self.name = model, name

    @torch.no_grad()
    def logp(self, prompt_ids, prompt_mask, response_ids, response_mask):
        return response_logprobs(self.model, prompt_ids, prompt_mask, response_ids, response_mask).logp


class HandReward:
    """A hand-made vectorised reward that depends on token ids and positions: r = sin(1.3 id + 0.7 t)."""

    def score(self, prompt_ids, prompt_mask, response_ids, response_mask):
        t = torch.arange(response_ids.shape[1], dtype=torch.float64)
        r = torch.sin(1.3 * response_ids.double() + 0.7 * t[None, :])
        return torch.where(response_mask.bool(), r, 0.0)


def _hand_rewards(ids: list[int]) -> list[float]:
    return [math.sin(1.3 * i + 0.7 * t) for t, i in enumerate(ids)]


# ---------------------------------------------------------------- the corruption construction
def test_token_corruptions_alter_exactly_one_token(tok):
    model = _gpt2(tok)
    c = build_token_corruptions(ChatTask(), tok, ROWS, model, "pi_base (test)", seed=3)
    special = set(special_token_ids(tok))
    assert {tok.eos_token_id, tok.pad_token_id, tok.convert_tokens_to_ids("<|assistant|>")} <= special
    assert len(c.clean) == len(c.random) == len(c.sampled) == len(c.rows) == c.positions.numel() == len(ROWS)
    for i, clean in enumerate(c.clean):
        p = int(c.positions[i])
        assert (
            clean.response_ids[-1] == tok.eos_token_id and 0 <= p < len(clean.response_ids) - 1
        )  # never EOS
        for bad in (c.random[i], c.sampled[i]):
            assert bad.prompt_ids == clean.prompt_ids and len(bad.response_ids) == len(clean.response_ids)
            diff = [t for t, (x, y) in enumerate(zip(clean.response_ids, bad.response_ids)) if x != y]
            assert diff == [p]  # exactly one token differs, at the recorded position
            assert bad.response_ids[p] not in special and bad.response_ids[p] < len(tok)
    # positions vary across rows (uniform draw, not a fixed index)
    assert len(set(c.positions.tolist())) > 3
    # deterministic in the seed, and the seed matters
    again = build_token_corruptions(ChatTask(), tok, ROWS, model, "pi_base (test)", seed=3)
    assert again.positions.tolist() == c.positions.tolist()
    assert [e.response_ids for e in again.random] == [e.response_ids for e in c.random]
    assert [e.response_ids for e in again.sampled] == [e.response_ids for e in c.sampled]
    other = build_token_corruptions(ChatTask(), tok, ROWS, model, "pi_base (test)", seed=4)
    assert other.positions.tolist() != c.positions.tolist()
    # a response with nothing but EOS has no replaceable token: dropped, and alone it yields probe/n = 0
    empty = {**ROWS[0], "response": ""}
    assert build_token_corruptions(ChatTask(), tok, [empty, ROWS[1]], model, "x", seed=3).rows == [ROWS[1]]
    none = build_token_corruptions(ChatTask(), tok, [empty], model, "x", seed=3)
    assert token_corruption_report(HandReward(), tok, none, "cpu") == ({"probe/n": 0.0}, {})
    with pytest.raises(ValueError, match="val split is empty"):
        build_token_corruptions(ChatTask(), tok, [], model, "x", seed=3)


def test_replacement_draws_exclude_original_and_special_tokens():
    allowed = torch.tensor([3, 5, 6, 9, 12])
    gen = torch.Generator().manual_seed(0)
    original = torch.tensor([5] * 4000 + [7] * 4000)  # 5 is replaceable, 7 is not (e.g. special)
    got = random_replacements(original, allowed, gen)
    assert set(got[:4000].tolist()) == {3, 6, 9, 12}  # never the original, never outside allowed
    assert set(got[4000:].tolist()) == {3, 5, 6, 9, 12}
    counts = torch.bincount(got[:4000], minlength=13)[[3, 6, 9, 12]].double()
    assert (counts / 4000 - 0.25).abs().max() < 0.03  # uniform over the 4 candidates
    # sampled: all of the proposal's mass on the original and on a special token still draws neither
    V = 13
    logits = torch.full((2000, V), -5.0)
    logits[:, 5], logits[:, 0], logits[:, 9] = 50.0, 50.0, 1.0  # 5: original, 0: not in allowed
    s = sampled_replacements(logits, torch.full((2000,), 5), allowed, gen)
    assert 5 not in s.tolist() and 0 not in s.tolist() and set(s.tolist()) <= {3, 6, 9, 12}
    assert (s == 9).double().mean() > 0.9  # otherwise it follows the proposal


def test_replaceable_ids_respect_model_vocab_and_specials(tok):
    allowed = replaceable_ids(tok, vocab_limit=len(tok) - 5)
    assert allowed.max() < len(tok) - 5 and not set(allowed.tolist()) & set(special_token_ids(tok))
    assert torch.all(allowed[1:] > allowed[:-1])  # sorted, as random_replacements needs
    with pytest.raises(ValueError, match="at least 2"):
        replaceable_ids(tok, vocab_limit=len(SPECIAL_TOKENS) + 1)


# ---------------------------------------------------------------- detection / AUROC vs a loop
def _ref_auroc(neg, pos):
    return sum(1.0 if p < n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(neg) * len(pos))


def test_report_matches_loop_reference_on_hand_made_rewards(tok):
    c = build_token_corruptions(ChatTask(), tok, ROWS, _gpt2(tok), "pi_SFT", seed=1)
    metrics, details = token_corruption_report(HandReward(), tok, c, "cpu")
    clean = [_hand_rewards(e.response_ids) for e in c.clean]
    neg = [v for r in clean for v in r]
    chance = float(np.mean([1.0 / len(r) for r in clean]))
    for kind, enc in (("random", c.random), ("sampled", c.sampled)):
        rewards = [_hand_rewards(e.response_ids) for e in enc]
        hits = [float(r.index(min(r)) == int(p)) for r, p in zip(rewards, c.positions)]
        pos = [r[int(p)] for r, p in zip(rewards, c.positions)]
        assert metrics[f"probe/{kind}/detection_rate"] == pytest.approx(np.mean(hits), abs=1e-12)
        assert metrics[f"probe/{kind}/token_auroc"] == pytest.approx(_ref_auroc(neg, pos), abs=1e-9)
    assert metrics["probe/chance"] == pytest.approx(chance, abs=1e-12)
    assert metrics["probe/n"] == len(ROWS)
    assert metrics["reward/token_mean"] == pytest.approx(np.mean(neg), abs=1e-6)
    assert not any(math.isnan(v) for v in metrics.values())
    assert set(details) >= {"clean", "corrupt", "corrupt_sampled", "positions", "rows"}


# ---------------------------------------------------------------- the probe on an overfit model
def test_log_ratio_detects_random_tokens_in_overfit_demonstrations(tok):
    task, base = ChatTask(), _gpt2(tok, seed=0)
    sft = copy.deepcopy(base).train()
    batch = Collator(tok.pad_token_id)(build_token_corruptions(task, tok, ROWS, base, "x", seed=0).clean)
    opt = torch.optim.Adam(sft.parameters(), lr=3e-3)
    for _ in range(40):  # overfit the 12 demonstrations
        logp = response_logprobs(sft, **batch).logp
        loss = -(logp * batch["response_mask"]).sum() / batch["response_mask"].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 1.0, float(loss.detach())
    reward = DenseReward(LogRatio(), sft, ModelBaseline(base))
    name, model = proposal_for(reward)
    assert name == "pi_base (base)" and model is base
    inputs = ProbeInputs(task, tok, sft, None, ROWS, seed=0, n_reference=0, proposal=(name, model))
    m, details = inputs.report(reward, "cpu")
    # chance is ~1/25; the altered token is the response's minimum almost always
    assert m["probe/chance"] < 0.06
    assert m["probe/random/detection_rate"] >= 0.75, m
    assert m["probe/random/token_auroc"] > 0.95, m
    assert m["probe/sampled/token_auroc"] > 0.9, m  # the pi_base draw is plausible, still caught here
    # the table the recover stage prints: real numbers, no dashes, no nan
    table = recovery_table([("log_ratio", m), ("logprob", ProbeInputs.report(inputs, _logprob(sft), "cpu")[0])],
                           "corruption_tokens", inputs)  # fmt: skip
    assert "| - " not in table and "nan" not in table.lower() and "pi_base (base)" in table
    assert re.search(r"\| log_ratio \| (-?\d+\.\d{3} \| ){6}-?\d+\.\d{3} \|$", table, re.M), table


def _logprob(sft):
    return DenseReward(LogProb(), sft, None)


def test_recovery_table_omits_columns_without_values():
    table = recovery_table(
        [("a", {"reward/token_mean": 1.0, "reward/seq_sum_mean": 2.0})], "corruption_tokens"
    )
    assert table.splitlines()[0] == "| reward | mean token reward | mean sequence reward |"
    assert "-" not in table.splitlines()[2]
    assert "no held-out" in recovery_table([("a", {"probe/n": 0.0})], "corruption_tokens")


# ---------------------------------------------------------------- sequence_auroc
def _brute_auroc(scores, passed):
    pos = [s for s, p in zip(scores, passed) if p]
    neg = [s for s, p in zip(scores, passed) if not p]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg) / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sequence_auroc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    passed = rng.random(60) < 0.4
    scores = rng.integers(0, 8, 60).astype(float) + passed  # heavy ties, passing shifted up
    auc, lo, hi = sequence_auroc(scores, passed, n_boot=500, seed=seed)
    assert auc == pytest.approx(_brute_auroc(scores, passed), abs=1e-12)
    assert lo <= auc <= hi and lo >= 0.0 and hi <= 1.0 and hi - lo > 0.02
    assert sequence_auroc(scores, passed.astype(int), n_boot=500, seed=seed) == (auc, lo, hi)  # 0/1 flags


def test_sequence_auroc_bootstrap_interval_is_calibrated_and_seeded():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200)])
    passed = np.arange(400) < 200
    auc, lo, hi = sequence_auroc(scores, passed)
    true = 0.5 * math.erfc(-1.0 / 2.0)  # P(N(1,1) > N(0,1)) = Phi(1 / sqrt 2) = 0.760
    assert lo < true < hi and 0.05 < hi - lo < 0.15  # width ~ 4 * sd of the AUROC at n = 200 + 200
    assert sequence_auroc(scores, passed) == (auc, lo, hi)
    assert sequence_auroc(scores, passed, seed=1)[1:] != (lo, hi)
    # a bigger sample gives a narrower interval
    big = np.concatenate([rng.normal(1.0, 1.0, 2000), rng.normal(0.0, 1.0, 2000)])
    _, blo, bhi = sequence_auroc(big, np.arange(4000) < 2000)
    assert bhi - blo < (hi - lo) / 2
    assert sequence_auroc([3.0, 2.0, 1.0], [True, True, False]) == (1.0, 1.0, 1.0)
    assert sequence_auroc([1.0, 2.0, 3.0], [True, True, False])[0] == 0.0


@pytest.mark.parametrize(
    ("scores", "passed", "match"),
    [
        ([1.0, 2.0], [True, True], "at least one passing and one failing"),
        ([1.0, 2.0], [1, 2], r"passed\[1\] = 2"),
        ([1.0, 2.0, 3.0], [1, 0], "one flag per response"),
        ([1.0, float("nan")], [1, 0], "NaN"),
    ],
)
def test_sequence_auroc_rejects_bad_input(scores, passed, match):
    with pytest.raises(ValueError, match=match):
        sequence_auroc(np.array(scores), np.array(passed))


# ---------------------------------------------------------------- readable heatmaps
def test_token_strings_are_the_text_of_each_token(tok):
    text = "Your skin likes care.\nTry to rest, café ☕ ok."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    raw = tok.convert_ids_to_tokens(ids)
    assert any(t.startswith("Ġ") for t in raw) and any("Ċ" in t for t in raw)  # byte-level markers
    pieces = token_strings(tok, ids + [tok.eos_token_id])
    assert len(pieces) == len(ids) + 1 and pieces[-1] == "<|eos|>"
    assert "".join(pieces[:-1]).replace("\ufffd", "") == text  # split characters show U+FFFD, then complete
    assert " skin" in pieces and not any("Ġ" in p or "Ċ" in p for p in pieces)
    # SentencePiece-style (the project's own BPE): decode([id]) would drop every leading space
    sp = train_bpe_tokenizer(["your skin likes care", "your hair likes rain"] * 4, 80)
    sp_ids = sp("your skin likes care", add_special_tokens=False)["input_ids"]
    assert "".join(token_strings(sp, sp_ids)).strip() == "your skin likes care"


def test_heatmap_of_the_probe_is_readable_text(tok):
    c = build_token_corruptions(ChatTask(), tok, ROWS[:3], _gpt2(tok), "pi_SFT", seed=0)
    _, details = token_corruption_report(HandReward(), tok, c, "cpu")
    rows = heatmap_rows(tok, details, n=3)
    assert len(rows) == 9  # clean, random, sampled per demonstration
    assert rows[1]["label"].startswith(f"random token @{details['positions'][0]} (sum ")
    assert rows[2]["label"].startswith("token sampled from pi_SFT @")
    page = token_heatmap_html(rows, title="log_ratio rewards")
    assert "Ġ" not in page and "Ċ" not in page and "{}" not in page
    assert '<i class="ws">·</i>' in page and '<i class="ws">⏎</i>' in page  # spaces and newlines visible
    # the prompt is collapsed: inside <details>, its first line as the summary
    blocks = re.findall(r'<details class="prompt"><summary>(.*?)</summary>(.*?)</details>', page)
    assert len(blocks) == 9 and "<details open" not in page
    assert blocks[0][0] == "prompt: Tell me about skin, please." and "Tell me about skin" in blocks[0][1]
    shown = re.sub(r'<i class="ws">·</i>', " ", page)
    assert " skin" in "".join(re.findall(r'<span class="tok"[^>]*>([^<]*)</span>', shown))
    # a toy-style row (no prompt, plain tokens) still renders, without an empty <details>
    toy = token_heatmap_html([{"tokens": ["4", "2"], "rewards": [0.1, -0.2], "label": "clean"}])
    assert toy.count('class="tok"') == 2 and "<details" not in toy


def test_rl_sample_heatmap_without_verifier_has_no_stray_markup(tok, tmp_path):
    """The RL sample heatmap of a chat task (no verifier: empty ground truth) printed `{}` and `Ġ`."""
    from types import SimpleNamespace

    from densepath.callbacks.samples import SampleTableCallback

    batch = Collator(tok.pad_token_id)(
        build_token_corruptions(ChatTask(), tok, ROWS[:2], _gpt2(tok), "x", 0).clean
    )
    samples = {**batch, "step": 4, "truth": {}}
    samples["rewards"] = samples["advantages"] = batch["response_mask"].double() * 0.5
    cb = SampleTableCallback(tok, tmp_path, every_n_steps=2)
    cb.on_train_batch_end(
        SimpleNamespace(is_global_zero=True), SimpleNamespace(last_samples=samples), None, None, 0
    )
    page = (tmp_path / "step_00004.html").read_text(encoding="utf-8")
    assert "{}" not in page and "Ġ" not in page and "Ċ" not in page
    assert '<i class="ws">⏎</i>' in page and page.count("<details") == 2  # one prompt per sample, collapsed
    sums = [float(x) for x in (batch["response_mask"].double() * 0.5).sum(1)]
    assert re.findall(r'class="label">reward sum ([\d.]+)</span>', page) == [f"{v:.2f}" for v in sums]
