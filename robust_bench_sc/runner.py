"""The suite runner: plan → execute (resumably) → per-sample records → summary tables."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata as md
import platform
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from robust_bench_sc.config import SuiteConfig
from robust_bench_sc.data import describe_subset, load_test
from robust_bench_sc.executor import EXECUTORS, Executor, LocalExecutor
from robust_bench_sc.paths import REPO_ROOT, data_dir
from robust_bench_sc.plan import Job, job_spec_hash, legacy_spec_hash, plan_jobs
from robust_bench_sc.plugins import build_defense
from robust_bench_sc.registry import load_reference
from robust_bench_sc.storage import atomic_write_json, atomic_write_text, chunk_path, read_json, safe_name
from robust_bench_sc.summary import summarise, summary_markdown
from robust_bench_sc.worker import ChunkResult

TOOLKITS = ("torch", "numpy", "foolbox", "adversarial-robustness-toolbox", "torchattacks", "pyautoattack",
            "scikit-learn", "pandas", "pydantic", "ray")


class RunError(RuntimeError):
    pass


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


def data_hash(suite: SuiteConfig, n_images: int | None = None) -> str:
    split = load_test(n_images or suite.data.n_images, suite.data.data_dir)
    h = hashlib.sha256(split.x.mul(255).round().byte().numpy().tobytes())
    h.update(split.y.numpy().tobytes())
    return h.hexdigest()[:16]


def default_run_dir(suite: SuiteConfig, results_root: Path) -> Path:
    """The newest unfinished run of the same suite content (resume), else a new timestamp."""
    base = results_root / safe_name(suite.name)
    if base.is_dir():
        for cand in sorted(base.iterdir(), reverse=True):
            meta = cand / "run.json"
            if meta.is_file():
                try:
                    m = read_json(meta)
                except ValueError:
                    continue
                if m.get("suite_hash") == suite.content_hash() and m.get("status") != "complete":
                    return cand
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return base / stamp


@dataclass
class RunOutcome:
    run_dir: Path
    summary: pd.DataFrame
    resumed_chunks: int
    computed_chunks: int


def make_executor(name: str, device: str, **kwargs) -> Executor:
    if name not in EXECUTORS:
        raise RunError(f"unknown executor {name!r}; available: {', '.join(EXECUTORS)}")
    if name == "local":
        return LocalExecutor(device=device, data_root=kwargs.get("data_root"))
    try:
        cls = load_reference(EXECUTORS[name])
    except ImportError as exc:
        raise RunError(f"executor {name!r} needs an optional extra: pip install 'robust_bench_sc[{name}]' ({exc})") from None
    return cls(device=device, **kwargs)


_HISTORY_KEYS = ("suite_hash", "profile", "overrides", "started_at", "finished_at", "status", "n_jobs", "git",
                 "versions", "command")


def reconcile_records(suite: SuiteConfig, run_dir: Path, jobs: list[Job],
                      old: dict | None, console: Console | None = None) -> tuple[list[Job], dict[str, str]]:
    """Which planned jobs a run directory already holds records of, checked job by job.

    A record counts when its spec hash (defense, threat-model settings, images, seed) equals
    the planned job's: a run grows to more images, defenses or threat models, or runs a
    subset, without recomputing anything. A record of different settings under a planned
    job's name is refused; a record of the same settings over other images (the last chunk
    before the run grew) is recomputed. Recorded weight fingerprints must match the
    defense as it loads now. Returns the jobs done and the fingerprints per defense.
    """
    if old is not None and old.get("suite") not in (None, suite.name):
        raise RunError(f"{run_dir} holds a run of suite {old.get('suite')!r}, not {suite.name!r}; "
                       "choose another --out")
    if old is not None and old.get("data_hash"):
        n_old = (old.get("config") or {}).get("data", {}).get("n_images", suite.data.n_images)
        here = data_hash(suite, n_old)
        if old["data_hash"] != here:
            raise RunError(f"{run_dir} was computed on different images (data hash {old['data_hash']} of the first "
                           f"{n_old} ≠ {here} here); choose another --out")
    done, superseded, conflicts = [], [], []
    recorded_fp: dict[str, set[str]] = defaultdict(set)
    unverified: set[str] = set()
    for j in jobs:
        path = chunk_path(run_dir, j.defense, j.threat, j.chunk)
        if not path.is_file():
            continue
        blob = read_json(path)
        rec_job = blob.get("job", {})
        rec = blob.get("spec_hash") or legacy_spec_hash((old or {}).get("config") or {}, rec_job)
        rec_range = (rec_job.get("start"), rec_job.get("stop"))
        if rec == job_spec_hash(suite, j):
            done.append(j)
            if blob.get("defense_fingerprint"):
                recorded_fp[j.defense].add(blob["defense_fingerprint"])
            else:
                unverified.add(j.defense)
        elif None not in rec_range and rec_range != (j.start, j.stop) and \
                rec == job_spec_hash(suite, replace(j, start=rec_range[0], stop=rec_range[1])):
            superseded.append(path)
        else:
            conflicts.append(j.key)
    if conflicts:
        raise RunError(
            f"{run_dir} holds records of a different suite configuration for {len(conflicts)} planned job(s) "
            f"(e.g. {', '.join(conflicts[:3])}: other defense or threat-model settings or seed); refusing to mix "
            "results. Choose another --out or delete that folder.")
    known: dict[str, str] = {}
    for label, fps in recorded_fp.items():
        spec = next(d for d in suite.defenses if d.label == label)
        now = build_defense(spec.ref, spec.params, name=label).fingerprint()
        if fps != {now}:
            raise RunError(f"defense {label!r} loads other weights than its records in {run_dir} were computed "
                           f"with (fingerprint {', '.join(sorted(fps))} recorded, {now} now); restore those weights "
                           "or choose another --out")
        known[label] = now
    if unverified and console is not None:
        console.print(f"[yellow]note[/]: records of {', '.join(sorted(unverified))} in {run_dir} predate weight "
                      "fingerprints: which weights they used cannot be checked (run.json's git commit says)")
    for path in superseded:  # same settings, fewer images: the grown chunk replaces it
        path.unlink()
    return done, known


def run_suite(suite: SuiteConfig, out: str | Path | None = None, device: str = "cpu",
              executor: Executor | None = None, console: Console | None = None,
              results_root: str | Path = "results", command: list[str] | None = None,
              show_progress: bool = True) -> RunOutcome:
    console = console or Console(stderr=True)
    run_dir = Path(out) if out else default_run_dir(suite, Path(results_root))
    run_dir = run_dir.resolve()
    meta_path = run_dir / "run.json"
    suite_hash = suite.content_hash()
    old = read_json(meta_path) if meta_path.exists() else None
    jobs = plan_jobs(suite)
    done, known_fp = reconcile_records(suite, run_dir, jobs, old, console)
    done_set = set(done)
    todo = [j for j in jobs if j not in done_set]
    grown = old is not None and old.get("suite_hash") != suite_hash
    meta = {
        "suite": suite.name,
        "suite_hash": suite_hash,
        "status": "running",
        "subset": describe_subset(suite.data.n_images),
        "data_dir": str(data_dir(suite.data.data_dir)),
        "data_hash": data_hash(suite),
        "seed": suite.seed,
        "profile": suite.profile,
        "overrides": suite.overrides,
        "device": device,
        "command": command or sys.argv,
        "versions": versions(),
        "git": git_commit(),
        "host": {"platform": platform.platform(), "processor": platform.processor()},
        "started_at": _dt.datetime.now().isoformat(timespec="seconds"),
        "n_jobs": len(jobs),
        "config": suite.resolved(),
    }
    if old is not None:
        meta["first_started_at"] = old.get("first_started_at") or old.get("started_at")
        meta["history"] = [*old.get("history", []), {k: old.get(k) for k in _HISTORY_KEYS}]
    meta["defense_fingerprints"] = dict(known_fp)
    atomic_write_json(meta_path, meta)
    if grown:
        console.print(f"[bold]growing[/] {run_dir} (earlier configuration {old.get('suite_hash')}, profile "
                      f"{old.get('profile')}): {len(done)}/{len(jobs)} jobs already recorded with identical settings")
    elif done:
        console.print(f"[bold]resuming[/] {run_dir}: {len(done)}/{len(jobs)} jobs already recorded")
    else:
        console.print(f"[bold]run[/] {suite.name} → {run_dir} ({len(jobs)} jobs, {describe_subset(suite.data.n_images)})")

    # progress: one bar per (defense, threat model)
    tally: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])  # robust, total
    for j in done:
        for r in read_json(chunk_path(run_dir, j.defense, j.threat, j.chunk))["records"]:
            tally[(j.defense, j.threat)][0] += int(r["robust"])
            tally[(j.defense, j.threat)][1] += 1
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("robust {task.fields[acc]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, disable=not show_progress, transient=False)
    tasks = {}
    per_pair = defaultdict(int)
    for j in jobs:
        per_pair[(j.defense, j.threat)] += j.stop - j.start

    def acc_text(key):
        r, n = tally[key]
        return f"{100 * r / n:5.1f}% (n={n})" if n else "  —"

    with progress:
        for key, total in per_pair.items():
            tasks[key] = progress.add_task(f"{key[0]} × {key[1]}", total=total, completed=tally[key][1], acc=acc_text(key))

        def on_progress(job: Job, k: int):
            if k:
                progress.advance(tasks[(job.defense, job.threat)], k)

        def on_result(res: ChunkResult):
            j = res.job
            path = chunk_path(run_dir, j.defense, j.threat, j.chunk)
            if path.exists():  # recorded exactly once
                return
            fp = res.defense_fingerprint
            if fp and known_fp.setdefault(j.defense, fp) != fp:
                raise RunError(f"defense {j.defense!r}: its weights changed during the run (fingerprint "
                               f"{known_fp[j.defense]} before, {fp} now); nothing more was recorded")
            atomic_write_json(path, res.to_dict())
            key = (j.defense, j.threat)
            tally[key][0] += sum(int(r["robust"]) for r in res.records)
            tally[key][1] += len(res.records)
            progress.update(tasks[key], completed=tally[key][1], acc=acc_text(key))
            if not show_progress or not console.is_terminal:
                console.print(f"  {j.defense} × {j.threat} chunk {j.chunk}: images {j.start}-{j.stop - 1}, "
                              f"robust so far {acc_text(key)}, {res.seconds:.1f}s")

        ex = executor or LocalExecutor(device=device, data_root=suite.data.data_dir)
        t0 = time.perf_counter()
        ex.execute(suite, todo, on_result, on_progress)
        wall = time.perf_counter() - t0

    summary = finalize(suite, run_dir, jobs)
    meta = read_json(meta_path)
    before = (old or {}).get("wall_seconds_total", (old or {}).get("wall_seconds_this_invocation", 0.0))
    meta["defense_fingerprints"] = dict(known_fp)
    meta.update(status="complete", finished_at=_dt.datetime.now().isoformat(timespec="seconds"),
                wall_seconds_this_invocation=round(wall, 2),
                wall_seconds_total=round(before + wall, 2))  # over the invocations that finished
    atomic_write_json(meta_path, meta)
    if suite.diagnostics:  # gradient-masking / attack-failure indicators per defense
        from robust_bench_sc.diagnostics import run_suite_diagnostics

        run_suite_diagnostics(suite, run_dir, device=device, console=console)
    return RunOutcome(run_dir, summary, len(done), len(todo))


def load_samples(run_dir: Path, jobs: list[Job]) -> tuple[pd.DataFrame, dict[tuple[str, str], float]]:
    rows, seconds = [], defaultdict(float)
    for j in jobs:
        path = chunk_path(run_dir, j.defense, j.threat, j.chunk)
        if not path.is_file():
            raise RunError(f"missing records for job {j.key}: {path}")
        blob = read_json(path)
        seconds[(j.defense, j.threat)] += blob["seconds"]
        for r in blob["records"]:
            rows.append({"defense": j.defense, "threat_model": j.threat, "chunk": j.chunk, **r})
    return pd.DataFrame(rows), seconds


SAMPLE_COLUMNS = ("defense", "threat_model", "chunk", "index", "label", "clean_pred", "clean_correct", "attacked",
                  "adv_pred", "fooled", "fooled_frac", "robust", "linf", "l2", "l1", "claimed", "flags")


def _column_order(columns) -> list[str]:
    """The documented record fields first, backend info after them by name: the same
    samples.csv whichever process (and hash seed) produced the records."""
    cols = list(columns)
    return [c for c in SAMPLE_COLUMNS if c in cols] + sorted(c for c in cols if c not in SAMPLE_COLUMNS)


def finalize(suite: SuiteConfig, run_dir: Path, jobs: list[Job]) -> pd.DataFrame:
    samples, seconds = load_samples(run_dir, jobs)
    samples = samples.sort_values(["defense", "threat_model", "index"], kind="stable")
    samples = samples[_column_order(samples.columns)]
    atomic_write_text(run_dir / "samples.csv", samples.to_csv(index=False))
    table = summarise(suite, samples, seconds)
    atomic_write_text(run_dir / "summary.csv", table.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(run_dir / "summary.md", summary_markdown(suite, table))
    return table
