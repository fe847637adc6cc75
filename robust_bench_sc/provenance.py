"""Where a run's numbers come from, as run.json states it (:func:`invocation_meta`): the suite
as resolved, the images and their data hash (bytes 0-255 plus labels, ``data.content_hash``),
the seed rule, the command, package versions, the git commit, the host, and the earlier
invocations of the same folder (``history``)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import platform
import subprocess
from typing import TYPE_CHECKING, Any

from robust_bench_sc.paths import REPO_ROOT, data_dir
from robust_bench_sc.plan import SEED_RULE
from robust_bench_sc.storage import RunMeta, archived_invocation

if TYPE_CHECKING:
    from robust_bench_sc.config import SuiteConfig
    from robust_bench_sc.data import Split

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


def invocation_meta(suite: SuiteConfig, split: Split, subset: str, n_jobs: int, device: str, command: list[str],
                    probe_record: dict[str, Any] | None, old: RunMeta | None, fingerprints: dict[str, str],
                    code_fingerprints: dict[str, str] | None) -> dict[str, Any]:
    """run.json as an invocation starts (status ``running``), in the order it is written;
    ``old``: the folder's run.json before it, archived into ``history``."""
    from robust_bench_sc.data import content_hash

    meta: dict[str, Any] = {
        "suite": suite.name,
        "suite_hash": suite.content_hash(),
        "status": "running",
        "subset": subset,
        "data_dir": str(data_dir(suite.data.folder)),
        "data_hash": content_hash(split),
        # what the images are (the dataset plug-in's words); reports and plots name them so
        "dataset": {"name": split.dataset, "split": split.split, "n_classes": split.n_classes,
                    "image_shape": list(split.image_shape), "n_available": split.n_available},
        "images": split.images,
        "seed": suite.seed,
        "seed_rule": SEED_RULE,
        "profile": suite.profile,
        # what the profile sets (reports tell a selection of images from reduced settings)
        **({"profile_set": dict(suite.profiles[suite.profile].set)} if suite.profile in suite.profiles else {}),
        "overrides": suite.overrides,
        "device": device,
        "command": command,
        "versions": versions(),
        "git": git_commit(),
        "host": host(),
        "started_at": _dt.datetime.now().isoformat(timespec="seconds"),
        "n_jobs": n_jobs,
        "config": suite.resolved(),
        # what the probes found per defense and what auto chose from it, with reasons (robust_bench_sc.adapt)
        **({"probes": probe_record} if probe_record is not None else {}),
    }
    if old is not None:
        meta["first_started_at"] = old.first_started_at or old.raw.get("started_at")
        meta["history"] = [*old.history, archived_invocation(old.raw, meta["started_at"])]
    meta["defense_fingerprints"] = dict(fingerprints)
    if code_fingerprints:
        meta["code_fingerprints"] = dict(code_fingerprints)
    return meta
