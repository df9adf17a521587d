"""`curriculum-export <run folder> [overrides]`: write an export from a run's checkpoint, as often as you like.

    curriculum-export outputs/2026-11-27/10-00-00                                  # last.ckpt -> <run>/export
    curriculum-export outputs/2026-11-27/10-00-00 export.mode=merged export.dir=/models/merged
    curriculum-export outputs/2026-11-27/10-00-00 --checkpoint stage-align.ckpt export.dir=/models/after-align

The run's saved config says which base model, LoRA and trainability the checkpoint belongs to;
`export.mode` (auto, merged, adapter) and `export.dir` (default: the run's export/) may change.
"""

from __future__ import annotations

import argparse
import os
import sys

from curriculum.cli.common import USER_ERRORS, quiet_output, user_message
from curriculum.config import ConfigError

# Only the export's own keys: the rest of the saved config is what the checkpoint was trained with.
ALLOWED = ("export.mode", "export.dir")


def checkpoint_path(run: str, name: str | None) -> str:
    """The run's last.ckpt, or the named checkpoint (a file or folder name under checkpoints/, or a path)."""
    from curriculum.run.checkpoints import last_checkpoint

    if name is None:
        path = last_checkpoint(run)
        if path is None:
            raise ConfigError(f"{run} has no checkpoints/last.ckpt: the run stopped before its first checkpoint.")
        return path
    path = name if os.path.exists(name) else os.path.join(run, "checkpoints", name)
    if not os.path.exists(path):
        found = sorted(os.listdir(os.path.join(run, "checkpoints"))) if os.path.isdir(os.path.join(run, "checkpoints")) else []
        raise ConfigError(f"--checkpoint {name}: no such checkpoint in {run}/checkpoints (there: {', '.join(found) or 'none'}).")
    return path


def run(folder: str, overrides: list[str], checkpoint: str | None = None) -> tuple[str, str]:
    """Export `folder`'s checkpoint; returns (what was written, where)."""
    from curriculum.config import validate
    from curriculum.run.resume import apply_overrides, is_training_run, saved_config

    folder = os.path.abspath(os.path.expanduser(folder))
    if not is_training_run(folder):
        raise ConfigError(f"{folder} is not a curriculum-train run folder.")
    for o in overrides:
        if o.split("=", 1)[0].lstrip("+") not in ALLOWED:
            raise ConfigError(f"curriculum-export: `{o}` is not allowed: only {' and '.join(ALLOWED)} may change (the checkpoint was trained with the rest).")
    cfg = validate(apply_overrides(saved_config(folder), overrides, command="curriculum-export"))
    ckpt = checkpoint_path(folder, checkpoint)
    quiet_output()
    from curriculum.data.sources import cache_dir
    from curriculum.run.export import export_dir, export_model, load_checkpoint_weights
    from curriculum.model.load import load_model, load_processor, resolve_model_path

    path = resolve_model_path(cfg.model.name_or_path, cache_dir(cfg))
    processor = load_processor(path, cfg.model.processor_kwargs)
    model = load_model(cfg.model, path, cfg.trained_modes())
    load_checkpoint_weights(model, ckpt)
    out = export_dir(cfg, folder)
    return export_model(model, processor, out, cfg.export.mode), out


def main(argv: list[str] | None = None) -> None:
    """Console script entry point."""
    parser = argparse.ArgumentParser(prog="curriculum-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a curriculum-train run folder")
    parser.add_argument("overrides", nargs="*", help="export.mode=auto|merged|adapter, export.dir=<folder>")
    parser.add_argument("--checkpoint", help="a checkpoint under <run>/checkpoints (e.g. stage-align.ckpt) or a path; default last.ckpt")
    args = parser.parse_intermixed_args(argv)
    try:
        kind, out = run(args.folder, args.overrides, args.checkpoint)
    except USER_ERRORS as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        sys.exit(1)
    print(f"exported {kind} to {out}")


if __name__ == "__main__":
    main()
