"""Images stored inside data files (Hugging Face `datasets.Image()` columns), read back lazily.

A record table never holds image bytes: an embedded image is a reference string naming the data
file, row, column and list item. DataLoader workers resolve it when they build a batch: Arrow
files (`save_to_disk` shards) through a memory map (no copy), Parquet files one row group at a
time with a small per-process cache of decoded row groups.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PREFIX = "embedded:"
# Decoded Parquet row groups kept per process: consecutive reads of one row group are common
# when a batch holds several images of one record or length grouping keeps neighbours together.
_ROW_GROUPS_KEPT = 2


@dataclass(frozen=True)
class EmbeddedImage:
    """Where one embedded image lives: data file, row, column and (for list columns) item."""

    file: str
    row: int
    column: str
    item: int | None = None
    # The image bytes while the record table is built (to check them); never stored.
    data: memoryview | None = field(default=None, compare=False, repr=False)

    def ref(self) -> str:
        """The reference string stored in the record table."""
        query = f"row={self.row}&column={quote(self.column, safe='')}" + ("" if self.item is None else f"&item={self.item}")
        return f"{PREFIX}{quote(self.file)}?{query}"

    @classmethod
    def parse(cls, ref: str) -> EmbeddedImage:
        """The image a reference string names."""
        path, _, query = ref[len(PREFIX) :].partition("?")
        q = parse_qs(query)
        item = q.get("item")
        return cls(unquote(path), int(q["row"][0]), q["column"][0], int(item[0]) if item else None)

    def describe(self) -> str:
        """Human-readable location, for error messages."""
        item = "" if self.item is None else f" item {self.item}"
        return f"embedded in {self.file} (row {self.row}, column {self.column!r}{item})"


def is_embedded(ref: str) -> bool:
    """Whether a record's image string is an embedded-image reference (else it is a file path)."""
    return ref.startswith(PREFIX)


def is_image_column(type_: pa.DataType) -> bool:
    """Whether an Arrow type is `datasets.Image()` storage (struct of bytes and path) or a list of it."""
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        type_ = type_.value_type
    if not pa.types.is_struct(type_):
        return False
    names = {type_.field(i).name for i in range(type_.num_fields)}
    return names == {"bytes", "path"}


def image_values(column: pa.Array, file: str, name: str, first_row: int) -> list:
    """Per row of an image column: None, a path string, an EmbeddedImage, or a list of those."""
    is_list = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
    out = []
    for i, value in enumerate(column):
        row = first_row + i
        if not value.is_valid:
            out.append(None)
        elif is_list:
            out.append([_one(item, file, row, name, k) for k, item in enumerate(value.values)])
        else:
            out.append(_one(value, file, row, name, None))
    return out


def _one(value: pa.StructScalar, file: str, row: int, column: str, item: int | None):
    if not value.is_valid:
        return None
    data, path = value["bytes"], value["path"]
    if data.is_valid:
        return EmbeddedImage(file, row, column, item, memoryview(data.as_buffer()))
    # datasets keeps only the path when an image was not embedded: an ordinary image file.
    return path.as_py() if path.is_valid else None


def read_bytes(image: EmbeddedImage) -> memoryview:
    """The bytes of an embedded image, read from its data file (cached per process)."""
    value = _reader(image.file).value(image.row, image.column)
    if image.item is not None:
        if not value.is_valid or image.item >= len(value):
            raise KeyError(f"no item {image.item}")
        value = value.values[image.item]
    data = value["bytes"] if value.is_valid else None
    if data is None or not data.is_valid:
        raise KeyError("no image bytes")
    return memoryview(data.as_buffer())


class _ArrowRows:
    """Rows of an Arrow IPC file or stream, memory-mapped: reading a value copies nothing."""

    def __init__(self, path: str):
        self.table = read_arrow(path)

    def value(self, row: int, column: str):
        return self.table.column(column)[row]


class _ParquetRows:
    """Rows of a Parquet file, read one row group (of one column) at a time."""

    def __init__(self, path: str):
        self.file = pq.ParquetFile(path)
        meta = self.file.metadata
        self.starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        self.groups: OrderedDict[tuple[int, str], pa.ChunkedArray] = OrderedDict()

    def value(self, row: int, column: str):
        group = int(np.searchsorted(self.starts, row, side="right")) - 1
        key = (group, column)
        if key not in self.groups:
            self.groups[key] = self.file.read_row_group(group, columns=[column]).column(column)
            while len(self.groups) > _ROW_GROUPS_KEPT:
                self.groups.popitem(last=False)
        self.groups.move_to_end(key)
        return self.groups[key][row - int(self.starts[group])]


def read_arrow(path: str) -> pa.Table:
    """A memory-mapped table from an Arrow IPC stream (what `datasets` writes) or IPC file."""
    source = pa.memory_map(path, "r")
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source).read_all()


_readers: dict[str, _ArrowRows | _ParquetRows] = {}
_readers_pid = os.getpid()


def _reader(path: str) -> _ArrowRows | _ParquetRows:
    global _readers_pid
    # A forked worker must not share the parent's open files: start its own cache.
    if _readers_pid != os.getpid():
        _readers.clear()
        _readers_pid = os.getpid()
    if path not in _readers:
        _readers[path] = _ParquetRows(path) if path.lower().endswith(".parquet") else _ArrowRows(path)
    return _readers[path]
