"""Atomic files and the layout of a run directory.

A run directory holds ``run.json`` (metadata and the resolved suite), one JSON file per
finished (defense, threat model, chunk) job under ``records/`` and, once the run is
complete, ``samples.csv``, ``summary.csv`` and ``summary.md``. Every file is written to a
temporary name and renamed, so a killed run never leaves a half-written file, and a rerun
with the same suite skips every chunk already on disk.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def safe_name(name: str) -> str:
    """A file-system friendly version of a defense or threat-model name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "unnamed"


def chunk_path(run_dir: Path, defense: str, threat: str, chunk: int) -> Path:
    return run_dir / "records" / safe_name(defense) / safe_name(threat) / f"chunk_{chunk:05d}.json"


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)
