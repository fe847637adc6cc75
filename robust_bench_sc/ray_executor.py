"""Run a suite's jobs as Ray tasks, on one machine or a cluster, with the local numbers.

Each planned :class:`~robust_bench_sc.plan.Job` becomes one Ray task. A task receives the
suite (put once into the object store), the job and where the data lives, never the
images: every node reads its own copy of the data and reference weights
(``SCBENCH_SHARED`` / ``SCBENCH_DATA`` / ``SCBENCH_REFERENCE`` in that node's
environment, or ``data.root`` / ``data.data_dir`` of the suite). A worker process keeps one
:class:`~robust_bench_sc.worker.Worker` per suite, so data and defenses load once per
process, not once per job.

The numbers do not depend on where or in which order jobs run: a job's seed comes from
the plan, and each task returns a hash of the images it evaluated, which the driver
compares with its own (a node holding different data is an error, not a silent change).

Results come back to the driver, which alone calls ``on_result`` (and so alone writes the
run directory). Tasks are retried (``max_retries``) when their worker process or node
dies; an exception raised by the evaluation itself is not retried (it would fail again)
and stops the run after the jobs already finished are recorded, so a re-run resumes.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import ray

from robust_bench_sc.config import SuiteConfig
from robust_bench_sc.data import content_hash
from robust_bench_sc.errors import RunError
from robust_bench_sc.executor import Executor, ProgressCallback, ResultCallback
from robust_bench_sc.plan import Job
from robust_bench_sc.worker import ChunkResult, Worker

__all__ = ["RayExecutor", "RayJobError", "DataMismatchError"]


class RayJobError(RunError):
    """A job failed on a Ray worker (not retried: the evaluation itself raised)."""


class DataMismatchError(RunError):
    """A node evaluated different images than the driver holds."""


# -- inside a worker process ------------------------------------------------------------

_WORKERS: OrderedDict[tuple, tuple[Worker, str]] = OrderedDict()
_MAX_CACHED = 2  # suites whose data/defenses a worker process keeps loaded


@dataclass
class TaskOutput:
    result: ChunkResult
    data_hash: str
    node: str       # host name
    node_id: str    # Ray node id ("" outside Ray)
    pid: int


def _cached_worker(suite: SuiteConfig, device: str, data_root: str | None) -> tuple[Worker, str]:
    key = (suite.content_hash(), device, data_root)
    hit = _WORKERS.get(key)
    if hit is None:
        worker = Worker(suite, device=device, data_root=data_root)
        hit = (worker, content_hash(worker.data))
        _WORKERS[key] = hit
        while len(_WORKERS) > _MAX_CACHED:
            _WORKERS.popitem(last=False)
    else:
        _WORKERS.move_to_end(key)
    return hit


def run_job(suite: SuiteConfig, job: Job, device: str, data_root: str | None, threads: int,
            inbox: Any = None) -> TaskOutput:
    """The body of a Ray task (a plain function, so it can be tested without Ray). ``inbox``:
    the driver's :class:`ProgressInbox` actor (or anything with ``post.remote``), which hears
    the job's progress reports as they happen."""
    import torch

    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    worker, digest = _cached_worker(suite, device, data_root)
    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""

    def report(k: int, stage: str | None = None) -> None:
        inbox.post.remote(job.key, k, stage)  # fire and forget: the driver drains the inbox

    return TaskOutput(worker.run(job, report if inbox is not None else None), digest, socket.gethostname(),
                      node_id, os.getpid())


_remote_run_job = ray.remote(run_job)


class ProgressInbox:
    """Progress reports of the running tasks, kept in order until the driver drains them
    (a Ray actor that holds no CPU: the tasks ``post``, the driver ``drain``s)."""

    def __init__(self) -> None:
        self._events: list[tuple[str, int, str | None]] = []

    def post(self, job_key: str, k: int, stage: str | None) -> None:
        self._events.append((job_key, k, stage))

    def drain(self) -> list[tuple[str, int, str | None]]:
        events, self._events = self._events, []
        return events


