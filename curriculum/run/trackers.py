"""MLflow and Weights & Biases: the run's config, rows and files where teams look at runs, every step sent once.

Lightning's own MLFlowLogger and WandbLogger talk to the trackers; `Tracker` wraps one so that a resumed run
continues the same tracker run (its id is in <run>/trackers.json) and never sends a step twice: rows of steps
the tracker already holds (the killed process logged them after its last checkpoint) are skipped.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import shutil
import uuid
from pathlib import Path

from filelock import FileLock
from omegaconf import OmegaConf
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from curriculum.atomic import write_json
from curriculum.config import RunConfig

log = logging.getLogger("curriculum")

LEDGER = "trackers.json"
# Run files that go to the tracker when the run ends (those that exist).
FILES = ("report.png", "plan.png", "plan.json", "eval.json", "status.json", "metrics.csv")


def _read(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class Tracker(Logger):
    """One tracker run for one run folder, resumed by id, that skips what it already holds."""

    # The stage name (text) stays in metrics.csv; trackers take numbers.
    keeps_text = False

    def __init__(self, kind: str, inner: Logger, run_dir: str, ledger: dict):
        super().__init__()
        self.kind = kind
        self.inner = inner
        self.path = os.path.join(run_dir, LEDGER)
        self.run_dir = run_dir
        # The last step the tracker holds and its keys at that step.
        self.ledger = ledger

    @property
    def name(self) -> str:
        return self.kind

    @property
    def version(self) -> str:
        return str(self.ledger.get("run_id", ""))

    @property
    def experiment(self):
        return self.inner.experiment

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """The run's resolved config, once: a resume keeps the first values (MLflow refuses changed params)."""
        if self.ledger.get("config_logged"):
            return
        self.inner.log_hyperparams(params)
        self.ledger["config_logged"] = True
        write_json(self.path, self.ledger)

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        step = int(step or 0)
        last, sent = self.ledger.get("step", -1), set(self.ledger.get("keys", []))
        if step < last:
            return
        new = {k: v for k, v in metrics.items() if step > last or k not in sent}
        if not new:
            return
        self.inner.log_metrics(new, step=step)
        self.ledger.update(step=step, keys=sorted(new if step > last else sent | set(new)))
        write_json(self.path, self.ledger)

    def save(self) -> None:
        self.inner.save()

    def finalize(self, status: str) -> None:
        """Nothing yet: the run's files (report.png is written after training) go with `close`."""

    @rank_zero_only
    def close(self, status: str) -> None:
        """Send the run folder's files and end the tracker run with `status` (success or failed)."""
        files = [os.path.join(self.run_dir, f) for f in FILES if os.path.isfile(os.path.join(self.run_dir, f))]
        if self.kind == "mlflow":
            client, run_id = self.inner.experiment, self.inner.run_id
            for path in files:
                client.log_artifact(run_id, path)
            client.set_terminated(run_id, "FINISHED" if status == "success" else "FAILED")
        else:
            run = self.inner.experiment
            for path in files:
                # W&B uploads what its run folder's files/ holds (at the end, or at `wandb sync` when offline).
                shutil.copy2(path, run.dir)
            run.finish(exit_code=0 if status == "success" else 1)


def flat_config(cfg: RunConfig) -> dict:
    """The resolved config as {dotted key: value}, the keys overrides use (e.g. schedule.stages.blend.mix.text_only)."""
    def flat(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict) and v:
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    return dict(flat(OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)))


def sweep_folder(cfg: RunConfig, run_dir: str) -> str | None:
    """The search or multirun folder a run is a job of, or None for a single run."""
    if cfg.search.dir:
        return cfg.search.dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return os.path.dirname(os.path.abspath(run_dir))
    return None


def build_trackers(cfg: RunConfig, run_dir: str, resume_step: int | None, sweep_dir: str | None) -> list[Tracker]:
    """The configured tracker (none, or one), continuing the run folder's tracker run when it has one.

    `sweep_dir`: the sweep or search folder whose jobs are grouped (MLflow parent run, W&B group).
    """
    kind = cfg.logger.tracker
    if kind is None or rank_zero_only.rank != 0:
        return []
    path = os.path.join(run_dir, LEDGER)
    ledger = _read(path) if resume_step is not None else {}
    if ledger.get("tracker") != kind:
        ledger = {"tracker": kind}  # a new run, or a resume that switched trackers: a new tracker run from here
    # The run's name in the tracker: its folder under paths.output_root (e.g. 2026-12-06/10-00-00).
    name = os.path.relpath(run_dir, cfg.paths.output_root)
    name = run_dir if name.startswith("..") else name
    if kind == "mlflow":
        inner = _mlflow(cfg, run_dir, name, ledger, sweep_dir)
    else:
        inner = _wandb(cfg, run_dir, name, ledger, sweep_dir)
    write_json(path, ledger)
    log.info("%s run %s%s", kind, ledger["run_id"], f" (continued from step {ledger['step']})" if "step" in ledger else "")
    return [Tracker(kind, inner, run_dir, ledger)]


