"""robust_bench_sc: a robustness-benchmark harness for image classifiers.

Public API: :class:`Defense` and :class:`Capabilities` (the plug-in contract), the
:data:`DEFENSES` registry, :func:`build_defense`, :func:`load_suite` and :func:`run_suite`.
"""

from robust_bench_sc.defense import Capabilities, Defense

__version__ = "0.1.0"
__all__ = ["Capabilities", "DEFENSES", "Defense", "__version__", "build_defense", "load_suite", "run_suite"]


def __getattr__(name):  # keep `import robust_bench_sc` light
    if name in ("DEFENSES", "build_defense"):
        from robust_bench_sc import plugins

        return getattr(plugins, name)
    if name == "load_suite":
        from robust_bench_sc.config import load_suite

        return load_suite
    if name == "run_suite":
        from robust_bench_sc.runner import run_suite

        return run_suite
    raise AttributeError(name)
