"""What the README claims that the test suite can hold it to."""

from __future__ import annotations

import json
import os

from conftest import REPO, built_once
from families import BUILT, FAMILIES, ensure_family, readme_table
from curriculum.model.load import resolve_model_path


def test_the_readme_family_table_is_the_one_generated_from_the_test_matrix():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert readme_table() in text, f"README.md's family table differs from the matrix's; replace it with:\n{readme_table()}"


def test_each_family_of_the_matrix_builds_the_model_class_its_table_row_names(cache_dir, llava_path):
    for family in FAMILIES:
        if family.name in BUILT:
            path = built_once(cache_dir, lambda: ensure_family(family.name, cache_dir, llava_path))
        else:
            path = built_once(cache_dir, lambda: resolve_model_path(f"builtin:{family.name}", cache_dir))
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            assert json.load(f)["architectures"] == [family.model_class], family.name
