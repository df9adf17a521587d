"""What the module adds to Lightning's checkpoint and checks on load: lean weights (those no stage
trains come from the base model again, identified by a digest), the run's random number
generators, and the micro-batch counter recounted for a new gradient accumulation.

May import config.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

from curriculum.config import ConfigError


def weights_identity(state: dict, keys: list[str], samples: int = 64) -> str:
    """A short digest of the named tensors: names, shapes, dtypes and an evenly strided sample of values.

    Cheap at any size (reads `samples` values per tensor) and enough to tell two checkpoints' base weights apart.
    """
    h = hashlib.sha256()
    for key in sorted(keys):
        t = state[key].detach()
        flat = t.reshape(-1)
        picked = flat[:: max(1, flat.numel() // samples)][:samples].float().cpu()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(picked.numpy().tobytes())
    return h.hexdigest()[:16]


def drop_untrained(checkpoint: dict, frozen: list[str]) -> None:
    """Leave the weights no stage trains out of the checkpoint's state_dict (the base model has them)."""
    for key in frozen:
        checkpoint["state_dict"].pop(key, None)


def require_same_base(identity: str, saved: str) -> None:
    """Refuse a resume whose base weights (those the checkpoint left out) are not the ones it was trained with."""
    if identity != saved:
        raise ConfigError(
            "resume: the base model's weights that this run does not train differ from the ones its checkpoint was "
            "trained with (its checkpoints hold only the trained weights); resume with the same model.name_or_path files."
        )


def rng_state() -> dict:
    """Every random number generator's state, as plain containers and tensors (Lightning's weights_only loading accepts them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(state), python_gauss],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(rng: dict) -> None:
    """Set every random number generator to the state `rng_state` returned."""
    torch.set_rng_state(rng["torch"])
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def realign_batch_progress(checkpoint: dict, accumulate: int) -> None:
    """Count the checkpoint's micro-batches as its optimizer steps x this run's accumulation.

    Lightning restores its micro-batch counter as saved (steps x the old accumulation) and places
    step boundaries, validation and the epoch's end by that counter, so a resume that changes
    `trainer.accumulate_grad_batches` (same global batch) would cut its first steps in the wrong place.
    """
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    if progress is None:
        return
    micro = int(checkpoint["global_step"]) * accumulate
    for counter in ("total", "current"):
        for key in ("ready", "started", "processed", "completed"):
            progress[counter][key] = micro
