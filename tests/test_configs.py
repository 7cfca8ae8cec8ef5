"""Every config-group option composes; every option that can run on CPU runs one tiny step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, compose_cfg, run_cfg


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


ALL = {
    g: _options(g)
    for g in (
        "model",
        "data",
        "sampler",
        "baseline",
        "reward",
        "pipeline",
        "sft",
        "recover",
        "dpr",
        "rloo",
        "continued_sft",
        "decode",
        "trainer",
        "logger",
        "callbacks",
        "debug",
    )
}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in ALL.items() for o in opts])
def test_every_option_composes(group: str, option: str, tmp_path: Path):
    extra = {
        "model/hf": ["model.path=/nonexistent"],
        "data/jsonl": ["data.path=x.jsonl"],
        "data/hf": ["data.name_or_path=x"],
    }
    cfg = compose_cfg([f"{group}={option}", *extra.get(f"{group}/{option}", [])], None)
    assert cfg[group] is not None if group not in ("debug", "experiment") else True
    assert "_target_" in cfg.model and all("_target_" in st for st in cfg.pipeline.stages.values())


def test_group_option_lists_are_the_documented_ones():
    assert ALL["baseline"] == ["base", "ensemble", "half_data", "sft_fraction", "sft_half", "uniform"]
    assert ALL["reward"] == ["log_ratio", "logprob", "soft_bellman", "sparse"]
    assert {"default", "sft", "recover", "dpr", "rloo", "continued_sft", "decode"} <= set(ALL["pipeline"])
    assert {"cpu", "gpu"} <= set(ALL["trainer"]) and {"csv", "wandb", "none"} <= set(ALL["logger"])


@pytest.mark.parametrize("baseline", ALL["baseline"])
@pytest.mark.parametrize("reward", ["log_ratio", "sparse"])
def test_every_baseline_scores(sft_run: Path, tmp_path: Path, baseline: str, reward: str):
    run_dir = tmp_path / "r"
    over = [
        "debug=tiny",
        "pipeline=recover",
        "recover.compare_all=false",
        f"baseline={baseline}",
        f"reward={reward}",
        f"parent_run={sft_run}",
    ]
    if baseline == "sft_fraction":
        over.append("baseline.fraction=0.75")
    run_cfg(over, run_dir)
    man = json.loads((run_dir / "manifest.json").read_text())
    assert man["stages"]["recover"]["baseline"] != "none"
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["recover/configured/probe/n"] > 0


@pytest.mark.parametrize("reward", ALL["reward"])
def test_every_reward_trains_one_dpr_step(sft_run: Path, tmp_path: Path, reward: str):
    run_dir = tmp_path / "d"
    run_cfg(
        ["debug=tiny", "pipeline=dpr", f"reward={reward}", "dpr.steps=1", f"parent_run={sft_run}"], run_dir
    )
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["dpr/train/steps"] == 1


@pytest.mark.parametrize("logger", ["csv", "none", "wandb"])
def test_loggers_run(tmp_path: Path, logger: str):
    run_dir = tmp_path / "l"
    run_cfg(
        ["debug=tiny", "pipeline=sft", f"logger={logger}", "callbacks.reward_recovery.enabled=false"], run_dir
    )
    if logger == "csv":
        assert (run_dir / "sft" / "csv" / "metrics.csv").exists()
    if logger == "wandb":
        assert list((run_dir / "sft").glob("wandb/offline-run-*/run-*.wandb"))


def test_hf_model_from_a_local_dir_runs(sft_run: Path, tmp_path: Path):
    run_dir = tmp_path / "h"
    run_cfg(
        [
            "debug=tiny",
            "pipeline=sft",
            "model=hf",
            f"model.path={sft_run / 'sft' / 'policy'}",
            "callbacks.reward_recovery.enabled=false",
        ],
        run_dir,
    )
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["sft/train/steps"] == 8


def test_tiny_models_under_one_million_params(tmp_path: Path):
    from densepath.models.tokenizer import symbol_tokenizer

    tok = symbol_tokenizer(list("ABCDEFGH"))
    for over in (["model=tiny"], ["debug=tiny"]):
        cfg = compose_cfg(over, None)
        model = instantiate(cfg.model).build(tok)
        assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_gpu_trainer_composes_with_bf16():
    cfg = compose_cfg(["trainer=gpu"], None)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"


def test_experiment_known_reward_runs_tiny(tmp_path: Path):
    run_dir = tmp_path / "kr"
    run_cfg(
        ["experiment=known_reward", "debug=tiny", "data.sizes={sft: 200, rl: 16, val: 16, eval: 16}"], run_dir
    )
    m = json.loads((run_dir / "metrics.json").read_text())
    assert "dpr/eval/sampled/true_return" in m and "continued_sft/eval/sampled/true_return" in m
    man = json.loads((run_dir / "manifest.json").read_text())
    assert man["stages"]["dpr"]["baseline"] == "none"


def test_known_reward_options_compose():
    """The broadened benchmark is data=known_reward's default; the reward table follows the run seed; the
    original single-prompt benchmark is one option away; experiment=known_reward_broad fixes its SFT budget."""
    cfg = OmegaConf.to_container(compose_cfg(["data=known_reward", "seed=3"], None), resolve=True)
    assert (
        cfg["data"]["reward_seed"] == 3 and cfg["data"]["starts"] == "all" and cfg["data"]["min_horizon"] == 4
    )
    single = OmegaConf.to_container(compose_cfg(["data=known_reward_single", "seed=3"], None), resolve=True)
    assert single["data"]["reward_seed"] == 0 and single["data"]["starts"] == "bos"
    assert single["data"]["min_horizon"] == single["data"]["horizon"] == 8
    broad = compose_cfg(["experiment=known_reward_broad", "data.demos=1000", "data.expert.epsilon=0.2"], None)
    assert broad.data._target_.endswith("KnownRewardTask") and broad.data.demos == 1000
    assert (
        list(broad.pipeline.stages) == ["sft", "decode"]
        and broad.sft.steps == 1200
        and broad.decode.policies == ["sft"]
    )
    assert compose_cfg(["experiment=known_reward"], None).data.starts == "bos"  # the committed studies' task


def test_controls_interpolate_dpr():
    """RLOO and continued SFT read DPR's settings by interpolation: matched by construction."""
    cfg = compose_cfg(
        ["dpr.module.lr=3e-6", "dpr.steps=17", "dpr.module.kl_coef=0.25", "dpr.module.k=4"], None
    )
    assert cfg.rloo.module.lr == 3e-6 and cfg.rloo.steps == 17
    assert cfg.rloo.module.kl_coef == 0.25 and cfg.rloo.module.k == 4
    assert cfg.rloo.module.sequence_level is True and cfg.dpr.module.sequence_level is False
    assert cfg.continued_sft.steps == 17 and cfg.continued_sft.k == 4
    assert cfg.continued_sft_seen.steps == 17 and cfg.continued_sft_seen.k == 4


