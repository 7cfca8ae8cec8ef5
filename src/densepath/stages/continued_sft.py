"""Compute-matched controls: SFT continued from pi_SFT, on `fresh` demonstrations (new ones from the
task: more information) or on `seen` ones (only demonstrations the SFT run actually consumed: more
compute, no new information); `continued_sft.demos` chooses, the manifest records it.

Same number of optimiser steps as the DPR run it is compared with (read from that run; else
`continued_sft.steps`, which interpolates `dpr.steps`), about the same number of trained tokens (the
batch size is chosen to match at run time), at SFT's final learning rate (constant) unless
`continued_sft.module.lr` is set. The same stage, named `dft` (node `dft`), is the DFT control: the
continuation on `seen` demonstrations with the DFT loss (`module.loss: dft`, algos/sft.py).
"""

from __future__ import annotations

import json
import logging
import random

import numpy as np
from hydra.utils import instantiate

from densepath.data.datamodule import DemoDataModule, encode_rows
from densepath.data.loader import consumed_indices
from densepath.eval.extras import RewardExtra
from densepath.models.adapters import shared_base_for
from densepath.models.device import device_for
from densepath.models.factory import prepare_policy
from densepath.models.io import load_policy, save_policy
from densepath.stages.base import FitSetup, TrainingStage, compute
from densepath.stages.common import build_sampler, report_best_and_last
from densepath.stages.rl import load_reward, selection_callback

log = logging.getLogger(__name__)


def dpr_compute(ctx) -> tuple[int, float] | None:
    """(optimiser steps, trained tokens) of the DPR run in this run dir or the parent run."""
    if "dpr/train/steps" in ctx.metrics:
        return int(ctx.metrics["dpr/train/steps"]), float(ctx.metrics["dpr/train/trained_tokens"])
    try:
        c = json.loads((ctx.artefact_dir("dpr") / "manifest.json").read_text())["compute"]
        return int(c["optimiser_steps"]), float(c["trained_tokens"])
    except (FileNotFoundError, KeyError):
        return None


class ContinuedSFTStage(TrainingStage):
    policy_dir = "best"
    seen_pool: int | None = None  # demos=seen: how many demonstrations SFT consumed (the pool drawn from)

    def setup(self, ctx) -> FitSetup:
        cfg, node, dcfg = ctx.cfg, ctx.cfg[self.name], ctx.cfg.data
        task, tok = ctx.task, ctx.tokenizer
        sft_dir = ctx.artefact_dir("sft")
        sft_man = json.loads((sft_dir / "manifest.json").read_text())
        # LoRA SFT: pi_SFT's own adapter (frozen) on its base plus a fresh one, as DPR's policy; else the
        # merged pi_SFT (float32) with a fresh LoRA, or full fine-tuning
        device = device_for(cfg.trainer)
        shared = shared_base_for(sft_dir, cfg.model, device, None, node.get("shared_base", "auto"))
        if shared is not None:
            policy = shared.model
        else:
            policy = prepare_policy(load_policy(sft_dir / "policy")[0], cfg.model, device, start=False)
        self.matched = dpr_compute(ctx)
        draw = self._seen_draw(ctx, sft_man) if node.demos == "seen" else task.fresh_demonstrations
        probe = encode_rows(
            tok, task, draw(256, cfg.seed + 1), dcfg.max_prompt_len, dcfg.max_response_len, node.demos
        )
        mean_len = float(np.mean([len(e.response_ids) for e in probe]))
        if self.matched is None:
            steps = int(node.steps)
            target_tokens = steps * node.prompts_per_step * node.k * mean_len
            log.warning("no DPR run to match: %d steps of prompts_per_step*k demonstrations each", steps)
        else:
            steps, target_tokens = self.matched
        self.batch_size = max(1, round(target_tokens / max(1, steps) / mean_len))
        self.target_tokens = target_tokens
        rows = draw(steps * self.batch_size, cfg.seed + 2)
        train = encode_rows(tok, task, rows, dcfg.max_prompt_len, dcfg.max_response_len, self.name)
        val = encode_rows(
            tok,
            task,
            task.splits()["val"][: cfg.sft.val_loss_size],
            dcfg.max_prompt_len,
            dcfg.max_response_len,
            "val",
        )
        self.lr = float(
            node.module.lr or sft_man.get("final_lr", cfg.sft.module.lr * cfg.sft.module.min_lr_ratio)
        )
        module = instantiate(node.module, _partial_=True)(policy, lr=self.lr, max_steps=steps)
        self.selection = selection_callback(ctx, node, build_sampler(ctx), ctx.stage_dir(self.name), "model")
        return FitSetup(
            module=module,
            max_steps=steps,
            data={"datamodule": DemoDataModule(train, val, tok.pad_token_id, self.batch_size, cfg.seed)},
            callbacks=[self.selection],
            trainer_kwargs={"limit_val_batches": 0},
        )

    def _seen_draw(self, ctx, sft_man: dict):
        """n demonstrations drawn (seeded) only from those the SFT run consumed, by index."""
        if "data_order" not in sft_man:
            raise ValueError(
                f"continued_sft.demos=seen: the SFT run at {ctx.artefact_dir('sft')} did not record its data "
                "order (run it again with this version), or use continued_sft.demos=fresh"
            )
        pool = sorted(set(consumed_indices(**sft_man["data_order"])))
        sft_rows = ctx.task.splits()["sft"]
        self.seen_pool, self.drawn = len(pool), []

        def draw(n: int, seed: int) -> list[dict]:
            rng = random.Random(seed)
            idx = rng.sample(pool, n) if n <= len(pool) else rng.choices(pool, k=n)
            self.drawn = idx
            return [sft_rows[i] for i in idx]

        return draw

    def report(self, ctx, fs: FitSetup, metrics: dict):
        stage_dir, sel = ctx.stage_dir(self.name), self.selection
        last = save_policy(fs.module.model, ctx.tokenizer, stage_dir / "last")
        more = {
            "train/generated_tokens": 0.0,
            "train/batch_size": float(self.batch_size),
            "train/lr": self.lr,
            "train/matched_tokens_target": float(self.target_tokens),
            "val/best": sel.best_value,
            "val/best_step": float(sel.best_step),
        }
        best_model = load_policy(stage_dir / "best")[0]
        try:
            reward = load_reward(ctx, device_for(ctx.cfg.trainer))
        except (FileNotFoundError, ValueError) as e:
            log.warning("no reward model for the report (%s)", e)
            reward = None
        self.policy_dir, m = report_best_and_last(
            ctx,
            self.name,
            ctx.cfg[self.name],
            sel,
            {"best": best_model, "last": fs.module.model},
            lambda model: RewardExtra(reward, model) if reward is not None else None,
            int(metrics["train/steps"]),
        )
        more.update(m)
        manifest = {
            "policy": str(stage_dir / self.policy_dir),
            "checkpoints": {"best": {"path": str(stage_dir / "best"), "step": sel.best_step}, "last": last},
            "parent_sft": str(ctx.artefact_dir("sft")),
            "reported_checkpoint": self.policy_dir,
            "loss": ctx.cfg[self.name].module.get("loss", "nll"),
            "matched_to_dpr": self.matched is not None,
            "demos": ctx.cfg[self.name].demos,
            **(
                {"seen_pool": self.seen_pool, "demo_indices": self.drawn}
                if self.seen_pool is not None
                else {}
            ),
            "compute": compute({**metrics, "train/generated_tokens": 0}),
        }
        return more, manifest
