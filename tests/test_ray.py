"""The Ray executor: a simulated 2-node cluster gives the local executor's numbers, survives
a worker killed mid-job, records every chunk exactly once and resumes."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="the Ray executor needs the optional extra: pip install 'robust_bench_sc[ray]'")

from ray.cluster_utils import Cluster  # noqa: E402

from robust_bench_sc.config import load_suite  # noqa: E402
from robust_bench_sc.executor import Executor  # noqa: E402
from robust_bench_sc.plan import plan_jobs  # noqa: E402
from robust_bench_sc.ray_executor import DataMismatchError, RayExecutor, run_job  # noqa: E402
from robust_bench_sc.runner import run_suite  # noqa: E402
from robust_bench_sc.storage import RunDir, read_json  # noqa: E402

SUITE = """\
name: ray_small
seed: 0
data:
  n_images: 8
  chunk_size: 4
defenses:
{defenses}
threat_models:
  - clean
  - {{use: linf_pgd_ce, name: linf_pgd_2, steps: 2, restarts: 1}}
"""
PLAIN = "  - madry_pgd_at\n  - trades\n"

# madry_pgd_at whose classifier SIGKILLs its own worker process the first time it runs
# (anywhere): the job is cut off mid-evaluation and Ray must retry it elsewhere.
CHAOS = '''\
import os
import signal

from torch import nn

from robust_bench_sc.plugins import build_defense

MARKER = {marker!r}
DRIVER = {driver!r}  # the test's own process builds and probes the defense too: only a worker dies


class KillOnce(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if os.getpid() == DRIVER:
            return self.inner(x)
        try:
            fd = os.open(MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return self.inner(x)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def build():
    d = build_defense("madry_pgd_at")
    d.classifier = KillOnce(d.classifier)
    return d
'''


def _suite(tmp: Path, defenses: str = PLAIN):
    path = tmp / "suite.yaml"
    path.write_text(SUITE.format(defenses=defenses))
    return load_suite(path)


def _same_results(a: Path, b: Path) -> None:
    sa = pd.read_csv(a / "summary.csv").drop(columns="seconds")
    sb = pd.read_csv(b / "summary.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(sa, sb)
    assert (a / "samples.csv").read_text() == (b / "samples.csv").read_text()


class Counting(Executor):
    """Wraps an executor and counts on_result calls per job."""

    def __init__(self, inner: Executor):
        self.inner, self.calls = inner, Counter()
        self.name = inner.name

    @property
    def concurrent_jobs(self):  # type: ignore[override]
        return self.inner.concurrent_jobs

    def execute(self, suite, jobs, on_result, on_progress=None):
        def counted(res):
            self.calls[res.job.key] += 1
            on_result(res)

        self.inner.execute(suite, jobs, counted, on_progress)


@pytest.fixture(scope="module")
def cluster():
    """Two simulated nodes with one CPU each."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    suite = _suite(tmp)
    run_suite(suite, out=tmp / "run", show_progress=False)
    return tmp / "run"


def test_resources_are_optional_and_do_not_change_the_hash(tmp_path):
    suite = _suite(tmp_path)
    assert suite.resources.num_cpus == 1 and suite.resources.num_gpus is None
    assert RayExecutor(device="cpu").task_options(suite)["num_gpus"] == 0
    assert RayExecutor(device="cuda").task_options(suite)["num_gpus"] == 1
    text = (tmp_path / "suite.yaml").read_text() + "resources: {num_cpus: 2, num_gpus: 0.5}\n"
    (tmp_path / "suite.yaml").write_text(text)
    other = load_suite(tmp_path / "suite.yaml")
    assert other.resources.num_cpus == 2
    assert RayExecutor(device="cuda").task_options(other)["num_gpus"] == 0.5
    assert other.content_hash() == suite.content_hash()


def test_task_body_caches_one_worker_per_suite(tmp_path):
    suite = _suite(tmp_path)
    jobs = plan_jobs(suite)
    a = run_job(suite, jobs[0], "cpu", None, 0)
    b = run_job(suite, jobs[1], "cpu", None, 0)
    assert a.data_hash == b.data_hash and a.result.job == jobs[0] and len(b.result.records) == 4
    from robust_bench_sc import ray_executor

    assert len([k for k in ray_executor._WORKERS if k[0] == suite.content_hash()]) == 1