@pytest.mark.parametrize("exp", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_decode_search_policies_are_decoded_policies(exp: str):
    """A study's `decode.search_policies` must be among its `decode.policies` (the stage refuses otherwise,
    after the training stages have run)."""
    cfg = compose_cfg([f"experiment={exp}"], None)
    search, policies = cfg.decode.get("search_policies"), cfg.decode.get("policies")
    if search is not None and policies is not None:
        assert set(search) <= set(policies), (exp, list(search), list(policies))


@pytest.mark.parametrize("exp", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_study_job_dirs_ignore_bookkeeping_overrides(exp: str):
    """A study whose job dirs are named by their overrides leaves `resume` and `threads` out of the name:
    otherwise `threads=1` (or a resume) starts a new job dir instead of finding the one already run."""
    raw = OmegaConf.load(CONF / "experiment" / f"{exp}.yaml")
    subdir = OmegaConf.to_container(raw).get("hydra", {}).get("sweep", {}).get("subdir")  # unresolved
    if subdir is None or "override_dirname" not in str(subdir):
        return
    exclude = OmegaConf.select(raw, "hydra.job.config.override_dirname.exclude_keys", default=[])
    assert {"experiment", "resume", "threads"} <= set(exclude), (exp, list(exclude))


def test_study_pipelines_run_both_continued_sft_controls():
    """experiment=main / beyond continue SFT on fresh and on seen demonstrations at the same settings;
    experiment=beyond_ratio is DPR on log_ratio from a parent run, then its own decoders."""
    for exp in ("main", "main_paths", "beyond"):
        cfg = compose_cfg([f"experiment={exp}", "continued_sft.module.lr=2e-4"], None)
        stages = list(cfg.pipeline.stages)
        assert stages.index("continued_sft") + 1 == stages.index("continued_sft_seen"), exp
        assert (cfg.continued_sft.demos, cfg.continued_sft_seen.demos) == ("fresh", "seen")
        assert cfg.continued_sft_seen.module.lr == 2e-4 and cfg.continued_sft_seen.module.loss == "nll"
        own = compose_cfg([f"experiment={exp}", "continued_sft_seen.module.lr=1e-5"], None)
        assert own.continued_sft_seen.module.lr == 1e-5 and own.continued_sft.module.lr != 1e-5
        assert cfg.pipeline.stages.continued_sft_seen._target_.endswith("ContinuedSFTStage")
    beyond = compose_cfg(["experiment=beyond"], None)
    assert beyond.data._target_.endswith("KnownRewardTask") and beyond.data.starts == "all"  # broadened
    assert beyond.sft.half_data is True and beyond.reward._target_.endswith("LogProb")
    ratio = compose_cfg(["experiment=beyond_ratio", "baseline=half_data"], None)
    assert list(ratio.pipeline.stages) == ["dpr", "decode", "comparison"]
    assert ratio.reward._target_.endswith("LogRatio") and list(ratio.decode.policies) == ["dpr"]
    assert compose_cfg(["experiment=main_paths"], None).data.families == ["path"]
    hp = compose_cfg(["experiment=hacking_paths", "seed=3"], None)
    assert hp.data.families == ["path"] and hp.parent_run == "outputs/studies/main_paths/seed3"
    assert list(hp.pipeline.stages) == ["dpr"] and hp.dpr.steps == 60
    hi = compose_cfg(["experiment=hacking_instruct", "seed=2"], None)
    assert hi.parent_run == "outputs/studies/instruct/seed2" and list(hi.pipeline.stages) == ["dpr"]
    assert (
        hi.dpr.watch_every == 4 and hi.evalset._target_.endswith("IFBenchSet") and hi.dpr.module.kl == "none"
    )


def test_decoding_settings_have_one_home():
    """max_new_tokens / temperature / top_p live in the sampler only: no other node holds them."""
    cfg = OmegaConf.to_container(compose_cfg(["experiment=known_reward"], None), resolve=True)
    cfg.pop("sampler")
    cfg.pop("hydra", None)

    def keys(node, prefix=""):  # leaf keys only
        for k, v in node.items():
            if isinstance(v, dict):
                yield from keys(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    found = [k for k in keys(cfg) if k.rsplit(".", 1)[-1] in ("max_new_tokens", "temperature", "top_p")]
    # the known-reward demonstrator's temperature is task design (how the expert is tempered), not decoding
    assert found == ["data.expert.temperature"], found


def test_task_with_a_horizon_refuses_longer_rollouts(tmp_path: Path):
    with pytest.raises(ValueError, match=r"sampler.max_new_tokens=12 exceeds the horizon.*at most 9 tokens"):
        run_cfg(["debug=tiny", "data=known_reward", "pipeline=sft"], tmp_path / "r")
    assert not (tmp_path / "r" / "sft" / "policy").exists()  # refused before training


def test_layer_contract_holds():
    """`lint-imports` (import-linter, contract in pyproject.toml): every import points down a layer."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    out = subprocess.run([exe], capture_output=True, text=True, cwd=CONF.parent, check=False)
    assert out.returncode == 0 and "1 kept, 0 broken" in out.stdout, out.stdout + out.stderr
