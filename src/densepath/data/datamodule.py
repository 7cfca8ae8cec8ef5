"""Demonstration datasets and collation into the project's padded layout."""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from densepath.data.formatting import Encoded, encode_many
from densepath.sampling.base import left_pad, right_pad

log = logging.getLogger(__name__)


class DemoDataset(Dataset):
    def __init__(self, encoded: list[Encoded]):
        self.items = encoded

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Encoded:
        return self.items[i]


class Collator:
    """Prompt LEFT-padded, response RIGHT-padded (the layout of `generate` and of the scorers)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        p, pm = left_pad([it.prompt_ids for it in items], self.pad_id)
        r, rm = right_pad([it.response_ids for it in items], self.pad_id)
        return {"prompt_ids": p, "prompt_mask": pm, "response_ids": r, "response_mask": rm}


def _source(row: dict) -> str:
    """Where a row came from (file + line for chat data), so an over-long row can be found and fixed."""
    src = (row.get("meta") or {}).get("source") if isinstance(row, dict) else None
    return f" (from {src})" if src else ""


def encode_demonstrations(tokenizer, task, rows: list[dict]) -> list[Encoded]:
    """Tokenize rows with their demonstrations (no length checks). A row that `data.overlong=truncate`
    cut (`meta["truncated"]`) gets no EOS: the text was cut there, the answer did not end there."""
    enc = encode_many(tokenizer, [(task.messages(r), r["response"]) for r in rows])
    for r, e in zip(rows, enc):
        if isinstance(r, dict) and (r.get("meta") or {}).get("truncated"):
            if e.response_ids[-1:] == [tokenizer.eos_token_id]:
                e.response_ids = e.response_ids[:-1]
            e.truncated = True
    return enc


def encode_rows(
    tokenizer, task, rows: list[dict], max_prompt_len: int, max_response_len: int, split: str
) -> list[Encoded]:
    """Tokenize demonstration rows; over-long rows are an error that names the row and the fix.

    A row that `data.overlong=truncate` cut (`meta["truncated"]`) keeps at most `max_response_len`
    response tokens and no EOS, so the model is not taught to stop where the text was cut.
    """
    if not rows:
        raise ValueError(f"data split `{split}` is empty: there is nothing to train or evaluate on")
    enc = encode_demonstrations(tokenizer, task, rows)
    for e in enc:
        if e.truncated:  # re-tokenising the cut text may not give the same count: keep to the limit
            e.response_ids = e.response_ids[:max_response_len]
    for i, e in enumerate(enc):
        if len(e.prompt_ids) > max_prompt_len:
            raise ValueError(
                f"data split `{split}` row {i}: prompt is {len(e.prompt_ids)} tokens, over "
                f"data.max_prompt_len={max_prompt_len}{_source(rows[i])}; raise data.max_prompt_len or "
                "shorten the prompt"
            )
        if len(e.response_ids) > max_response_len:
            raise ValueError(
                f"data split `{split}` row {i}: response is {len(e.response_ids)} tokens, over "
                f"data.max_response_len={max_response_len}{_source(rows[i])}; raise "
                "data.max_response_len or drop the row"
            )
    return enc


class DemoDataModule(L.LightningDataModule):
    """SFT demonstrations (`sft` split) and held-out demonstrations for the validation loss (`val`)."""

    def __init__(self, train: list[Encoded], val: list[Encoded], pad_id: int, batch_size: int, seed: int):
        super().__init__()
        self.train_set, self.val_set = DemoDataset(train), DemoDataset(val)
        self.collate = Collator(pad_id)
        self.batch_size = batch_size
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        from densepath.data.loader import ResumableLoader

        # order = f(seed, epoch); position saved in checkpoints: exact mid-epoch resume
        return ResumableLoader(self.train_set, self.batch_size, self.seed, collate_fn=self.collate)

    def val_dataloader(self) -> DataLoader:
        # own generator: iterator creation must not draw from the global RNG (exact resume)
        return DataLoader(
            self.val_set,
            batch_size=256,
            shuffle=False,
            collate_fn=self.collate,
            num_workers=0,
            generator=torch.Generator().manual_seed(self.seed),
        )
