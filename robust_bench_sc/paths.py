"""Where data and reference weights live.

Defaults follow the project layout (a ``shared/`` folder beside the repository); each can
be overridden by an environment variable or a CLI flag. Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

ENV_SHARED = "SCBENCH_SHARED"
ENV_DATA = "SCBENCH_DATA"
ENV_REFERENCE = "SCBENCH_REFERENCE"

# Only the first 1000 official CIFAR-10 test images are shipped (shared/data/cifar10/SOURCE.md): the
# cifar10_npz test split, and a suite's default n_images. Other datasets hold what their files hold
# (robust_bench_sc/datasets.py); n_images is checked against the split when it is read.
N_TEST_AVAILABLE = 1000


def shared_dir() -> Path:
    """The shared folder: $SCBENCH_SHARED, else ``../shared`` beside the repository."""
    env = os.environ.get(ENV_SHARED)
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT.parent / "shared").resolve()


def data_dir(override: str | Path | None = None) -> Path:
    """CIFAR-10 folder: the override, else $SCBENCH_DATA, else ``shared/data/cifar10``."""
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get(ENV_DATA)
    if env:
        return Path(env).expanduser().resolve()
    return shared_dir() / "data" / "cifar10"


def reference_dir(override: str | Path | None = None) -> Path:
    """Reference checkpoints: the override, else $SCBENCH_REFERENCE, else ``shared/reference``."""
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get(ENV_REFERENCE)
    if env:
        return Path(env).expanduser().resolve()
    return shared_dir() / "reference"
