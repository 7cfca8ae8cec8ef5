"""DPR's shared base (models/adapters.py): the policy and both frozen scorers as LoRA adapters on one base.

Checked against today's path (separate merged copies): rewards and log pi_SFT to 1e-4 relative with a
float32 base, for every baseline that has a model; only the policy adapter trains; the saved DPR policy
(merged) scores as the live one; bf16 base within bf16 tolerance; config errors name the fix.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from conftest import compose_cfg, run_cfg
from densepath.models.adapters import BARE, SharedBase, adapter_dir, resolve_base_dtype
from densepath.models.io import load_policy, save_policy
from densepath.models.logprobs import response_logprobs
from densepath.rewards.builder import build_on_shared_base, build_reward

LORA = "model.lora={enabled:true,r:4,alpha:8,dropout:0.0,target_modules:[q_proj,k_proj,v_proj,o_proj]}"


@pytest.fixture(scope="module")
def lora_sft(tmp_path_factory) -> Path:
    """A tiny LoRA SFT run (float32 base) with a half snapshot and a half-data model."""
    run = tmp_path_factory.mktemp("lora_sft") / "run"
    run_cfg(
        [
            "debug=tiny",
            "pipeline=sft",
            LORA,
            "model.base_dtype=float32",
            "sft.snapshot_fractions=[0.5]",
            "sft.half_data=true",
            "sft.module.lr=3e-2",
        ],
        run,
    )
    return run


def _cfg(run: Path, *extra: str):
    return compose_cfg(["debug=tiny", LORA, "model.base_dtype=float32", f"parent_run={run}", *extra])


def _batch(tok, k=2, seed=0):
    """Two prompts x k random responses (prompt-major), left-padded prompts, right-padded responses."""
    g = torch.Generator().manual_seed(seed)
    V = len(tok)
    p = torch.randint(5, V, (2, 6), generator=g)
    pm = torch.ones(2, 6, dtype=torch.long)
    pm[0, :2] = 0
    p = torch.where(pm.bool(), p, torch.full_like(p, tok.pad_token_id))
    r = torch.randint(5, V, (2 * k, 5), generator=g)
    rm = (torch.arange(5)[None] < torch.tensor([5, 3, 4, 1])[: 2 * k, None]).long()
    return p.repeat_interleave(k, 0), pm.repeat_interleave(k, 0), r * rm, rm


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def test_sft_saves_adapters_beside_merged_copies(lora_sft: Path):
    sft = lora_sft / "sft"
    for d in (sft / "policy", sft / "snapshots" / "frac_0.50", lora_sft / "sft_half_data" / "policy"):
        assert adapter_dir(d) is not None and (d / "config.json").exists(), d
    # the merged copy is base + adapter: the same scores as the base with the adapter on top
    from peft import PeftModel

    base = load_policy(sft / "snapshots" / "base")[0]
    merged, tok = load_policy(sft / "policy")
    stacked = PeftModel.from_pretrained(base, str(adapter_dir(sft / "policy"))).eval()
    batch = _batch(tok)
    with torch.no_grad():
        a, b = response_logprobs(merged, *batch).logp, response_logprobs(stacked, *batch).logp
        bare = response_logprobs(load_policy(sft / "snapshots" / "base")[0], *batch).logp
    assert _rel(b, a) < 1e-4 and _rel(bare, a) > 1e-3


@pytest.mark.parametrize("baseline", ["sft_half", "base", "half_data", "uniform", None])
def test_shared_scoring_equals_separate_merged_copies(lora_sft: Path, baseline):
    extra = ["reward=logprob"] if baseline is None else ["reward=log_ratio", f"baseline={baseline}"]
    cfg = _cfg(lora_sft, *extra)
    sft_dir = lora_sft / "sft"
    tok = load_policy(sft_dir / "policy")[1]
    sep = build_reward(cfg.reward, cfg.baseline, sft_dir, tok, torch.device("cpu"))
    shared, rew = build_on_shared_base(cfg.reward, cfg.baseline, sft_dir, tok, "cpu", cfg.model, "true")
    assert shared.dtype == torch.float32 and rew.describe()["baseline"] == sep.describe()["baseline"]
    batch = _batch(tok)
    for group in (1, 2):
        a, b = sep.score_full(*batch, group=group), rew.score_full(*batch, group=group)
        assert _rel(b.logp_sft, a.logp_sft) < 1e-4, group
        assert _rel(b.rewards, a.rewards) < 1e-4, group
    if baseline not in (None, "uniform"):
        assert _rel(sep.score(*batch), sep.score_full(*batch).logp_sft) > 1e-3  # pi_base is not pi_SFT
    shared.assert_trainable()


def test_only_the_policy_adapter_trains_and_set_adapter_is_caught(lora_sft: Path):
    cfg = _cfg(lora_sft, "reward=log_ratio", "baseline=sft_half")
    sft_dir = lora_sft / "sft"
    tok = load_policy(sft_dir / "policy")[1]
    shared, rew = build_on_shared_base(cfg.reward, cfg.baseline, sft_dir, tok, "cpu", cfg.model, "auto")
    train = [n for n, p in shared.model.named_parameters() if p.requires_grad]
    assert train and all(".policy." in n and "lora_" in n for n in train)
    assert all(p.dtype == torch.float32 for n, p in shared.model.named_parameters() if "lora_" in n)
    # the policy starts at pi_SFT: a fresh adapter adds zero
    batch = _batch(tok)
    with torch.no_grad():
        lp_policy = response_logprobs(shared.model.eval(), *batch).logp
    assert _rel(lp_policy, rew.score_full(*batch).logp_sft) < 1e-5
    # the policy's gradient reaches the policy adapter only
    shared.model.zero_grad()
    response_logprobs(shared.model, *batch).logp.sum().backward()
    got = {n for n, p in shared.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got and got <= set(train)
    shared.model.set_adapter("sft")  # peft: also makes the sft adapter trainable
    with pytest.raises(RuntimeError, match="trainable parameters changed"):
        shared.assert_trainable()


def test_saved_dpr_policy_is_the_live_policy(lora_sft: Path, tmp_path: Path):
    cfg = _cfg(lora_sft, "reward=log_ratio", "baseline=sft_half")
    sft_dir = lora_sft / "sft"
    tok = load_policy(sft_dir / "policy")[1]
    shared, _ = build_on_shared_base(cfg.reward, cfg.baseline, sft_dir, tok, "cpu", cfg.model, "true")
    with torch.no_grad():  # move the policy adapter off zero
        for n, p in shared.model.named_parameters():
            if ".policy." in n:
                p.add_(0.05 * torch.randn_like(p))
    save_policy(shared.model, tok, tmp_path / "p")
    assert adapter_dir(tmp_path / "p") is None  # two adapters in the policy: merged copy only
    merged = load_policy(tmp_path / "p")[0]
    batch = _batch(tok)
    with torch.no_grad():
        live = response_logprobs(shared.model.eval(), *batch).logp
        saved = response_logprobs(merged, *batch).logp
    assert _rel(saved, live) < 1e-4
    assert sorted(shared.model.peft_config) == ["baseline", "policy", "sft"]  # saving changed nothing live


def test_bf16_base_scores_close_to_float32_copies(lora_sft: Path):
    cfg = _cfg(lora_sft, "reward=log_ratio", "baseline=sft_half", "model.base_dtype=bfloat16")
    sft_dir = lora_sft / "sft"
    tok = load_policy(sft_dir / "policy")[1]
    sep = build_reward(cfg.reward, cfg.baseline, sft_dir, tok, torch.device("cpu"))
    shared, rew = build_on_shared_base(cfg.reward, cfg.baseline, sft_dir, tok, "cpu", cfg.model, "true")
    base_w = [p for n, p in shared.model.named_parameters() if "lora_" not in n]
    assert all(p.dtype == torch.bfloat16 for p in base_w)
    batch = _batch(tok)
    a, b = sep.score_full(*batch), rew.score_full(*batch, group=2)
    assert b.logp_sft.dtype == torch.float32
    assert float((a.logp_sft - b.logp_sft).abs().max()) < 0.1  # bf16 rounding, not another model


def test_config_errors_name_the_fix(lora_sft: Path, sft_run: Path):
    sft_dir = lora_sft / "sft"
    tok = load_policy(sft_dir / "policy")[1]
    cfg = _cfg(lora_sft, "reward=log_ratio", "baseline=sft_half", "reward.dtype=bfloat16")
    with pytest.raises(ValueError, match=r"reward.dtype=bfloat16 .*reward.dtype=null"):
        build_on_shared_base(cfg.reward, cfg.baseline, sft_dir, tok, "cpu", cfg.model, "auto")
    cfg = _cfg(lora_sft, "reward=log_ratio", "baseline=ensemble", "baseline.fractions=[0.5]")
    assert build_on_shared_base(cfg.reward, cfg.baseline, sft_dir, tok, "cpu", cfg.model, "auto") is None
    with pytest.raises(ValueError, match="ensemble"):
        build_on_shared_base(cfg.reward, cfg.baseline, sft_dir, tok, "cpu", cfg.model, "true")
    full = compose_cfg(["debug=tiny", f"parent_run={sft_run}"])  # full fine-tuning: separate copies
    with pytest.raises(ValueError, match="lora.enabled=false"):
        build_on_shared_base(full.reward, full.baseline, sft_run / "sft", tok, "cpu", full.model, "true")
    with pytest.raises(ValueError, match="base_dtype"):
        resolve_base_dtype("float16", "cpu")


def test_dpr_and_continued_sft_run_on_the_shared_base(lora_sft: Path, tmp_path: Path):
    run = tmp_path / "dpr"
    run_cfg(
        [
            "debug=tiny",
            LORA,
            "model.base_dtype=float32",
            "pipeline=dpr",
            "+stage@pipeline.stages.continued_sft=continued_sft",
            "continued_sft.demos=seen",
            f"parent_run={lora_sft}",
            "dpr.module.micro_batch=1",
            "dpr.steps=3",
        ],
        run,
    )
    man = json.loads((run / "manifest.json").read_text())
    assert man["shared_base"]["adapters"] == ["sft", "baseline", "policy"]
    m = json.loads((run / "metrics.json").read_text())
    assert m["dpr/train/steps"] == 3 and torch.isfinite(torch.tensor(m["dpr/train/reward_last"]))
    assert (run / "dpr" / "last" / "config.json").exists() and (run / "continued_sft" / "last").exists()


class _GradCapture:
    """A stand-in optimiser: `step` records the gradients it would apply."""

    def __init__(self, model, into: dict):
        self.model, self.into = model, into

    def zero_grad(self, set_to_none=True):
        pass

    def step(self):
        self.into.update({n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None})


def test_micro_batches_give_the_one_pass_update(lora_sft: Path):
    """`micro_batch` (prompts per backward) sums to the same gradient as one pass over the step's batch."""
    from densepath.algos.rl import RLModule
    from densepath.sampling.base import SampleBatch

    cfg = _cfg(lora_sft, "reward=log_ratio", "baseline=sft_half")
    sft_dir = lora_sft / "sft"
    tok = load_policy(sft_dir / "policy")[1]
    pid, pm, rid, rm = _batch(tok)
    fixed = SampleBatch(pid, pm, rid, rm, finished=torch.ones(4, dtype=torch.bool), k=2)

    class Fixed:
        temperature, top_p = 1.0, 1.0

        def generate(self, model, prompts, k):
            return fixed

        def sync_weights(self, model):
            pass

    grads = []
    for mb in (None, 1):
        torch.manual_seed(0)  # the fresh policy adapter's init draws from it
        shared, rew = build_on_shared_base(cfg.reward, cfg.baseline, sft_dir, tok, "cpu", cfg.model, "true")
        with torch.no_grad():
            for n, p in shared.model.named_parameters():
                if ".policy." in n:
                    p.add_(0.05 * torch.randn_like(p))
        mod = RLModule(
            shared.model, rew, Fixed(), [[1], [2]], k=2, micro_batch=mb, kl="k3", optimizer="sgd", lr=0.0
        )
        captured = {}
        opt = _GradCapture(shared.model, captured)
        mod.optimizers = functools.partial(lambda o: o, opt)
        mod.manual_backward = lambda loss: loss.backward()
        mod.log_dict = mod.log = lambda *a, **k: None
        shared.model.zero_grad()
        mod.training_step(torch.tensor([0, 1]), 0)
        grads.append(captured)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        assert _rel(grads[1][n], grads[0][n]) < 1e-4, n
    assert BARE == "__base__" and isinstance(shared, SharedBase)
