"""Record schemas: LLaVA, MiniCPM-V and messages-style records, normalised into canonical records.

The objects come from readers.py (JSON, JSONL, Parquet, Arrow). A file's format is detected from
its first record that can be detected; every record is normalised to::

    {"id", "messages": [{"role", "content"}], "images": [abs paths or embedded refs], "group", "source"}

with image placeholders (and image content parts) rewritten to ``IMAGE_TOKEN``. A record that
breaks a rule becomes an ``InvalidRecordError`` carrying a one-line reason; it never stops the
rest of the file. A fault of the whole file raises ``DataFileError`` naming the file and cause.

May import data.readers, data.errors, data.embedded and data.images.
"""

from __future__ import annotations

import os
import re
from typing import Iterator

from curriculum.data.embedded import EmbeddedImage
from curriculum.data.errors import DataFileError, InvalidRecordError
from curriculum.data.images import ImageError, check_image
from curriculum.data.readers import iter_file, kind_of

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


class UnknownFormatError(InvalidRecordError):
    """A record that is not an object or has none of the keys of a known format."""


KNOWN_FORMATS = (
    "llava ('conversations' of {from, value} turns, optional 'image')",
    "minicpm ('conversations' of {role, content} turns, optional 'image')",
    "messages ('messages' of {role, content} turns, content a string or parts, optional 'images')",
)
# Records whose format cannot be told before a file counts as being of an unknown format.
_UNDETECTED_LIMIT = 100


def detect_format(obj: dict) -> str:
    """Return "llava", "minicpm" or "messages" for one raw record, or raise InvalidRecordError."""
    if not isinstance(obj, dict):
        raise UnknownFormatError(f"record is not a JSON object (got {kind_of(obj)})")
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
        raise InvalidRecordError(f"'image' must be a path, an image or a list of them, got {kind_of(image)}")
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
        raise InvalidRecordError(f"'image' must be a path or a {{placeholder: path}} object, got {kind_of(image)}")
    # Parquet structs carry every key of the column, with None where a row has no such image.
    keyed = {key: path for key, path in image.items() if path is not None}
    if not keyed:
        return messages, []
    return messages, _replace_keyed_placeholders(messages, keyed)


def _messages(obj: dict) -> tuple[list[dict], list]:
    # Some Hub datasets hold one image per row in an `image` column beside `messages`.
    images = obj.get("images") or ([obj["image"]] if obj.get("image") is not None else [])
    if not isinstance(images, list):
        raise InvalidRecordError(f"'images' must be a list of paths or images, got {kind_of(images)}")
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
            got = f"type {kind!r}" if isinstance(part, dict) else kind_of(part)
            raise InvalidRecordError(f"turn {k} part {j}: unsupported content part ({got}); text and image parts are supported")
    return "".join(text)


def _turns(turns, key: str, role_key: str, content_key: str, roles: dict[str, str], inline: list | None = None) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise InvalidRecordError(f"empty or missing conversation ({key!r})")
    messages = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise InvalidRecordError(f"turn {k} is not an object (got {kind_of(turn)})")
        role, content = turn.get(role_key), turn.get(content_key)
        if role not in roles:
            raise InvalidRecordError(f"turn {k}: unknown role {role!r} (expected one of {sorted(roles)})")
        if inline is not None and isinstance(content, list):
            content = _content_parts(k, content, inline)
        if not isinstance(content, str):
            raise InvalidRecordError(f"turn {k}: non-string content ({kind_of(content)}) in {content_key!r}")
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
        raise InvalidRecordError(f"image {k} must be a non-empty path string or embedded image, got {kind_of(image)}")
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
