"""Canonical records: the Arrow schema, the load report and the memory-mapped record table.

``build_record_table`` streams data files through the readers in ``formats`` and writes the valid
records, batch by batch, to an Arrow IPC file (atomically). ``RecordTable`` maps that file into
memory, so forked DataLoader workers share its pages instead of copying Python objects, and
converts one row at a time. ``load_or_build`` caches tables by a fingerprint of the inputs.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import tempfile
import time
from dataclasses import dataclass, field

import filelock
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curriculum.atomic import write_json
from curriculum.data.errors import DataFileError, InvalidRecordError
from curriculum.data.formats import IMAGE_TOKEN, MISSING_IMAGE, iter_records
from curriculum.progress_lines import CountedLines

__all__ = [
    "IMAGE_TOKEN",
    "SCHEMA",
    "SCHEMA_VERSION",
    "LoadReport",
    "RecordTable",
    "build_record_table",
    "load_or_build",
    "records_fingerprint",
]

# Bump whenever the schema or normalisation changes, so cached tables are never reused stale.
SCHEMA_VERSION = 2
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("images", pa.list_(pa.string())),
        ("group", pa.string()),
        ("source", pa.string()),
        ("length", pa.int64()),
    ]
)
RECORD_FIELDS = ("id", "messages", "images", "group", "source")
ON_INVALID = ("error", "skip")
# Characters an image counts for in approx_length: a rough stand-in for its tokens.
IMAGE_LENGTH = 64
BATCH_ROWS = 8192


@dataclass
class LoadReport:
    """Valid-record counts per group and per file, and every invalid record with its reason."""

    groups: dict[str, int] = field(default_factory=dict)
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    invalid: list[dict] = field(default_factory=list)
    # Seconds the record table took to build, and whether this run reused it from the cache.
    build_seconds: float | None = None
    reused: bool = False

    def to_dict(self) -> dict:
        """Return a JSON-ready copy."""
        return {
            "groups": dict(self.groups),
            "sources": {source: dict(counts) for source, counts in self.sources.items()},
            "invalid": [dict(entry) for entry in self.invalid],
            "build_seconds": self.build_seconds,
        }

    @classmethod
    def from_dict(cls, data: dict) -> LoadReport:
        """Rebuild a report from to_dict's output."""
        return cls(
            groups=dict(data["groups"]), sources=dict(data["sources"]), invalid=list(data["invalid"]), build_seconds=data.get("build_seconds")
        )

    def describe_invalid(self, limit: int = 20) -> str:
        """Return one line per invalid record (at most limit of them), for error messages."""
        lines = [_describe(entry) for entry in self.invalid[:limit]]
        if len(self.invalid) > limit:
            lines.append(f"... and {len(self.invalid) - limit} more")
        return "\n".join(lines)

    def add_valid(self, source: str, group: str) -> None:
        """Count one valid record of group from source."""
        self.groups[group] = self.groups.get(group, 0) + 1
        counts = self.sources.setdefault(source, {})
        counts[group] = counts.get(group, 0) + 1

    def add_invalid(self, source: str, index: int, line: int | None, err: InvalidRecordError) -> None:
        """Record one invalid record with its position and reason."""
        self.invalid.append({"source": source, "index": index, "line": line, "id": err.record_id, "reason": err.reason})


def _describe(entry: dict) -> str:
    where = f"record {entry['index']}" + (f" (line {entry['line']})" if entry["line"] is not None else "")
    record = f" (id {entry['id']})" if entry["id"] is not None else ""
    return f"{entry['source']} {where}{record}: {entry['reason']}"


