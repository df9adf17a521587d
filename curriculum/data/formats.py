"""Readers for LLaVA, MiniCPM-V and messages-style data files, normalised into canonical records.

A file is JSON (one array), JSONL (one object per line) or Parquet (read in batches). Its format
is detected from its first record that can be detected; every record is normalised to::

    {"id", "messages": [{"role", "content"}], "images": [abs paths], "group", "source"}

with image placeholders rewritten to ``IMAGE_TOKEN``. A record that breaks a rule becomes an
``InvalidRecordError`` carrying a one-line reason; it never stops the rest of the file.
"""

from __future__ import annotations

import json
import os
import re
from typing import Iterator

import pyarrow.parquet as pq

from curriculum.data.images import ImageError, check_image

IMAGE_TOKEN = "<image>"
FORMATS = ("llava", "minicpm", "messages")
ROLES = ("system", "user", "assistant")
# Reasons for missing images start with this, so a cache can tell when such a record may now pass.
MISSING_IMAGE = "image file not found: "
# MiniCPM-V's keyed image placeholders, e.g. <image_00>.
_KEYED_PLACEHOLDER = re.compile(r"<image_\d+>")

# ShareGPT-style variants of LLaVA data use the OpenAI role names in "from".
_LLAVA_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
_CHAT_ROLES = {role: role for role in ROLES}
_PARQUET_BATCH_ROWS = 1024


class DataFileError(ValueError):
    """A data file that cannot give records: an unsupported extension, or no valid record at all."""


class InvalidRecordError(ValueError):
    """A record that cannot be used, with a one-line reason (and the record's id when known)."""

    def __init__(self, reason: str, record_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.record_id = record_id


def iter_file(path: str) -> Iterator[tuple[int, int | None, dict | InvalidRecordError]]:
    """Yield (index, line, raw object or InvalidRecordError) for each record of a data file."""
    readers = {".json": _iter_json, ".jsonl": _iter_jsonl, ".parquet": _iter_parquet}
    ext = os.path.splitext(path)[1].lower()
    if ext not in readers:
        raise DataFileError(f"{path}: unsupported data file extension {ext!r}; use .json, .jsonl or .parquet")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    return readers[ext](path)


def _iter_json(path: str) -> Iterator[tuple[int, int | None, dict | InvalidRecordError]]:
    with open(path, encoding="utf-8-sig") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            hint = " (if this file is JSON Lines, name it .jsonl)" if err.msg == "Extra data" else ""
            reason = f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}{hint}"
            yield 0, err.lineno, InvalidRecordError(reason)
            return
    if not isinstance(data, list):
        yield 0, None, InvalidRecordError(f"a .json data file must hold an array of records, got {_kind(data)}")
        return
    for index, obj in enumerate(data):
        yield index, None, obj


def _iter_jsonl(path: str) -> Iterator[tuple[int, int | None, dict | InvalidRecordError]]:
    # Binary lines: a bad byte sequence spoils only its own line, and json.loads strips a BOM.
    with open(path, "rb") as f:
        index = 0
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.rstrip(b"\r\n"))  # so an error at the end reports its column on this line
            except json.JSONDecodeError as err:
                obj = InvalidRecordError(f"invalid JSON: {err.msg} (column {err.colno})")
            except UnicodeDecodeError as err:
                obj = InvalidRecordError(f"invalid UTF-8: {err.reason} at byte {err.start}")
            yield index, line, obj
            index += 1


def _iter_parquet(path: str) -> Iterator[tuple[int, int | None, dict | InvalidRecordError]]:
    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        for obj in batch.to_pylist():
            yield index, None, obj
            index += 1


def detect_format(obj: dict) -> str:
    """Return "llava", "minicpm" or "messages" for one raw record, or raise InvalidRecordError."""
    if not isinstance(obj, dict):
        raise InvalidRecordError(f"record is not a JSON object (got {_kind(obj)})")
    if "messages" in obj:
        return "messages"
    if "conversations" not in obj:
        raise InvalidRecordError(
            "unrecognised record: expected a 'conversations' (LLaVA, MiniCPM-V) or 'messages' key, "
            f"got keys {sorted(obj)}"
        )
    if isinstance(obj.get("image"), dict):
        return "minicpm"
    turns = obj["conversations"]
    if not isinstance(turns, list) or not turns:
        raise InvalidRecordError("empty or missing conversation ('conversations')")
    first = turns[0]
    if isinstance(first, dict) and "from" in first:
        return "llava"
    if isinstance(first, dict) and "role" in first:
        return "minicpm"
    raise InvalidRecordError("cannot tell the format: the first turn has neither 'from' (LLaVA) nor 'role' (MiniCPM-V)")


def normalise(
    obj: dict, fmt: str, *, index: int, source: str, image_root: str | None, group: str | None, check_images: str = "header"
) -> dict:
    """Return the canonical record for a raw record of format fmt, or raise InvalidRecordError."""
    if fmt == "llava":
        messages, images = _llava(obj)
    elif fmt == "minicpm":
        messages, images = _minicpm(obj)
    elif fmt == "messages":
        messages, images = _messages(obj)
    else:
        raise ValueError(f"unknown record format {fmt!r}; expected one of {FORMATS}")
    if not any(m["role"] == "assistant" for m in messages):
        raise InvalidRecordError("no assistant turn")
    placeholders = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
    if placeholders != len(images):
        raise InvalidRecordError(f"{placeholders} {IMAGE_TOKEN} placeholder(s) in the text but {len(images)} image(s)")
    return {
        "id": _record_id(obj, index, source),
        "messages": messages,
        "images": _resolve_images(images, image_root or os.path.dirname(source), check_images),
        "group": _group(obj, group, images),
        "source": source,
    }


