"""Where a run folder stands: per (defense, threat model) the images recorded of those
planned, robust accuracy so far, job seconds and a time-to-finish estimate, and whether a
live process is writing it (``scbench status``).

Read-only: it never takes or clears a lock, and it counts a record only where the runner
would reuse it: its spec hash is the planned job's and it holds that job's images, in order,
with their labels (``records.record_problem``). Without the CIFAR-10 files it checks the
count of samples only, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robust_bench_sc.config import suite_from_resolved
from robust_bench_sc.plan import images_covered, job_spec_hash, plan_jobs, recorded_spec_hash
from robust_bench_sc.progress import duration, in_flight_lines, parse_in_flight
from robust_bench_sc.records import data_labels, record_problem
from robust_bench_sc.stats import wilson_interval
from robust_bench_sc.storage import DamagedFileError, RunDir, RunLock, RunMeta
from robust_bench_sc.subsets import describe_subset


class StatusError(ValueError):
    """The folder is not a run folder, or its run.json cannot be read."""


@dataclass(frozen=True)
class PairStatus:
    defense: str
    threat: str
    planned: int          # images planned for the pair
    recorded: int         # images in reusable records
    robust: int           # of the scored images
    scored: int           # recorded images that count (ZOO: only those drawn, ``selected`` = 1)
    seconds: float        # job seconds of the recorded chunks
    chunks_planned: int
    chunks_recorded: int
    minimum_norm: bool = False                     # Boundary, HSJ, ZOO, C&W: the norm is the result
    fooled_l2: tuple[float, ...] = ()               # ‖e‖₂ of the scored images attacked and fooled so far
    in_flight: tuple[tuple[int, float], ...] = ()   # its jobs in flight (progress.json): (images, seconds in)

    @property
    def remaining_seconds(self) -> float | None:
        """Job seconds still to go at the rate of the recorded chunks (None before the first),
        less the time its jobs in flight have run (each at most its chunk's estimate)."""
        if self.recorded >= self.planned:
            return 0.0
        if not self.recorded:
            return None
        rate = self.seconds / self.recorded
        spent = sum(min(max(s, 0.0), rate * n) for n, s in self.in_flight)
        return rate * (self.planned - self.recorded) - spent


@dataclass(frozen=True)
class RunStatus:
    run_dir: Path
    status: str                       # run.json's: running, interrupted or complete
    writer: dict[str, Any] | None     # the lock's owner (with "alive"), None without a lock
    meta: RunMeta
    pairs: list[PairStatus] = field(default_factory=list)
    unusable: list[str] = field(default_factory=list)  # record files the next run recomputes or refuses
    unchecked: str | None = None  # why images and labels were not checked (the data could not be read)
    subset: str = ""  # the images the planned jobs cover (a max_images cap puts a pair below n_images)
    progress: Any = None  # progress.json (the jobs in flight), read while a live process writes the folder

    @property
    def live(self) -> bool:
        """A live process on this host holds the folder's lock."""
        return bool(self.writer and self.writer.get("alive"))

    @property
    def state(self) -> str:
        """One phrase: complete; running (pid N); interrupted; or running per run.json with no live writer."""
        if self.status == "complete":
            return "complete"
        w = self.writer
        if self.live and w:
            return f"running (pid {w.get('pid')}, started {w.get('started_at')})"
        if w and w.get("alive") is None:
            return (f"{self.status}; locked by pid {w.get('pid')} on {w.get('host')} (another host: liveness "
                    "cannot be checked)" if not w.get("unreadable") else f"{self.status}; unreadable lock file")
        if self.status == "interrupted":
            return f"interrupted at {self.meta.interrupted_at}; the same command resumes it"
        if self.status == "failed":
            return (f"stopped on an error at {self.meta.interrupted_at} ({str(self.meta.error)[:120]}); "
                    "fix it, and the same command resumes it")
        return f"not running (run.json says {self.status!r}, no live writer: killed?); the same command resumes it"

    @property
    def concurrent_jobs(self) -> int | None:
        """Jobs the last invocation ran at once (run.json's ``executor``; None: not recorded)."""
        return self.meta.concurrent_jobs

    @property
    def jobs(self) -> tuple[int, int]:
        return sum(p.chunks_recorded for p in self.pairs), sum(p.chunks_planned for p in self.pairs)

    @property
    def remaining_seconds(self) -> tuple[float, bool]:
        """Job seconds still to go, summed over pairs, and whether that is a lower bound
        (some pair has no chunk recorded yet, so no rate)."""
        rem = [p.remaining_seconds for p in self.pairs]
        return sum(r for r in rem if r is not None), any(r is None for r in rem)


@dataclass
class _Tally:
    planned: int = 0
    recorded: int = 0
    robust: int = 0
    scored: int = 0
    seconds: float = 0.0
    chunks_planned: int = 0
    chunks_recorded: int = 0
    fooled_l2: list[float] = field(default_factory=list)


def run_status(run_dir: str | Path) -> RunStatus:
    """What ``run_dir`` holds (read-only); :class:`StatusError` or ConfigError when it cannot be read."""
    layout = RunDir(run_dir)
    if not layout.is_run():
        raise StatusError(f"{run_dir}: not a run folder (no run.json)")
    try:
        meta = layout.read_run_meta()
    except DamagedFileError as exc:
        raise StatusError(str(exc)) from None
    assert meta is not None  # is_run
    from robust_bench_sc.data import DataError

    suite = suite_from_resolved(meta.raw.get("config"), str(layout.meta_path))
    per: dict[tuple[str, str], _Tally] = {}
    unusable: list[str] = []
    expected: tuple[list[int], list[int]] | None = None
    unchecked: str | None = None
    jobs = plan_jobs(suite)
    for j in jobs:
        t = per.setdefault((j.defense, j.threat), _Tally())
        t.planned += j.stop - j.start
        t.chunks_planned += 1
        path = layout.chunk(j.defense, j.threat, j.chunk)
        if not path.is_file():
            continue
        try:
            record = layout.read_record(j.defense, j.threat, j.chunk)
        except DamagedFileError:
            unusable.append(f"{path} (damaged)")
            continue
        recs = record.records
        if len(recs) != j.stop - j.start or recorded_spec_hash(record, meta.config) != \
                job_spec_hash(suite, j, meta.spec_hash_auto(j.defense, j.threat)):
            unusable.append(f"{path} (other settings or images)")
            continue
        if expected is None and unchecked is None:
            try:
                expected = data_labels(suite)
            except (DataError, OSError) as exc:
                unchecked = str(exc)
        problem = record_problem(record, j, *expected) if expected is not None else None
        if problem:
            unusable.append(f"{path} (damaged: {problem})")
            continue
        # ZOO: only the drawn images (selected = 1) count; those not drawn carry 0, the misclassified none
        # (summary.csv's rule)
        drawn = any(r.get("selected") is not None for r in recs)
        scored = [r for r in recs if r.get("selected") == 1] if drawn else recs
        t.recorded += len(recs)
        t.chunks_recorded += 1
        t.seconds += record.seconds
        t.scored += len(scored)
        t.robust += sum(int(bool(r.get("robust"))) for r in scored)
        t.fooled_l2.extend(float(r["l2"]) for r in scored  # as summary.csv's mean_l2: attacked and fooled
                           if r.get("attacked") and r.get("fooled") and r.get("l2") is not None)
    writer = RunLock(run_dir).owner()
    live = bool(writer and writer.get("alive"))  # a dead writer's progress.json describes nothing
    if not live and meta.status == "running":
        # run.json was read before the lock: a run that ended in between wrote how it ended into
        # run.json before it released the lock, so a second read is not "killed?" by mistake
        try:
            again = layout.read_run_meta()
        except DamagedFileError:
            again = None
        if again is not None:
            meta = again
    progress = layout.read_progress() if live else None
    in_flight: dict[tuple[str, str], list[tuple[int, float]]] = {}
    written, flying = parse_in_flight(progress)
    for p in flying:  # time a job in flight has run, as of the file's writing; not for a recorded chunk
        if written is not None and not layout.chunk(p.defense, p.threat, p.chunk).is_file():
            in_flight.setdefault((p.defense, p.threat), []).append((p.stop - p.start, written - p.started_at))
    pairs = [PairStatus(d, th, t.planned, t.recorded, t.robust, t.scored, t.seconds, t.chunks_planned,
                        t.chunks_recorded, suite.threat(th).minimum_norm, tuple(t.fooled_l2),
                        tuple(in_flight.get((d, th), ())))
             for (d, th), t in per.items()]
    subset = describe_subset(images_covered(jobs), images=meta.image_words) if jobs else str(meta.subset)
    return RunStatus(Path(run_dir), str(meta.status), writer, meta, pairs, unusable, unchecked,
                     subset, progress)


def status_rows(st: RunStatus) -> list[list[str]]:
    """The table of ``scbench status``: one row per (defense, threat model)."""
    rows = []
    for p in st.pairs:
        if p.scored:
            lo, hi = wilson_interval(p.robust, p.scored)
            acc = f"{100 * p.robust / p.scored:.2f} [{lo:.1f}, {hi:.1f}]" + \
                (f" of {p.scored} drawn" if p.scored != p.recorded else "")
        else:
            acc = "—"
        if p.minimum_norm and p.fooled_l2:  # what a minimum-norm attack measures
            acc += f"; mean ‖e‖₂ {sum(p.fooled_l2) / len(p.fooled_l2):.2f} ({len(p.fooled_l2)} attacked and fooled)"
        rem = p.remaining_seconds
        left = "done" if rem == 0 else ("?" if rem is None else f"≈ {duration(rem)}")
        rows.append([p.defense, p.threat, f"{p.recorded}/{p.planned}", f"{p.chunks_recorded}/{p.chunks_planned}",
                     acc, duration(p.seconds), left])
    return rows


STATUS_HEADER = ["defense", "threat model", "images", "chunks", "robust so far [95% CI] (min-norm: mean ‖e‖₂)", "job time",
                 "job time to go"]


def status_lines(st: RunStatus) -> list[str]:
    """The lines above and below the table."""
    done, total = st.jobs
    meta = st.meta
    head = [f"{st.run_dir}: {st.state}",
            f"suite {meta.suite} (hash {meta.suite_hash}), "
            + (f"profile {meta.profile}, " if meta.profile else "no profile (the suite as declared), ") +
            f"{st.subset}; {done}/{total} jobs recorded"]
    rem, lower = st.remaining_seconds
    if done < total and not any(p.chunks_recorded for p in st.pairs if p.recorded < p.planned):
        head.append("to go: not known until a chunk of an unfinished pair is recorded")
    elif done < total:
        at_once = st.concurrent_jobs
        if at_once and at_once > 1:
            k = min(at_once, total - done)
            pace = (f"; ≈ {duration(rem / k)} of wall time with {k} jobs at once (run.json: this folder's last "
                    f"invocation ran {at_once} at once)")
        elif at_once == 1:
            pace = " (one job at a time, as this folder's last invocation ran them)"
        else:
            pace = " (wall time: this divided by the jobs run at once; run.json does not say how many)"
        flying = " (less the time the jobs in flight have run)" if any(p.in_flight for p in st.pairs) else ""
        head.append(f"to go: {'at least ' if lower else ''}≈ {duration(rem)} of job time at the recorded chunks' "
                    "rate" + flying + pace + ("; '?': no chunk of that pair recorded yet" if lower else ""))
    if st.live and st.status != "complete":
        head += in_flight_lines(st.progress) or ["in flight: not known (no progress.json yet: the run is starting, "
                                                 "or its scbench predates it)"]
    foot = [f"not counted (the next run recomputes or refuses it): {u}" for u in st.unusable]
    if st.unchecked:
        foot.append(f"images and labels of the records not checked (the data could not be read: {st.unchecked})")
    return head + foot
