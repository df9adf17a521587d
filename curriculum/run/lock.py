"""One training process per run folder: an advisory lock held for the process's life.

The lock is `<run>/run.lock` locked with flock(2) by the training process (rank 0's process on
the first node). The kernel drops it when the process dies, however it dies, so a lock left by a
killed run is free to take over; the file keeps the holder's pid and host for the messages.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket

from curriculum.config import ConfigError

LOCK = "run.lock"
# Run folder -> the open file that holds its lock in this process (a resume takes it before Hydra starts).
_HELD: dict[str, object] = {}


def holder(run_dir: str) -> dict | None:
    """{pid, host} of the live process holding the run's lock, or None when no process holds it."""
    path = os.path.join(run_dir, LOCK)
    if os.path.abspath(run_dir) in _HELD:
        return {"pid": os.getpid(), "host": socket.gethostname()}
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:  # read-only: a look changes nothing in the folder
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(path)
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def acquire(run_dir: str) -> str | None:
    """Hold the run's lock until this process ends; refuse in one sentence if a live process holds it.

    Returns a note when the lock of a process that is gone was taken over, else None.
    """
    key = os.path.abspath(run_dir)
    if key in _HELD:
        return None
    path = os.path.join(run_dir, LOCK)
    f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        who = _read(path)
        raise ConfigError(
            f"{run_dir} is being trained by process {who['pid']} on {who['host']} (it holds {path}); wait for it to end or stop "
            "it before resuming."
        ) from None
    before = _read(path) if os.path.getsize(path) else None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
    f.flush()
    _HELD[key] = f
    if before and before["pid"] != os.getpid():
        return f"took over the lock of process {before['pid']} on {before['host']}, which is no longer running"
    return None


def release(run_dir: str) -> None:
    """Let go of the run's lock (the end of a run in a process that goes on, e.g. a sweep's next job)."""
    f = _HELD.pop(os.path.abspath(run_dir), None)
    if f is not None:
        f.close()


def _read(path: str) -> dict:
    """The holder the lock file names ({pid, host}), `?` for what it does not say."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.read() or "null") or {"pid": "?", "host": "?"}
    except (OSError, ValueError):
        return {"pid": "?", "host": "?"}
