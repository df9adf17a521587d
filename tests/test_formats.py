"""Readers, format detection and normalisation into canonical records."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import write_jsonl
from conftest import HF_COLOURS, png_bytes, write_hf_datasets
from curriculum.data.errors import DataFileError, InvalidRecordError
from curriculum.data.formats import detect_format, iter_records
from curriculum.data.readers import iter_file
from curriculum.data.images import load_image


def make_png(path) -> str:
    """Write a tiny PNG and return its path as a string."""
    Image.new("RGB", (4, 4), (255, 0, 0)).save(path)
    return str(path)


@pytest.fixture
def folder(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        make_png(tmp_path / name)
    return tmp_path


def write_json(path, records) -> str:
    path.write_text(json.dumps(records), encoding="utf-8")
    return str(path)


def load(path, **kwargs) -> list:
    """All items of one file, records and errors, in order."""
    return [item for _, _, item in iter_records(str(path), **kwargs)]


def valid(items) -> list[dict]:
    return [item for item in items if not isinstance(item, InvalidRecordError)]


def reasons(items) -> list[str]:
    return [item.reason for item in items if isinstance(item, InvalidRecordError)]


def llava(id_, image=None, question="What is this?", answer="A square."):
    record = {"id": id_, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        record["image"] = image
    return record


def chat(role, content):
    return {"role": role, "content": content}


# --- LLaVA ---------------------------------------------------------------------------------------


def test_llava_json_array_with_text_only(folder):
    path = write_json(
        folder / "data.json",
        [
            llava("img", "a.png", question="<image>\nWhat colour?"),
            llava("txt"),
            {**llava("sys"), "conversations": [{"from": "system", "value": "Be brief."}, *llava("x")["conversations"]]},
        ],
    )
    items = load(path)
    assert reasons(items) == []
    img, txt, sys_ = items
    assert img == {
        "id": "img",
        "messages": [chat("user", "<image>\nWhat colour?"), chat("assistant", "A square.")],
        "images": [str(folder / "a.png")],
        "group": "image_text",
        "source": path,
    }
    assert txt["images"] == [] and txt["group"] == "text_only"
    assert txt["messages"][0] == chat("user", "What is this?")
    assert [m["role"] for m in sys_["messages"]] == ["system", "user", "assistant"]


def test_llava_single_image_without_placeholder_gets_it_prepended(folder):
    items = load(write_json(folder / "d.json", [llava("1", "a.png", question="Describe.")]))
    assert items[0]["messages"][0]["content"] == "<image>\nDescribe."


def test_llava_multi_image_list_and_null_image(folder):
    path = write_jsonl(
        folder / "d.jsonl",
        [
            llava("two", ["a.png", "b.png"], question="<image> vs <image>?"),
            llava("null", None) | {"image": None},
            llava("empty") | {"image": ""},
        ],
    )
    two, null, empty = load(path)
    assert two["images"] == [str(folder / "a.png"), str(folder / "b.png")]
    assert null["images"] == [] and empty["images"] == []


def test_missing_id_falls_back_to_file_and_index(folder):
    record = llava("x")
    del record["id"]
    items = load(write_jsonl(folder / "d.jsonl", [llava("first"), record]))
    assert items[1]["id"] == "d.jsonl:1"


def test_relative_images_resolve_under_image_root(folder, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("elsewhere")
    path = write_json(data_dir / "d.json", [llava("1", "a.png", question="<image>")])
    assert reasons(load(path)) == [f"image file not found: {data_dir / 'a.png'}"]
    assert load(path, image_root=str(folder))[0]["images"] == [str(folder / "a.png")]


# --- MiniCPM-V -----------------------------------------------------------------------------------


def minicpm(id_, image=None, user="What is this?", answer="A circle."):
    record = {"id": id_, "conversations": [chat("user", user), chat("assistant", answer)]}
    if image is not None:
        record["image"] = image
    return record


def test_minicpm_single_image_placeholder_kept_or_prepended(folder):
    path = write_jsonl(
        folder / "m.jsonl",
        [minicpm("kept", "a.png", user="Look: <image> now"), minicpm("added", "a.png"), minicpm("txt")],
    )
    kept, added, txt = load(path)
    assert kept["messages"][0]["content"] == "Look: <image> now"
    assert added["messages"][0]["content"] == "<image>\nWhat is this?"
    assert added["images"] == [str(folder / "a.png")]
    assert txt["images"] == [] and txt["group"] == "text_only"


def test_minicpm_dict_images_ordered_by_appearance(folder):
    record = {
        "id": "multi",
        "image": {"<image_00>": "a.png", "<image_01>": "b.png", "<image_02>": "c.png"},
        "conversations": [
            chat("user", "First <image_01>, then <image_02>."),
            chat("assistant", "Noted."),
            chat("user", "And <image_00>?"),
            chat("assistant", "Red."),
        ],
    }
    (item,) = load(write_json(folder / "m.json", [record]))
    assert item["images"] == [str(folder / n) for n in ("b.png", "c.png", "a.png")]
    assert item["messages"][0]["content"] == "First <image>, then <image>."
    assert item["messages"][2]["content"] == "And <image>?"


def test_minicpm_dict_key_missing_from_text(folder):
    record = minicpm("k", {"<image_00>": "a.png", "<image_01>": "b.png"}, user="<image_00> only")
    items = load(write_json(folder / "m.json", [record]))
    assert reasons(items) == ["placeholder <image_01> not found in conversation"]


def test_minicpm_placeholder_without_an_image_entry_is_invalid(folder):
    record = minicpm("k", {"<image_00>": "a.png"}, user="<image_00> vs <image_01>?")
    items = load(write_json(folder / "m.json", [record]))
    assert reasons(items) == ["placeholder <image_01> has no entry in 'image' (it has <image_00>)"]


# --- messages ------------------------------------------------------------------------------------


def test_messages_format(folder):
    path = write_jsonl(
        folder / "s.jsonl",
        [
            {"messages": [chat("user", "<image><image>Same?"), chat("assistant", "No.")], "images": ["a.png", "b.png"]},
            {"messages": [chat("system", "Hi."), chat("user", "2+2?"), chat("assistant", "4")], "images": []},
            {"messages": [chat("user", "1+1?"), chat("assistant", "2")]},
        ],
    )
    two, empty, missing = load(path)
    assert two["images"] == [str(folder / "a.png"), str(folder / "b.png")] and two["group"] == "image_text"
    assert empty["images"] == [] and missing["images"] == [] and missing["group"] == "text_only"
    assert empty["messages"][0] == chat("system", "Hi.")


def test_parquet_reader(folder):
    rows = [
        {"messages": [chat("user", "<image>Hi"), chat("assistant", "Yo")], "images": ["a.png"]},
        {"messages": [chat("user", "Hi"), chat("assistant", "Yo")], "images": []},
        {"messages": [chat("user", "Hi"), chat("assistant", "Yo")], "images": None},
    ]
    path = str(folder / "p.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
    assert [(index, line) for index, line, _ in iter_file(path)] == [(0, None), (1, None), (2, None)]
    items = load(path)
    assert [len(item["images"]) for item in items] == [1, 0, 0]
    assert [item["id"] for item in items] == ["p.parquet:0", "p.parquet:1", "p.parquet:2"]


# --- groups --------------------------------------------------------------------------------------


def test_group_from_record_beats_file_group(folder):
    path = write_jsonl(folder / "g.jsonl", [llava("own") | {"group": "math"}, llava("file"), llava("img", "a.png")])
    own, file_, img = load(path, group="chat")
    assert (own["group"], file_["group"], img["group"]) == ("math", "chat", "chat")
    assert [item["group"] for item in load(path)] == ["math", "text_only", "image_text"]


# --- invalid records -----------------------------------------------------------------------------


def test_jsonl_line_cut_short_reports_its_own_column(folder):
    path = write_jsonl(folder / "cut.jsonl", ['{"id": "0", "n": 1'])
    (_, line, err), = iter_records(path)
    # Column 19 is the end of line 1; counting the newline would report line 2, column 1.
    assert line == 1 and err.reason == "invalid JSON: Expecting ',' delimiter (column 19)"


def test_jsonl_broken_line_keeps_index_and_line(folder):
    path = write_jsonl(folder / "b.jsonl", [llava("0"), "", llava("1"), '{"id": "2", "conv', llava("3")])
    entries = list(iter_records(path))
    assert [(index, line) for index, line, _ in entries] == [(0, 1), (1, 3), (2, 4), (3, 5)]
    index, line, err = entries[2]
    assert isinstance(err, InvalidRecordError) and err.reason.startswith("invalid JSON")
    assert entries[3][2]["id"] == "3"


@pytest.mark.parametrize(
    "record, expected",
    [
        ([1, 2], "not a JSON object"),
        ({"id": "e", "conversations": []}, "empty or missing conversation"),
        ({"id": "r", "conversations": [{"from": "robot", "value": "x"}]}, "unknown role 'robot'"),
        ({"id": "a", "conversations": [{"from": "human", "value": "Hi"}]}, "no assistant turn"),
        (
            {"id": "c", "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]},
            "non-string content",
        ),
        (llava("p", ["a.png", "b.png"], question="<image> one"), "1 <image> placeholder(s) in the text but 2 image(s)"),
        (llava("t", question="<image> what?"), "1 <image> placeholder(s) in the text but 0 image(s)"),
        ({"id": "m", "messages": [chat("user", "x"), chat("assistant", "y")], "images": ["a.png"]}, "0 <image>"),
        ({"id": "m2", "messages": [chat("user", "x"), chat("tool", "y")]}, "unknown role 'tool'"),
        ({"id": "m3", "messages": []}, "empty or missing conversation"),
        ({"id": "q", "text": "hello"}, "unrecognised record"),
    ],
)
def test_invalid_reasons(folder, record, expected):
    # A valid record of the same format first: the file's format is known, this record breaks it.
    first = {"messages": [chat("user", "x"), chat("assistant", "y")]} if "messages" in record else llava("ok")
    path = write_jsonl(folder / "x.jsonl", [first, record])
    (_, (index, line, err)) = list(iter_records(path))
    assert isinstance(err, InvalidRecordError)
    assert expected in err.reason
    assert (index, line) == (1, 2)
    assert err.record_id == (record.get("id") if isinstance(record, dict) else None)


def test_missing_image_names_resolved_path(folder):
    path = write_json(folder / "d.json", [llava("1", "nope.png", question="<image>")])
    assert reasons(load(path)) == [f"image file not found: {folder / 'nope.png'}"]


def test_record_in_other_format_than_first_is_invalid(folder):
    other = {"messages": [chat("user", "x"), chat("assistant", "y")]}
    path = write_jsonl(folder / "mix.jsonl", ["[1]", llava("0"), other, llava("2")])
    items = load(path)
    assert reasons(items) == [
        "record is not a JSON object (got list)",
        "record is in messages format but this file is llava (from its first record)",
    ]
    assert [item["id"] for item in valid(items)] == ["0", "2"]


# --- direct API ----------------------------------------------------------------------------------


def test_detect_format():
    assert detect_format(llava("1")) == "llava"
    assert detect_format(minicpm("1")) == "minicpm"
    assert detect_format(minicpm("1", {"<image_00>": "a.png"})) == "minicpm"
    assert detect_format({"messages": []}) == "messages"
    with pytest.raises(InvalidRecordError, match="not a JSON object"):
        detect_format("text")


def test_images_are_checked_as_data_check_images_says(folder):
    (folder / "broken.png").write_bytes(b"not a png")
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(folder / "noise.png")
    png = (folder / "noise.png").read_bytes()
    (folder / "cut.png").write_bytes(png[: len(png) // 2])  # the header reads, the pixels do not
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(folder / "noise.jpg", quality=90)
    jpg = (folder / "noise.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(jpg[: len(jpg) * 2 // 3])
    path = write_json(folder / "d.json", [llava("1", "broken.png"), llava("2", "cut.png"), llava("3", "a.png"), llava("4", "cut.jpg"),
                                          llava("5", "noise.jpg")])
    broken, cut, cut_jpg = str(folder / "broken.png"), str(folder / "cut.png"), str(folder / "cut.jpg")
    assert reasons(load(path, check_images="exists")) == []
    header = reasons(load(path))  # the default: truncated files are caught without decoding them
    assert header[0] == f"image {broken} is not a readable image file" and header[1].startswith(f"image {cut} is truncated or corrupt")
    assert header[2] == f"image {cut_jpg} is truncated: its JPEG data has no end marker" and len(header) == 3
    full = reasons(load(path, check_images="full"))
    assert full[0] == f"image {broken} is not a readable image file" and full[1].startswith(f"image {cut} is corrupt or unreadable")
    assert len(full) == 3


def test_iter_file_rejects_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"unsupported data file extension '\.csv'.*\.jsonl"):
        iter_file(str(tmp_path / "d.csv"))
    with pytest.raises(FileNotFoundError, match="nothere.jsonl"):
        iter_file(str(tmp_path / "nothere.jsonl"))


def test_relative_source_resolves_to_absolute_images(folder, monkeypatch):
    monkeypatch.chdir(folder)
    write_json(folder / "d.json", [llava("1", "a.png")])
    (item,) = load("d.json")
    assert item["images"] == [os.path.join(str(folder), "a.png")] and item["source"] == "d.json"


# --- data as the Hugging Face ecosystem stores it ------------------------------------------------


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return write_hf_datasets(str(tmp_path_factory.mktemp("hf")))


def test_content_part_messages_with_embedded_images_from_sharded_parquet(hf):
    shard = os.path.join(hf["hub"], "data", "train-00000-of-00002.parquet")
    items = load(shard)
    assert [(item["id"], item["group"]) for item in items] == [("i0", "image_text"), ("i1", "image_text"), ("t2", "text_only")]
    assert items[0]["messages"] == [chat("user", "<image>Which colour fills the picture?"), chat("assistant", "Red.")]
    assert items[2]["messages"] == [chat("user", "What is 2 plus one?"), chat("assistant", "3.")]
    # The table holds a reference to the bytes in the Parquet file, never a copy or a written-out file.
    assert items[1]["images"] == [f"embedded:{shard}?row=1&column=images&item=0"]
    assert load_image(items[1]["images"][0]).getpixel((0, 0)) == HF_COLOURS["green"]
    assert items[2]["images"] == []


def test_llava_columns_with_an_embedded_or_null_image(hf):
    items = load(hf["llava"])
    assert [item["group"] for item in items] == ["image_text", "text_only", "image_text", "text_only", "image_text"]
    assert items[0]["messages"][0] == chat("user", "<image>\nWhich colour fills the picture?")
    assert items[4]["images"] == [f"embedded:{hf['llava']}?row=4&column=image"]
    assert load_image(items[4]["images"][0]).getpixel((0, 0)) == HF_COLOURS["green"]


def test_save_to_disk_arrow_shard(hf):
    shard = os.path.join(hf["saved"], "test", "data-00000-of-00001.arrow")
    items = load(shard)
    assert [(item["id"], item["group"]) for item in items] == [("i6", "image_text"), ("t8", "text_only")]
    assert load_image(items[0]["images"][0]).getpixel((0, 0)) == HF_COLOURS["red"]


def test_embedded_bytes_are_checked_like_files(tmp_path, monkeypatch):
    from datasets import Dataset, Features, Image as HFImage, List, Value

    rows = [{"messages": [{"role": "user", "content": "<image>Q?"}, {"role": "assistant", "content": "A."}], "images": [{"bytes": data, "path": None}]}
            for data in (b"not an image", png_bytes(size=(40, 40)), png_bytes(size=(8, 8)))]
    features = Features({"messages": List({"role": Value("string"), "content": Value("string")}), "images": List(HFImage())})
    path = str(tmp_path / "e.parquet")
    Dataset.from_list(rows, features=features).to_parquet(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 40x40 is past twice the limit: a bomb
    found = reasons(load(path))
    assert found[0] == f"image embedded in {path} (row 0, column 'images' item 0) is not a readable image file"
    assert found[1].startswith(f"image embedded in {path} (row 1, column 'images' item 0) is too large (decompression bomb limit 500 pixels)")
    assert len(found) == 2
    assert reasons(load(path, check_images="exists")) == []


def test_images_given_in_content_parts_and_urls(folder):
    parts = [{"type": "image", "image": "a.png"}, {"type": "text", "text": "Q?"}]
    url = {"messages": [{"role": "user", "content": [{"type": "image", "image": "https://x.org/a.jpg"}]}, chat("assistant", "A.")]}
    both = {"messages": [{"role": "user", "content": parts}, chat("assistant", "A.")], "images": ["b.png"]}
    video = {"messages": [{"role": "user", "content": [{"type": "video"}]}, chat("assistant", "A.")]}
    path = write_jsonl(folder / "p.jsonl", [{"messages": [{"role": "user", "content": parts}, chat("assistant", "A.")]}, url, both, video])
    items = load(path)
    assert items[0]["messages"][0] == chat("user", "<image>Q?") and items[0]["images"] == [str(folder / "a.png")]
    assert reasons(items) == [
        "image 0 is a URL (https://x.org/a.jpg); images are never downloaded at training time: download them and give local paths",
        "images are given both in content parts and in 'images'; give them in one place",
        "turn 0 part 0: unsupported content part (type 'video'); text and image parts are supported",
    ]


def test_json_lines_in_a_json_file_are_read(folder):
    path = folder / "lines.json"
    path.write_text(json.dumps(llava("0")) + "\n" + json.dumps(llava("1")) + "\n", encoding="utf-8")
    assert [item["id"] for item in load(path)] == ["0", "1"]


# --- whole-file faults: one line naming the file and the cause -----------------------------------


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("cut.json", '[\n  {"id": "a", "conversations": []},\n  {"id": "b", "conv', "invalid JSON at line 3 column 15: Unterminated string starting at (the file ends early: truncated?)"),
        ("cut2.json", '[\n  {"id": "a"}', "invalid JSON at line 2 column 14: the file ends inside the array (truncated?)"),
        ("bad.json", '[\n{"id": "a"},\n{"id": }\n]', "invalid JSON at line 3 column 8: Expecting value"),
        ("latin1.jsonl", '{"id": "a", "conversations": []}\n{"id": "caf\xe9"}\n'.encode("latin-1"),
         "not UTF-8 text: byte 0xe9 at offset 44 (line 2); save the file as UTF-8"),
        ("latin1.json", '[{"id": "caf\xe9"}]'.encode("latin-1"), "not UTF-8 text: byte 0xe9 at offset 12 (line 1); save the file as UTF-8"),
        ("empty.jsonl", b"", "empty file (0 bytes)"),
        ("blank.jsonl", "\n \n", "no records (only blank lines)"),
        ("blank.json", "  \n", "empty file (only whitespace)"),
        ("none.json", "[ ]", "an empty array: no records"),
        ("object.json", '{"data": [], "version": 1}', "holds one JSON object (keys ['data', 'version']), not an array of records; write an array of records, or one record per line in a .jsonl file"),
        ("array.jsonl", '[\n{"id": "a"}\n]\n', "a JSON array of records, not JSON Lines (one record per line); name the file .json"),
        ("junk.parquet", b"PAR1 this is not parquet", "not a readable Parquet file: "),
        ("junk.arrow", b"ARROW1 this is not arrow", "not a readable Arrow file (as `datasets` save_to_disk writes): "),
        ("qa.jsonl", '{"question": "q", "answer": "a", "img": "x.png"}\n', "unknown format: it has records with keys ['answer', 'img', 'question']; known formats: llava ("),
    ],
)
def test_whole_file_faults_are_one_line_naming_the_file(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(DataFileError) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {expected}") and "\n" not in message


def test_messages_with_a_single_image_column(folder):
    path = write_jsonl(folder / "one.jsonl", [{"messages": [chat("user", "<image>Q?"), chat("assistant", "A.")], "image": "a.png"},
                                              {"messages": [chat("user", "Q?"), chat("assistant", "A.")], "image": None}])
    assert [item["images"] for item in load(path)] == [[str(folder / "a.png")], []]
