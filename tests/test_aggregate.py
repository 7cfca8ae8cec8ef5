"""densepath-aggregate on fake Hydra multirun dirs: numbers against scipy, failure handling, outputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from densepath.sweeps.aggregate import AggregateError, aggregate, main
from densepath.sweeps.jobs import parse_config_string, split_overrides
from densepath.sweeps.stats import holm, min_detectable_effect, paired_differences, student_t_ppf

METRIC = "eval/success"
# configuration overrides -> {seed: value}; seed order in the dirs is shuffled on purpose.
REF = ["reward=log_ratio", "baseline=sft_half"]
OTHER = ["reward=logprob"]
VALUES = {
    "baseline=sft_half,reward=log_ratio": {1: 0.41, 2: 0.47, 3: 0.38},
    "reward=logprob": {1: 0.30, 2: 0.44, 3: 0.29},
}


def make_job(
    root: Path, name: str, overrides: list[str], metrics: dict | None = None, error: dict | None = None
) -> Path:
    """One fake Hydra job dir: .hydra/overrides.yaml plus metrics.json and/or error.json."""
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        (d / "error.json").write_text(json.dumps(error))
    return d


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 configurations x 3 seeds, finished, plus hydra/bookkeeping overrides that must be ignored."""
    root = tmp_path / "multirun"
    k = 0
    for seed in (2, 1, 3):
        for ovs, cfg in ((REF, "baseline=sft_half,reward=log_ratio"), (OTHER, "reward=logprob")):
            v = VALUES[cfg][seed]
            make_job(
                root,
                str(k),
                [f"seed={seed}", *ovs, "hydra.job.chdir=true", "resume=false"],
                metrics={METRIC: v, "sft/eval/success": v - 0.1, "other": None},
            )
            k += 1
    return root


def test_t_quantile_matches_scipy():
    dfs = np.arange(1, 201)
    for p in (0.975, 0.995):
        ours = np.array([student_t_ppf(p, int(df)) for df in dfs])
        np.testing.assert_allclose(ours, sps.t.ppf(p, dfs), rtol=0, atol=1e-6)
    assert student_t_ppf(0.025, 7) == pytest.approx(sps.t.ppf(0.025, 7), abs=1e-9)
    assert student_t_ppf(0.5, 3) == 0.0
    with pytest.raises(ValueError, match="df"):
        student_t_ppf(0.975, 0)
    with pytest.raises(ValueError, match="p="):
        student_t_ppf(1.0, 3)


def test_holm_matches_hand_computation():
    adj = holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert adj[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adj[4])


def test_paired_differences_match_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(0.5, 0.1, 6)
    b = a - rng.normal(0.05, 0.03, 6)
    A = {str(i): float(x) for i, x in enumerate(a)}
    B = {str(i): float(x) for i, x in enumerate(b)}
    B["99"] = 1.0  # unpaired seed: ignored
    r = paired_differences(A, B)
    ref = sps.ttest_rel(a, b)
    assert r["n"] == 6 and r["p"] == pytest.approx(ref.pvalue, rel=1e-8)
    d = a - b
    half = sps.t.ppf(0.975, 5) * d.std(ddof=1) / math.sqrt(6)
    assert r["lo"] == pytest.approx(d.mean() - half) and r["hi"] == pytest.approx(d.mean() + half)


def test_min_detectable_effect_has_about_80_percent_power():
    n, sd = 5, 0.04
    mde = min_detectable_effect(sd, n)
    crit = sps.t.ppf(0.975, n - 1)
    power = sps.nct.sf(crit, n - 1, mde / (sd / math.sqrt(n)))
    assert 0.75 < power < 0.85


def test_configuration_key_drops_seed_and_bookkeeping():
    ovs = [
        "seed=4",
        "reward=logprob",
        "hydra.run.dir=x",
        "parent_run=/a/b",
        "resume=true",
        "threads=1",
        "dpr.module.lr=1e-5",
    ]
    assert split_overrides(ovs, "seed") == ("dpr.module.lr=1e-5,reward=logprob", "4")
    assert split_overrides(["seed=1"], "seed") == ("(default)", "1")
    assert parse_config_string("reward=log_ratio, baseline=sft_half") == "baseline=sft_half,reward=log_ratio"
    assert parse_config_string("a=[1,2],b=x") == "a=[1,2],b=x"


