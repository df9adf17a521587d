"""Expand what a user names in data.train_files / data.val_files into the data files to read.

An entry is a data file, a glob pattern, a folder of data files (a local copy of a Hugging Face
Hub dataset repo: Parquet shards, possibly in split folders), a `save_to_disk` folder (Dataset or
DatasetDict), optionally with `:split`. Splits follow the Hub's naming convention: a path part
(folder or file name) that is, or starts with, a split keyword, or shards named
`<split>-00000-of-00004.parquet`. Train entries default to the `train` split, validation entries
to `validation`.
"""

from __future__ import annotations

import glob
import json
import os
import re

from curriculum.data.errors import DataFileError
from curriculum.data.readers import EXTENSIONS

ROLES = ("train", "validation")
# The Hub's split keywords (datasets.data_files), canonical name first.
SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
_KEYWORD = {k: split for split, keywords in SPLIT_KEYWORDS.items() for k in keywords}
_SHARD = re.compile(r"^(?P<split>.+?)-\d+-of-\d+$")
_KEYWORD_PREFIX = re.compile(r"^(?P<word>[a-z]+)(?:[-._ 0-9].*)?$")
_SPLIT_SUFFIX = re.compile(r"^(?P<base>.+):(?P<split>[\w.-]+)$")
# Metadata a Hub repo or save_to_disk folder holds beside its data; never records.
_METADATA = {"dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json"}


def expand(entry: str, role: str) -> list[str]:
    """The data files `entry` names for `role` ("train" or "validation"), in a stable order."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    m = _SPLIT_SUFFIX.match(entry)
    if m and not os.path.exists(entry) and os.path.isdir(m["base"]):
        return _folder(m["base"], m["split"], role)
    if glob.has_magic(entry):
        files = sorted(f for f in glob.glob(entry, recursive=True) if os.path.isfile(f))
        if not files:
            raise FileNotFoundError(f"no data file matches {entry}")
        return files
    if os.path.isfile(entry):
        return [entry]
    if os.path.isdir(entry):
        return _folder(entry, None, role)
    raise FileNotFoundError(f"data file not found: {entry}")


def _folder(folder: str, split: str | None, role: str) -> list[str]:
    if os.path.isfile(os.path.join(folder, "dataset_dict.json")):
        return _dataset_dict(folder, split, role)
    if os.path.isfile(os.path.join(folder, "state.json")):
        if split:
            raise DataFileError(f"{folder}:{split}: this save_to_disk folder is one Dataset without splits; drop ':{split}'")
        return _saved_dataset(folder)
    return _data_folder(folder, split, role)


def _dataset_dict(folder: str, split: str | None, role: str) -> list[str]:
    with open(os.path.join(folder, "dataset_dict.json"), encoding="utf-8") as f:
        splits = list(json.load(f).get("splits", []))
    chosen = _choose(folder, splits, split, role)
    return _saved_dataset(os.path.join(folder, chosen))


def _saved_dataset(folder: str) -> list[str]:
    with open(os.path.join(folder, "state.json"), encoding="utf-8") as f:
        state = json.load(f)
    if state.get("_indices_data_files"):
        raise DataFileError(f"{folder}: saved with an indices mapping; save it again after .flatten_indices()")
    files = [os.path.join(folder, entry["filename"]) for entry in state.get("_data_files", [])]
    missing = [f for f in files if not os.path.isfile(f)]
    if not files or missing:
        raise DataFileError(f"{folder}: a save_to_disk folder whose state.json lists no data file or a missing one ({missing[:1]})")
    return files


def _data_folder(folder: str, split: str | None, role: str) -> list[str]:
    found: dict[str, list[str]] = {}
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            ext = os.path.splitext(name)[1].lower()
            if ext in EXTENSIONS and name not in _METADATA and not name.startswith("."):
                found.setdefault(ext, []).append(os.path.join(root, name))
    # One format per folder, as the Hub's loader picks: Parquet shards over JSON Lines over JSON.
    ext = next((e for e in (".parquet", ".jsonl", ".json", ".arrow") if e in found), None)
    if ext is None:
        raise DataFileError(
            f"{folder}: no data files ({', '.join(EXTENSIONS)}) in this folder, and it is not a save_to_disk folder"
        )
    files = found[ext]
    by_split: dict[str, list[str]] = {}
    for path in files:
        by_split.setdefault(_split_of(os.path.relpath(path, folder)) or "train", []).append(path)
    if len(by_split) == 1 and split is None:
        return files  # no split structure: the folder is the data, whichever role names it
    return by_split[_choose(folder, list(by_split), split, role)]


def _split_of(relpath: str) -> str | None:
    """The split a file belongs to by the Hub's naming, or None."""
    parts = relpath.replace(os.sep, "/").split("/")
    parts[-1] = os.path.splitext(parts[-1])[0]
    shard = _SHARD.match(parts[-1])
    if shard:
        return _KEYWORD.get(shard["split"], shard["split"])
    for part in parts:
        m = _KEYWORD_PREFIX.match(part.lower())
        if m and m["word"] in _KEYWORD:
            return _KEYWORD[m["word"]]
    return None


def _choose(folder: str, splits: list[str], split: str | None, role: str) -> str:
    if split is not None:
        wanted = [split, _KEYWORD.get(split, split)]
        for name in splits:
            if name in wanted:
                return name
        raise DataFileError(f"{folder}: has no split {split!r}; its splits are {sorted(splits)}")
    for name in splits:
        if _KEYWORD.get(name, name) == role:
            return name
    raise DataFileError(
        f"{folder}: has splits {sorted(splits)} but none is a {role} split; name one as {folder}:<split>"
    )
