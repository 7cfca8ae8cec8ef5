"""Token reward heatmaps: one self-contained HTML page showing the dense reward on each token.

Why: the dense reward is only convincing if you can see it land on the right tokens (e.g. the
corrupted one). No JS and no network references, so the page opens anywhere.

Colours diverge red (negative) -> white (0) -> blue (positive), normalised by a robust max |r|
over the page (95th percentile of finite |r|); values beyond it saturate. Hovering a token shows
``{token!r}: {reward:.3f}``.

Tokens are shown as the text they stand for (``token_strings``: no byte-level ``Ġ``/``Ċ`` or
SentencePiece ``▁`` markers), with whitespace made visible (a faint ``·`` per space, ``⏎`` per newline,
``⇥`` per tab). Each row's prompt is collapsed in a ``<details>`` element, its first line as summary.
"""

from __future__ import annotations

import html
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from densepath.rewards.artefact import atomic_write

log = logging.getLogger(__name__)

ROBUST_PERCENTILE: float = 95.0

_CSS = """
body { font-family: sans-serif; margin: 1.5em; }
.row { font-family: monospace; margin: 0.35em 0; line-height: 1.9; }
details.prompt { color: #888; font-size: 0.9em; }
details.prompt summary { cursor: pointer; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
details.prompt .ptext { white-space: pre-wrap; margin: 0.2em 0 0.3em 1.2em; }
.tok { white-space: pre; padding: 0 1px; border-radius: 2px; }
.ws { opacity: 0.35; font-style: normal; }
.label { color: #444; margin-left: 0.8em; font-style: italic; }
.legend span { display: inline-block; padding: 2px 8px; font-family: monospace; }
"""


def robust_scale(rewards: Sequence[Sequence[float]]) -> float:
    """Robust max |r|: the 95th percentile of finite |r|, falling back to max, then 1.

    Why: a single extreme token would otherwise make every other token look white.
    """
    flat = np.asarray([float(v) for row in rewards for v in row], dtype=np.float64)
    flat = np.abs(flat[np.isfinite(flat)])
    if flat.size == 0:
        return 1.0
    return float(np.percentile(flat, ROBUST_PERCENTILE)) or float(flat.max()) or 1.0


def reward_rgb(reward: float, scale: float) -> tuple[int, int, int]:
    """Diverging colour: red for negative, white at 0, blue for positive; grey for NaN."""
    if math.isnan(reward):
        return (200, 200, 200)
    s = max(-1.0, min(1.0, reward / scale))
    fade = int(round(255 * (1.0 - abs(s))))
    return (255, fade, fade) if s < 0 else (fade, fade, 255)


def _style(reward: float, scale: float) -> str:
    r, g, b = reward_rgb(reward, scale)
    text = "#fff" if (r + g + b) < 380 else "#000"  # keep text readable on saturated cells
    return f"background-color: rgb({r}, {g}, {b}); color: {text}"


_WS_GLYPHS = {" ": "·", "\n": "⏎", "\t": "⇥", "\r": "␍"}
_BPE_MARKERS = str.maketrans({"Ġ": " ", "Ċ": "\n", "ĉ": "\t", "▁": " "})  # byte-level BPE / SentencePiece
SUMMARY_CHARS = 100


def token_strings(tokenizer, ids, context: int = 4) -> list[str]:
    """The text each token id stands for, in order (special tokens as their literal strings).

    Why not ``decode([id])``: SentencePiece-style decoders drop the leading space of the first token
    of a decode call, and a byte-level token can be half a UTF-8 character. So token i is the text
    that decoding it after its ``context`` predecessors adds (one batched decode call per row). A
    token that is only part of a character shows as the replacement character U+FFFD, which the
    next token completes; an empty result (a lone leading ``▁``) falls back to the raw token with
    its BPE marker read as whitespace.
    """
    ids = [int(i) for i in ids]
    windows = [
        w for i in range(len(ids)) for w in (ids[max(0, i - context) : i], ids[max(0, i - context) : i + 1])
    ]
    texts = tokenizer.batch_decode(windows, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    raw = tokenizer.convert_ids_to_tokens(ids)
    out = []
    for i in range(len(ids)):
        before, after = texts[2 * i].rstrip("\ufffd"), texts[2 * i + 1]
        piece = after[len(before) :] if after.startswith(before) else tokenizer.decode([ids[i]])
        out.append(piece or str(raw[i]).translate(_BPE_MARKERS))
    return out


def _visible(text: str) -> str:
    """HTML-escaped text with each whitespace character shown as a faint glyph."""
    return "".join(
        f'<i class="ws">{_WS_GLYPHS[c]}</i>' if c in _WS_GLYPHS else html.escape(c, quote=True) for c in text
    )


def _token_span(token: str, reward: float, scale: float) -> str:
    title = html.escape(f"{token!r}: {reward:.3f}", quote=True)
    return f'<span class="tok" style="{_style(reward, scale)}" title="{title}">{_visible(token)}</span>'


def _prompt_block(prompt: str) -> str:
    """The prompt collapsed under its first line (``<details>``), or nothing when there is none."""
    if not prompt:
        return ""
    first = prompt.strip().splitlines()[0] if prompt.strip() else prompt
    more = len(first) > SUMMARY_CHARS or first != prompt.strip()
    summary = html.escape(first[:SUMMARY_CHARS] + ("…" if more else ""), quote=True)
    text = html.escape(prompt, quote=True)
    return f'<details class="prompt"><summary>prompt: {summary}</summary><div class="ptext">{text}</div></details>'


def _legend(scale: float) -> str:
    cells = "".join(
        f'<span style="{_style(v, scale)}">{v:+.3f}</span>'
        for v in (-scale, -scale / 2, 0.0, scale / 2, scale)
    )
    return f'<div class="legend">reward: {cells} (saturates beyond)</div>'


def token_heatmap_html(rows: list[dict], title: str = "") -> str:
    """Render rows ``{"prompt", "tokens", "rewards", "label"}`` as a self-contained HTML heatmap.

    ``tokens`` are display strings (``token_strings`` makes them from ids); ``prompt`` and ``label``
    are optional, and an empty or missing one renders nothing.
    """
    for i, row in enumerate(rows):
        if missing := [k for k in ("tokens", "rewards") if k not in row]:
            raise ValueError(
                f"heatmap row {i} has no {missing[0]!r}; each row needs 'tokens' and 'rewards' lists."
            )
        if len(row["tokens"]) != len(row["rewards"]):
            raise ValueError(
                f"heatmap row {i} has {len(row['tokens'])} tokens but {len(row['rewards'])} rewards; "
                "pass one reward per token."
            )
    scale = robust_scale([row["rewards"] for row in rows])
    body = []
    for row in rows:
        spans = "".join(_token_span(str(t), float(v), scale) for t, v in zip(row["tokens"], row["rewards"]))
        prompt = _prompt_block(str(row.get("prompt") or ""))
        label = html.escape(str(row.get("label") or ""), quote=True)
        body.append(f'<div class="row">{prompt}{spans}<span class="label">{label}</span></div>')
    esc_title = html.escape(title, quote=True)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{esc_title}</title><style>{_CSS}</style></head><body>\n"
        f"<h2>{esc_title}</h2>\n{_legend(scale)}\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_heatmap(path: str | os.PathLike, rows: list[dict], title: str = "") -> Path:
    text = token_heatmap_html(rows, title)
    path = atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    log.info("wrote token heatmap with %d rows to %s", len(rows), path)
    return path