def test_two_node_cluster_matches_local_executor(cluster, local_run, tmp_path):
    suite = _suite(tmp_path)
    ex = Counting(RayExecutor(device="cpu"))
    out = run_suite(suite, out=tmp_path / "run", executor=ex, show_progress=False)
    assert out.computed_chunks == 8
    assert sorted(ex.calls.values()) == [1] * 8
    assert ex.inner.last_stats["task_options"]["num_cpus"] == 1
    assert len({t["node_id"] for t in ex.inner.last_stats["tasks"]}) == 2, "both nodes should have run jobs"
    # two one-CPU nodes, one CPU per task: two jobs at once, in run.json for `scbench status`
    assert read_json(tmp_path / "run" / "run.json")["executor"] == {"name": "ray", "concurrent_jobs": 2}
    _same_results(local_run, tmp_path / "run")

    # resume: drop two recorded chunks; only those run again, same numbers
    for j in plan_jobs(suite)[1:3]:
        RunDir(tmp_path / "run").chunk(j.defense, j.threat, j.chunk).unlink()
    again = run_suite(suite, out=tmp_path / "run", executor=RayExecutor(device="cpu"), show_progress=False)
    assert (again.resumed_chunks, again.computed_chunks) == (6, 2)
    _same_results(local_run, tmp_path / "run")


def test_worker_killed_mid_job_is_retried(cluster, local_run, tmp_path):
    marker = tmp_path / "killed.pid"
    (tmp_path / "chaos.py").write_text(CHAOS.format(marker=str(marker), driver=os.getpid()))
    defenses = f"  - {{ref: '{tmp_path / 'chaos.py'}:build', name: madry_pgd_at}}\n  - trades\n"
    suite = _suite(tmp_path, defenses)
    ex = Counting(RayExecutor(device="cpu", max_retries=2))
    out = run_suite(suite, out=tmp_path / "run", executor=ex, show_progress=False)
    assert marker.is_file(), "no worker was killed"
    killed = int(marker.read_text())
    assert out.computed_chunks == 8 and sorted(ex.calls.values()) == [1] * 8
    assert len(list((tmp_path / "run" / "records").rglob("chunk_*.json"))) == 8
    _same_results(local_run, tmp_path / "run")
    assert killed not in {r["pid"] for r in ex.inner.last_stats["tasks"]}


def test_data_mismatch_on_a_node_is_an_error(cluster, tmp_path, monkeypatch):
    suite = _suite(tmp_path)
    monkeypatch.setattr(RayExecutor, "_expected_hash", lambda self, s: "not-the-data")
    with pytest.raises(DataMismatchError, match="SCBENCH_DATA"):
        run_suite(suite, out=tmp_path / "run", executor=RayExecutor(device="cpu"), show_progress=False)
    # nothing with the wrong data was recorded
    assert not list((tmp_path / "run").rglob("chunk_*.json"))


BOOM = '''\
from torch import nn

from robust_bench_sc.plugins import build_defense


class Boom(nn.Module):
    def forward(self, x):
        raise ValueError("boom: a bug in the defense")


def build():
    d = build_defense("trades")
    d.classifier = Boom()
    return d
'''


def test_failing_job_is_not_retried_and_stops_the_run(cluster, tmp_path):
    from robust_bench_sc.ray_executor import RayJobError

    (tmp_path / "boom.py").write_text(BOOM)
    suite = _suite(tmp_path, f"  - madry_pgd_at\n  - {{ref: '{tmp_path / 'boom.py'}:build', name: boom}}\n")
    with pytest.raises(RayJobError, match=r"boom/.*boom: a bug in the defense"):
        # without the probes: they would find the broken defense in the driver before any job
        run_suite(suite, out=tmp_path / "run", executor=RayExecutor(device="cpu"), show_progress=False, probes=False)
    recorded = [p.parent.parent.name for p in (tmp_path / "run" / "records").rglob("chunk_*.json")]
    assert "boom" not in recorded


def test_local_ray_keeps_the_callers_sigterm_handler():
    """ray.init installs a SIGTERM handler that exits the driver at once; the executor puts the
    caller's back, so `kill PID` still marks a run interrupted (measured: a Ray run stopped
    with SIGTERM had left run.json `running`)."""
    import signal

    import robust_bench_sc.ray_executor as rx

    def ours(signum, frame):
        raise KeyboardInterrupt

    def rays(signum, frame):  # what ray.init installs: exit at once
        raise SystemExit(1)

    class FakeRay:  # in a process where another test's cluster already runs: ray.init as Ray does it
        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def init(**kwargs):
            signal.signal(signal.SIGTERM, rays)

    before = signal.signal(signal.SIGTERM, ours)
    try:
        if ray.is_initialized():
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(rx, "ray", FakeRay)
                assert RayExecutor(num_cpus=1)._connect() is True
        else:  # the real ray.init
            assert RayExecutor(num_cpus=1, log_to_driver=False)._connect() is True
            ray.shutdown()
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, before)


# -- progress inside a chunk reaches the driver ----------------------------------------------

