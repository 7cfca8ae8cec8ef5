"""The RL stages: DPR (dense reward-to-go) and RLOO (sequence-level), sharing every code path.

A stage named `dpr` reads the `dpr` node, one named `rloo` the `rloo` node (whose values interpolate
DPR's, so the control stays matched); `<node>.module` is the RLModule, built by Hydra.
"""

from __future__ import annotations

from hydra.utils import instantiate

from densepath.callbacks.evalset_watch import EvalSetWatch
from densepath.callbacks.samples import SampleTableCallback
from densepath.callbacks.val_eval import ValEvalCallback, ValHeadline
from densepath.data.formatting import encode_prompt
from densepath.data.loader import ResumableLoader
from densepath.eval.evalsets import build_evalset
from densepath.eval.extras import RewardExtra
from densepath.eval.verifier import Verifier
from densepath.models.device import autocast_for, autocast_kind, device_for
from densepath.models.factory import prepare_policy
from densepath.models.io import load_policy, save_policy
from densepath.rewards.builder import build_on_shared_base, build_reward
from densepath.stages.base import FitSetup, TrainingStage, compute
from densepath.stages.common import build_sampler, report_best_and_last


def load_reward(ctx, device):
    """The configured DenseReward on this run's (or the parent run's) SFT artefacts; recorded in the manifest."""
    reward = build_reward(ctx.cfg.reward, ctx.cfg.baseline, ctx.artefact_dir("sft"), ctx.tokenizer, device)
    ctx.manifest["reward"] = reward.describe()
    ctx.manifest["baseline"] = reward.baseline_name
    return reward


def policy_and_reward(ctx, node, device):
    """The trainable policy (pi_SFT + a fresh LoRA, or pi_SFT itself under full fine-tuning), the reward,
    and the shared base they live on (None: separate copies). `<node>.shared_base`: auto | true | false."""
    cfg, sft_dir = ctx.cfg, ctx.artefact_dir("sft")
    built = build_on_shared_base(
        cfg.reward, cfg.baseline, sft_dir, ctx.tokenizer, device, cfg.model, node.get("shared_base", "auto")
    )
    if built is None:
        policy = prepare_policy(load_policy(sft_dir / "policy")[0], cfg.model, device, start=False)
        return policy, load_reward(ctx, device), None
    shared, reward = built
    ctx.manifest["reward"] = reward.describe()
    ctx.manifest["baseline"] = reward.baseline_name
    ctx.manifest["shared_base"] = shared.describe()
    return shared.model.to(device), reward, shared


def selection_callback(ctx, node, sampler, stage_dir, model_attr: str) -> ValEvalCallback:
    """Checkpoint selection on `val` every `<node>.selection_every` steps, on `<node>.selection_size`
    prompts; the best checkpoint goes to `<stage_dir>/best`."""
    rows = ctx.task.splits()["val"][: node.selection_size]
    headline = ValHeadline(ctx.task, ctx.tokenizer, sampler, rows, autocast_kind(ctx.cfg.trainer))
    return ValEvalCallback(
        headline, node.selection_every, stage_dir, ctx.tokenizer, ctx.task.headline, model_attr
    )


class RLStage(TrainingStage):
    policy_dir = "best"

    def setup(self, ctx) -> FitSetup:
        cfg, node = ctx.cfg, ctx.cfg[self.name]
        self.device = device_for(cfg.trainer)
        policy, self.reward, shared = policy_and_reward(ctx, node, self.device)
        sampler = build_sampler(ctx)
        rows = ctx.task.splits()["rl"]
        prompts = [encode_prompt(ctx.tokenizer, ctx.task.messages(r)) for r in rows]
        module = instantiate(node.module, _partial_=True)(
            policy,
            self.reward,
            sampler,
            prompts,
            verify=Verifier(ctx.tokenizer, ctx.task, rows),
            check_params=shared.assert_trainable if shared is not None else None,
        )
        self.selection = selection_callback(ctx, node, sampler, ctx.stage_dir(self.name), "policy")
        loader = ResumableLoader(list(range(len(prompts))), node.prompts_per_step, cfg.seed)
        samples = SampleTableCallback(
            ctx.tokenizer, ctx.stage_dir(self.name) / "samples", node.sample_table_every, ctx.tracking
        )
        callbacks = [self.selection, samples]
        if int(node.get("watch_every") or 0) > 0:
            callbacks.append(self._watch(ctx, node, sampler))
        return FitSetup(
            module=module,
            max_steps=node.steps,
            data={"train_dataloaders": loader},
            callbacks=callbacks,
            trainer_kwargs={"gradient_clip_val": None},
            parents=("recover", "sft"),
        )

    def _watch(self, ctx, node, sampler) -> EvalSetWatch:
        """`<stage>.watch_every`: the reward-hacking watch on the run's `evalset` (callbacks/evalset_watch.py)."""
        if ctx.cfg.get("evalset") is None:
            raise ValueError(
                f"{self.name}.watch_every={node.watch_every} needs an evaluation set to watch: add evalset=ifbench "
                f"(or set {self.name}.watch_every=0)"
            )
        es = build_evalset(ctx.cfg.evalset)
        records = es.records()[: int(node.get("watch_prompts") or 16)]
        es.check(records)
        prompts = [encode_prompt(ctx.tokenizer, es.messages(r)) for r in records]
        out = ctx.stage_dir(self.name) / "watch.jsonl"
        return EvalSetWatch(
            es,
            ctx.tokenizer,
            prompts,
            records,
            sampler,
            self.reward,
            node.watch_every,
            out,
            autocast=lambda: autocast_for(ctx.cfg.trainer),
        )

    def report(self, ctx, fs: FitSetup, metrics: dict):
        stage_dir, sel = ctx.stage_dir(self.name), self.selection
        last = save_policy(fs.module.policy, ctx.tokenizer, stage_dir / "last")
        more = {"val/best": sel.best_value, "val/best_step": float(sel.best_step)}
        for k, v in fs.trainer.callback_metrics.items():
            if k.startswith("train/"):
                more[f"{k}_last"] = float(v)
        # final report: the reported checkpoint (best-val, or the last one on chat data) on eval, the other beside it
        best_model = load_policy(stage_dir / "best")[0].to(self.device)
        self.policy_dir, m = report_best_and_last(
            ctx,
            self.name,
            ctx.cfg[self.name],
            sel,
            {"best": best_model, "last": fs.module.policy.to(self.device)},
            lambda model: RewardExtra(self.reward, model),
            int(metrics["train/steps"]),
        )
        more.update(m)
        manifest = {
            "policy": str(stage_dir / self.policy_dir),
            "checkpoints": {"best": {"path": str(stage_dir / "best"), "step": sel.best_step}, "last": last},
            "reported_checkpoint": self.policy_dir,
            "reward": self.reward.describe(),
            "baseline": self.reward.baseline_name,
            "parent_sft": str(ctx.artefact_dir("sft")),
            "val_history": sel.history,
            "compute": compute(metrics),
        }
        return more, manifest
