"""`curriculum-eval <run or export folder> [overrides]`: greedy answers to validation samples, scored per group.

    curriculum-eval outputs/2026-11-27/10-00-00                      # the run's export, its own validation data
    curriculum-eval /models/my-export data.train_files=[t.json] data.val_files=[v.json] eval.max_new_tokens=64

A run folder supplies its saved config (overrides change single keys) and its `export/`; any other
folder is an export (full, merged or a LoRA adapter) evaluated with the default config plus the
overrides (`data.val_files` alone is enough). Writes eval.json to eval.output_dir (default: a new
`evals/<time>/` folder in the run, or under paths.output_root for a model folder no run made) and
prints a table per group.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from curriculum.cli.common import USER_ERRORS, quiet_output, user_message
from curriculum.config import ConfigError, RunConfig, validate


def _is_run(folder: str) -> bool:
    from curriculum.run.resume import RUN_CONFIG

    return os.path.isfile(os.path.join(folder, RUN_CONFIG)) or os.path.isfile(os.path.join(folder, ".hydra", "config.yaml"))


def load_config(folder: str, overrides: list[str]) -> tuple[RunConfig, str]:
    """(config, model folder) for a run folder (its saved config and export/) or an export folder."""
    from curriculum.run.resume import apply_overrides, saved_config

    if _is_run(folder):
        export = os.path.join(folder, "export")
        if not os.path.isdir(export):
            raise ConfigError(f"{folder} has no export/ folder (the run did not finish, or export.enabled was false): evaluate an export folder.")
        return validate(apply_overrides(saved_config(folder), overrides, command="curriculum-eval")), export
    if not any(os.path.isfile(os.path.join(folder, name)) for name in ("config.json", "adapter_config.json")):
        raise ConfigError(f"{folder} is neither a run folder (with run_config.yaml) nor a model folder (with config.json or adapter_config.json).")
    from hydra import compose, initialize_config_dir

    from curriculum.conf_path import conf_dir

    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        raw = compose("config", overrides=overrides)
    if raw.data.val_files and not raw.data.train_files:
        # Evaluation reads no training sample: the validation files also name the groups.
        raw.data.train_files = list(raw.data.val_files)
    return validate(raw), folder


def output_dir(cfg: RunConfig, folder: str) -> str:
    """eval.output_dir, else a new folder under the run (the folder, or the run an export/ belongs to), else under paths.output_root."""
    if cfg.eval.output_dir:
        return os.path.abspath(os.path.expanduser(cfg.eval.output_dir))
    parent = os.path.dirname(os.path.abspath(folder))
    run = folder if _is_run(folder) else parent if os.path.basename(os.path.abspath(folder)) == "export" and _is_run(parent) else None
    return os.path.join(run or cfg.paths.output_root, "evals", time.strftime("%Y-%m-%d_%H-%M-%S"))


def load_for_eval(folder: str):
    """(model, processor) of an export folder; a LoRA adapter loads onto the base named in its config."""
    from transformers import AutoModelForImageTextToText

    from curriculum.model.load import load_processor

    adapter = os.path.join(folder, "adapter_config.json")
    if os.path.isfile(adapter):
        from peft import PeftModel

        with open(adapter, encoding="utf-8") as f:
            base = json.load(f)["base_model_name_or_path"]
        model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), folder)
    else:
        model = AutoModelForImageTextToText.from_pretrained(folder)
    return model, load_processor(folder)


def print_scores(result: dict) -> None:
    """One row per group: samples, exact match, token F1, loss."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="generation scores per group")
    for name in ("group", "samples", "exact match", "token F1", "loss"):
        table.add_column(name, justify="left" if name == "group" else "right")
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    for g, s in result["groups"].items():
        table.add_row(g, str(s["samples"]), fmt(s["exact_match"]), fmt(s["token_f1"]), fmt(s["loss"]))
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def run(folder: str, overrides: list[str]) -> str:
    """Evaluate `folder` and write its eval.json; returns the path."""
    from curriculum.data.sources import load_data
    from curriculum.run.evaluate import EvalSettings, Evaluator, eval_records, write_eval

    cfg, model_dir = load_config(folder, overrides)
    bundle = load_data(cfg, on_invalid="skip")
    if bundle.val is None:
        raise ConfigError("there are no validation samples to answer: set data.val_files=[...].")
    model, processor = load_for_eval(model_dir)
    settings = EvalSettings(cfg.eval.max_new_tokens, cfg.eval.batch_size)
    result = Evaluator(model, processor, bundle.group_names, cfg.data.max_length, settings, cfg.data.truncate).evaluate(
        eval_records(bundle.val, cfg.eval.max_samples_per_group)
    )
    print_scores(result)
    out = output_dir(cfg, folder)
    os.makedirs(out, exist_ok=True)
    return write_eval(out, result)


def main(argv: list[str] | None = None) -> None:
    """Console script entry point."""
    parser = argparse.ArgumentParser(prog="curriculum-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a run folder (with export/) or an export folder")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.val_files=[v.json] eval.max_new_tokens=64")
    args = parser.parse_args(argv)
    quiet_output()
    try:
        print(f"eval: {run(args.folder, args.overrides)}")
    except USER_ERRORS as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
