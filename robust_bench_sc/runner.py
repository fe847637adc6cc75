"""The suite runner: orchestrates one invocation of a run. Preflight and probes
(:mod:`~robust_bench_sc.preflight`), the run folder chosen, checked and locked, the records it
already holds reconciled (:mod:`~robust_bench_sc.records`), the remaining jobs executed with
progress bars while each result is recorded, run.json kept (:class:`~robust_bench_sc.storage.RunDir`),
the tables written (:mod:`~robust_bench_sc.tables`), and the diagnostics hook."""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape

from robust_bench_sc.config import SuiteConfig
from robust_bench_sc.data import load_data
from robust_bench_sc.errors import RunError
from robust_bench_sc.executor import Executor, LocalExecutor
from robust_bench_sc.plan import Job, images_covered, plan_jobs
from robust_bench_sc.preflight import preflight, probe_suite
from robust_bench_sc.plugins import name_defenses
from robust_bench_sc.progress import STARTED, InFlight, RunProgress
from robust_bench_sc.registry import RegistryError
from robust_bench_sc.provenance import invocation_meta
from robust_bench_sc.records import reconcile_records
from robust_bench_sc.storage import DamagedFileError, LockError, RunDir, safe_name
from robust_bench_sc.subsets import describe_subset
from robust_bench_sc.tables import write_tables
from robust_bench_sc.worker import ChunkResult

LOG_STAGE_EVERY = 120.0  # seconds between two stage lines of one job in a log (not a terminal)


def default_run_dir(suite: SuiteConfig, results_root: Path) -> Path:
    """The newest unfinished run of the same suite content (resume), else a new timestamp."""
    base = results_root / safe_name(suite.name)
    if base.is_dir():
        for cand in sorted(base.iterdir(), reverse=True):
            rd = RunDir(cand)
            if rd.is_run():
                try:
                    m = rd.read_run_meta()
                except ValueError:
                    continue
                if m is None or rd.locked_by_live_process():  # another run is writing it: start a new folder
                    continue
                if m.suite_hash == suite.content_hash() and m.status != "complete":
                    return cand
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return base / stamp


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")  # an atomic write killed before its rename


