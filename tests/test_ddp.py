"""DPR under DDP: 2 ranks (ddp_spawn, gloo, CPU) give the same update as 1 rank on the union batch.

Sampling is replaced by a fixed table of responses (generation is random per rank); everything else
(scoring with the frozen DenseReward, reward-to-go, per-rank LOO groups, whitening and token-count
reductions across ranks, the loss, DDP gradient averaging, the optimiser step) is the real code path.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from densepath.algos.rl import RLModule
from densepath.data.formatting import encode_prompt
from densepath.data.loader import ResumableLoader
from densepath.models.io import load_policy
from densepath.rewards.baselines import SnapshotBaseline
from densepath.rewards.dense import DenseReward
from densepath.rewards.formulations import LogRatio
from densepath.sampling.base import SampleBatch
from densepath.sampling.hf import HFSampler

N_PROMPTS, K = 4, 2
# spawn pickles the module's tensors through shared memory; fd passing fails for some storages in
# sandboxes, the file-system strategy works everywhere
torch.multiprocessing.set_sharing_strategy("file_system")


class FixedSampleRL(RLModule):
    """RLModule whose sampler is a fixed table: prompt i -> its k precomputed responses."""

    def __init__(self, *args, table: SampleBatch, **kwargs):
        super().__init__(*args, **kwargs)
        self.table = table

    def sample(self, prompt_idx):
        rows = torch.tensor([i * K + j for i in prompt_idx for j in range(K)])
        t = self.table
        return SampleBatch(
            t.prompt_ids[rows],
            t.prompt_mask[rows],
            t.response_ids[rows],
            t.response_mask[rows],
            t.finished[rows],
            K,
        )


def _build(sft_run: Path, norm: str, whiten: bool):
    from densepath.data.toy import make_splits

    sft_dir = sft_run / "sft"
    policy, tok = load_policy(sft_dir / "policy")
    reward = DenseReward.load(LogRatio(), SnapshotBaseline(0.5), sft_dir, tok, torch.device("cpu"))
    rows = make_splits(0, {"sft": 8, "rl": N_PROMPTS, "val": 1, "eval": 1})["rl"]
    prompts = [encode_prompt(tok, [{"role": "user", "content": r.prompt}]) for r in rows]
    sampler = HFSampler(max_new_tokens=8).configure(tok)
    torch.manual_seed(0)
    table = sampler.generate(policy, prompts, k=K)  # ragged lengths: EOS at different positions
    mod = FixedSampleRL(
        policy,
        reward,
        sampler,
        prompts,
        k=K,
        lr=1.0,
        optimizer="sgd",
        grad_clip=1e9,
        kl="k3",
        kl_coef=0.5,
        norm=norm,
        whiten=whiten,
        table=table,
    )
    return mod


def _train(mod, devices: int, prompts_per_rank: int):
    strategy = DDPStrategy(start_method="spawn", process_group_backend="gloo") if devices > 1 else "auto"
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_steps=1,
        logger=False,
        precision="32-true",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    loader = ResumableLoader(list(range(N_PROMPTS)), prompts_per_rank, seed=3)
    trainer.fit(mod, train_dataloaders=loader)
    return {k: v.detach().clone() for k, v in mod.policy.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("norm,whiten", [("seq_mean", False), ("token_mean", False), ("seq_mean", True)])
def test_two_ranks_equal_one_rank_on_the_union_batch(sft_run: Path, norm: str, whiten: bool):
    start = {k: v.clone() for k, v in _build(sft_run, norm, whiten).policy.state_dict().items()}
    one = _train(_build(sft_run, norm, whiten), devices=1, prompts_per_rank=N_PROMPTS)
    two = _train(_build(sft_run, norm, whiten), devices=2, prompts_per_rank=N_PROMPTS // 2)
    moved = max((one[k] - start[k]).abs().max().item() for k in one)
    assert moved > 1e-4  # the step did something
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=f"{k} ({norm}, whiten={whiten})")


def test_ranks_get_disjoint_equal_shares(monkeypatch):
    from densepath.data.loader import ResumableSampler

    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(ResumableSampler, "_rank_world", staticmethod(lambda r=rank: (r, 2)))
        s = ResumableSampler(9, seed=1)
        shares.append(list(s))
        assert len(s) == 4
    assert not set(shares[0]) & set(shares[1]) and len(shares[0]) == len(shares[1]) == 4


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora_shared_base"])
def test_trainer_ddp_cpu_runs_sft_and_dpr(tmp_path: Path, lora: bool):
    """Under DDP too; with LoRA, DPR trains on the shared base: DDP wraps the module after the adapter
    flags are set, so it reduces exactly the policy adapter's gradients (asserted every step)."""
    import json

    from conftest import run_cfg

    run_dir = tmp_path / "ddp"
    lora_args = ["model.lora={enabled:true,r:4,alpha:8,target_modules:[q_proj,v_proj]}"] if lora else []
    run_cfg(
        [
            *lora_args,
            "debug=tiny",
            "trainer=ddp_cpu",
            "pipeline=sft",
            "+stage@pipeline.stages.dpr=dpr",
            "sft.batch_size=4",
            "dpr.prompts_per_step=1",
        ],
        run_dir,
    )
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["sft/train/steps"] == 8 and m["dpr/train/steps"] == 2
    assert "sft/recovery/probe/detection_rate" in m and m["dpr/val/best_step"] >= 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert ("shared_base" in manifest) == lora
    snaps = manifest["stages"]["sft"]["snapshots"]
    assert snaps["0.50"]["samples_seen"] == 4 * 4 * 2  # step 4 x per-rank batch 4 x 2 ranks
