"""Executors run planned jobs; the driver alone writes results.

The planner and the run directory do not depend on how jobs are executed: an executor
takes the jobs still to do and hands each finished :class:`ChunkResult` to ``on_result``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from robust_bench_sc.config import SuiteConfig
from robust_bench_sc.errors import RunError
from robust_bench_sc.plan import Job
from robust_bench_sc.registry import Registry, RegistryError, subclass_of
from robust_bench_sc.worker import ChunkResult, Worker

ResultCallback = Callable[[ChunkResult], None]
ProgressCallback = Callable[[Job, int, "str | None"], None]
"""``on_progress(job, k, stage)``: ``k`` more images of ``job`` done (0: none), and the
attack's latest stage line or None (:mod:`robust_bench_sc.progress`)."""


class Executor(ABC):
    #: name in run.json (``--executor``)
    name: str = "custom"
    #: jobs that run at the same time, once known (run.json records it with the first result;
    #: ``scbench status`` turns job time to go into wall time with it); None: not known
    concurrent_jobs: int | None = None

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        """``--device``, and the executor's own options (``make_executor``'s keyword arguments)."""
        self.device = device

    @abstractmethod
    def execute(self, suite: SuiteConfig, jobs: list[Job], on_result: ResultCallback,
                on_progress: ProgressCallback | None = None) -> None:
        """Run ``jobs``; call ``on_result`` once per finished job and ``on_progress`` (if given)
        with what its workers report before that, both in the driver process."""


class LocalExecutor(Executor):
    """Runs jobs one after another in this process."""

    name = "local"
    concurrent_jobs = 1

    def __init__(self, device: str = "cpu", data_root: str | None = None):
        self.device = device
        self.data_root = data_root

    def execute(self, suite, jobs, on_result, on_progress=None):
        worker = Worker(suite, device=self.device, data_root=self.data_root)
        for job in jobs:
            cb = (lambda k, stage=None, job=job: on_progress(job, k, stage)) if on_progress else None
            on_result(worker.run(job, cb))


#: ``--executor NAME`` → an :class:`Executor` class (entry-point group ``robust_bench_sc.executors``);
#: the Ray one is imported only when named (it needs the ``ray`` extra)
EXECUTORS: Registry[type[Executor]] = Registry("executor", "robust_bench_sc.executors", accepts=subclass_of(Executor),
                                               expected="a subclass of robust_bench_sc.executor.Executor")
EXECUTORS.register("local", LocalExecutor)
EXECUTORS.register("ray", "robust_bench_sc.ray_executor:RayExecutor")


def make_executor(name: str, device: str, **kwargs) -> Executor:
    """The executor ``--executor name`` asks for; an unknown name or a missing extra is one RunError line."""
    if name not in EXECUTORS:
        raise RunError(str(EXECUTORS.unknown(name)))
    if name == "local":
        return LocalExecutor(device=device, data_root=kwargs.get("data_root"))
    try:
        cls = EXECUTORS.get(name)
    except ImportError as exc:
        raise RunError(f"executor {name!r} needs an optional extra: pip install 'robust_bench_sc[{name}]' ({exc})") from None
    except RegistryError as exc:
        raise RunError(str(exc)) from None
    return cls(device=device, **kwargs)