_remote_inbox = ray.remote(num_cpus=0)(ProgressInbox)


# -- in the driver ----------------------------------------------------------------------

class RayExecutor(Executor):
    """Dispatches jobs as Ray tasks and streams results back as they complete.

    device: torch device on the workers (``cuda`` asks each task for a GPU unless the
        suite's ``resources.num_gpus`` says otherwise).
    address: a running cluster (``ray start --head`` prints it; ``auto`` finds a local
        one). Without it a local Ray instance with ``num_cpus`` CPUs is started for the
        run and shut down after it. If Ray is already initialised in this process (e.g. a
        test cluster), that instance is used and left running.
    num_cpus: CPUs of the local instance (default: all of this machine's).
    data_root: data folder the workers read; default the suite's ``data.root`` (or ``data_dir``), else
        each node's own ``SCBENCH_DATA`` / ``SCBENCH_SHARED``.
    max_retries: retries of a task whose worker process or node died.
    max_in_flight: tasks submitted at once (default: all; lower it for huge plans).
    threads: torch threads per task (default: the task's ``num_cpus``, at least 1).
    check_data: compare each node's image hash with the driver's.
    poll_seconds: how often the driver passes the tasks' progress reports on (``on_progress``)
        while it waits for results.
    """

    name = "ray"

    def __init__(self, device: str = "cpu", address: str | None = None, num_cpus: int | None = None,
                 data_root: str | None = None, max_retries: int = 3, max_in_flight: int | None = None,
                 threads: int | None = None, check_data: bool = True, log_to_driver: bool = True,
                 init_kwargs: dict[str, Any] | None = None, poll_seconds: float = 2.0):
        self.device = device
        self.address = address
        self.num_cpus = num_cpus
        self.data_root = data_root
        self.max_retries = max_retries
        self.max_in_flight = max_in_flight
        self.threads = threads
        self.check_data = check_data
        self.log_to_driver = log_to_driver
        self.init_kwargs = dict(init_kwargs or {})
        self.poll_seconds = poll_seconds
        self.last_stats: dict[str, Any] = {}
        self.concurrent_jobs: int | None = None  # known once connected: the cluster's slots for these tasks

    # -- ray lifetime ---------------------------------------------------------------------
    def _connect(self) -> bool:
        """Initialise Ray if needed; True when this call started it (so we shut it down)."""
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"log_to_driver": self.log_to_driver, "include_dashboard": False,
                                  "configure_logging": False}
        kwargs.update(self.init_kwargs)
        # ray.init installs its own SIGTERM handler in the driver (it exits at once); keep the
        # caller's, so that `kill PID` still marks the run interrupted as it does without Ray
        main = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main else None
        try:
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(num_cpus=self.num_cpus or os.cpu_count() or 1, **kwargs)
        finally:
            if main and sigterm is not None:
                signal.signal(signal.SIGTERM, sigterm)
        return True

    def task_options(self, suite: SuiteConfig) -> dict[str, Any]:
        res = suite.resources
        num_gpus = res.num_gpus
        if num_gpus is None:
            num_gpus = 1 if str(self.device).startswith("cuda") else 0
        return {"num_cpus": res.num_cpus, "num_gpus": num_gpus, "max_retries": self.max_retries,
                "retry_exceptions": False}

    @staticmethod
    def _slots(opts: dict[str, Any], in_flight: int) -> int:
        """How many of these tasks the cluster runs at once: its CPUs (and GPUs, where a task
        asks for some) over a task's share, at most ``in_flight``, at least 1."""
        res = ray.cluster_resources()
        slots = in_flight
        for key, need in (("CPU", opts["num_cpus"]), ("GPU", opts["num_gpus"])):
            if need:
                slots = min(slots, int(float(res.get(key, 0.0)) / float(need) + 1e-9))
        return max(1, slots)

    # -- execution --------------------------------------------------------------------------
    def execute(self, suite: SuiteConfig, jobs: list[Job], on_result: ResultCallback,
                on_progress: ProgressCallback | None = None) -> None:
        if not jobs:
            return
        started = self._connect()
        try:
            self._execute(suite, jobs, on_result, on_progress)
        finally:
            if started:
                ray.shutdown()

    def _expected_hash(self, suite: SuiteConfig) -> str:
        from robust_bench_sc.data import load_data

        split = load_data(suite.data, root=self.data_root)
        return content_hash(split)

    def _execute(self, suite, jobs, on_result, on_progress) -> None:
        t0 = time.perf_counter()
        opts = self.task_options(suite)
        threads = self.threads if self.threads is not None else max(1, int(opts["num_cpus"]))
        fn = _remote_run_job.options(**opts)
        self.concurrent_jobs = self._slots(opts, self.max_in_flight or len(jobs))
        suite_ref = ray.put(suite)
        expected = self._expected_hash(suite) if self.check_data else None
        data_root = self.data_root or suite.data.folder

        queue = list(jobs)
        limit = self.max_in_flight or len(queue)
        pending: dict[ray.ObjectRef, Job] = {}
        tasks: list[dict[str, Any]] = []
        error: BaseException | None = None
        by_key = {job.key: job for job in jobs}
        inbox: Any = _remote_inbox.remote() if on_progress else None  # an ActorHandle

        def submit():
            while queue and len(pending) < limit:
                job = queue.pop(0)
                pending[fn.remote(suite_ref, job, self.device, data_root, threads, inbox)] = job

        def relay() -> None:
            """Pass the tasks' progress reports on, in the order they were posted."""
            if inbox is None or on_progress is None:
                return
            for key, k, stage in ray.get(inbox.drain.remote()):
                if key in by_key:
                    on_progress(by_key[key], k, stage)

        def collect(ref) -> None:
            nonlocal error
            job = pending.pop(ref)
            try:
                out: TaskOutput = ray.get(ref)
            except ray.exceptions.RayError as exc:
                hint = ""
                if "ModuleNotFoundError" in str(exc) or "No module named" in str(exc):
                    hint = " (is robust_bench_sc, with its plug-ins, installed on every node?)"
                elif isinstance(exc, ray.exceptions.WorkerCrashedError):
                    hint = f" (its worker died {self.max_retries + 1} times)"
                cause = getattr(exc, "cause", None)
                what = f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else str(exc)
                if error is None:
                    error = RayJobError(f"job {job.key} failed on a Ray worker{hint}: {what}")
                    error.__cause__ = exc  # the worker's traceback
                return
            if expected is not None and out.data_hash != expected:
                error = error or DataMismatchError(
                    f"node {out.node} (pid {out.pid}) evaluated images with hash {out.data_hash}, the driver "
                    f"holds {expected}: point SCBENCH_DATA / SCBENCH_SHARED on that node at the same data")
                return
            tasks.append({"job": job.key, "node": out.node, "node_id": out.node_id, "pid": out.pid,
                          "seconds": round(out.result.seconds, 3)})
            on_result(out.result)

        submit()
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=self.poll_seconds)
                relay()  # a job's reports reach the driver before its result
                for ref in done:
                    collect(ref)
                if error is not None:
                    break
                submit()
        finally:
            if inbox is not None:
                ray.kill(inbox)
        if error is not None:
            # record whatever already finished, cancel the rest, then report the failure
            for ref in list(pending):
                ray.cancel(ref, force=False)
            if pending:
                done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                for ref in done:
                    try:
                        collect(ref)
                    except Exception:  # noqa: BLE001 - already failing; keep the first error
                        pass
            raise error
        self.last_stats = {"jobs": len(jobs), "seconds": round(time.perf_counter() - t0, 3),
                           "task_options": opts, "threads": threads, "tasks": tasks}