def iter_records(
    path: str, *, image_root: str | None = None, group: str | None = None, check_images: str = "header"
) -> Iterator[tuple[int, int | None, dict | InvalidRecordError]]:
    """Yield (index, line, canonical record or InvalidRecordError) for each record of one file."""
    fmt = None
    for index, line, raw in iter_file(path):
        if isinstance(raw, InvalidRecordError):
            yield index, line, raw
            continue
        try:
            found = detect_format(raw)
            fmt = fmt or found
            if found != fmt:
                raise InvalidRecordError(f"record is in {found} format but this file is {fmt} (from its first record)")
            item = normalise(raw, fmt, index=index, source=path, image_root=image_root, group=group, check_images=check_images)
        except InvalidRecordError as err:
            err.record_id = _raw_id(raw)
            item = err
        yield index, line, item


def _llava(obj: dict) -> tuple[list[dict], list]:
    messages = _turns(obj.get("conversations"), "conversations", "from", "value", _LLAVA_ROLES)
    image = obj.get("image")
    images = [] if not image else [image] if isinstance(image, str) else image
    if not isinstance(images, list):
        raise InvalidRecordError(f"'image' must be a path or a list of paths, got {_kind(image)}")
    if len(images) == 1:
        _ensure_placeholder(messages)
    return messages, images


def _minicpm(obj: dict) -> tuple[list[dict], list]:
    messages = _turns(obj.get("conversations"), "conversations", "role", "content", _CHAT_ROLES)
    image = obj.get("image")
    if not image:
        return messages, []
    if isinstance(image, str):
        _ensure_placeholder(messages)
        return messages, [image]
    if not isinstance(image, dict):
        raise InvalidRecordError(f"'image' must be a path or a {{placeholder: path}} object, got {_kind(image)}")
    # Parquet structs carry every key of the column, with None where a row has no such image.
    keyed = {key: path for key, path in image.items() if path is not None}
    if not keyed:
        return messages, []
    return messages, _replace_keyed_placeholders(messages, keyed)


def _messages(obj: dict) -> tuple[list[dict], list]:
    messages = _turns(obj.get("messages"), "messages", "role", "content", _CHAT_ROLES)
    images = obj.get("images") or []
    if not isinstance(images, list):
        raise InvalidRecordError(f"'images' must be a list of paths, got {_kind(images)}")
    return messages, images


def _turns(turns, key: str, role_key: str, content_key: str, roles: dict[str, str]) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise InvalidRecordError(f"empty or missing conversation ({key!r})")
    messages = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise InvalidRecordError(f"turn {k} is not an object (got {_kind(turn)})")
        role, content = turn.get(role_key), turn.get(content_key)
        if role not in roles:
            raise InvalidRecordError(f"turn {k}: unknown role {role!r} (expected one of {sorted(roles)})")
        if not isinstance(content, str):
            raise InvalidRecordError(f"turn {k}: non-string content ({_kind(content)}) in {content_key!r}")
        messages.append({"role": roles[role], "content": content})
    return messages


def _ensure_placeholder(messages: list[dict]) -> None:
    # LLaVA convention: one image and no placeholder means the image precedes the first user turn.
    if any(IMAGE_TOKEN in m["content"] for m in messages):
        return
    for m in messages:
        if m["role"] == "user":
            m["content"] = f"{IMAGE_TOKEN}\n{m['content']}"
            return


def _replace_keyed_placeholders(messages: list[dict], keyed: dict) -> list:
    # Longest keys first so a key that prefixes another cannot steal its match.
    pattern = re.compile("|".join(re.escape(key) for key in sorted(keyed, key=len, reverse=True)))
    order: list[str] = []

    def replace(match: re.Match) -> str:
        if match.group() not in order:
            order.append(match.group())
        return IMAGE_TOKEN

    for m in messages:
        m["content"] = pattern.sub(replace, m["content"])
    for key in keyed:
        if key not in order:
            raise InvalidRecordError(f"placeholder {key} not found in conversation")
    for m in messages:
        stray = _KEYED_PLACEHOLDER.search(m["content"])
        if stray:
            raise InvalidRecordError(f"placeholder {stray.group()} has no entry in 'image' (it has {', '.join(keyed)})")
    return [keyed[key] for key in order]


def _resolve_images(images: list, root: str, check: str) -> list[str]:
    resolved = []
    for k, image in enumerate(images):
        if not isinstance(image, str) or not image:
            raise InvalidRecordError(f"image {k} must be a non-empty path string, got {_kind(image)}")
        path = os.path.abspath(os.path.join(root, image))
        if not os.path.isfile(path):
            raise InvalidRecordError(f"{MISSING_IMAGE}{path}")
        try:
            check_image(path, check)
        except ImageError as e:
            raise InvalidRecordError(str(e)) from None
        resolved.append(path)
    return resolved


def _group(obj: dict, file_group: str | None, images: list) -> str:
    own = obj.get("group")
    if own is not None:
        if not isinstance(own, str) or not own:
            raise InvalidRecordError(f"'group' must be a non-empty string, got {own!r}")
        return own
    return file_group or ("image_text" if images else "text_only")


def _record_id(obj: dict, index: int, source: str) -> str:
    raw = _raw_id(obj)
    return raw if raw is not None else f"{os.path.basename(source)}:{index}"


def _raw_id(obj) -> str | None:
    if isinstance(obj, dict) and obj.get("id") is not None:
        return str(obj["id"])
    return None


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__
