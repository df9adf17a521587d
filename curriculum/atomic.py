"""Files written whole or not at all: a temporary file beside the target, then os.replace.

A reader (a resumed run, a report, another rank) never sees a half-written file, even after a kill.
"""

from __future__ import annotations

import json
import os
import tempfile


def write_text(path: str, text: str) -> str:
    """Write `text` to `path` atomically; returns `path`."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_json(path: str, data, indent: int | None = 1) -> str:
    """Write `data` as JSON to `path` atomically; returns `path`."""
    return write_text(path, json.dumps(data, indent=indent))
