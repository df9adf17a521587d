"""What the README claims that the test suite can hold it to."""

from __future__ import annotations

import json
import os
import re

from conftest import REPO, built_once
from families import BUILDERS, MATRIX, ensure_family
from curriculum.model.load import resolve_model_path


def family_table_classes() -> set[str]:
    """Model classes named in the README's table of tested families."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    table = text[text.index("| family | model class |"):].split("\n\n", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\| [^|]+ \| `(\w+)` \|", table, flags=re.M)}


def test_the_readme_family_table_names_exactly_the_model_classes_of_the_test_matrix(cache_dir, llava_path):
    classes = set()
    for name in MATRIX:
        if name in BUILDERS:
            path = built_once(cache_dir, lambda: ensure_family(name, cache_dir, llava_path))
        else:
            path = built_once(cache_dir, lambda: resolve_model_path(f"builtin:{name}", cache_dir))
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            classes.add(json.load(f)["architectures"][0])
    assert family_table_classes() == classes