def mlflow_uri(cfg: RunConfig) -> str:
    """logger.tracking_uri, or a SQLite store beside the run folders."""
    return cfg.logger.tracking_uri or f"sqlite:///{os.path.abspath(os.path.join(cfg.paths.output_root, 'mlflow.db'))}"


def _mlflow(cfg: RunConfig, run_dir: str, name: str, ledger: dict, sweep_dir: str | None):
    from pytorch_lightning.loggers import MLFlowLogger

    uri = mlflow_uri(cfg)
    os.makedirs(cfg.paths.output_root, exist_ok=True)
    experiment_id = _mlflow_experiment(uri, cfg.logger.project, cfg.paths.output_root)
    tags = {"run_dir": os.path.abspath(run_dir)}
    if sweep_dir:
        tags["mlflow.parentRunId"] = _mlflow_parent(uri, experiment_id, sweep_dir)
    resumed = "run_id" in ledger
    logger = MLFlowLogger(experiment_name=cfg.logger.project, run_name=name, tracking_uri=uri, tags=tags, run_id=ledger.get("run_id"))
    ledger["run_id"] = logger.run_id  # creates the run (or opens the saved one)
    if resumed:
        # The store is the truth about what it holds (a kill can fall between a send and the ledger's update).
        ledger.update(_mlflow_last(logger.experiment, logger.run_id))
    return logger


def _mlflow_last(client, run_id: str) -> dict:
    """The last step the MLflow run holds and the keys it holds at that step."""
    last = {k: max(m.step for m in client.get_metric_history(run_id, k)) for k in client.get_run(run_id).data.metrics}
    step = max(last.values(), default=-1)
    return {"step": step, "keys": sorted(k for k, s in last.items() if s == step)}


def _mlflow_experiment(uri: str, name: str, lock_dir: str) -> str:
    """The id of the MLflow experiment `name`, created by the first run that asks (the store sets up its tables quietly)."""
    import mlflow  # noqa: F401 - importing it sets its loggers' levels, which the next lines lower
    from mlflow import MlflowClient

    for quiet in ("alembic", "mlflow"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=uri)
    # A SQLite store keeps files under the current folder unless told: beside the database instead.
    files = Path(uri.removeprefix("sqlite:///")).parent.joinpath("mlartifacts").as_uri() if uri.startswith("sqlite:///") else None
    with FileLock(os.path.join(lock_dir, ".mlflow.lock")):
        found = client.get_experiment_by_name(name)
        return found.experiment_id if found else client.create_experiment(name, artifact_location=files)


def _mlflow_parent(uri: str, experiment_id: str, sweep_dir: str) -> str:
    """The id of the sweep's parent run, created by the first job that asks (jobs may run at once)."""
    from mlflow import MlflowClient

    path = os.path.join(sweep_dir, LEDGER)
    with FileLock(path + ".lock"):
        saved = _read(path)
        if saved.get("tracking_uri") == uri and saved.get("parent_run_id"):
            return saved["parent_run_id"]
        client = MlflowClient(tracking_uri=uri)
        run = client.create_run(experiment_id, run_name=os.path.basename(os.path.normpath(sweep_dir)), tags={"run_dir": os.path.abspath(sweep_dir)})
        # The parent only groups its jobs (a tag on each): it holds nothing that could still be running.
        client.set_terminated(run.info.run_id)
        write_json(path, {"tracking_uri": uri, "parent_run_id": run.info.run_id})
        return run.info.run_id


def wandb_offline(cfg: RunConfig) -> bool:
    """logger.offline, else offline unless W&B has an API key (WANDB_API_KEY or `wandb login`'s netrc entry)."""
    if cfg.logger.offline is not None:
        return cfg.logger.offline
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (OSError, netrc.NetrcParseError):
        return True


def _wandb(cfg: RunConfig, run_dir: str, name: str, ledger: dict, sweep_dir: str | None):
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    ledger.setdefault("run_id", uuid.uuid4().hex[:12])
    group = os.path.abspath(sweep_dir) if sweep_dir else None
    return WandbLogger(name=name, project=cfg.logger.project, entity=cfg.logger.entity, id=ledger["run_id"], save_dir=run_dir,
                       offline=wandb_offline(cfg), group=group, resume="allow", settings=wandb.Settings(silent=True))
