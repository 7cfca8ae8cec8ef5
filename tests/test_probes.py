"""Tests for reward-recovery probes, token heatmaps and the reward artefact writer."""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest
import torch
from scipy import stats

from densepath.eval.heatmap import token_heatmap_html, write_heatmap
from densepath.eval.probes import (
    auroc,
    corrupted_token_auroc,
    detection_rate,
    fidelity,
    pearson,
    reward_stats,
    spearman,
)
from densepath.rewards.artefact import SCHEMA, read_reward_parquet, write_manifest, write_reward_parquet


# ---------------------------------------------------------------- references (slow, float64)
def _ref_detection(rewards, mask, positions):
    hits, chance = [], []
    for i in range(rewards.shape[0]):
        real = [t for t in range(rewards.shape[1]) if mask[i, t]]
        vals = [float(rewards[i, t]) for t in real]
        best = real[vals.index(min(vals))]  # first minimum
        hits.append(1.0 if best == int(positions[i]) else 0.0)
        chance.append(1.0 / len(real))
    return sum(hits) / len(hits), sum(chance) / len(chance)


def _ref_auroc(neg, pos):
    total = 0.0
    for p in pos:
        for n in neg:
            total += 1.0 if p < n else (0.5 if p == n else 0.0)
    return total / (len(neg) * len(pos))


