"""metrics.csv at the run folder's root: one row per logged step, safe to resume after a kill."""

from __future__ import annotations

import csv
import math
import os

from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from curriculum.run.metrics_file import FILE, read_rows

class RunCSVLogger(Logger):
    """CSV logger that appends a flushed line per row and, on resume, keeps only rows before `resume_step`."""

    # The module gives loggers that keep text the stage name too (other loggers take numbers only).
    keeps_text = True

    def __init__(self, run_dir: str, resume_step: int | None = None):
        super().__init__()
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, FILE)
        rows = read_rows(self.path) if resume_step is not None else []
        # Rows the killed process logged after its last checkpoint are replaced, not repeated.
        self._rows = [r for r in rows if int(r["step"]) < (resume_step or 0)]
        self._keys = list(rows[0].keys()) if rows else ["step"]
        if rank_zero_only.rank == 0:
            os.makedirs(run_dir, exist_ok=True)
            self._rewrite()

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def log_dir(self) -> str:
        return self.run_dir

    @property
    @rank_zero_experiment
    def experiment(self):
        return self

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """The resolved config lives in .hydra/; nothing to add here."""

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        row = {"step": str(step if step is not None else len(self._rows))}
        row.update({k: _fmt(v) for k, v in metrics.items()})
        self._rows.append(row)
        new = sorted(set(row) - set(self._keys))
        if new:
            self._keys += new
            self._rewrite()
            return
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self._keys).writerow(row)

    def has(self, step: int, key: str) -> bool:
        """Whether a row of `step` already holds `key` (e.g. a validation the killed process finished)."""
        return any(r.get("step") == str(step) and r.get(key, "") != "" for r in self._rows)

    def _rewrite(self) -> None:
        # A new column means a new header: write a complete file aside, then swap it in.
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self._keys, restval="")
            writer.writeheader()
            writer.writerows(self._rows)
        os.replace(tmp, self.path)


def _fmt(value) -> str:
    if isinstance(value, str):  # the stage name
        return value
    value = float(value.item() if hasattr(value, "item") else value)
    return "" if math.isnan(value) else repr(value)