PROGRESS_SUITE = """\
name: ray_progress
seed: 0
data: {n_images: 8, chunk_size: 4}
defenses: [madry_pgd_at]
threat_models:
  - {name: pgd3, attack: pgd, norm: linf, epsilon: 2/255, steps: 2, step_size: epsilon/2, restarts: 3}
"""


def _progress_suite(tmp: Path):
    path = tmp / "suite.yaml"
    path.write_text(PROGRESS_SUITE)
    return load_suite(path)


def test_task_body_posts_every_stage_to_the_inbox(tmp_path):
    """The task body (no Ray): it starts, then one stage per restart, the last counting the
    images its records show fooled."""
    from types import SimpleNamespace

    from robust_bench_sc.progress import STARTED

    suite = _progress_suite(tmp_path)
    posted: list[tuple] = []
    inbox = SimpleNamespace(post=SimpleNamespace(remote=lambda *a: posted.append(a)))
    job = plan_jobs(suite)[0]
    out = run_job(suite, job, "cpu", None, 0, inbox)
    assert posted[0] == (job.key, 0, STARTED) and {p[0] for p in posted} == {job.key}
    stages = [p[2] for p in posted[1:] if p[2]]
    recs = out.result.records
    attacked = sum(r["attacked"] for r in recs)
    assert stages[-1] == f"restart {len(stages)}/3: {sum(r['fooled'] for r in recs if r['attacked'])} of {attacked} " \
                         "attacked images fooled"


class Relayed(Executor):
    """Wraps an executor; keeps every on_progress / on_result call in order."""

    def __init__(self, inner: Executor):
        self.inner, self.calls = inner, []
        self.name = inner.name

    def execute(self, suite, jobs, on_result, on_progress=None):
        def progress(job, k, stage=None):
            self.calls.append(("progress", job.key, stage))
            on_progress(job, k, stage)

        def result(res):
            self.calls.append(("result", res.job.key, None))
            on_result(res)

        self.inner.execute(suite, jobs, result, progress)


def test_workers_progress_reaches_the_driver(cluster, tmp_path):
    from robust_bench_sc.progress import STARTED

    suite = _progress_suite(tmp_path)
    ex = Relayed(RayExecutor(device="cpu", poll_seconds=0.2))
    run_suite(suite, out=tmp_path / "run", executor=ex, show_progress=False)
    assert not RunDir(tmp_path / "run").progress_path.exists()
    for job in plan_jobs(suite):
        mine = [(kind, stage) for kind, key, stage in ex.calls if key == job.key]
        assert mine[0] == ("progress", STARTED) and mine.count(("result", None)) == 1, mine
        recs = RunDir(tmp_path / "run").read_chunk(job.defense, job.threat, job.chunk)["records"]
        attacked = sum(r["attacked"] for r in recs)
        stages = [s for kind, s in mine if kind == "progress" and s not in (STARTED, None)]
        # stages posted just before the task returned may come after its result; the first did not
        assert stages and all(s.endswith(f" of {attacked} attacked images fooled") for s in stages), stages
        assert mine.index(("progress", stages[0])) < mine.index(("result", None)) or len(stages) == 1


def test_audit_runs_its_cascade_chunks_on_the_cluster_with_the_local_numbers(cluster, tmp_path):
    """``scbench audit --executor ray``: the cascade's chunks (two of two images) run on the two
    nodes at once; every per-image record and the card's numbers are the local run's."""
    from dataclasses import replace

    from robust_bench_sc.audit import BUDGETS, audit

    budget = replace(BUDGETS["quick"], apgd_iterations=5, eot=2, recheck=2, square_queries=20, square_eot=2,
                     transfer_steps=5, indicators=False, binarization=False, chunk_size=2)
    local = audit("madry_pgd_at", n_images=4, out=tmp_path / "local", budget=budget)
    ex = Counting(RayExecutor(device="cpu"))
    remote = audit("madry_pgd_at", n_images=4, out=tmp_path / "ray", budget=budget, executor=ex)
    assert sorted(ex.calls.values()) == [1, 1]
    assert len({t["node_id"] for t in ex.inner.last_stats["tasks"]}) == 2, "both nodes should have run a chunk"
    assert read_json(tmp_path / "ray" / "run.json")["executor"] == {"name": "ray", "concurrent_jobs": 2}
    for key in ("worst_case", "clean_accuracy", "fooled_by"):
        assert remote[key] == local[key], key
    timeless = [[{k: x for k, x in m.items() if k != "seconds"} for m in card["cascade"]] for card in (local, remote)]
    assert timeless[0] == timeless[1] and len(timeless[0]) == 5
    assert local["verdict"]["code"] == remote["verdict"]["code"]
    assert (tmp_path / "local" / "samples.csv").read_text() == (tmp_path / "ray" / "samples.csv").read_text()
