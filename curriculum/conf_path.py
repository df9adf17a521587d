"""Where the Hydra configs live: inside the installed wheel, or the repository's top-level conf/."""

from __future__ import annotations

from pathlib import Path


def conf_dir() -> str:
    """Absolute path of the config folder (`curriculum/conf` in a wheel, `conf/` in a checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"no conf/config.yaml next to {here}: the installation is incomplete")