def test_means_cis_and_paired_differences_match_scipy(sweep: Path, tmp_path: Path):
    out = tmp_path / "agg"
    stats = aggregate(
        sweep,
        metric=METRIC,
        reference="reward=log_ratio,baseline=sft_half",
        out=out,
        metrics=["sft/eval/success"],
    )
    assert sorted(stats) == sorted(VALUES)
    for cfg, by_seed in VALUES.items():
        x = np.array([by_seed[s] for s in (1, 2, 3)], dtype=np.float64)
        half = sps.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
        s = stats[cfg]
        assert s["n"] == 3 and s["seeds"] == ["1", "2", "3"]
        assert s["mean"] == pytest.approx(x.mean(), abs=1e-9)
        assert s["ci95"] == pytest.approx(half, abs=1e-9)
        assert (s["lo"], s["hi"]) == pytest.approx((x.mean() - half, x.mean() + half), abs=1e-9)
        assert s["extra"]["sft/eval/success"]["mean"] == pytest.approx(x.mean() - 0.1, abs=1e-9)

    ref_cfg, cfg = "baseline=sft_half,reward=log_ratio", "reward=logprob"
    a = np.array([VALUES[cfg][s] for s in (1, 2, 3)])
    b = np.array([VALUES[ref_cfg][s] for s in (1, 2, 3)])
    d = a - b
    half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    p = stats[cfg]["paired"]
    assert p["n_pairs"] == 3 and p["seeds"] == ["1", "2", "3"]
    assert p["mean_diff"] == pytest.approx(d.mean(), abs=1e-9)
    assert p["ci95"] == pytest.approx(half, abs=1e-9)
    # Consistent with scipy's paired t-test: its CI for the mean difference is the same interval.
    ci = sps.ttest_rel(a, b).confidence_interval(0.95)
    assert (p["lo"], p["hi"]) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert stats[ref_cfg]["paired"] is None

    md = (out / "summary.md").read_text()
    assert "| configuration | n | seeds | mean | ±95% CI | 95% CI | failed | unfinished |" in md
    table_rows = [ln for ln in md.split("## Paired")[0].splitlines() if ln.startswith("| `")]
    assert len(table_rows) == 2
    assert any(f"`{c}`" in r for r in table_rows for c in VALUES)
    assert "| configuration | n pairs |" in md and f"{d.mean():.4f}" in md
    png = out / "headline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000

    with open(out / "summary.csv", newline="") as f:
        rows = {r["configuration"]: r for r in csv.DictReader(f)}
    assert float(rows[cfg]["mean"]) == pytest.approx(a.mean(), abs=1e-12)
    assert float(rows[cfg]["paired_mean_diff"]) == pytest.approx(d.mean(), abs=1e-12)
    assert rows[ref_cfg]["paired_n"] == ""


def test_failed_and_unfinished_jobs_are_listed_and_counted(sweep: Path, tmp_path: Path):
    make_job(
        sweep,
        "6",
        ["seed=4", *OTHER],
        metrics={"sft/eval/success": 0.2},  # partial metrics flushed before the crash
        error={"error": "ValueError: bad reward\nmore", "traceback": "Traceback ...\nValueError: bad"},
    )
    make_job(sweep, "7", ["seed=5", *OTHER])  # neither file: unfinished
    make_job(
        sweep / "nested" / "deep",
        "0",
        ["seed=9", "reward=sparse"],
        error={"traceback": "Traceback (most recent call last):\nRuntimeError: oom"},
    )
    out = tmp_path / "agg"
    assert main([str(sweep), "--out", str(out), "--reference", "reward=logprob"]) == 0

    with open(out / "jobs.csv", newline="") as f:
        jobs = {r["job_dir"]: r for r in csv.DictReader(f)}
    assert len(jobs) == 9
    assert jobs["6"]["status"] == "failed" and jobs["6"]["error"] == "ValueError: bad reward"
    assert jobs["7"]["status"] == "unfinished" and jobs["7"][METRIC] == ""
    assert (
        jobs["nested/deep/0"]["status"] == "failed" and jobs["nested/deep/0"]["error"] == "RuntimeError: oom"
    )
    assert (
        jobs["0"]["status"] == "finished"
        and float(jobs["0"][METRIC]) == VALUES["baseline=sft_half,reward=log_ratio"][2]
    )

    stats = aggregate(sweep, out=out, reference="reward=logprob")
    s = stats["reward=logprob"]
    assert (s["n"], s["failed"], s["unfinished"]) == (3, 1, 1)
    assert s["mean"] == pytest.approx(np.mean(list(VALUES["reward=logprob"].values())), abs=1e-12)
    assert s["errors"] == ["ValueError: bad reward"]
    sparse = stats["reward=sparse"]
    assert (sparse["n"], sparse["failed"], math.isnan(sparse["mean"])) == (0, 1, True)
    assert sparse["paired"]["n_pairs"] == 0
    md = (out / "summary.md").read_text()
    assert "ValueError: bad reward" in md and "shares no seed with the reference" in md


