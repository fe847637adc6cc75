"""robust_bench_sc: a robustness-benchmark harness for image classifiers.

Public API: :class:`Defense` and :class:`Capabilities` (the plug-in contract), the
:data:`DEFENSES` registry, :func:`build_defense`, :func:`load_suite`, :func:`run_suite` and
:func:`benchmark` (one call from a notebook: defense + threat models -> summary DataFrame);
:data:`DATASETS` and :class:`Dataset` (dataset plug-ins) and :class:`Normalize` (a model
that expects normalised inputs, taking images in [0, 1]).

Every name is imported on first use (PEP 562), so ``import robust_bench_sc`` (and with it
``scbench --help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "Capabilities": "robust_bench_sc.defense",
    "Defense": "robust_bench_sc.defense",
    "DEFENSES": "robust_bench_sc.plugins",
    "build_defense": "robust_bench_sc.plugins",
    "load_suite": "robust_bench_sc.config",
    "run_suite": "robust_bench_sc.runner",
    "benchmark": "robust_bench_sc.api",
    "Normalize": "robust_bench_sc.models.normalize",
    "DATASETS": "robust_bench_sc.datasets",
    "Dataset": "robust_bench_sc.datasets",
}
__all__ = sorted([*_LAZY, "__version__"])

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports them
    from robust_bench_sc.api import benchmark
    from robust_bench_sc.config import load_suite
    from robust_bench_sc.datasets import DATASETS, Dataset
    from robust_bench_sc.defense import Capabilities, Defense
    from robust_bench_sc.models.normalize import Normalize
    from robust_bench_sc.plugins import DEFENSES, build_defense
    from robust_bench_sc.runner import run_suite


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'robust_bench_sc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
