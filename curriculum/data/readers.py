"""Data file containers: JSON (one array, or JSON Lines), JSONL, Parquet and Arrow (what `datasets`
save_to_disk writes), each read into raw objects with their index and line. Parquet and Arrow are
read in batches, with `datasets.Image()` columns as embedded images.

A record that cannot be decoded becomes an ``InvalidRecordError`` and never stops the rest of the
file; a fault of the whole file raises ``DataFileError`` naming the file and cause. What the
objects mean (LLaVA, MiniCPM-V, messages) is formats.py's business.

May import data.errors and data.embedded.
"""

from __future__ import annotations

import json
import os
import re
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from curriculum.data.embedded import image_values, is_image_column, read_arrow
from curriculum.data.errors import DataFileError, InvalidRecordError


EXTENSIONS = (".json", ".jsonl", ".parquet", ".arrow")


_PARQUET_BATCH_ROWS = 1024


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
        raise DataFileError(f"{path}: holds a single JSON {kind_of(obj)}, not an array of records")
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


def kind_of(value) -> str:
    """The JSON kind of a decoded value, for messages (`null`, `list`, `str`...)."""
    return "null" if value is None else type(value).__name__