def test_no_finished_jobs_exits_2_with_counts(tmp_path: Path, capsys):
    root = tmp_path / "sweep"
    make_job(root, "0", ["seed=1"], error={"error": "KeyError: x"})
    make_job(root, "1", ["seed=2"], error={"error": "KeyError: y"})
    make_job(root, "2", ["seed=3"])
    assert main([str(root)]) == 2
    err = capsys.readouterr().err
    assert (
        f"no finished jobs under {root} (3 job dirs found: 2 failed, 1 unfinished); nothing to aggregate"
    ) in err
    assert not (root / "aggregate").exists()


def test_missing_or_empty_dir_exits_2(tmp_path: Path, capsys):
    missing = tmp_path / "nope"
    assert main([str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "0").mkdir(parents=True)
    assert main([str(empty)]) == 2
    assert f"no job dirs under {empty}" in capsys.readouterr().err


def test_unknown_reference_and_metric_are_named(sweep: Path, tmp_path: Path):
    with pytest.raises(AggregateError, match="reward=nope.*reward=logprob"):
        aggregate(sweep, reference="reward=nope", out=tmp_path / "a")
    with pytest.raises(AggregateError, match="'eval/nope'.*eval/success"):
        aggregate(sweep, metric="eval/nope", out=tmp_path / "b")


def test_single_seed_has_no_interval(tmp_path: Path):
    root = tmp_path / "sweep"
    make_job(root, "0", ["seed=1", "reward=logprob"], metrics={METRIC: 0.5})
    make_job(root, "1", ["seed=1"], metrics={METRIC: 0.25})
    stats = aggregate(root, out=tmp_path / "agg", reference="(default)")
    assert stats["reward=logprob"]["n"] == 1 and math.isnan(stats["reward=logprob"]["ci95"])
    assert stats["reward=logprob"]["paired"]["mean_diff"] == pytest.approx(0.25)
    md = (tmp_path / "agg" / "summary.md").read_text()
    assert "| `reward=logprob` | 1 | 1 | 0.5000 | n/a | n/a |" in md


def test_zero_variance_differences_get_no_p_value():
    r = paired_differences({1: 0.5, 2: 0.7, 3: 0.6}, {1: 0.4, 2: 0.6, 3: 0.5})  # +0.1 on every seed
    assert r["zero_variance"] and math.isnan(r["p"]) and r["mean"] == pytest.approx(0.1)
    same = paired_differences({1: 0.5, 2: 0.7}, {1: 0.5, 2: 0.7})
    assert same["zero_variance"] and math.isnan(same["p"])
    assert not paired_differences({1: 0.5, 2: 0.7}, {1: 0.4, 2: 0.5})["zero_variance"]


def test_study_comparisons_use_the_holm_level_and_say_when_every_seed_agrees():
    from experiments.report_common import compare_md, compare_rows

    rows = {
        "ref": {1: 0.40, 2: 0.50, 3: 0.45, 4: 0.55},
        "a": {1: 0.45, 2: 0.58, 3: 0.47, 4: 0.61},
        "b": {1: 0.41, 2: 0.49, 3: 0.48, 4: 0.54},
        "c": {1: 0.50, 2: 0.60, 3: 0.55, 4: 0.65},  # +0.10 on every seed
    }
    comps = {c["name"]: c for c in compare_rows(rows, "ref", ["a", "b", "c"])}
    a = comps["a"]
    assert a["alpha_holm"] == pytest.approx(0.05 / 3)
    assert a["mde"] == pytest.approx(min_detectable_effect(a["sd"], 4, alpha=0.05 / 3))
    assert a["mde"] > min_detectable_effect(a["sd"], 4)  # stricter than the unadjusted level
    assert comps["c"]["zero_variance"] and math.isnan(comps["c"]["p_holm"])
    md = "\n".join(compare_md(list(comps.values()), "ref", "success"))
    assert "every seed gives this difference: no test" in md and "nan" not in md


def _mcnemar_reference(a: list[bool], b: list[bool]) -> float:
    """Exact two-sided McNemar p by direct summation of the Binomial(k, 1/2) pmf over the discordant
    pairs: the total probability of outcomes no more likely than the observed one."""
    a_only = sum(x and not y for x, y in zip(a, b))
    k = a_only + sum(y and not x for x, y in zip(a, b))
    if k == 0:
        return 1.0
    pmf = [math.comb(k, i) * 0.5**k for i in range(k + 1)]
    return min(1.0, sum(q for q in pmf if q <= pmf[a_only] * (1 + 1e-7)))


def test_mcnemar_matches_a_direct_binomial_sum():
    from densepath.sweeps.stats import mcnemar

    rng = np.random.default_rng(0)
    for n, pa, pb in ((24, 0.3, 0.5), (294, 0.2, 0.25), (50, 0.5, 0.5), (7, 0.9, 0.1)):
        a = list(rng.random(n) < pa)
        b = list(rng.random(n) < pb)
        r = mcnemar(a, b)
        assert r["p"] == pytest.approx(_mcnemar_reference(a, b), rel=1e-9)
        assert r["a_only"] == sum(x and not y for x, y in zip(a, b)) and r["n"] == n
        assert r["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    same = mcnemar([True, False, True], [True, False, True])
    assert same["p"] == 1.0 and same["diff"] == 0.0
    assert mcnemar([True] * 10, [False] * 10)["p"] == pytest.approx(2 * 0.5**10)
    with pytest.raises(ValueError, match="pair them by prompt"):
        mcnemar([True], [True, False])


def test_paired_bootstrap_matches_a_loop_over_the_same_draws():
    from densepath.sweeps.stats import paired_bootstrap

    rng = np.random.default_rng(1)
    a, b = rng.random(40), rng.random(40) * 0.8
    r = paired_bootstrap(a, b, n_boot=500, seed=3)
    idx = np.random.default_rng(3).integers(0, 40, size=(500, 40))
    means = []
    for row in idx:  # the reference: one resample at a time, float64
        means.append(sum(float(a[i]) - float(b[i]) for i in row) / 40)
    assert r["mean"] == pytest.approx(float(np.mean(a - b)))
    assert r["lo"] == pytest.approx(float(np.quantile(means, 0.025)))
    assert r["hi"] == pytest.approx(float(np.quantile(means, 0.975)))
    share = min(np.mean(np.array(means) <= 0), np.mean(np.array(means) >= 0))
    assert r["p"] == pytest.approx(max(2 * share, 1 / 500))
    assert r["lo"] <= r["mean"] <= r["hi"]
    zero = paired_bootstrap([1.0, 0.0, 1.0], [1.0, 0.0, 1.0])
    assert (zero["mean"], zero["lo"], zero["hi"], zero["p"]) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_with_weights_resamples_whole_clusters():
    """weights = instructions per prompt: the statistic is the instruction-level difference, and each
    resample draws whole prompts (compared with a loop over the same draws)."""
    from densepath.sweeps.stats import paired_bootstrap

    rng = np.random.default_rng(2)
    n_instr = rng.integers(1, 4, size=30)
    a = rng.integers(0, n_instr + 1) / n_instr  # per-prompt pass rates
    b = rng.integers(0, n_instr + 1) / n_instr
    r = paired_bootstrap(a, b, n_boot=300, seed=5, weights=n_instr)
    assert r["mean"] == pytest.approx(float(((a - b) * n_instr).sum() / n_instr.sum()))
    idx = np.random.default_rng(5).integers(0, 30, size=(300, 30))
    ref = []
    for row in idx:
        num = sum(float(n_instr[i]) * (float(a[i]) - float(b[i])) for i in row)
        ref.append(num / sum(float(n_instr[i]) for i in row))
    assert r["lo"] == pytest.approx(float(np.quantile(ref, 0.025)))
    assert r["hi"] == pytest.approx(float(np.quantile(ref, 0.975)))
    with pytest.raises(ValueError, match="2 weights; pair them first"):
        paired_bootstrap([1.0], [0.0], weights=[1, 2])
