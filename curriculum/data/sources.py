"""Resolve the run's data files (user files or built-in shapes) into cached record tables."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from curriculum.config import RunConfig
from curriculum.data.files import expand
from curriculum.data.records import LoadReport, RecordTable, load_or_build

log = logging.getLogger("curriculum")
PREFERRED_GROUP_ORDER = ("image_text", "text_only")


class InvalidDataError(Exception):
    """Invalid records were found and data.on_invalid=error; the message lists the first ones."""


@dataclass
class DataBundle:
    train: RecordTable | None
    val: RecordTable | None
    train_report: LoadReport
    val_report: LoadReport
    group_names: list[str]

    @property
    def invalid(self) -> list[dict]:
        """Every invalid record of train and validation files."""
        return self.train_report.invalid + self.val_report.invalid


def order_groups(names) -> list[str]:
    """Stable group order: image_text, text_only, then the others alphabetically."""
    names = set(names)
    return [g for g in PREFERRED_GROUP_ORDER if g in names] + sorted(names - set(PREFERRED_GROUP_ORDER))


def file_states(bundle: DataBundle) -> dict[str, list[int]]:
    """Per train and validation data file the bundle was read from: [size, mtime, ctime, inode], to name the files that
    changed since a checkpoint."""
    out = {}
    for path in dict.fromkeys([*bundle.train_report.sources, *bundle.val_report.sources]):
        st = os.stat(path)
        out[os.path.abspath(path)] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    return out


def changed_files(saved: dict[str, list[int]], current: dict[str, list[int]]) -> list[str]:
    """'<file> (edited|removed|new)' for each file whose state differs between a checkpoint's and now."""
    out = [f"{p} ({'edited' if p in current else 'removed'})" for p in saved if saved[p] != current.get(p)]
    return out + [f"{p} (new)" for p in current if p not in saved]


def resolve_files(cfg: RunConfig) -> tuple[list[str], list[str]]:
    """Train and validation data files: the user's entries expanded, or the built-in shapes data."""
    if cfg.data.train_files:
        return _expand_all(cfg.data.train_files, "train"), _expand_all(cfg.data.val_files, "validation")
    from curriculum.data.builtin import ensure_shapes

    s = cfg.data.shapes
    shapes = ensure_shapes(
        cache_dir(cfg),
        train_image_text=s.train_image_text,
        train_text_only=s.train_text_only,
        val_image_text=s.val_image_text,
        val_text_only=s.val_text_only,
        image_size=s.image_size,
        seed=s.seed,
    )
    return [shapes.train_file], [shapes.val_file]


def _expand_all(entries, role: str) -> list[str]:
    return [path for entry in entries for path in expand(entry, role)]


def file_groups(cfg: RunConfig) -> dict[str, str]:
    """data.file_groups with each entry (a file, glob or folder) replaced by the files it names."""
    out = {}
    for entry, group in (cfg.data.file_groups or {}).items():
        role = "train" if entry in cfg.data.train_files else "validation"
        out.update({path: group for path in expand(entry, role)})
    return out


def cache_dir(cfg: RunConfig) -> str:
    """The expanded cache folder for built-in data, models and record tables."""
    return os.path.expanduser(cfg.paths.cache_dir)


def load_data(cfg: RunConfig, *, on_invalid: str | None = None) -> DataBundle:
    """Read, validate and cache every record; tables are None when invalid records stop the run."""
    train_files, val_files = resolve_files(cfg)
    policy = on_invalid or cfg.data.on_invalid.value
    common = dict(cache_dir=cache_dir(cfg), image_root=cfg.data.image_root, on_invalid=policy, check_images=cfg.data.check_images)
    groups = file_groups(cfg)
    train, train_report = load_or_build(train_files, file_groups=_groups_of(train_files, groups), **common)
    val, val_report = load_or_build(val_files, file_groups=_groups_of(val_files, groups), **common) if val_files else (None, LoadReport())
    groups = order_groups(list(train_report.groups) + list(val_report.groups))
    return DataBundle(train, val, train_report, val_report, groups)


def _groups_of(files: list[str], file_groups: dict[str, str]) -> dict[str, str]:
    return {f: g for f, g in file_groups.items() if f in files}


def describe_invalid(invalid: list[dict], limit: int = 10) -> str:
    """Lines naming file, record index (and line) and reason of the first invalid records."""
    return LoadReport(invalid=invalid).describe_invalid(limit)


def require_valid(bundle: DataBundle) -> None:
    """Raise InvalidDataError naming the first invalid records (policy `error`)."""
    if bundle.invalid:
        raise InvalidDataError(
            f"{len(bundle.invalid)} invalid record(s) (data.on_invalid=error; use data.on_invalid=skip to skip and count them):\n"
            + describe_invalid(bundle.invalid)
        )


def load_checked_data(cfg: RunConfig) -> DataBundle:
    """Records of the run; with on_invalid=error any invalid record stops here with names and reasons."""
    bundle = load_data(cfg)
    if cfg.data.on_invalid.value == "error":
        require_valid(bundle)
    elif bundle.invalid:
        log.warning("skipped %d invalid record(s) at load time (listed in plan.json)", len(bundle.invalid))
    return bundle


def data_fingerprint(train: RecordTable, val: RecordTable | None) -> str:
    """What the sample stream and the validation losses depend on; a resume must find it unchanged."""
    return "/".join(t.content_digest() if t is not None else "-" for t in (train, val))
