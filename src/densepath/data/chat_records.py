"""Chat rows from raw records: validation of one record (`parse_record`) and of a JSONL file
(`read_jsonl`). Every error names the source (file + line, or dataset + row + column) and the fix;
:mod:`densepath.data.chat` carves the rows into splits and fits them to the length limits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
ROW_HINT = 'each row needs "messages" or "prompt"+"response"'


def _check_messages(value: Any, where: str, col: str) -> list[dict]:
    """A well-formed conversation ending with a non-empty assistant answer, or a named error."""
    if not isinstance(value, list) or not value:
        raise ValueError(
            f'{where}: "{col}" must be a non-empty list of {{"role", "content"}} objects, '
            f"got {type(value).__name__}"
        )
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            raise ValueError(
                f'{where}: "{col}"[{j}] must be an object with "role" and "content", got {type(m).__name__}'
            )
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f'{where}: "{col}"[{j}].role is {role!r}; use one of {list(ROLES)}')
        if not isinstance(content, str):
            raise ValueError(f'{where}: "{col}"[{j}].content must be a string, got {type(content).__name__}')
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "assistant":
        raise ValueError(
            f'{where}: the last message of "{col}" is from {out[-1]["role"]!r}; the last message must be '
            "the assistant's answer (drop trailing turns or append the answer)"
        )
    if not out[-1]["content"].strip():
        raise ValueError(
            f'{where}: the assistant answer is empty (last message of "{col}"); drop the row or fill in the answer'
        )
    if len(out) == 1:
        raise ValueError(
            f'{where}: "{col}" holds only the assistant answer, so the prompt is empty; add the user turn before it'
        )
    return out


def _check_str(obj: dict, where: str, col: str, what: str) -> str:
    if not isinstance(value := obj.get(col), str):
        raise ValueError(f'{where}: "{col}" must be a string, got {type(value).__name__}')
    if not value.strip():
        raise ValueError(f'{where}: {what} is empty ("{col}"); drop the row or fill in {what}')
    return value


def parse_record(obj: Any, where: str, columns: dict[str, str] | None = None) -> dict:
    """One raw record -> a task row `{"family", "prompt", "response", "meta": {"messages", "source"}}`.

    `columns` maps the logical fields (`messages`, or `prompt` + `response`; optional `family`) to the
    record's keys; None picks the style from the keys present (the JSONL convention).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}; {ROW_HINT}")
    if columns is None:
        pair = "prompt" in obj or "response" in obj
        if "messages" in obj and pair:
            raise ValueError(f'{where}: has both "messages" and "prompt"/"response"; keep one style per row')
        keys = ("prompt", "response") if pair else ("messages",)
        if missing := [k for k in keys if k not in obj]:
            hint = "" if pair else f" (keys found: {sorted(obj)})"
            raise ValueError(f'{where}: "{missing[0]}" is missing; {ROW_HINT}{hint}')
        columns = {k: k for k in (*keys, "family")}
    if "messages" in columns:
        conv = _check_messages(obj.get(columns["messages"]), where, columns["messages"])
        prompt_msgs, response = conv[:-1], conv[-1]["content"]
    else:
        prompt_msgs = [{"role": "user", "content": _check_str(obj, where, columns["prompt"], "the prompt")}]
        response = _check_str(obj, where, columns["response"], "the assistant answer")
    fam_col = columns.get("family")
    family = obj.get(fam_col) if fam_col else None
    family = "chat" if family is None else family
    if not isinstance(family, str) or not family:
        raise ValueError(f'{where}: "{fam_col}" must be a non-empty string, got {family!r}')
    users = [m["content"] for m in prompt_msgs if m["role"] == "user"]
    return {
        "family": family,
        "prompt": users[-1] if users else prompt_msgs[-1]["content"],  # for display only
        "response": response,
        "meta": {"messages": prompt_msgs, "source": where},
    }


def _decode_utf8(raw: bytes, name: str) -> str:
    """Decode, naming the first bad byte: an encoding problem must not surface as a JSON error."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{name} is not valid UTF-8: byte offset {e.start} (line {line}) is {raw[e.start : e.start + 1]!r} "
            f"({e.reason}); re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.jsonl > out.jsonl`"
        ) from None


def read_jsonl(path: str | Path) -> list[dict]:
    """Validate a chat JSONL file line by line and return its task rows (file order, blank lines skipped)."""
    p, name = Path(path).expanduser(), f"data.path={path}"
    if not p.exists():
        raise FileNotFoundError(
            f"{name} does not exist (relative paths resolve against {Path.cwd()}); "
            "pass data.path=/absolute/path/to/file.jsonl"
        )
    if p.is_dir():
        raise IsADirectoryError(
            f"{name} is a directory; pass the .jsonl file itself (or use data=hf for a saved dataset)"
        )
    raw = p.read_bytes()
    if not raw:
        raise ValueError(f"{name} is empty; it needs one JSON object per line ({ROW_HINT})")
    text = _decode_utf8(raw, name)
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name} line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{where}: invalid JSON ({e.msg} at column {e.colno}); write one JSON object per line"
            ) from None
        rows.append(parse_record(obj, where))
    if not rows:
        raise ValueError(
            f"{name} has no rows (only blank lines); it needs one JSON object per line ({ROW_HINT})"
        )
    return rows