def prepare_run_dir(run_dir: Path) -> None:
    """Up-front checks of a run directory, before anything is computed: it is a folder (or
    can be created), it is a run folder or empty (a run never overwrites files it did not
    write), and it is writable."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir}: is a file, not a folder; give a folder for the run")
    if run_dir.is_dir():
        entries = [p.name for p in run_dir.iterdir()]
        layout = RunDir(run_dir)
        if not layout.meta_path.exists():
            foreign = sorted(n for n in entries if n != RunDir.LOCK and not _is_temp(n))
            if foreign:
                raise RunError(f"--out {run_dir}: an existing folder that is not a run folder (no run.json; holds "
                               f"{', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); a run never writes "
                               "over files it did not write: choose a new or empty folder")
        records = layout.records_dir
        subs = [records, *(p for p in records.rglob("*") if p.is_dir())] if records.is_dir() else []
        for sub in [run_dir, *subs]:
            if not os.access(sub, os.W_OK | os.X_OK):
                raise RunError(f"--out {run_dir}: {sub} is not writable; choose another --out or fix its permissions")
    else:
        try:
            run_dir.mkdir(parents=True)
        except FileExistsError:
            pass
        except OSError as exc:
            raise RunError(f"--out {run_dir}: cannot create the folder ({exc.strerror}); choose another --out") from None


@dataclass
class RunOutcome:
    run_dir: Path
    summary: pd.DataFrame
    resumed_chunks: int
    computed_chunks: int


def run_suite(suite: SuiteConfig, out: str | Path | None = None, device: str = "cpu",
              executor: Executor | None = None, console: Console | None = None,
              results_root: str | Path = "results", command: list[str] | None = None,
              show_progress: bool = True, probes: bool = True, accept_code_change: bool = False,
              quiet: bool = False, probe_timeout: float | None = None) -> RunOutcome:
    """Run ``suite`` (resumably). ``probes``: probe each defense first and adapt the attacks
    to it (robust_bench_sc.adapt); off, every threat model runs exactly as written.
    ``probe_timeout``: seconds each probe may take (default: scaled from one forward pass).
    ``accept_code_change``: reuse records whose defense code fingerprint differs from the
    code as it loads now (refused otherwise, as other weights are)."""
    console = console or Console(stderr=True)
    # every check of the suite and its plug-ins, before anything is written
    built: dict[str, Any] = {}
    try:  # a plug-in given without name: is labelled by its Defense(name=...) (config.with_own_names)
        suite = name_defenses(suite, built)
    except RegistryError as exc:
        raise RunError(str(exc)) from None
    fingerprints = preflight(suite, warn=lambda msg: console.print(f"[yellow]warning:[/] {escape(msg)}", highlight=False,
                                                                   soft_wrap=True), built=built,
                             probe_timeout=probe_timeout)
    code_fps = {label: d.code_fingerprint() for label, d in built.items()}
    probe_record: dict[str, Any] | None = None
    if probes:
        suite, probe_record = probe_suite(suite, built, device, console, quiet=quiet, probe_timeout=probe_timeout)
    del built
    run_dir = Path(out) if out else default_run_dir(suite, Path(results_root))
    run_dir = run_dir.resolve()
    created = not run_dir.exists()
    prepare_run_dir(run_dir)
    try:
        try:
            lock = RunDir(run_dir).lock().acquire()  # one writer per run folder
        except LockError as exc:
            raise RunError(str(exc)) from None
        if lock.stale_owner:
            console.print(f"note: took over {lock.path} left by pid {lock.stale_owner.get('pid')} (no longer running)")
        try:
            return _run_locked(suite, run_dir, device, executor, console, command, show_progress, fingerprints,
                               probe_record, code_fps, accept_code_change, quiet)
        finally:
            lock.release()
    except BaseException:
        if created:  # a failed start leaves no empty folder behind (only this invocation's own, and only empty)
            try:
                run_dir.rmdir()
            except OSError:
                pass
        raise


def _run_locked(suite: SuiteConfig, run_dir: Path, device: str, executor: Executor | None, console: Console,
                command: list[str] | None, show_progress: bool, fingerprints: dict[str, str],
                probe_record: dict[str, Any] | None = None, code_fps: dict[str, str] | None = None,
                accept_code_change: bool = False, quiet: bool = False) -> RunOutcome:
    layout = RunDir(run_dir)
    suite_hash = suite.content_hash()
    try:
        old = layout.read_run_meta()
    except DamagedFileError as exc:
        raise RunError(f"{exc}: it describes the records in {run_dir}, which cannot be checked without it; "
                       "restore it, or choose another --out") from None
    jobs = plan_jobs(suite)
    done, known_fp = reconcile_records(suite, run_dir, jobs, old, console, fingerprints, code_fps, accept_code_change)
    done_set = set(done)
    todo = [j for j in jobs if j not in done_set]
    split = load_data(suite.data)
    subset = describe_subset(images_covered(jobs) or suite.data.n_images, images=split.images)
    layout.write_meta(invocation_meta(suite, split, subset, len(jobs), device, command or sys.argv, probe_record,
                                      old, known_fp, code_fps))
    if old is not None and old.suite_hash != suite_hash:  # grown: same folder, other settings
        earlier = f"profile {old.profile}" if old.profile else "no profile"
        console.print(f"[bold]growing[/] {run_dir} (earlier configuration {old.suite_hash}, {earlier}): "
                      f"{len(done)}/{len(jobs)} jobs already recorded with identical settings")
    elif done:
        console.print(f"[bold]resuming[/] {run_dir}: {len(done)}/{len(jobs)} jobs already recorded")
    else:
        console.print(f"[bold]run[/] {suite.name} → {run_dir} ({len(jobs)} job{'s' * (len(jobs) != 1)}, {subset})")
    from robust_bench_sc.budget import start_lines  # each threat model's budget, jobs and estimated time

    for line in start_lines(suite, jobs, todo, fingerprints) if not quiet else []:  # --quiet: none
        console.print(escape(line), highlight=False, soft_wrap=True)

    # progress: one bar per (defense, threat model)
    tally: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])  # robust, total
    for j in done:
        for r in layout.read_record(j.defense, j.threat, j.chunk).records:
            tally[(j.defense, j.threat)][0] += int(r["robust"])
            tally[(j.defense, j.threat)][1] += 1
    progress = RunProgress(console, disable=not show_progress)  # one line per pair, or stacked in 80 columns
    # jobs in flight: their latest stage in progress.json (scbench status), and in a log (not a
    # terminal) one line per job at most every LOG_STAGE_EVERY seconds
    in_flight = InFlight(layout.write_progress)
    stage_logged: dict[str, float] = {}
    tasks = {}
    per_pair: defaultdict[tuple[str, str], int] = defaultdict(int)  # images per (defense, threat model)
    for j in jobs:
        per_pair[(j.defense, j.threat)] += j.stop - j.start

    def acc_text(key):
        r, n = tally[key]
        return f"{100 * r / n:5.1f}% (n={n})" if n else "  —"

    with progress:
        for key, total in per_pair.items():
            tasks[key] = progress.add_task(f"{key[0]} × {key[1]}", total=total, completed=tally[key][1], acc=acc_text(key),
                                           stage="")

        def on_progress(job: Job, k: int, stage: str | None = None):
            key = (job.defense, job.threat)
            if layout.chunk(job.defense, job.threat, job.chunk).exists():  # recorded (a late word from a retry)
                return
            p = in_flight.event(job, k, stage)
            progress.update(tasks[key], advance=k, stage=f"chunk {job.chunk}: {p.stage}" if p.stage else "")
            now = time.time()
            if show_progress and not console.is_terminal and stage and stage != STARTED \
                    and now - stage_logged.get(job.key, p.started_at) >= LOG_STAGE_EVERY:
                stage_logged[job.key] = now
                console.print(f"  {escape(p.line(now))}", highlight=False, soft_wrap=True)

        def on_result(res: ChunkResult):
            j = res.job
            if layout.chunk(j.defense, j.threat, j.chunk).exists():  # recorded exactly once
                return
            fp = res.defense_fingerprint
            if fp and known_fp.setdefault(j.defense, fp) != fp:
                raise RunError(f"defense {j.defense!r}: its weights changed during the run (fingerprint "
                               f"{known_fp[j.defense]} before, {fp} now); nothing more was recorded")
            layout.write_record(res.to_record())
            in_flight.finished(j)
            if not computed[0]:  # with the first result: how many jobs run at once (scbench status's wall time)
                # run.json's executor: run_status.RunStatus.concurrent_jobs checks the value when it reads it
                layout.update_meta(executor={"name": ex.name, "concurrent_jobs": ex.concurrent_jobs})
            computed[0] += 1
            key = (j.defense, j.threat)
            tally[key][0] += sum(int(r["robust"]) for r in res.records)
            tally[key][1] += len(res.records)
            progress.update(tasks[key], completed=tally[key][1], acc=acc_text(key), stage="")
            if show_progress and not console.is_terminal:  # a log file gets a line per job; --quiet none
                console.print(f"  {j.defense} × {j.threat} chunk {j.chunk}: images {j.start}-{j.stop - 1}, "
                              f"robust so far {acc_text(key)}, {res.seconds:.1f}s")

        ex = executor or LocalExecutor(device=device, data_root=suite.data.folder)
        computed = [0]  # jobs this invocation recorded (run.json: which invocations' code computed numbers)
        t0 = time.perf_counter()
        wall: float | None = None  # the jobs' wall time; finalize's is not counted
        try:
            ex.execute(suite, todo, on_result, on_progress)
            wall = time.perf_counter() - t0
            progress.stop()
            summary = write_tables(suite, run_dir, jobs)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM via the cli: say so in run.json, keep every record
            # (stopped while the tables were written: every job is recorded, the same command writes them)
            _mark_interrupted(layout, time.perf_counter() - t0 if wall is None else wall, known_fp, computed[0])
            raise
        except Exception as exc:  # stopped on an error: run.json says so (not "running", later read as killed)
            _mark_interrupted(layout, time.perf_counter() - t0 if wall is None else wall, known_fp, computed[0],
                              error=f"{type(exc).__name__}: {exc}")
            raise
        finally:  # nothing is in flight once this invocation ends, however it ends
            layout.remove_progress()
    walls = (old.wall_seconds_total, old.wall_seconds_this_invocation) if old is not None else ()
    before = next((float(w) for w in walls if w is not None), 0.0)
    layout.update_meta(defense_fingerprints=dict(known_fp), status="complete", finished_at=_now(),
                       wall_seconds_this_invocation=round(wall, 2), jobs_computed=computed[0],
                       wall_seconds_total=round(before + wall, 2))  # over the invocations that finished
    for line in chance_level_warnings(layout, jobs, split.n_classes):
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if suite.diagnostics:  # gradient-masking / attack-failure indicators per defense
        from robust_bench_sc.diagnostics import run_suite_diagnostics

        run_suite_diagnostics(suite, run_dir, device=device, console=console)
    return RunOutcome(run_dir, summary, len(done), len(todo))


def chance_level_warnings(layout: RunDir, jobs: list[Job], n_classes: int) -> list[str]:
    """One line per defense whose clean accuracy on the run's images is not above chance
    (:func:`robust_bench_sc.stats.at_chance`): its robust accuracies say nothing, and the usual
    cause is an input convention (range, normalisation, channel order) or the label order."""
    from robust_bench_sc.stats import CHANCE_REMEDY, at_chance, chance_evidence

    clean: dict[str, dict[int, bool]] = defaultdict(dict)  # defense → image → clean-correct (any threat model's)
    for j in jobs:
        for r in layout.read_record(j.defense, j.threat, j.chunk).records:
            clean[j.defense][int(r["index"])] = bool(r["clean_correct"])
    out = []
    for defense, by_image in clean.items():
        k, n = sum(by_image.values()), len(by_image)
        if at_chance(k, n, n_classes):
            out.append(f"defense {defense!r}: {chance_evidence(k, n, n_classes)}, so its robust accuracies say "
                       f"nothing: {CHANCE_REMEDY}")
    return out


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _mark_interrupted(layout: RunDir, wall: float, known_fp: dict[str, str], computed: int,
                      error: str | None = None) -> None:
    """run.json of an invocation stopped before its last job: status ``interrupted`` (or
    ``failed``, with the ``error`` that stopped it), when, and how long it ran; the recorded
    chunks stay and the same command resumes."""
    try:
        layout.update_meta(defense_fingerprints=dict(known_fp), status="interrupted" if error is None else "failed",
                           interrupted_at=_now(), wall_seconds_this_invocation=round(wall, 2), jobs_computed=computed,
                           **({"error": error[:500]} if error is not None else {}))
    except (DamagedFileError, OSError):  # a full disk cannot take run.json either: the error that stopped the run
        pass                             # is what to say