class RecordTable:
    """Canonical records in a memory-mapped Arrow IPC file, converted to dicts one row at a time."""

    def __init__(self, path: str):
        self.path = path
        self._map = pa.memory_map(path, "r")
        self._table = pa.ipc.open_file(self._map).read_all()
        if not self._table.schema.equals(SCHEMA):
            raise ValueError(f"{path}: not a curriculum record table (schema {self._table.schema})")
        self._batches = self._table.to_batches()
        self._starts = np.cumsum([0] + [batch.num_rows for batch in self._batches])
        self._group_names: list[str] | None = None
        self._lengths: np.ndarray | None = None

    def content_digest(self) -> str:
        """Short sha256 of what training reads, in order: ids, messages, groups and image file names.

        Folders are left out, so the same data under another cache or mount gives the same digest.
        """
        h = hashlib.sha256()
        for batch in self._batches:
            images = batch.column("images")
            names = pc.replace_substring_regex(pc.list_flatten(images), pattern=r"^.*[/\\]", replacement="")
            for part in (batch.select(["id", "messages", "group"]), pa.record_batch([pc.list_value_length(images)], names=["n"]),
                         pa.record_batch([names], names=["image"])):
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, part.schema) as writer:
                    writer.write_batch(part)
                h.update(sink.getvalue())
        return h.hexdigest()[:16]

    @classmethod
    def open(cls, path: str) -> RecordTable:
        """Open a table written by build_record_table."""
        return cls(path)

    @property
    def table(self) -> pa.Table:
        """The underlying (memory-mapped) pyarrow Table."""
        return self._table

    def __len__(self) -> int:
        return self._table.num_rows

    def __getitem__(self, i: int) -> dict:
        batch, row = self._locate(i)
        record = batch.slice(row, 1).to_pylist()[0]
        return {name: record[name] for name in RECORD_FIELDS}

    def num_images(self, i: int) -> int:
        """Number of images of row i."""
        batch, row = self._locate(i)
        return len(batch.column("images")[row])

    def group_names(self) -> list[str]:
        """Group names in order of first appearance in the table."""
        if self._group_names is None:
            self._group_names = pc.unique(self._table.column("group")).to_pylist()
        return list(self._group_names)

    def group_indices(self) -> dict[str, np.ndarray]:
        """Ascending int64 row indices of each group."""
        column = self._table.column("group")
        return {
            name: np.flatnonzero(pc.equal(column, name).to_numpy(zero_copy_only=False)).astype(np.int64)
            for name in self.group_names()
        }

    def approx_length(self) -> np.ndarray:
        """Read-only per-row length: characters of all message contents plus IMAGE_LENGTH per image."""
        if self._lengths is None:
            # Zero-copy when the table is one batch; otherwise one concatenation, cached.
            self._lengths = self._table.column("length").to_numpy()
            self._lengths.setflags(write=False)
        return self._lengths

    def _locate(self, i: int) -> tuple[pa.RecordBatch, int]:
        i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record index {i} out of range for {n} records")
        chunk = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._batches[chunk], i - int(self._starts[chunk])

    def __getstate__(self) -> dict:
        # Spawned workers re-map the file instead of receiving a pickled copy of the table.
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])


def build_record_table(
    files: list[str],
    *,
    out_path: str,
    image_root: str | None = None,
    file_groups: dict[str, str] | None = None,
    on_invalid: str = "error",
    check_images: str = "header",
) -> tuple[RecordTable | None, LoadReport]:
    """Validate files into a record table at out_path, written atomically; return (table or None, report)."""
    _check_policy(on_invalid)
    file_groups = _check_file_groups(files, file_groups)
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{os.path.basename(out_path)}.", suffix=".tmp")
    os.close(fd)
    started = time.perf_counter()
    try:
        report = _write_records(files, tmp, image_root, file_groups, check_images, keep_after_invalid=on_invalid == "skip")
        report.build_seconds = round(time.perf_counter() - started, 3)
        if on_invalid == "error" and report.invalid:
            return None, report
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return RecordTable.open(out_path), report


def _write_records(
    files: list[str], tmp: str, image_root: str | None, file_groups: dict[str, str], check_images: str, *, keep_after_invalid: bool
) -> LoadReport:
    report = LoadReport()
    rows: list[dict] = []
    progress = CountedLines("record table", "records read")
    with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
        for path in files:
            report.sources.setdefault(path, {})
            for index, line, item in iter_records(path, image_root=image_root, group=file_groups.get(path), check_images=check_images):
                progress.update(progress.done + 1, os.path.basename(path))
                if isinstance(item, InvalidRecordError):
                    report.add_invalid(path, index, line, item)
                    continue
                report.add_valid(path, item["group"])
                # In error mode the table is thrown away once anything is invalid: stop writing it.
                if keep_after_invalid or not report.invalid:
                    rows.append(item)
                if len(rows) >= BATCH_ROWS:
                    writer.write_batch(_to_batch(rows))
                    rows = []
            _require_some_valid(path, report)
        if rows:
            writer.write_batch(_to_batch(rows))
    progress.finish()
    return report


