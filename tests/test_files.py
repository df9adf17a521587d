"""Entries of data.train_files / data.val_files -> data files: globs, Hub repo folders, save_to_disk, :split."""

from __future__ import annotations

import os

import pytest

from conftest import write_hf_datasets
from curriculum.data.files import expand
from curriculum.data.errors import DataFileError


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return write_hf_datasets(str(tmp_path_factory.mktemp("hf")))


def touch(path) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("[]")
    return str(path)


def names(files, root) -> list[str]:
    return [os.path.relpath(f, root) for f in files]


def test_a_file_is_itself_and_a_missing_one_is_named(tmp_path):
    path = touch(tmp_path / "d.json")
    assert expand(path, "train") == [path]
    with pytest.raises(FileNotFoundError, match="data file not found: .*nope.json"):
        expand(str(tmp_path / "nope.json"), "train")


def test_glob_is_sorted_and_one_that_matches_nothing_says_so(tmp_path):
    for name in ("b-1.parquet", "a-2.parquet", "a-10.parquet", "notes.txt"):
        touch(tmp_path / "shards" / name)
    assert names(expand(str(tmp_path / "shards" / "*.parquet"), "train"), tmp_path / "shards") == ["a-10.parquet", "a-2.parquet", "b-1.parquet"]
    assert len(expand(str(tmp_path / "**" / "*.parquet"), "train")) == 3
    with pytest.raises(FileNotFoundError, match=r"no data file matches .*\*\.jsonl"):
        expand(str(tmp_path / "shards" / "*.jsonl"), "train")


def test_hub_repo_copy_picks_the_split_of_the_role(hf):
    hub = hf["hub"]
    assert names(expand(hub, "train"), hub) == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    assert names(expand(hub, "validation"), hub) == ["data/validation-00000-of-00001.parquet"]
    assert names(expand(f"{hub}:validation", "train"), hub) == ["data/validation-00000-of-00001.parquet"]
    with pytest.raises(DataFileError, match=r"has no split 'test'; its splits are \['train', 'validation'\]"):
        expand(f"{hub}:test", "validation")


def test_split_folders_keywords_and_custom_split_names(tmp_path):
    for rel in ("train/0000.parquet", "train/0001.parquet", "dev/0000.parquet", "test/0000.parquet"):
        touch(tmp_path / "repo" / rel)
    repo = tmp_path / "repo"
    assert names(expand(str(repo), "train"), repo) == ["train/0000.parquet", "train/0001.parquet"]
    assert names(expand(str(repo), "validation"), repo) == ["dev/0000.parquet"]  # dev is a validation keyword
    for rel in ("data/train_sft-00000-of-00001.parquet", "data/test_sft-00000-of-00001.parquet"):
        touch(tmp_path / "sft" / rel)
    sft = tmp_path / "sft"
    with pytest.raises(DataFileError, match=r"has splits \['test_sft', 'train_sft'\] but none is a train split; name one as .*sft:<split>"):
        expand(str(sft), "train")
    assert names(expand(f"{sft}:train_sft", "train"), sft) == ["data/train_sft-00000-of-00001.parquet"]


def test_a_folder_without_splits_is_the_data_for_either_role_and_one_format_is_read(tmp_path):
    for rel in ("part-a.jsonl", "sub/part-b.jsonl", "dataset_info.json", ".cache/x.jsonl", "README.md"):
        touch(tmp_path / "plain" / rel)
    plain = tmp_path / "plain"
    expected = ["part-a.jsonl", "sub/part-b.jsonl"]
    assert names(expand(str(plain), "train"), plain) == expected and names(expand(str(plain), "validation"), plain) == expected
    touch(tmp_path / "empty" / "README.md")
    with pytest.raises(DataFileError, match=r"empty: no data files \(.json, .jsonl, .parquet, .arrow\) in this folder"):
        expand(str(tmp_path / "empty"), "train")


def test_save_to_disk_dataset_dict_and_dataset(hf):
    saved = hf["saved"]
    assert names(expand(saved, "train"), saved) == ["train/data-00000-of-00001.arrow"]
    with pytest.raises(DataFileError, match=r"has splits \['test', 'train'\] but none is a validation split; name one as .*saved:<split>"):
        expand(saved, "validation")
    assert names(expand(f"{saved}:test", "validation"), saved) == ["test/data-00000-of-00001.arrow"]
    one = os.path.join(saved, "train")
    assert names(expand(one, "validation"), one) == ["data-00000-of-00001.arrow"]
    with pytest.raises(DataFileError, match="one Dataset without splits; drop ':train'"):
        expand(f"{one}:train", "train")


def test_a_file_cannot_name_a_split(tmp_path):
    path = touch(tmp_path / "d.json")
    with pytest.raises(FileNotFoundError):
        expand(f"{path}:train", "train")
