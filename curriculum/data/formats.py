"""Readers for LLaVA, MiniCPM-V and messages-style data files, normalised into canonical records.

A file is JSON (one array, or JSON Lines), JSONL (one object per line), Parquet or Arrow (what
`datasets` save_to_disk writes), the last two read in batches, with `datasets.Image()` columns
read as embedded images. Its format is detected from its first record that can be detected;
every record is normalised to::

    {"id", "messages": [{"role", "content"}], "images": [abs paths or embedded refs], "group", "source"}

with image placeholders (and image content parts) rewritten to ``IMAGE_TOKEN``. A record that
breaks a rule becomes an ``InvalidRecordError`` carrying a one-line reason; it never stops the
rest of the file. A fault of the whole file raises ``DataFileError`` naming the file and cause.
"""

from __future__ import annotations

import json
import os
import re
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from curriculum.data.embedded import EmbeddedImage, image_values, is_image_column, read_arrow
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
    """A data file that cannot give records, with a one-line reason naming the file."""


class InvalidRecordError(ValueError):
    """A record that cannot be used, with a one-line reason (and the record's id when known)."""

    def __init__(self, reason: str, record_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.record_id = record_id


class UnknownFormatError(InvalidRecordError):
    """A record that is not an object or has none of the keys of a known format."""


EXTENSIONS = (".json", ".jsonl", ".parquet", ".arrow")
KNOWN_FORMATS = (
    "llava ('conversations' of {from, value} turns, optional 'image')",
    "minicpm ('conversations' of {role, content} turns, optional 'image')",
    "messages ('messages' of {role, content} turns, content a string or parts, optional 'images')",
)
# Records whose format cannot be told before a file counts as being of an unknown format.
_UNDETECTED_LIMIT = 100


def iter_file(path: str) -> Iterator[tuple[int, int | None, dict | InvalidRecordError]]:
    """Yield (index, line, raw object or InvalidRecordError) for each record of a data file.

    Faults of the whole file (not UTF-8, not JSON, empty, an object instead of an array) raise
    DataFileError naming the file; a fault of one record yields an InvalidRecordError.
    """
    readers = {".json": _iter_json, ".jsonl": _iter_jsonl, ".parquet": _iter_parquet, ".arrow": _iter_arrow}
    ext = os.path.splitext(path)[1].lower()
    if ext not in readers:
        raise DataFileError(f"{path}: unsupported data file extension {ext!r}; use {', '.join(EXTENSIONS)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    if os.path.getsize(path) == 0:
        raise DataFileError(f"{path}: empty file (0 bytes)")
    return readers[ext](path)


def _decode_utf8(path: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataFileError(
            f"{path}: not UTF-8 text: byte 0x{raw[err.start]:02x} at offset {err.start} (line {line}); save the file as UTF-8"
        ) from None


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _iter_json(path: str) -> Iterator[tuple[int, int | None, dict | InvalidRecordError]]:
    # Decoded element by element, so peak memory is the text plus one batch, not every object.
    with open(path, "rb") as f:
        text = _decode_utf8(path, f.read())
    decoder = json.JSONDecoder()
    pos = _WHITESPACE.match(text).end()
    if pos == len(text):
        raise DataFileError(f"{path}: empty file (only whitespace)")
    if text[pos] != "[":
        yield from _json_lines_or_object(path, text, pos, decoder)
        return
    pos = _WHITESPACE.match(text, pos + 1).end()
    if text.startswith("]", pos):
        raise DataFileError(f"{path}: an empty array: no records")
    index = 0
    while True:
        obj, pos = _decode_at(path, text, pos, decoder)
        yield index, None, obj
        index += 1
        pos = _WHITESPACE.match(text, pos).end()
        if text.startswith(",", pos):
            pos = _WHITESPACE.match(text, pos + 1).end()
        elif text.startswith("]", pos):
            end = _WHITESPACE.match(text, pos + 1).end()
            if end != len(text):
                _json_error(path, text, end, "extra data after the array")
            return
        elif pos == len(text):
            _json_error(path, text, pos, "the file ends inside the array (truncated?)")
        else:
            _json_error(path, text, pos, "expected ',' or ']' after a record")


def _json_lines_or_object(path: str, text: str, pos: int, decoder: json.JSONDecoder):
    """A .json file that is not an array: JSON Lines (as the Hub's json loader reads) or one object."""
    obj, end = _decode_at(path, text, pos, decoder)
    if _WHITESPACE.match(text, end).end() == len(text):
        if isinstance(obj, dict):
            raise DataFileError(
                f"{path}: holds one JSON object (keys {sorted(obj)[:8]}), not an array of records; "
                "write an array of records, or one record per line in a .jsonl file"
            )
        raise DataFileError(f"{path}: holds a single JSON {_kind(obj)}, not an array of records")
    yield from _jsonl_lines(path, text.encode("utf-8"))


def _decode_at(path: str, text: str, pos: int, decoder: json.JSONDecoder):
    try:
        return decoder.raw_decode(text, pos)
    except json.JSONDecodeError as err:
        # An unterminated string runs to the end of the file: as much a sign of truncation as an early end.
        ends_early = err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string")
        truncated = " (the file ends early: truncated?)" if ends_early else ""
        raise DataFileError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}{truncated}") from None


def _json_error(path: str, text: str, pos: int, what: str):
    line = text.count("\n", 0, pos) + 1
    column = pos - text.rfind("\n", 0, pos)
    raise DataFileError(f"{path}: invalid JSON at line {line} column {column}: {what}")


def _iter_jsonl(path: str) -> Iterator[tuple[int, int | None, dict | InvalidRecordError]]:
    with open(path, "rb") as f:
        yield from _jsonl_lines(path, f)


def _jsonl_lines(path: str, lines) -> Iterator[tuple[int, int | None, dict | InvalidRecordError]]:
    # Lines as bytes: an encoding fault is reported with its byte offset in the file.
    if isinstance(lines, bytes):
        lines = lines.splitlines(keepends=True)
    index, offset = 0, 0
    for line, raw in enumerate(lines, start=1):
        start, offset = offset, offset + len(raw)
        if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw, start = raw[3:], start + 3
        if not raw.strip():
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataFileError(
                f"{path}: not UTF-8 text: byte 0x{raw[err.start]:02x} at offset {start + err.start} (line {line}); save the file as UTF-8"
            ) from None
        try:
            obj = json.loads(raw.rstrip(b"\r\n"))  # so an error at the end reports its column on this line
        except json.JSONDecodeError as err:
            obj = InvalidRecordError(f"invalid JSON: {err.msg} (column {err.colno})")
        if index == 0 and _array_start(raw, obj):
            raise DataFileError(f"{path}: a JSON array of records, not JSON Lines (one record per line); name the file .json")
        yield index, line, obj
        index += 1
    if index == 0:
        raise DataFileError(f"{path}: no records (only blank lines)")


def _array_start(raw: bytes, obj) -> bool:
    """Whether a first line opens a pretty-printed JSON array or is a one-line array of records."""
    if raw.strip() == b"[":
        return True
    return isinstance(obj, list) and bool(obj) and all(isinstance(item, dict) for item in obj)


def _iter_parquet(path: str) -> Iterator[tuple[int, int | None, dict | InvalidRecordError]]:
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH_ROWS)
    except (pa.ArrowException, OSError) as err:
        raise DataFileError(f"{path}: not a readable Parquet file: {err}") from None
    yield from _iter_batches(path, _guarded(path, batches, "Parquet"))


def _guarded(path: str, batches, kind: str):
    """Batches of a file; a fault met while reading one (a corrupt page) names the file."""
    batches = iter(batches)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as err:
            raise DataFileError(f"{path}: unreadable {kind} data: {err}") from None
        yield batch


def _iter_arrow(path: str) -> Iterator[tuple[int, int | None, dict | InvalidRecordError]]:
    try:
        table = read_arrow(path)
    except (pa.ArrowException, OSError) as err:
        raise DataFileError(f"{path}: not a readable Arrow file (as `datasets` save_to_disk writes): {err}") from None
    yield from _iter_batches(path, table.to_batches(max_chunksize=_PARQUET_BATCH_ROWS))


def _iter_batches(path: str, batches) -> Iterator[tuple[int, int | None, dict | InvalidRecordError]]:
    """Rows of Arrow record batches as dicts; `datasets.Image()` columns become paths or EmbeddedImage."""
    index = 0
    for batch in batches:
        images = [name for name, type_ in zip(batch.schema.names, batch.schema.types) if is_image_column(type_)]
        rows = batch.drop_columns(images).to_pylist() if images else batch.to_pylist()
        for name in images:
            for row, value in zip(rows, image_values(batch.column(name), path, name, index)):
                row[name] = value
        for obj in rows:
            yield index, None, obj
            index += 1
    if index == 0:
        raise DataFileError(f"{path}: no rows")


def detect_format(obj: dict) -> str:
    """Return "llava", "minicpm" or "messages" for one raw record, or raise InvalidRecordError."""
    if not isinstance(obj, dict):
        raise UnknownFormatError(f"record is not a JSON object (got {_kind(obj)})")
    if "messages" in obj:
        return "messages"
    if "conversations" not in obj:
        raise UnknownFormatError(
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
    obj: dict,
    fmt: str,
    *,
    index: int,
    source: str,
    image_root: str | None,
    group: str | None,
    check_images: str = "header",
    checked: dict[str, str | None] | None = None,
) -> dict:
    """Return the canonical record for a raw record of format fmt, or raise InvalidRecordError.

    `checked` caches image checks by path across the records of one build (a path is checked once).
    """
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
    root = image_root or os.path.dirname(source)
    return {
        "id": _record_id(obj, index, source),
        "messages": messages,
        "images": [_resolve_image(k, image, root, check_images, checked) for k, image in enumerate(images)],
        "group": _group(obj, group, images),
        "source": source,
    }


def iter_records(
    path: str, *, image_root: str | None = None, group: str | None = None, check_images: str = "header"
) -> Iterator[tuple[int, int | None, dict | InvalidRecordError]]:
    """Yield (index, line, canonical record or InvalidRecordError) for each record of one file."""
    fmt, undetected, first_keys = None, 0, None
    checked: dict[str, str | None] = {}
    for index, line, raw in iter_file(path):
        if isinstance(raw, InvalidRecordError):
            yield index, line, raw
            continue
        try:
            try:
                found = detect_format(raw)
            except UnknownFormatError:
                undetected += 1
                if first_keys is None and isinstance(raw, dict):
                    first_keys = sorted(raw)
                if fmt is None and undetected >= _UNDETECTED_LIMIT:
                    _unknown_format(path, first_keys)
                raise
            fmt = fmt or found
            if found != fmt:
                raise InvalidRecordError(f"record is in {found} format but this file is {fmt} (from its first record)")
            item = normalise(
                raw, fmt, index=index, source=path, image_root=image_root, group=group, check_images=check_images, checked=checked
            )
        except InvalidRecordError as err:
            err.record_id = _raw_id(raw)
            item = err
        yield index, line, item
    if fmt is None and undetected:
        _unknown_format(path, first_keys)


def _unknown_format(path: str, keys: list[str] | None) -> None:
    seen = f"records with keys {keys}" if keys is not None else "no JSON objects"
    raise DataFileError(f"{path}: unknown format: it has {seen}; known formats: {'; '.join(KNOWN_FORMATS)}")


def _llava(obj: dict) -> tuple[list[dict], list]:
    messages = _turns(obj.get("conversations"), "conversations", "from", "value", _LLAVA_ROLES)
    image = obj.get("image")
    images = [image] if isinstance(image, (str, EmbeddedImage)) and image else image or []
    if not isinstance(images, list):
        raise InvalidRecordError(f"'image' must be a path, an image or a list of them, got {_kind(image)}")
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
    # Some Hub datasets hold one image per row in an `image` column beside `messages`.
    images = obj.get("images") or ([obj["image"]] if obj.get("image") is not None else [])
    if not isinstance(images, list):
        raise InvalidRecordError(f"'images' must be a list of paths or images, got {_kind(images)}")
    inline: list = []
    messages = _turns(obj.get("messages"), "messages", "role", "content", _CHAT_ROLES, inline)
    if inline:
        if images:
            raise InvalidRecordError("images are given both in content parts and in 'images'; give them in one place")
        images = inline
    return messages, images


def _content_parts(k: int, parts: list, inline: list) -> str:
    """Transformers-style content parts -> one string with IMAGE_TOKEN where each image goes."""
    text = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise InvalidRecordError(f"turn {k} part {j}: a text part without a string 'text'")
            text.append(part["text"])
        elif kind in ("image", "image_url"):
            text.append(IMAGE_TOKEN)
            source = part.get("image") or part.get("path") or part.get("url") or part.get("image_url")
            if isinstance(source, dict) and "bytes" in source:
                raise InvalidRecordError(
                    f"turn {k} part {j}: image bytes inside content parts are not supported; keep images in an 'images' column"
                )
            if isinstance(source, dict):
                source = source.get("url") or source.get("path")
            if source is not None:
                inline.append(source)
        else:
            got = f"type {kind!r}" if isinstance(part, dict) else _kind(part)
            raise InvalidRecordError(f"turn {k} part {j}: unsupported content part ({got}); text and image parts are supported")
    return "".join(text)


def _turns(turns, key: str, role_key: str, content_key: str, roles: dict[str, str], inline: list | None = None) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise InvalidRecordError(f"empty or missing conversation ({key!r})")
    messages = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise InvalidRecordError(f"turn {k} is not an object (got {_kind(turn)})")
        role, content = turn.get(role_key), turn.get(content_key)
        if role not in roles:
            raise InvalidRecordError(f"turn {k}: unknown role {role!r} (expected one of {sorted(roles)})")
        if inline is not None and isinstance(content, list):
            content = _content_parts(k, content, inline)
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


_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def _resolve_image(k: int, image, root: str, check: str, checked: dict[str, str | None] | None) -> str:
    """The record table's string for image k: an absolute path or an embedded-image reference."""
    if isinstance(image, EmbeddedImage):
        try:
            check_image(image, check)
        except ImageError as e:
            raise InvalidRecordError(str(e)) from None
        return image.ref()
    if not isinstance(image, str) or not image:
        raise InvalidRecordError(f"image {k} must be a non-empty path string or embedded image, got {_kind(image)}")
    if _URL.match(image) or image.startswith("data:"):
        raise InvalidRecordError(
            f"image {k} is a URL ({image[:80]}); images are never downloaded at training time: download them and give local paths"
        )
    path = os.path.abspath(os.path.join(root, image))
    if checked is not None and path in checked:
        reason = checked[path]
    else:
        reason = _check_path(path, check)
        if checked is not None:
            checked[path] = reason
    if reason is not None:
        raise InvalidRecordError(reason)
    return path


def _check_path(path: str, check: str) -> str | None:
    if not os.path.isfile(path):
        return f"{MISSING_IMAGE}{path}"
    try:
        check_image(path, check)
    except ImageError as e:
        return str(e)
    return None


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