def _require_some_valid(path: str, report: LoadReport) -> None:
    """A file none of whose records can be used is a mistake (wrong file, format or image_root): say why."""
    if report.sources[path]:
        return
    own = [entry for entry in report.invalid if entry["source"] == path]
    raise DataFileError(f"{path}: none of its {len(own)} record(s) is usable; the first: {_describe(own[0])[len(path) + 1:]}")


def _to_batch(rows: list[dict]) -> pa.RecordBatch:
    columns = {name: [row[name] for row in rows] for name in RECORD_FIELDS}
    columns["length"] = [_approx_length(row) for row in rows]
    return pa.RecordBatch.from_pydict(columns, schema=SCHEMA)


def _approx_length(record: dict) -> int:
    return sum(len(m["content"]) for m in record["messages"]) + IMAGE_LENGTH * len(record["images"])


def _check_policy(on_invalid: str) -> None:
    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")


def _check_file_groups(files: list[str], file_groups: dict[str, str] | None) -> dict[str, str]:
    file_groups = dict(file_groups or {})
    unknown = sorted(set(file_groups) - set(files))
    if unknown:
        raise ValueError(f"file_groups names files that are not among the data files: {unknown}")
    return file_groups


def records_fingerprint(files: list[str], image_root: str | None, file_groups: dict[str, str] | None, check_images: str = "header") -> str:
    """Short sha256 of the inputs (paths, inodes, sizes, mtimes, ctimes, image_root, file_groups, image check, schema version).

    The ctime and inode notice a file edited or replaced with its mtime restored (`cp -p`, `rsync -a`,
    `tar x`), which size and mtime alone miss.
    """
    entries = []
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file not found: {path}")
        stat = os.stat(path)
        entries.append([path, os.path.abspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns])
    payload = {
        "schema_version": SCHEMA_VERSION,
        "files": entries,
        "image_root": os.path.abspath(image_root) if image_root else None,
        "file_groups": sorted((file_groups or {}).items()),
        "check_images": check_images,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_or_build(
    files: list[str],
    *,
    cache_dir: str,
    image_root: str | None = None,
    file_groups: dict[str, str] | None = None,
    on_invalid: str = "error",
    check_images: str = "header",
) -> tuple[RecordTable | None, LoadReport]:
    """Return the cached record table for these inputs, building and caching it when absent or stale.

    Processes sharing the cache (ranks of one node) build a new table once: the first takes a
    file lock and builds, the others wait for it and open the result.
    """
    _check_policy(on_invalid)
    key = records_fingerprint(files, image_root, file_groups, check_images)
    folder = os.path.join(cache_dir, "records")
    os.makedirs(folder, exist_ok=True)
    table_path = os.path.join(folder, f"{key}.arrow")
    report_path = os.path.join(folder, f"{key}.report.json")
    with filelock.FileLock(os.path.join(folder, f"{key}.lock")):
        report = _cached_report(table_path, report_path)
        if report is not None:
            report.reused = True
            if on_invalid == "error" and report.invalid:
                return None, report
            return RecordTable.open(table_path), report
        table, report = build_record_table(
            files, out_path=table_path, image_root=image_root, file_groups=file_groups, on_invalid=on_invalid, check_images=check_images
        )
        if table is not None:
            write_json(report_path, report.to_dict())
    return table, report


def _cached_report(table_path: str, report_path: str) -> LoadReport | None:
    if not (os.path.isfile(table_path) and os.path.isfile(report_path)):
        return None
    with open(report_path, encoding="utf-8") as f:
        report = LoadReport.from_dict(json.load(f))
    # Image files are not part of the fingerprint: a record skipped for a missing image must be
    # re-read once that image exists.
    for entry in report.invalid:
        reason = entry["reason"]
        if reason.startswith(MISSING_IMAGE) and os.path.isfile(reason[len(MISSING_IMAGE) :]):
            return None
    return report
