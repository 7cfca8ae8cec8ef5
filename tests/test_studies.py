"""The study reports of experiments/<study>/report.py and the gradvar probe on hand-made sweeps and runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from densepath.sweeps.stats import min_detectable_effect, t_interval
from experiments.ablations.report import report_ablations
from experiments.hacking.report import read_curves
from experiments.main.report import report_main


def _job(root: Path, name: str, overrides: list[str], metrics: dict) -> None:
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "DONE").write_text("")


def test_main_report_tables_and_plot(tmp_path: Path):
    sweep = tmp_path / "sweep"
    vals = {"sft": [0.30, 0.35, 0.32], "dpr": [0.31, 0.37, 0.36]}
    for s in range(3):
        m = {}
        for p, v in vals.items():
            m[f"{p}/eval/sampled/success"] = v[s]
            m[f"{p}/eval/greedy/success"] = v[s] + 0.2
            m[f"{p}/eval/sampled/add/success"] = v[s] / 2
        m["decode/sft/best/success"] = 0.5
        m["decode/sft/eval/beam4/success"] = 0.5  # SFT ran beams: its "best decoder (val)" row is shown
        _job(sweep, f"seed{s}", ["experiment=main", f"seed={s}"], m)
        (sweep / f"seed{s}" / "decode").mkdir()
        (sweep / f"seed{s}" / "decode" / "manifest.json").write_text(json.dumps({"chosen": {"sft": "beam4"}}))
    (sweep / "seed9" / ".hydra").mkdir(parents=True)  # unfinished: listed, not counted
    (sweep / "seed9" / ".hydra" / "overrides.yaml").write_text("- seed=9\n")
    out = tmp_path / "out"
    report_main(sweep, out)
    md = (out / "results.md").read_text()
    mean, half = t_interval(vals["dpr"])
    assert f"| dpr sampled T=1 | 3 | {mean:.3f} ± {half:.3f} |" in md
    d = np.array(vals["dpr"]) - np.array(vals["sft"])
    assert f"| dpr sampled T=1 | 3 | {d.mean():.3f} |" in md  # paired vs sft sampled
    assert "seed9" in md and (out / "main.png").stat().st_size > 0
    assert "| sft best decoder (val) | 3 | 0.500" in md
    assert "sft: beam4, beam4, beam4" in md


def test_gradvar_runs_on_a_tiny_sft_run(sft_run: Path, tmp_path: Path):
    import shutil

    from experiments.main import gradvar

    run = tmp_path / "run"
    shutil.copytree(sft_run, run)
    (run / ".hydra").mkdir(exist_ok=True)
    from omegaconf import OmegaConf

    from conftest import compose_cfg

    OmegaConf.save(compose_cfg(["debug=tiny"], tmp_path), run / ".hydra" / "config.yaml")
    assert (
        gradvar.main(
            [
                str(run),
                "--batches",
                "3",
                "--prompts",
                "2",
                "--k",
                "2",
                "--max-new-tokens",
                "6",
                "--out",
                str(tmp_path / "gv"),
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "gv" / "gradvar.json").read_text())
    assert set(res) == {e[0] for e in gradvar.ESTIMATORS}
    for r in res.values():
        assert r["noise"] >= 0 and -1 <= r["cos_verifier"] <= 1 and math.isfinite(r["signal"])
    assert res["verifier rloo"]["cos_verifier"] == pytest.approx(1.0) or res["verifier rloo"]["noise"] == 0


def test_ablations_report_pairs_by_seed_and_finds_the_parent_sft(tmp_path: Path):
    parent_root = tmp_path / "beyond"
    for s in range(3):
        (parent_root / f"seed{s}").mkdir(parents=True)
        (parent_root / f"seed{s}" / "metrics.json").write_text(
            json.dumps({"sft/eval/sampled/true_return": 5.0 + s, "sft/eval/greedy/true_return": 10.0})
        )
    sweep = tmp_path / "abl"
    ref = [1.0, 2.0, 3.0]
    alt = [4.0, 4.5, 7.0]
    for s in range(3):
        for name, vals, extra in (("ref", ref, []), ("alt", alt, ["reward=logprob"])):
            d = sweep / f"{name}{s}"
            _job(
                sweep,
                f"{name}{s}",
                ["experiment=ablate", *extra, f"seed={s}"],
                {"dpr/eval/sampled/true_return": vals[s], "dpr/eval_last/sampled/true_return": vals[s] - 1},
            )
            (d / ".hydra" / "config.yaml").write_text(f"seed: {s}\nparent_run: {parent_root}/seed${{seed}}\n")
    out = tmp_path / "out"
    report_ablations(sweep, out)
    md = (out / "results.md").read_text()
    assert "SFT (the starting point): sampled 6.000" in md  # parents' mean of 5, 6, 7
    d = np.array(alt) - np.array(ref)
    mean, half = t_interval(d)
    assert f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]" in md
    mde = min_detectable_effect(float(d.std(ddof=1)), 3, alpha=0.05)  # one comparison: Holm level 0.05 / 1
    assert f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}] | 0.0" in md and f"| {mde:.3f} |" in md
    assert (out / "ablations.png").stat().st_size > 0


def test_ablations_report_compares_k1_and_k3_at_measured_kl_and_flags_step_zero(tmp_path: Path):
    sweep = tmp_path / "abl"
    kl = {("k1", "0.1"): 2.0, ("k1", "1.0"): 0.5, ("k3", "0.1"): 1.0, ("k3", "1.0"): 0.2}
    for s in range(3):
        _job(sweep, f"ref{s}", ["experiment=ablate", f"seed={s}"], {"dpr/eval/sampled/true_return": 1.0 + s})
        for (kind, coef), k in kl.items():
            m = {
                "dpr/eval/sampled/true_return": 1.0 + s,
                "dpr/eval_last/sampled/true_return": 2.0 + s + k,
                "dpr/eval_last/sampled/kl_exact": k + 0.1 * s,
                "dpr/val/best_step": 0 if coef == "1.0" else 100,
            }
            ov = ["experiment=ablate", f"dpr.module.kl={kind}", f"dpr.module.kl_coef={coef}", f"seed={s}"]
            _job(sweep, f"{kind}_{coef}_{s}", ov, m)
    out = tmp_path / "out"
    report_ablations(sweep, out)
    md = (out / "results.md").read_text()
    kx, ky = t_interval([2.0, 2.1, 2.2]), t_interval([4.0, 5.0, 6.0])
    assert (
        f"| k1 | 0.1 | 3 | {kx[0]:.3f} ± {kx[1]:.3f} | 2.10 | {ky[0]:.3f} ± {ky[1]:.3f} "
        "| (2.00, 4.00), (2.10, 5.00), (2.20, 6.00) |"
    ) in md  # median KL and every seed's (KL, return), paired by seed
    assert "| k3 | 1 | 3 |" in md
    assert "step 0 (SFT itself) in most seeds** for `dpr.module.kl=k1,dpr.module.kl_coef=1.0`" in md
    flagged = next(line for line in md.splitlines() if "step 0 (SFT itself)" in line)
    assert "kl_coef=0.1" not in flagged and "(reference)" not in flagged  # best at step 100: not flagged


def test_read_curves_takes_the_logged_training_rows(tmp_path: Path):
    d = tmp_path / "job" / "dpr" / "csv"
    d.mkdir(parents=True)
    (d / "metrics.csv").write_text(
        "step,train/reward,train/true_success,val/success\n0,1.5,0.25,\n1,2.5,0.5,\n1,,,0.4\n"
    )
    c = read_curves(tmp_path / "job")
    assert c["step"].tolist() == [0.0, 1.0] and c["train/reward"].tolist() == [1.5, 2.5]
    assert c["train/true_success"].tolist() == [0.25, 0.5]


def _decode_metrics(p: str, table: dict[str, tuple[float, float, float]]) -> dict:
    """decode/<p>/{val,eval}/<decoder>/success and cost from {decoder: (val, eval, cost)}; keys sorted, as
    metrics.json stores them."""
    m = {}
    for d, (v, e, c) in table.items():
        m[f"decode/{p}/val/{d}/success"] = v
        m[f"decode/{p}/eval/{d}/success"] = e
        m[f"decode/{p}/val/{d}/cost"] = c
        m[f"decode/{p}/eval/{d}/cost"] = c
    return dict(sorted(m.items()))


def _frontier_jobs() -> list[dict]:
    jobs = []
    for s in range(3):
        m = _decode_metrics(
            "sft",
            {
                "greedy": (0.50, 0.40, 10.0),
                "T0.5": (0.60, 0.45 + 0.01 * s, 10.0),  # the best single decode on val
                "T1": (0.30, 0.35, 10.0),
                "beam4": (0.90, 0.60, 40.0),
                "beam16": (0.95, 0.70, 160.0),
            },
        )
        m.update(_decode_metrics("dpr", {"greedy": (0.7, 0.55 + 0.02 * s, 9.0), "T1": (0.7, 0.9, 11.0)}))
        m["decode/dpr/greedy_same_as_mode"] = 0.25
        jobs.append({"seed": str(s), "metrics": m, "dir": Path(f"seed{s}")})
    return jobs


def test_once_choice_takes_the_best_single_decode_on_val_with_ties_to_the_cheaper():
    from experiments.report_common import cost_to_match, frontier, once_choice, once_rows

    jobs = _frontier_jobs()
    assert once_rows(jobs, "sft", "success") == pytest.approx({"0": 0.45, "1": 0.46, "2": 0.47})
    # dpr: greedy and T1 tie on val (0.7): the cheaper (greedy, 9 < 11) is taken, not T1's better eval
    assert once_choice(jobs, "dpr", "success")["1"] == ("greedy", pytest.approx(0.57), 9.0)
    front = frontier(jobs, "sft", "success")
    assert [r["decoder"] for r in front] == ["T0.5", "T1", "greedy", "beam4", "beam16"]  # by cost, then name
    # dpr once: mean 0.57; beam4 (0.60, cost 40) is the cheapest sft decoder at or above it
    assert cost_to_match(front, 0.57)["decoder"] == "beam4"
    assert cost_to_match(front, 0.71) is None
    assert cost_to_match(front, 0.45, higher_is_better=False)["decoder"] == "T1"  # lower is better: 0.35
    # a tie on val and cost goes to greedy (the stage's first decoder), although "T0.5" sorts before it
    tie = [
        {"seed": "0", "metrics": _decode_metrics("p", {"T0.5": (0.7, 0.1, 8.0), "greedy": (0.7, 0.2, 8.0)})}
    ]
    assert once_choice(tie, "p", "success")["0"] == ("greedy", 0.2, 8.0)
    from densepath.stages.decode import choose

    assert choose({"greedy": 0.7, "T0.5": 0.7}, {"greedy": 8.0, "T0.5": 8.0}) == "greedy"


def test_frontier_md_reports_the_matching_cost_and_the_share_of_mode_answers():
    from experiments.report_common import frontier_md

    md, data = frontier_md(_frontier_jobs(), "success")
    text = "\n".join(md)
    assert "first match `dpr` decoded once at cost 40.0 per answer** (beam4: 0.600 ≥ 0.570), 4.4×" in text
    assert "| sft beam4 | 40.0 | 0.600 ± 0.000 | yes |" in text
    assert "| sft T0.5 | 10.0 |" in text and "| no |" in text
    assert "identical to `sft`'s widest-beam answer: 0.250" in text
    assert data["once_cost"]["mean"] == 9.0
    # no sft decoder reaches it: said so, with the best one
    jobs = _frontier_jobs()
    for j in jobs:
        j["metrics"]["decode/dpr/eval/greedy/success"] = 0.99
    text = "\n".join(frontier_md(jobs, "success")[0])
    assert "No decoder of `sft` reaches `dpr` decoded once** (the best: beam16, 0.700 at cost 160.0)" in text


def test_compare_pairs_is_holm_adjusted_against_scipy():
    from scipy import stats

    from experiments.report_common import compare_pairs

    rows = {
        "a": {"0": 1.0, "1": 1.3, "2": 1.1, "3": 1.6},
        "b": {"0": 0.5, "1": 0.6, "2": 0.9, "3": 0.7},
        "c": {"0": 0.9, "1": 1.0, "2": 1.2, "3": 1.1},
    }
    comps = compare_pairs(rows, [("a", "b"), ("a", "c"), ("a", "missing")])
    assert [c["name"] for c in comps] == ["a − b", "a − c"]  # a pair without rows is left out
    p = [stats.ttest_rel(list(rows["a"].values()), list(rows[r].values())).pvalue for r in ("b", "c")]
    assert [c["p"] for c in comps] == pytest.approx(p)
    lo, hi = sorted(range(2), key=lambda i: p[i])
    assert comps[lo]["p_holm"] == pytest.approx(min(1, 2 * p[lo]))
    assert comps[hi]["p_holm"] == pytest.approx(max(min(1, 2 * p[lo]), p[hi]))
    assert all(c["alpha_holm"] == 0.025 for c in comps)


def test_beyond_report_pairs_every_arm_by_seed_within_each_condition(tmp_path: Path):
    from experiments.beyond.report import report_beyond

    study = tmp_path / "beyond"
    sft = [7.0, 7.5, 8.0]
    dpr = [8.0, 8.8, 9.1]
    ratio = {"sft_half": [7.1, 7.4, 8.3], "half_data": [6.9, 7.7, 8.0]}
    for s in range(3):
        m = {
            "sft/eval/expert_true_return": 5.0 + s,
            "sft/eval/best_true_return": 10.0 + s,
            "sft/time_s": 3600.0,
        }
        for p, v in (("sft", sft[s]), ("dpr", dpr[s]), ("continued_sft", sft[s] + 0.1)):
            m[f"decode/{p}/val/greedy/true_return"] = v
            m[f"decode/{p}/eval/greedy/true_return"] = v
            m[f"decode/{p}/eval/greedy/cost"] = 7.0
        m["decode/sft/val/beam4/true_return"] = sft[s] + 0.5
        m["decode/sft/eval/beam4/true_return"] = sft[s] + 0.5
        m["decode/sft/eval/beam4/cost"] = 30.0
        m["decode/sft/best/true_return"] = sft[s] + 0.5
        _job(study / "soft", f"seed{s}", ["experiment=beyond", f"seed={s}"], m)
        for b, v in ratio.items():
            r = {"decode/dpr/val/greedy/true_return": v[s], "decode/dpr/eval/greedy/true_return": v[s]}
            r["decode/dpr/eval/greedy/cost"] = 7.0
            ov = ["experiment=beyond_ratio", f"seed={s}", f"baseline={b}", "parent_run=x/seed${seed}"]
            _job(study / "soft" / "ratio", f"baseline={b},seed={s}", ov, r)
    out = tmp_path / "out"
    report_beyond(study, out)
    md = (out / "results.md").read_text()
    d = np.array(dpr) - np.array(sft)
    m_, h = t_interval(d)
    assert f"| soft | 3 | 6.000 ± 2.484 | {np.mean(sft):.3f} ±" in md  # expert 5, 6, 7
    assert f"| {m_:.3f} [{m_ - h:.3f}, {m_ + h:.3f}] |" in md
    for b, v in ratio.items():
        dm, dh = t_interval(np.array(v) - np.array(sft))
        assert (
            f"| dpr log_ratio@{b} once (val) − sft once (val) | 3 | {dm:.3f} | [{dm - dh:.3f}, {dm + dh:.3f}]"
            in md
        )
    # dpr once (8.633) > sft beam4 (8.0): no sft decoder matches; wall time 3 jobs x 1 h
    assert "none of SFT's decoders" in md and "Wall time: 3.00 h" in md
    assert (out / "beyond.png").stat().st_size > 0


def test_main_report_asks_the_question_dpr_once_against_sft_once_and_both_controls(tmp_path: Path):
    sweep = tmp_path / "sweep"
    for j in _frontier_jobs():
        m = dict(j["metrics"])
        s = int(j["seed"])
        for p, v in (("continued_sft", 0.44), ("continued_sft_seen", 0.43 + 0.02 * s), ("rloo", 0.5)):
            m.update(_decode_metrics(p, {"greedy": (0.5, v, 10.0)}))
        for p in ("sft", "dpr", "continued_sft", "continued_sft_seen", "rloo"):
            m[f"{p}/eval/sampled/success"] = 0.3
            m[f"{p}/val/best_step"] = 0 if p == "continued_sft_seen" else 50
        _job(sweep, f"seed{s}", ["experiment=main", f"seed={s}"], m)
    out = tmp_path / "out"
    report_main(sweep, out)
    md = (out / "results.md").read_text()
    dpr, sft, seen = np.array([0.55, 0.57, 0.59]), np.array([0.45, 0.46, 0.47]), np.array([0.43, 0.45, 0.47])
    for ref, vals in (("sft", sft), ("continued_sft_seen", seen)):
        dm, dh = t_interval(dpr - vals)
        assert f"| dpr once (val) − {ref} once (val) | 3 | {dm:.3f} | [{dm - dh:.3f}, {dm + dh:.3f}] |" in md
    assert "Holm over 4)" in md  # sft, continued_sft, continued_sft_seen, rloo
    assert "first match `dpr` decoded once at cost 40.0" in md
    assert "Step 0 was best on `val` in most seeds for continued_sft_seen**" in md


def _ifbench_results(passes: list[bool], instr: list[list[bool]]) -> str:
    rows = []
    for i, (p, ins) in enumerate(zip(passes, instr)):
        rows.append(
            {
                "key": str(i),
                "instruction_id_list": [f"count:x{j}" for j in range(len(ins))],
                "strict": ins,
                "loose": ins,
                "unscorable": [],
                "prompt_strict": p,
                "prompt_loose": p,
            }
        )
    rows.append(  # an unscorable prompt: left out of every pair
        {
            "key": "u",
            "instruction_id_list": ["words:start_verb"],
            "strict": [None],
            "loose": [None],
            "unscorable": ["words:start_verb"],
            "prompt_strict": None,
            "prompt_loose": None,
        }
    )
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_instruct_report_pairs_by_prompt_with_mcnemar_and_over_seeds(tmp_path: Path):
    from densepath.sweeps.stats import mcnemar, paired_bootstrap
    from experiments.instruct.report import report_instruct

    sweep = tmp_path / "instruct"
    # 10 prompts; DPR passes prompts 0-5 in every seed, SFT 0-2 plus seed-dependent extras
    dpr_pass = [i < 6 for i in range(10)]
    sft_pass = {s: [i < 3 or i == 9 - s for i in range(10)] for s in range(3)}
    for s in range(3):
        m = {}
        for p, passes in (("dpr", dpr_pass), ("sft", sft_pass[s])):
            m[f"evalset/{p}/ifbench/prompt_loose"] = float(np.mean(passes))
            m[f"evalset/{p}/ifbench/instruction_loose"] = float(np.mean(passes))
            m[f"evalset/{p}/ifbench/cost"] = 100.0
            m[f"{p}/eval/nll"] = 2.0 - (0.01 * s if p == "dpr" else 0.0)
        _job(sweep, f"seed{s}", ["experiment=instruct", f"seed={s}"], m)
        for p, passes in (("dpr", dpr_pass), ("sft", sft_pass[s])):
            d = sweep / f"seed{s}" / "evalset" / p
            d.mkdir(parents=True)
            (d / "results.jsonl").write_text(_ifbench_results(passes, [[x] for x in passes]))
    out = tmp_path / "out"
    report_instruct(sweep, out)
    md = (out / "results.md").read_text()
    # seed 0: SFT passes 0-2 and 9; DPR 0-5: DPR only = 3 (3, 4, 5), SFT only = 1 (9)
    r0 = mcnemar(dpr_pass, sft_pass[0])
    assert (r0["a_only"], r0["b_only"]) == (3, 1)
    b0 = paired_bootstrap(
        [float(x) for x in dpr_pass], [float(x) for x in sft_pass[0]], n_boot=10_000, seed=0
    )
    assert (
        f"| sft | 0 | 10 | 3 | 1 | 20.0 | {r0['p']:.3f} | {r0['p']:.3f} | 20.0 [{100 * b0['lo']:.1f}, "
        f"{100 * b0['hi']:.1f}] |" in md
    )
    # pooled: each prompt's pass averaged over the 3 seeds, bootstrapped over the 10 prompts
    a = np.array(dpr_pass, dtype=float)
    b = np.mean([np.array(sft_pass[s], dtype=float) for s in range(3)], axis=0)
    pooled = paired_bootstrap(a, b)
    assert f"| sft | pooled | 10 | - | - | {100 * pooled['mean']:.1f} [{100 * pooled['lo']:.1f}, " in md
    assert f"{100 * pooled['hi']:.1f}] | {pooled['p']:.3f} |" in md
    # over seeds: prompt loose 60% vs 40% in every seed: no test, said so
    assert "| dpr − sft | 3 | 20.000 | [20.000, 20.000] | every seed gives this difference: no test |" in md
    nll = np.array([-0.0, -0.01, -0.02])
    m_, h = t_interval(nll)
    assert f"| dpr − sft | 3 | {m_:.4f} | [{m_ - h:.4f}, {m_ + h:.4f}] |" in md
    assert (out / "instruct.png").stat().st_size > 0 and "nan" not in md.lower()


def test_hacking_report_reads_the_real_text_watch(tmp_path: Path):
    from experiments.hacking.report import report_hacking

    sweep = tmp_path / "hi"
    for s in range(2):
        _job(sweep, f"seed={s}", ["experiment=hacking_instruct", f"seed={s}"], {})
        rows = [
            {"step": t, "reward": 1.0 + t + s, "prompt_loose": 0.5 - 0.02 * t, "n": 16}
            for t in (0, 4, 8, 12, 16)
        ]
        (sweep / f"seed={s}" / "dpr").mkdir()
        (sweep / f"seed={s}" / "dpr" / "watch.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    report_hacking(sweep, out)
    md = (out / "results.md").read_text()
    # first fifth (step 0) -> last fifth (step 16): reward 1.5 -> 17.5, pass rate 0.50 -> 0.18
    assert "| 2 | 0, 1 | 1.500 ± 6.353 → 17.500 ± 6.353 | 0.500 ± 0.000 → 0.180 ± 0.000 |" in md
    # the setting sentence is the real-text one, not the toy study's (60 steps x 16 prompts x 8 samples)
    assert "IFBench prompt-level pass rate" in md and "60 steps" not in md
    assert (out / "hacking.png").stat().st_size > 0


def test_test_cells_name_zero_variance_instead_of_a_p_value():
    from experiments.report_common import test_cells

    c = {"p": 0.01, "p_holm": 0.04, "mde": 0.25}
    assert test_cells(c) == "0.040 | 0.250"
    assert test_cells(c, unadjusted=True) == "0.010 | 0.040 | 0.250"
    z = {"zero_variance": True, "p": 0.0, "p_holm": 0.0, "mde": 0.0}
    assert test_cells(z) == "every seed gives this difference: no test | -"
    assert test_cells(z, unadjusted=True) == "every seed gives this difference: no test | - | -"


def test_identical_share_counts_equal_answers_over_common_prompts(tmp_path: Path):
    from experiments.instruct.report import identical_share

    def write(job: Path, policy: str, answers: dict[str, str]) -> None:
        d = job / "evalset" / policy
        d.mkdir(parents=True)
        rows = [{"prompt": q, "response": r} for q, r in answers.items()]
        (d / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    jobs = [{"dir": tmp_path / "seed0"}, {"dir": tmp_path / "seed1"}, {"dir": tmp_path / "seed2"}]
    write(jobs[0]["dir"], "dpr", {"a": "x", "b": "y", "c": "z"})
    write(jobs[0]["dir"], "sft@beam4", {"a": "x", "b": "Y", "c": "z", "d": "w"})  # d: not answered by dpr
    write(jobs[1]["dir"], "dpr", {"a": "p"})
    write(jobs[1]["dir"], "sft@beam4", {"a": "q"})
    # seed2 has no beam answers: not compared
    write(jobs[2]["dir"], "dpr", {"a": "p"})
    assert identical_share(jobs, "dpr", "sft@beam4") == (2, 4, ["2/3", "0/1"])
