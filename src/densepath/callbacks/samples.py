"""Every N RL steps: a sample table (prompt, response, verifier result, reward) and a per-token
reward / advantage heatmap, written under `<stage>/samples/` and logged to wandb when active."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from densepath.eval.heatmap import token_strings, write_heatmap


class SampleTableCallback(L.Callback):
    def __init__(self, tokenizer, out_dir: Path, every_n_steps: int, tracking=None):
        self.tok, self.out_dir = tokenizer, Path(out_dir)
        self.every, self.tracking = int(every_n_steps), tracking

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        s = getattr(pl_module, "last_samples", None)
        if self.every <= 0 or s is None or not trainer.is_global_zero or s["step"] % self.every:
            return
        table, heat = [], []
        for i in range(s["response_ids"].shape[0]):
            L_ = int(s["response_mask"][i].sum())
            ids = s["response_ids"][i, :L_].tolist()
            prompt_ids = s["prompt_ids"][i][s["prompt_mask"][i].bool()].tolist()
            prompt, text = (self.tok.decode(x, skip_special_tokens=True) for x in (prompt_ids, ids))
            truth = {k: v[i] for k, v in s["truth"].items()}
            r, a = s["rewards"][i, :L_], s["advantages"][i, :L_]
            table.append([s["step"], prompt, text, str(truth), float(r.sum())])
            toks = token_strings(self.tok, ids)  # readable text, not byte-level BPE pieces (Ġ, Ċ)
            label = f"reward sum {float(r.sum()):.2f}" + (
                f" {truth}" if truth else ""
            )  # no verifier: no "{}"
            heat.append({"prompt": prompt, "tokens": toks, "rewards": r.tolist(), "label": label})
            heat.append({**heat[-1], "prompt": "", "rewards": a.tolist(), "label": "advantages"})
        title = f"RL samples at step {s['step']}: reward / advantage per token"
        path = write_heatmap(self.out_dir / f"step_{s['step']:05d}.html", heat, title=title)
        if self.tracking is not None:
            self.tracking.log_table("samples", ["step", "prompt", "response", "verifier", "reward"], table)
            self.tracking.log_html("samples/heatmap", path)