def _ragged(gen, B=6, T=9):
    lengths = torch.randint(2, T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    rewards = torch.randn(B, T, generator=gen, dtype=torch.float64)
    rewards = torch.where(mask.bool(), rewards, torch.full_like(rewards, -99.0))  # padding must be ignored
    return rewards, mask, lengths


# ---------------------------------------------------------------- detection rate
def test_detection_rate_matches_loop_on_ragged_rows():
    gen = torch.Generator().manual_seed(0)
    rewards, mask, lengths = _ragged(gen, B=40)
    positions = (torch.rand(40, generator=gen) * lengths).long()
    # plant clear minima at the altered token in half the rows
    rewards[:20][torch.arange(20), positions[:20]] = -10.0
    got = detection_rate(rewards, mask, positions)
    ref_rate, ref_chance = _ref_detection(rewards, mask, positions)
    assert got["detection_rate"] == pytest.approx(ref_rate, abs=1e-12)
    assert got["chance"] == pytest.approx(ref_chance, abs=1e-12)
    assert got["detection_rate"] >= 0.5  # padded -99 values were not picked as the minimum


def test_detection_rate_tie_rule_and_chance():
    rewards = torch.tensor([[1.0, -1.0, -1.0, 0.0], [0.0, 0.0, 5.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    # row 0: tie at 1 and 2 -> first argmin 1; row 1: tie at 0,1 -> first argmin 0
    assert detection_rate(rewards, mask, torch.tensor([1, 0]))["detection_rate"] == 1.0
    assert detection_rate(rewards, mask, torch.tensor([2, 1]))["detection_rate"] == 0.0
    assert detection_rate(rewards, mask, torch.tensor([1, 0]))["chance"] == pytest.approx((1 / 4 + 1 / 2) / 2)


def test_detection_rate_rejects_position_on_padding():
    rewards, mask = torch.zeros(2, 4), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    with pytest.raises(ValueError, match=r"positions\[0\]"):
        detection_rate(rewards, mask, torch.tensor([3, 0]))


# ---------------------------------------------------------------- AUROC
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_mannwhitney_and_bruteforce_with_ties(seed):
    rng = np.random.default_rng(seed)
    neg = rng.integers(0, 6, size=23).astype(float)  # heavy ties
    pos = rng.integers(-2, 4, size=11).astype(float)
    got = auroc(neg, pos)
    u = stats.mannwhitneyu(neg, pos, alternative="two-sided").statistic
    assert got == pytest.approx(u / (neg.size * pos.size), abs=1e-12)
    assert got == pytest.approx(_ref_auroc(neg, pos), abs=1e-12)
    assert 0.5 < got < 1.0  # positives are shifted low, so detection is above chance


def test_auroc_edge_cases():
    assert auroc(np.array([1.0, 2.0]), np.array([-1.0, 0.0])) == 1.0
    assert auroc(np.array([-1.0, 0.0]), np.array([1.0, 2.0])) == 0.0
    assert auroc(np.array([3.0, 3.0]), np.array([3.0])) == 0.5
    with pytest.raises(ValueError, match="neg"):
        auroc(np.array([]), np.array([1.0]))


def test_corrupted_token_auroc_uses_altered_tokens_and_real_clean_tokens():
    gen = torch.Generator().manual_seed(3)
    rc, mc, _ = _ragged(gen, B=5)
    rx, mx, lx = _ragged(gen, B=4)
    positions = (torch.rand(4, generator=gen) * lx).long()
    got = corrupted_token_auroc(rc, mc, rx, mx, positions)
    neg = [float(rc[i, t]) for i in range(5) for t in range(9) if mc[i, t]]
    pos = [float(rx[i, int(positions[i])]) for i in range(4)]
    assert got == pytest.approx(_ref_auroc(neg, pos), abs=1e-12)
    rx[torch.arange(4), positions] = -50.0  # altered tokens now lowest of all
    assert corrupted_token_auroc(rc, mc, rx, mx, positions) == 1.0


# ---------------------------------------------------------------- correlations
@pytest.mark.parametrize("seed", [0, 1])
def test_pearson_spearman_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, size=30).astype(float)
    y = x + rng.normal(size=30).round(0)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-10)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-10)


def test_correlations_nan_cases():
    assert math.isnan(pearson([1.0], [2.0]))
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(pearson([1.0, 2.0], [3.0, 3.0]))
    assert spearman([1.0, 2.0, 3.0], [30.0, 20.0, 10.0]) == pytest.approx(-1.0)


# ---------------------------------------------------------------- fidelity
def test_fidelity_within_vs_pooled():
    rng = np.random.default_rng(0)
    t_exp, t_sft = rng.normal(5.0, 1.0, 20), rng.normal(0.0, 1.0, 20)
    true = {"expert": t_exp, "sft": t_sft, "uniform": np.full(5, 2.0)}
    # expert: exact affine map; sft: monotone but nonlinear; uniform: constant true return -> NaN.
    # The policy offset (-100 for expert) makes the pooled correlation bad although within is perfect.
    rec = {"expert": 2.0 * t_exp - 100.0, "sft": np.exp(t_sft), "uniform": rng.normal(size=5)}
    out = fidelity(rec, true)
    want = {f"{p}/{m}" for p in true for m in ("pearson", "spearman")}
    want |= {"pooled/pearson", "pooled/spearman", "within/pearson_mean", "within/spearman_mean"}
    assert set(out) == want
    assert out["expert/pearson"] == pytest.approx(1.0)
    assert out["expert/spearman"] == pytest.approx(1.0)
    assert out["sft/spearman"] == pytest.approx(1.0)
    assert out["sft/pearson"] < 0.99
    assert math.isnan(out["uniform/pearson"])
    assert out["within/spearman_mean"] == pytest.approx(1.0)  # NaN policy skipped
    assert out["within/pearson_mean"] == pytest.approx((1.0 + out["sft/pearson"]) / 2)
    allr = np.concatenate([rec[k] for k in sorted(rec)])
    allt = np.concatenate([true[k] for k in sorted(true)])
    assert out["pooled/pearson"] == pytest.approx(stats.pearsonr(allr, allt)[0], abs=1e-10)
    assert out["pooled/pearson"] < 0.0


def test_fidelity_rejects_mismatched_policies():
    with pytest.raises(ValueError, match="sft"):
        fidelity({"expert": np.ones(3)}, {"expert": np.ones(3), "sft": np.ones(3)})
    with pytest.raises(ValueError, match="'expert'"):
        fidelity({"expert": np.ones(3)}, {"expert": np.ones(4)})


def test_reward_stats_matches_loop():
    gen = torch.Generator().manual_seed(1)
    rewards, mask, _ = _ragged(gen)
    out = reward_stats(rewards, mask)
    toks = [float(rewards[i, t]) for i in range(6) for t in range(9) if mask[i, t]]
    sums = [sum(float(rewards[i, t]) for t in range(9) if mask[i, t]) for i in range(6)]
    assert out["token_mean"] == pytest.approx(np.mean(toks), abs=1e-12)
    assert out["token_std"] == pytest.approx(np.std(toks), abs=1e-12)
    assert out["token_min"] == min(toks) and out["token_max"] == max(toks)
    assert out["seq_sum_mean"] == pytest.approx(np.mean(sums), abs=1e-12)
    assert out["seq_sum_std"] == pytest.approx(np.std(sums), abs=1e-12)


# ---------------------------------------------------------------- heatmap
def _rows():
    return [
        {
            "prompt": "Q: 1<2?",
            "tokens": ["yes", "<b>&", ' "q"'],
            "rewards": [0.5, -2.0, 0.1],
            "label": "corrupted @1",
        },
        {"prompt": "Q: x", "tokens": ["a", "b"], "rewards": [2.0, 0.0], "label": "clean"},
    ]


def _spans(page):
    # a token's text may hold whitespace glyphs (<i class="ws">·</i>) since spaces are made visible
    return re.findall(
        r'<span class="tok" style="([^"]*)" title="([^"]*)">((?:[^<]|<i class="ws">[^<]*</i>)*)</span>', page
    )


def _rgb(style):
    return tuple(int(v) for v in re.search(r"background-color: rgb\((\d+), (\d+), (\d+)\)", style).groups())


def test_heatmap_escapes_and_has_one_span_per_token():
    page = token_heatmap_html(_rows(), title="t<1>")
    assert "<b>&" not in page and "&lt;b&gt;&amp;" in page
    assert "1&lt;2?" in page and "t&lt;1&gt;" in page
    spans = _spans(page)
    assert len(spans) == 5 == page.count('class="tok"')
    assert spans[1][1] == "&#x27;&lt;b&gt;&amp;&#x27;: -2.000"
    assert "0.500" in spans[0][1] and "2.000" in spans[3][1]
    assert "corrupted @1" in page and "http" not in page and "<script" not in page


def test_heatmap_colours_diverge():
    spans = _spans(token_heatmap_html(_rows()))
    r, g, b = _rgb(spans[1][0])  # most negative -> red
    assert r == 255 and g < 60 and b < 60
    r, g, b = _rgb(spans[3][0])  # most positive -> blue
    assert b == 255 and r < 60 and g < 60
    assert _rgb(spans[4][0]) == (255, 255, 255)  # zero -> white


def test_heatmap_rejects_misaligned_row_and_writes_file(tmp_path):
    bad = [{"prompt": "", "tokens": ["a"], "rewards": [1.0, 2.0], "label": ""}]
    with pytest.raises(ValueError, match="row 0"):
        token_heatmap_html(bad)
    p = write_heatmap(tmp_path / "h" / "map.html", _rows(), title="x")
    assert p.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert os.listdir(p.parent) == ["map.html"]


# ---------------------------------------------------------------- parquet artefact
def _artefact():
    return dict(
        prompt_ids=[[1, 2, 3], [4]],
        response_ids=[[5, 6], [7, 8, 9]],
        rewards=[[0.25, -1.5], [0.1, 0.2, 0.3]],
        source=["demo", "corrupted"],
        family=["arith", "copy"],
    )


def test_parquet_round_trip(tmp_path):
    a = _artefact()
    p = write_reward_parquet(tmp_path / "r.parquet", **a)
    t = read_reward_parquet(p)
    assert t.schema.equals(SCHEMA)
    d = t.to_pydict()
    for key in ("prompt_ids", "response_ids", "source", "family"):
        assert d[key] == a[key]
    for got, want in zip(d["rewards"], a["rewards"]):
        np.testing.assert_allclose(got, np.float32(want), rtol=0, atol=0)
    np.testing.assert_allclose(d["sequence_reward"], [-1.25, 0.6], rtol=1e-6)
    assert os.listdir(tmp_path) == ["r.parquet"]


def test_parquet_length_mismatch_names_row(tmp_path):
    a = _artefact()
    a["rewards"][1] = [0.1, 0.2]
    with pytest.raises(ValueError, match="row 1"):
        write_reward_parquet(tmp_path / "r.parquet", **a)
    a = _artefact()
    a["source"] = ["demo"]
    with pytest.raises(ValueError, match="source"):
        write_reward_parquet(tmp_path / "r.parquet", **a)
    assert os.listdir(tmp_path) == []


def test_atomic_write_leaves_no_tmp_on_failure(tmp_path, monkeypatch):
    import densepath.rewards.artefact as art

    def boom(table, where):
        with open(where, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(art.pq, "write_table", boom)
    with pytest.raises(RuntimeError):
        write_reward_parquet(tmp_path / "r.parquet", **_artefact())
    assert os.listdir(tmp_path) == []


def test_manifest_sorted_json(tmp_path):
    p = write_manifest(tmp_path / "m.json", {"b": 1, "a": {"z": np.float32(0.5), "y": tmp_path}})
    text = p.read_text()
    assert text.index('"a"') < text.index('"b"') and text.index('"y"') < text.index('"z"')
    assert json.loads(text) == {"a": {"y": str(tmp_path), "z": 0.5}, "b": 1}
    assert os.listdir(tmp_path) == ["m.json"]
