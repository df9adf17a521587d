"""Record table building, memory-mapped access, invalid-record policy and the cache."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from conftest import HF_COLOURS, write_hf_datasets, write_jsonl
from curriculum.data import records as records_module
from curriculum.data.files import expand
from curriculum.data.errors import DataFileError
from curriculum.data.images import load_image
from curriculum.run.datamodule import RecordDataset
from curriculum.data.records import (
    SCHEMA,
    LoadReport,
    RecordTable,
    build_record_table,
    load_or_build,
    records_fingerprint,
)


def llava(id_, image=None, question="Q?", answer="A."):
    record = {"id": id_, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        record["image"] = image
    return record


@pytest.fixture
def data(tmp_path):
    """One LLaVA file mixing image and text-only records, one text-only messages file."""
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    mixed = write_jsonl(
        tmp_path / "mixed.jsonl",
        [llava("i0", "a.png"), llava("t0"), llava("i1", "a.png", question="<image>\nQ?"), llava("t1")],
    )
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"id": f"c{k}", "messages": turns} for k in range(3)])
    return tmp_path, mixed, chat


def test_build_roundtrip_and_group_indices(data):
    tmp_path, mixed, chat = data
    out = str(tmp_path / "out" / "records.arrow")
    table, report = build_record_table([mixed, chat], out_path=out)
    assert isinstance(table, RecordTable) and table.path == out
    assert len(table) == 7
    assert table[0] == {
        "id": "i0",
        "messages": [{"role": "user", "content": "<image>\nQ?"}, {"role": "assistant", "content": "A."}],
        "images": [str(tmp_path / "a.png")],
        "group": "image_text",
        "source": mixed,
    }
    assert table[-1]["id"] == "c2" and table[-1]["images"] == []
    assert [table.num_images(i) for i in range(7)] == [1, 0, 1, 0, 0, 0, 0]
    assert table.group_names() == ["image_text", "text_only"]
    indices = table.group_indices()
    assert indices.keys() == {"image_text", "text_only"}
    np.testing.assert_array_equal(indices["image_text"], [0, 2])
    np.testing.assert_array_equal(indices["text_only"], [1, 3, 4, 5, 6])
    assert indices["text_only"].dtype == np.int64
    np.testing.assert_array_equal(table.approx_length(), [len("<image>\nQ?A.") + 64, 4, 12 + 64, 4, 4, 4, 4])
    assert report.groups == {"image_text": 2, "text_only": 5}
    assert report.sources == {mixed: {"image_text": 2, "text_only": 2}, chat: {"text_only": 3}}
    assert report.invalid == []
    with pytest.raises(IndexError):
        table[7]


def test_table_is_memory_mapped_arrow_file_with_schema(data):
    tmp_path, mixed, chat = data
    out = str(tmp_path / "r.arrow")
    build_record_table([mixed], out_path=out)
    with pa.memory_map(out) as source:
        assert pa.ipc.open_file(source).schema.equals(SCHEMA)
    allocated = pa.total_allocated_bytes()
    table = RecordTable.open(out)
    assert pa.total_allocated_bytes() == allocated  # zero-copy: columns point into the mapped file
    clone = pickle.loads(pickle.dumps(table))
    assert clone.path == out and clone[1] == table[1]


def test_rows_are_written_in_bounded_batches(data, monkeypatch):
    tmp_path, mixed, chat = data
    monkeypatch.setattr(records_module, "BATCH_ROWS", 3)
    table, _ = build_record_table([mixed, chat], out_path=str(tmp_path / "r.arrow"))
    assert [b.num_rows for b in table.table.to_batches()] == [3, 3, 1]
    assert [table[i]["id"] for i in range(7)] == ["i0", "t0", "i1", "t1", "c0", "c1", "c2"]
    np.testing.assert_array_equal(table.group_indices()["text_only"], [1, 3, 4, 5, 6])


def test_file_groups_override_and_record_group_wins(data):
    tmp_path, mixed, chat = data
    own = write_jsonl(tmp_path / "own.jsonl", [llava("o0") | {"group": "math"}, llava("o1")])
    table, report = build_record_table(
        [mixed, own], out_path=str(tmp_path / "r.arrow"), file_groups={own: "extra"}
    )
    assert report.sources[own] == {"math": 1, "extra": 1}
    assert report.groups == {"image_text": 2, "text_only": 2, "math": 1, "extra": 1}
    assert table.group_names() == ["image_text", "text_only", "math", "extra"]
    np.testing.assert_array_equal(table.group_indices()["extra"], [5])


def test_file_groups_must_name_given_files(data):
    tmp_path, mixed, chat = data
    with pytest.raises(ValueError, match="not among the data files"):
        build_record_table([mixed], out_path=str(tmp_path / "r.arrow"), file_groups={"typo.jsonl": "x"})


@pytest.fixture
def broken(data):
    tmp_path, mixed, chat = data
    path = write_jsonl(
        tmp_path / "broken.jsonl",
        [llava("ok"), llava("gone", "missing.png"), '{"id": "x",', llava("ok2", question="<image> but none")],
    )
    return tmp_path, mixed, path


def test_error_mode_reports_all_invalid_and_writes_nothing(broken):
    tmp_path, mixed, path = broken
    out = tmp_path / "r.arrow"
    table, report = build_record_table([mixed, path], out_path=str(out))
    assert table is None and not out.exists()
    assert report.invalid == [
        {
            "source": path,
            "index": 1,
            "line": 2,
            "id": "gone",
            "reason": f"image file not found: {tmp_path / 'missing.png'}",
        },
        {"source": path, "index": 2, "line": 3, "id": None, "reason": report.invalid[1]["reason"]},
        {
            "source": path,
            "index": 3,
            "line": 4,
            "id": "ok2",
            "reason": "1 <image> placeholder(s) in the text but 0 image(s)",
        },
    ]
    assert report.invalid[1]["reason"].startswith("invalid JSON")
    assert report.groups == {"image_text": 2, "text_only": 3}
    assert sorted(os.listdir(tmp_path)) == ["a.png", "broken.jsonl", "chat.jsonl", "mixed.jsonl"]
    assert f"{path} record 1 (line 2) (id gone): image file not found" in report.describe_invalid()


def test_skip_mode_writes_valid_records(broken):
    tmp_path, mixed, path = broken
    table, report = build_record_table([mixed, path], out_path=str(tmp_path / "r.arrow"), on_invalid="skip")
    assert [table[i]["id"] for i in range(len(table))] == ["i0", "t0", "i1", "t1", "ok"]
    assert len(report.invalid) == 3
    assert json.loads(json.dumps(report.to_dict())) == report.to_dict()


@pytest.mark.parametrize("on_invalid", ["skip", "error"])
def test_a_file_with_no_usable_record_fails_naming_it_and_the_first_reason(tmp_path, on_invalid):
    path = write_jsonl(tmp_path / "bad.jsonl", ["{", "nope"])
    expected = f"{path}: none of its 2 record(s) is usable; the first: record 0 (line 1): invalid JSON: Expecting property name"
    with pytest.raises(DataFileError, match=re.escape(expected)):
        build_record_table([path], out_path=str(tmp_path / "r.arrow"), on_invalid=on_invalid)
    assert os.listdir(tmp_path) == ["bad.jsonl"]


def test_rejects_unknown_policy(data):
    tmp_path, mixed, chat = data
    with pytest.raises(ValueError, match="on_invalid"):
        build_record_table([mixed], out_path=str(tmp_path / "r.arrow"), on_invalid="ignore")


def test_atomic_write_replaces_and_leaves_no_tmp(data):
    tmp_path, mixed, chat = data
    out = tmp_path / "out"
    build_record_table([mixed], out_path=str(out / "r.arrow"))
    table, _ = build_record_table([chat], out_path=str(out / "r.arrow"))
    assert os.listdir(out) == ["r.arrow"] and len(table) == 3


def test_failed_build_keeps_previous_table(data, monkeypatch):
    tmp_path, mixed, chat = data
    out = tmp_path / "out"
    build_record_table([mixed], out_path=str(out / "r.arrow"))

    def explode(rows):
        raise RuntimeError("disk full")

    monkeypatch.setattr(records_module, "_to_batch", explode)
    with pytest.raises(RuntimeError):
        build_record_table([chat], out_path=str(out / "r.arrow"))
    assert os.listdir(out) == ["r.arrow"] and len(RecordTable.open(str(out / "r.arrow"))) == 4


def test_load_or_build_reuses_cache(data):
    tmp_path, mixed, chat = data
    cache = str(tmp_path / "cache")
    table, report = load_or_build([mixed, chat], cache_dir=cache)
    key = records_fingerprint([mixed, chat], None, None)
    assert table.path == os.path.join(cache, "records", f"{key}.arrow")
    assert sorted(os.listdir(os.path.join(cache, "records"))) == [f"{key}.arrow", f"{key}.lock", f"{key}.report.json"]
    mtime = os.stat(table.path).st_mtime_ns
    again, report2 = load_or_build([mixed, chat], cache_dir=cache)
    assert os.stat(again.path).st_mtime_ns == mtime
    assert report2.to_dict() == report.to_dict() and again[3] == table[3]
    # The build is timed (milliseconds for these files: rounded, it can be 0.0); the reuse keeps that time.
    assert (report.reused, report2.reused) == (False, True) and report.build_seconds is not None and report.build_seconds >= 0


def test_fingerprint_tracks_inputs(data):
    tmp_path, mixed, chat = data
    base = records_fingerprint([mixed], None, None)
    assert len(base) == 16 and base == records_fingerprint([mixed], None, None)
    assert base != records_fingerprint([mixed], str(tmp_path), None)
    assert base != records_fingerprint([mixed], None, {mixed: "g"})
    assert base != records_fingerprint([mixed, chat], None, None)
    with open(mixed, "a", encoding="utf-8") as f:
        f.write(json.dumps(llava("t9")) + "\n")
    assert base != records_fingerprint([mixed], None, None)


def test_cached_invalid_entries_come_back(broken):
    tmp_path, mixed, path = broken
    cache = str(tmp_path / "cache")
    table, report = load_or_build([mixed, path], cache_dir=cache, on_invalid="skip")
    assert len(table) == 5 and len(report.invalid) == 3
    mtime = os.stat(table.path).st_mtime_ns
    table2, report2 = load_or_build([mixed, path], cache_dir=cache, on_invalid="error")
    assert table2 is None and report2.invalid == report.invalid
    assert os.stat(table.path).st_mtime_ns == mtime


def test_error_mode_failure_is_not_cached_and_missing_image_is_rechecked(broken):
    tmp_path, mixed, path = broken
    cache = str(tmp_path / "cache")
    table, report = load_or_build([mixed, path], cache_dir=cache)
    assert table is None and [f for f in os.listdir(os.path.join(cache, "records")) if not f.endswith(".lock")] == []
    load_or_build([mixed, path], cache_dir=cache, on_invalid="skip")
    Image.new("RGB", (4, 4)).save(tmp_path / "missing.png")
    table, report = load_or_build([mixed, path], cache_dir=cache, on_invalid="skip")
    assert [table[i]["id"] for i in range(len(table))][-2:] == ["ok", "gone"]
    assert len(report.invalid) == 2


def test_report_roundtrip():
    entry = {"source": "f", "index": 0, "line": None, "id": None, "reason": "r"}
    report = LoadReport(groups={"a": 1}, sources={"f": {"a": 1}}, invalid=[entry])
    assert LoadReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_content_digest_follows_the_records_not_their_folders(tmp_path):
    def table(folder, answer="A."):
        folder.mkdir()
        Image.new("RGB", (4, 4)).save(folder / "a.png")
        path = write_jsonl(folder / "d.jsonl", [llava("i0", "a.png"), llava("t0", answer=answer)])
        return build_record_table([path], out_path=str(folder / "t.arrow"))[0]

    here, moved, edited = table(tmp_path / "here"), table(tmp_path / "moved"), table(tmp_path / "edited", answer="B.")
    assert here[0]["images"] != moved[0]["images"]
    assert here.content_digest() == moved.content_digest() != edited.content_digest()


_BUILD_IN_ONE_PROCESS = """
import json, sys, time
from curriculum.data.records import load_or_build
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # start together
table, report = load_or_build([sys.argv[1]], cache_dir=sys.argv[2])
print(json.dumps({"reused": report.reused, "rows": [table[i] for i in range(len(table))]}))
"""


def test_two_processes_on_new_data_build_one_table_and_see_the_same_records(tmp_path):
    # Enough records that the build takes a while: the second process must wait for the first.
    lines = [llava(f"r{i}", answer=f"Answer {i}.") for i in range(20000)]
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    start = time.time() + 3.0
    procs = [
        subprocess.Popen([sys.executable, "-c", _BUILD_IN_ONE_PROCESS, path, str(tmp_path / "cache"), str(start)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert sorted(r["reused"] for r in results) == [False, True]
    assert results[0]["rows"] == results[1]["rows"] and len(results[0]["rows"]) == 20000
    assert sorted(f for f in os.listdir(tmp_path / "cache" / "records") if f.endswith(".arrow")) == [
        f"{records_fingerprint([path], None, None)}.arrow"
    ]


def test_embedded_images_are_read_by_dataloader_workers(tmp_path):
    hf = write_hf_datasets(str(tmp_path))
    files = expand(hf["hub"], "train") + [hf["llava"]] + expand(hf["saved"], "train")
    table, report = load_or_build(files, cache_dir=str(tmp_path / "cache"))
    assert report.groups == {"image_text": 11, "text_only": 6}
    _colours([table[0]])  # the parent reads too: forked workers must not reuse its open files
    loader = DataLoader(RecordDataset(table), batch_size=4, num_workers=2, collate_fn=_colours, multiprocessing_context="fork")
    colours = [c for batch in loader for c in batch]
    answers = [table[i]["messages"][-1]["content"].rstrip(".").lower() for i in range(len(table))]
    expected = [(HF_COLOURS[a],) if table[i]["images"] else () for i, a in enumerate(answers)]
    assert colours == expected


def _colours(records: list[dict]) -> list[tuple]:
    return [tuple(load_image(ref).getpixel((0, 0)) for ref in r["images"]) for r in records]


def test_a_file_edited_with_its_size_and_mtime_restored_is_read_again(data):
    """`cp -p`, `rsync -a` or `tar x` put back the mtime; the table cache must still see the new records."""
    tmp_path, mixed, _ = data
    cache = str(tmp_path / "cache")
    before, _ = load_or_build([mixed], cache_dir=cache)
    first = before[0]["messages"][-1]["content"]
    stat = os.stat(mixed)
    with open(mixed, encoding="utf-8") as f:
        text = f.read()
    edited = text.replace(first, first[::-1], 1)  # same size
    assert edited != text and len(edited) == len(text)
    with open(mixed, "w", encoding="utf-8") as f:
        f.write(edited)
    os.utime(mixed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(mixed).st_size == stat.st_size and os.stat(mixed).st_mtime_ns == stat.st_mtime_ns
    after, report = load_or_build([mixed], cache_dir=cache)
    assert not report.reused and after[0]["messages"][-1]["content"] == first[::-1]
