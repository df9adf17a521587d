"""Images stored inside data files (Hugging Face `datasets.Image()` columns), read back lazily.

A record table never holds image bytes: an embedded image is a reference string naming the data
file, row, column and list item. DataLoader workers resolve it when they build a batch: Arrow
files (`save_to_disk` shards) through a memory map (no copy), Parquet files one row group at a
time, through one per-process cache of open files and decoded row groups bounded in both.
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
# One process-wide cache (per DataLoader worker) of open data files and decoded Parquet row groups,
# bounded so that thousands of shards neither run out of file descriptors nor grow without end.
# Row groups are kept because consecutive reads of one are common (several images of one record,
# length grouping keeping neighbours together).
OPEN_FILES_KEPT = 32
ROW_GROUP_BYTES_KEPT = 256 * 2**20


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
        self.source = pa.memory_map(path, "r")
        self.table = read_arrow(self.source)

    def value(self, row: int, column: str):
        return self.table.column(column)[row]

    def close(self) -> None:
        self.table = None
        self.source.close()


class _ParquetRows:
    """Rows of a Parquet file, read one row group (of one column) at a time through the shared row-group cache."""

    def __init__(self, path: str):
        self.path = path
        self.file = pq.ParquetFile(path)
        meta = self.file.metadata
        self.starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])

    def value(self, row: int, column: str):
        group = int(np.searchsorted(self.starts, row, side="right")) - 1
        values = _CACHE.row_group((self.path, group, column), lambda: self.file.read_row_group(group, columns=[column]).column(column))
        return values[row - int(self.starts[group])]

    def close(self) -> None:
        self.file.close()


def read_arrow(source) -> pa.Table:
    """A memory-mapped table from an Arrow IPC stream (what `datasets` writes) or IPC file (a path or an open memory map)."""
    if isinstance(source, str):
        source = pa.memory_map(source, "r")
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source).read_all()


class ReaderCache:
    """Open data files (least recently used closed first) and decoded row groups (bounded in bytes) of one process."""

    def __init__(self, files: int = OPEN_FILES_KEPT, row_group_bytes: int = ROW_GROUP_BYTES_KEPT):
        self.max_files = files
        self.max_bytes = row_group_bytes
        self.readers: OrderedDict[str, _ArrowRows | _ParquetRows] = OrderedDict()
        self.groups: OrderedDict[tuple, pa.ChunkedArray] = OrderedDict()
        self.bytes = 0
        self.pid = os.getpid()

    def reader(self, path: str) -> _ArrowRows | _ParquetRows:
        """The open reader of `path`, opened (and another closed, past the bound) when needed."""
        if self.pid != os.getpid():  # a forked worker must not share the parent's open files
            self.__init__(self.max_files, self.max_bytes)
        if path in self.readers:
            self.readers.move_to_end(path)
            return self.readers[path]
        while len(self.readers) >= self.max_files:
            old, reader = self.readers.popitem(last=False)
            for key in [k for k in self.groups if k[0] == old]:
                self.bytes -= self.groups.pop(key).nbytes
            reader.close()
        reader = _ParquetRows(path) if path.lower().endswith(".parquet") else _ArrowRows(path)
        self.readers[path] = reader
        return reader

    def row_group(self, key: tuple, read) -> pa.ChunkedArray:
        """The decoded row group `key` ((file, group, column)), read with `read()` when not kept; older ones leave past the bound."""
        if key in self.groups:
            self.groups.move_to_end(key)
            return self.groups[key]
        values = read()
        self.groups[key] = values
        self.bytes += values.nbytes
        while self.bytes > self.max_bytes and len(self.groups) > 1:
            self.bytes -= self.groups.popitem(last=False)[1].nbytes
        return values


_CACHE = ReaderCache()


def _reader(path: str) -> _ArrowRows | _ParquetRows:
    return _CACHE.reader(path)
