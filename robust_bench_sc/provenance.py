"""Where a run's numbers come from, as run.json states it: package versions, the git commit,
the host, and the data hash (the images as bytes 0-255 plus their labels, ``data.content_hash``)."""

from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
from typing import TYPE_CHECKING

from robust_bench_sc.paths import REPO_ROOT

if TYPE_CHECKING:
    from robust_bench_sc.config import SuiteConfig

TOOLKITS = ("torch", "numpy", "foolbox", "adversarial-robustness-toolbox", "torchattacks", "pyautoattack",
            "scikit-learn", "pandas", "pydantic", "ray")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("robust_bench_sc", *TOOLKITS):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> dict[str, str | bool | None]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def host() -> dict[str, str]:
    return {"platform": platform.platform(), "processor": platform.processor()}


def data_hash(suite: SuiteConfig, n_images: int | None = None) -> str:
    """run.json's ``data_hash`` of the suite's first ``n_images`` images (all: None)."""
    from robust_bench_sc.data import content_hash, load_data

    return content_hash(load_data(suite.data, n_images))
