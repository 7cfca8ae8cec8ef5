"""Token reward heatmaps: one self-contained HTML page showing the dense reward on each token.

Why: the dense reward is only convincing if you can see it land on the right tokens (e.g. the
corrupted one). No JS and no network references, so the page opens anywhere.

Colours diverge red (negative) -> white (0) -> blue (positive), normalised by a robust max |r|
over the page (95th percentile of finite |r|); values beyond it saturate. Hovering a token shows
``{token!r}: {reward:.3f}``.
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
.prompt { color: #888; white-space: pre-wrap; margin-right: 0.6em; }
.tok { white-space: pre; padding: 0 1px; border-radius: 2px; }
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


def _token_span(token: str, reward: float, scale: float) -> str:
    title = html.escape(f"{token!r}: {reward:.3f}", quote=True)
    return f'<span class="tok" style="{_style(reward, scale)}" title="{title}">{html.escape(token, quote=True)}</span>'


def _legend(scale: float) -> str:
    cells = "".join(
        f'<span style="{_style(v, scale)}">{v:+.3f}</span>'
        for v in (-scale, -scale / 2, 0.0, scale / 2, scale)
    )
    return f'<div class="legend">reward: {cells} (saturates beyond)</div>'


def token_heatmap_html(rows: list[dict], title: str = "") -> str:
    """Render rows ``{"prompt", "tokens", "rewards", "label"}`` as a self-contained HTML heatmap."""
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
        prompt = html.escape(str(row.get("prompt", "")), quote=True)
        label = html.escape(str(row.get("label", "")), quote=True)
        body.append(
            f'<div class="row"><span class="prompt">{prompt}</span>{spans}<span class="label">{label}</span></div>'
        )
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
