"""The suite runner: plan → execute (resumably) → per-sample records → summary tables."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from robust_bench_sc.config import SuiteConfig
from robust_bench_sc.data import content_hash, load_data
from robust_bench_sc.executor import EXECUTORS, Executor, LocalExecutor
from robust_bench_sc.paths import REPO_ROOT, data_dir
from robust_bench_sc.plan import SEED_RULE, Job, images_covered, job_spec_hash, plan_jobs, recorded_spec_hash
from robust_bench_sc.plugins import build_defense
from robust_bench_sc.progress import STARTED, InFlight
from robust_bench_sc.registry import load_reference
from robust_bench_sc.storage import DamagedFileError, LockError, RunDir, safe_name
from robust_bench_sc.subsets import describe_subset
from robust_bench_sc.reports import report_from_suite, to_markdown
from robust_bench_sc.summary import summarise
from robust_bench_sc.worker import ChunkResult

TOOLKITS = ("torch", "numpy", "foolbox", "adversarial-robustness-toolbox", "torchattacks", "pyautoattack",
            "scikit-learn", "pandas", "pydantic", "ray")


LOG_STAGE_EVERY = 120.0  # seconds between two stage lines of one job in a log (not a terminal)


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
    return content_hash(load_data(suite.data, n_images))


def default_run_dir(suite: SuiteConfig, results_root: Path) -> Path:
    """The newest unfinished run of the same suite content (resume), else a new timestamp."""
    base = results_root / safe_name(suite.name)
    if base.is_dir():
        for cand in sorted(base.iterdir(), reverse=True):
            rd = RunDir(cand)
            if rd.is_run():
                try:
                    m = rd.read_meta()
                except ValueError:
                    continue
                if rd.locked_by_live_process():  # another run is writing it: start a new folder
                    continue
                if m.get("suite_hash") == suite.content_hash() and m.get("status") != "complete":
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


RECORD_KEYS = ("index", "label", "clean_pred", "clean_correct", "robust")


def record_problem(blob, job: Job, idx, labels) -> str | None:
    """Why a parsed record file cannot stand for ``job`` (None when it can): every sample of
    the job's images, in order, with the documented fields."""
    if not isinstance(blob, dict) or not isinstance(blob.get("records"), list):
        return "not a record file (no 'records' list)"
    recs = blob["records"]
    want = list(idx[job.start:job.stop])
    if len(recs) != len(want):
        return f"holds {len(recs)} samples, the job has {len(want)} (images {job.start}-{job.stop - 1})"
    for pos, (r, i, lab) in enumerate(zip(recs, want, labels[job.start:job.stop])):
        if not isinstance(r, dict) or any(k not in r for k in RECORD_KEYS):
            missing = [k for k in RECORD_KEYS if not isinstance(r, dict) or k not in r]
            return f"sample {pos} lacks {', '.join(missing)}"
        if r["index"] != i or r["label"] != lab:
            return f"sample {pos} is image {r['index']} (label {r['label']}), the job's is {i} (label {lab})"
        if not isinstance(r["robust"], bool) or not isinstance(r["clean_correct"], bool):
            return f"sample {pos}: robust / clean_correct are not booleans"
    if not isinstance(blob.get("seconds", 0.0), (int, float)):
        return "'seconds' is not a number"
    return None


def data_labels(suite: SuiteConfig) -> tuple[list[int], list[int]]:
    """The suite's image indices and labels, in order (what every record is checked against)."""
    split = load_data(suite.data)
    return split.idx.tolist(), split.y.tolist()


def preflight(suite: SuiteConfig, warn: Callable[[str], None] | None = None,
              built: dict[str, Any] | None = None, probe_timeout: float | None = None) -> dict[str, str]:
    """Every check ``run`` would otherwise make only when it reaches a job: each defense loads
    (registry name or reference, parameters bound to its factory's signature, weights), each
    threat model's BPDA stand-in exists on each defense it is run against, transfer sources
    load and offer the craft's stand-in, every attack backend is registered. Nested
    threat models are validated when the suite loads. Returns each defense's weight
    fingerprint. Imports and builds the plug-ins: a suite is code.

    ``warn`` hears of suites that run but measure the wrong thing: a gradient attack without
    BPDA on a defense that declares its gradients meaningless (``Capabilities.differentiable``
    False) measures gradient masking, not robustness. ``built``, when given, receives the
    defenses built (label → Defense), for the probes."""
    from robust_bench_sc.attacks.base import ATTACKS, attack_class, attack_key
    from robust_bench_sc.registry import RegistryError
    from robust_bench_sc.threat_models import TransferThreat, WorstCaseThreat

    def build(ref, params, label, what):
        try:
            return build_defense(ref, params, name=label)
        except RegistryError as exc:
            raise RunError(f"{what}: {exc}") from None

    defenses = {d.label: build(d.load_ref, d.params, d.label, f"defense {d.label!r}") for d in suite.defenses}
    probe = load_data(suite.data, n_images=min(2, suite.data.n_images))  # the data folder, read as run reads it
    for d in defenses.values():
        check_defense_fits(d, probe, probe_timeout)
    if built is not None:
        built.update(defenses)

    def check_bpda(tm, defense, what):
        if tm.bpda is None and tm.gradient_based and not defense.capabilities.differentiable and warn is not None:
            stand_ins = f" (it offers {', '.join(defense.bpda_names())})" if defense.bpda_names() else ""
            warn(f"threat model {what}: a gradient attack without BPDA on {defense.name!r}, whose gradients are "
                 f"not meaningful (Capabilities.differentiable is False): `scbench run` probes the defense and "
                 f"chooses BPDA where its gradients fail; with --no-probes it would measure gradient masking, not "
                 f"robustness; set bpda: auto{stand_ins} to say so in the suite")
        if tm.bpda in (None, "auto"):
            return
        names = defense.bpda_names()
        if tm.bpda not in names:
            offers = f"offers {', '.join(names)}" if names else "has no preprocess, so no BPDA stand-in applies"
            raise RunError(f"threat model {what}: bpda {tm.bpda!r}: defense {defense.name!r} {offers}")

    def check_backend(tm, what):
        if type(tm).backends.get(tm.backend) is None:  # evaluated by the engine itself (clean, worst case)
            return
        key = attack_key(tm)
        if key not in ATTACKS:
            raise RunError(f"threat model {what}: no attack implementation {key!r}; available: "
                           f"{', '.join(ATTACKS.names())}")
        try:
            attack_class(tm)
        except ImportError as exc:
            raise RunError(f"threat model {what}: backend {tm.backend!r} cannot be imported ({exc})") from None

    sources: dict[str, object] = {}

    def walk(tm, targets):  # nested threat models are typed and validated already (threat_models.py)
        if tm.kind == "none":
            return
        if isinstance(tm, WorstCaseThreat):
            for sub in tm.attacks:
                walk(sub, targets)
            return
        check_backend(tm, repr(tm.name))
        if isinstance(tm, TransferThreat):
            ref, params, label = tm.source_spec
            if label not in sources:
                sources[label] = build(ref, params, label, f"threat model {tm.name!r}: source")
            walk(tm.craft, [sources[label]])
            return
        for d in targets:
            check_bpda(tm, d, repr(tm.name))

    for t in suite.threat_models:  # against the defenses that run it
        walk(t, [defenses[d.label] for d in suite.defenses if d.runs(t.name)])
    return {label: d.fingerprint() for label, d in defenses.items()}


PROBE_IMAGES = 8  # the first images of the suite the probes run on


def probe_suite(suite: SuiteConfig, defenses: dict[str, Any], device: str = "cpu",
                console: Console | None = None, quiet: bool = False,
                probe_timeout: float | None = None) -> tuple[SuiteConfig, dict[str, Any]]:
    """Probe every defense (robust_bench_sc.probes) on the suite's first ``PROBE_IMAGES``
    images, before any attack; return the suite carrying the adaptations (``auto``,
    robust_bench_sc.adapt) and what run.json keeps of them (``probes``). Prints each finding
    and each choice with its reason; a defense whose probes cannot run is one RunError line."""
    from robust_bench_sc.adapt import adaptation
    from robust_bench_sc.probes import ProbeError, probe_defense

    split = load_data(suite.data, n_images=min(PROBE_IMAGES, suite.data.n_images))
    adaptations: dict[str, Any] = {}
    record: dict[str, Any] = {}
    for spec in suite.defenses:
        d = defenses[spec.label].to(device)
        try:
            found = probe_defense(d, split.x, split.y, device=device, seed=suite.seed, n_classes=split.n_classes,
                                  timeout=probe_timeout)
            adapted = adaptation(spec.label, d, found, split.x, split.y, device)
        except ProbeError as exc:
            raise RunError(str(exc)) from None  # it names the probe and the defense
        adaptations[spec.label] = adapted
        threats = [t for t in suite.threat_models if spec.runs(t.name)]
        record[spec.label] = adapted.to_dict(threats)
        if console is None:
            continue
        if not quiet:  # --quiet: the warnings only (every finding and choice stays in run.json)
            console.print(f"[bold]probes[/] {escape(spec.label)} ({found.n_images} images, {found.seconds:.1f}s)",
                          highlight=False)
            for line in found.summary_lines():
                console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
        for w in adapted.warnings + [w for t in threats for w in adapted.warnings_for(t)]:
            console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
        for t in threats if not quiet else []:
            for c in adapted.threat(t)[1]:
                console.print(f"  auto {escape(spec.label)} × {escape(t.name)}: {escape(c.line())}", highlight=False,
                              soft_wrap=True)
    out = suite.model_copy()
    out._adaptations = adaptations
    return out, record
CIFAR_SHAPE = (3, 32, 32)


def check_defense_fits(defense, split, probe_timeout: float | None = None) -> None:
    """One forward pass on the dataset's first images, before anything is computed: a defense
    that returns another number of logits than the dataset has classes, or that cannot take
    the dataset's image shape (it fails on them but runs on 3×32×32 images: e.g. a 32×32-only
    model on 64×64 images), is refused in one line. A defense that fails on any input is left
    to the run, which records or reports it as before. A forward pass that gives no answer
    within ``probe_timeout`` seconds (default ``probes.FIRST_FORWARD_LIMIT``) is one line."""
    import torch

    from robust_bench_sc.probes import FIRST_FORWARD_LIMIT, ProbeTimeout, time_limit
    from robust_bench_sc.registry import plugin_frame

    from robust_bench_sc.evaluate import DefenseOutputError, checked_logits

    c, h, w = split.image_shape
    what = f"the {split.images} ({c}×{h}×{w}, {split.n_classes} classes, dataset {split.dataset})"

    def forward(x):
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # leaves the RNG as it was
            return defense(x)

    limit = probe_timeout or FIRST_FORWARD_LIMIT
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), time_limit(limit, f"defense {defense.name!r}'s first "
                                                                                   "forward pass"):
            checked_logits(defense, split.x[:2], split.n_classes)
    except ProbeTimeout as exc:
        where = plugin_frame(exc)
        raise RunError(f"defense {defense.name!r}: one forward pass on 2 images gave no answer within {limit:g} s "
                       + ("(--probe-timeout)" if probe_timeout else "(the first pass's limit; --probe-timeout sets it)")
                       + "; the defense hangs"
                       + (f"\n  stopped at {where}" if where else "")) from None
    except DefenseOutputError as exc:
        raise RunError(f"{exc}; it does not fit {what}") from None
    except Exception as exc:
        if split.image_shape == CIFAR_SHAPE:
            return
        try:
            forward(torch.zeros(2, *CIFAR_SHAPE))
        except Exception:
            return  # fails on CIFAR-shaped images too: not a question of shape
        first = (str(exc).strip().splitlines() or [""])[0]
        raise RunError(f"defense {defense.name!r} cannot take {what} (it runs on 3×32×32 images): "
                       f"{type(exc).__name__}: {first}") from None


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


# what run.json keeps of each earlier invocation; its resolved ``config`` too, so that the records a
# folder grown under several profiles holds can each be traced to the configuration that planned them
_HISTORY_KEYS = ("suite_hash", "profile", "profile_set", "overrides", "started_at", "finished_at", "interrupted_at", "status", "error", "n_jobs",
                 "git", "versions", "command", "config", "wall_seconds_this_invocation", "jobs_computed",
                 "executor")


def _archived_invocation(old: dict, now: str) -> dict:
    """The earlier invocation's entry for ``history``. We hold the folder's lock, so one that
    run.json still calls running was killed with no chance to say so (SIGKILL, a machine or
    session that stopped): it is recorded as ``killed``, with the time this invocation found
    it (``killed_noticed_at``), its end being unknown."""
    entry = {k: old.get(k) for k in _HISTORY_KEYS}
    if entry.get("status") == "running":
        entry["status"] = "killed"
        entry["killed_noticed_at"] = now
    return entry


def reconcile_records(suite: SuiteConfig, run_dir: Path, jobs: list[Job],
                      old: dict | None, console: Console | None = None,
                      fingerprints: dict[str, str] | None = None, code_fingerprints: dict[str, str] | None = None,
                      accept_code_change: bool = False) -> tuple[list[Job], dict[str, str]]:
    """Which planned jobs a run directory already holds records of, checked job by job.

    A record counts when its spec hash (defense, threat-model settings, images, seed) equals
    the planned job's: a run grows to more images, defenses or threat models, or runs a
    subset, without recomputing anything. A record of different settings under a planned
    job's name is refused; a record of the same settings over other images (the last chunk
    before the run grew) is recomputed. A damaged record (truncated, unparsable, missing
    samples, other images) is named, set aside as ``*.json.damaged`` and recomputed.
    Recorded weight fingerprints must match the defense as it loads now (``fingerprints``:
    as :func:`preflight` measured them). So must recorded code fingerprints (records that carry
    one) match ``code_fingerprints`` (``Defense.code_fingerprint``), unless ``accept_code_change``
    (said in one line). Returns the jobs done and the fingerprints per defense.
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
    done, superseded, conflicts, damaged = [], [], [], []
    recorded_fp: dict[str, set[str]] = defaultdict(set)
    recorded_code: dict[str, set[str]] = defaultdict(set)
    unverified: set[str] = set()
    expected = None
    layout = RunDir(run_dir)
    for j in jobs:
        path = layout.chunk(j.defense, j.threat, j.chunk)
        if not path.is_file():
            continue
        try:
            blob = layout.read_chunk(j.defense, j.threat, j.chunk)
        except DamagedFileError as exc:
            damaged.append((path, str(exc).split(": ", 1)[-1]))
            continue
        if not isinstance(blob, dict) or not isinstance(blob.get("job", {}), dict):
            damaged.append((path, "not a record file"))
            continue
        rec_job = blob.get("job", {})
        rec = recorded_spec_hash(blob, (old or {}).get("config"))
        rec_range = (rec_job.get("start"), rec_job.get("stop"))
        if rec == job_spec_hash(suite, j):
            expected = expected or data_labels(suite)
            problem = record_problem(blob, j, *expected)
            if problem:
                damaged.append((path, problem))
                continue
            done.append(j)
            if blob.get("code_fingerprint"):
                recorded_code[j.defense].add(str(blob["code_fingerprint"]))
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
            f"(e.g. {', '.join(conflicts[:3])}: other defense or threat-model settings, seed, or settings auto "
            "chose from the probes, see run.json: probes); refusing to mix results. Choose another --out or delete "
            "that folder.")
    for path, why in damaged:  # kept for inspection; the job is recomputed
        os.replace(path, path.with_name(path.name + ".damaged"))
        if console is not None:
            console.print(f"[yellow]damaged record[/] {path}: {why}; set aside as {path.name}.damaged and "
                          "recomputed", highlight=False)
    known: dict[str, str] = {}
    for label, fps in recorded_fp.items():
        spec = next(d for d in suite.defenses if d.label == label)
        now = (fingerprints or {}).get(label) or build_defense(spec.load_ref, spec.params, name=label).fingerprint()
        if fps != {now}:
            raise RunError(f"defense {label!r} loads other weights than its records in {run_dir} were computed "
                           f"with (fingerprint {', '.join(sorted(fps))} recorded, {now} now); restore those weights "
                           "or choose another --out")
        known[label] = now
    for label, codes in recorded_code.items():
        now_code = (code_fingerprints or {}).get(label)
        if now_code is None or codes == {now_code}:
            continue
        what = (f"defense {label!r} loads other code than its records in {run_dir} were computed with (code "
                f"fingerprint {', '.join(sorted(codes))} recorded, {now_code} now: its factory's source file or a "
                "module's settings changed)")
        if not accept_code_change:
            raise RunError(f"{what}; restore that code, pass --accept-code-change to reuse the records knowingly, or "
                           "choose another --out")
        if console is not None:
            console.print(f"[yellow]note[/]: {escape(what)}; reused as --accept-code-change asks", highlight=False)
    if unverified and console is not None:
        console.print(f"[yellow]note[/]: records of {', '.join(sorted(unverified))} in {run_dir} predate weight "
                      "fingerprints: which weights they used cannot be checked (run.json's git commit says)")
    for path in superseded:  # same settings, fewer images: the grown chunk replaces it
        path.unlink()
    return done, known


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
    meta_path = layout.meta_path
    suite_hash = suite.content_hash()
    try:
        old = layout.read_meta()
    except DamagedFileError as exc:
        raise RunError(f"{exc}: it describes the records in {run_dir}, which cannot be checked without it; "
                       "restore it, or choose another --out") from None
    if old is not None and not isinstance(old, dict):
        raise RunError(f"{meta_path}: not a run description (a JSON {type(old).__name__}); restore it, or choose "
                       "another --out")
    jobs = plan_jobs(suite)
    done, known_fp = reconcile_records(suite, run_dir, jobs, old, console, fingerprints, code_fps, accept_code_change)
    done_set = set(done)
    todo = [j for j in jobs if j not in done_set]
    split = load_data(suite.data)
    subset = describe_subset(images_covered(jobs) or suite.data.n_images, images=split.images)
    meta: dict[str, Any] = {
        "suite": suite.name,
        "suite_hash": suite_hash,
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
        "command": command or sys.argv,
        "versions": versions(),
        "git": git_commit(),
        "host": {"platform": platform.platform(), "processor": platform.processor()},
        "started_at": _dt.datetime.now().isoformat(timespec="seconds"),
        "n_jobs": len(jobs),
        "config": suite.resolved(),
        # what the probes found per defense and what auto chose from it, with reasons (robust_bench_sc.adapt)
        **({"probes": probe_record} if probe_record is not None else {}),
    }
    if old is not None:
        meta["first_started_at"] = old.get("first_started_at") or old.get("started_at")
        meta["history"] = [*old.get("history", []), _archived_invocation(old, meta["started_at"])]
    meta["defense_fingerprints"] = dict(known_fp)
    if code_fps:
        meta["code_fingerprints"] = dict(code_fps)
    layout.write_meta(meta)
    if old is not None and old.get("suite_hash") != suite_hash:  # grown: same folder, other settings
        earlier = f"profile {old['profile']}" if old.get("profile") else "no profile"
        console.print(f"[bold]growing[/] {run_dir} (earlier configuration {old.get('suite_hash')}, {earlier}): "
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
        for r in layout.read_chunk(j.defense, j.threat, j.chunk)["records"]:
            tally[(j.defense, j.threat)][0] += int(r["robust"])
            tally[(j.defense, j.threat)][1] += 1
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("robust {task.fields[acc]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[stage]}"), console=console, disable=not show_progress,
                        transient=False)
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
            layout.write_chunk(j.defense, j.threat, j.chunk, res.to_dict())
            in_flight.finished(j)
            if not computed[0]:  # with the first result: how many jobs run at once (scbench status's wall time)
                _record_executor(layout, ex)
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
            summary = finalize(suite, run_dir, jobs)
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
    meta = layout.read_meta()
    prior: dict[str, Any] = old or {}
    before = float(prior.get("wall_seconds_total", prior.get("wall_seconds_this_invocation", 0.0)))
    meta["defense_fingerprints"] = dict(known_fp)
    meta.update(status="complete", finished_at=_dt.datetime.now().isoformat(timespec="seconds"),
                wall_seconds_this_invocation=round(wall, 2), jobs_computed=computed[0],
                wall_seconds_total=round(before + wall, 2))  # over the invocations that finished
    layout.write_meta(meta)
    if suite.diagnostics:  # gradient-masking / attack-failure indicators per defense
        from robust_bench_sc.diagnostics import run_suite_diagnostics

        run_suite_diagnostics(suite, run_dir, device=device, console=console)
    return RunOutcome(run_dir, summary, len(done), len(todo))


def _record_executor(layout: RunDir, ex: Executor) -> None:
    """run.json's ``executor``: its name and the jobs it runs at the same time (None: not known)."""
    meta = layout.read_meta()
    if isinstance(meta, dict):  # run_status.RunStatus.concurrent_jobs checks the value when it reads it
        meta["executor"] = {"name": ex.name, "concurrent_jobs": ex.concurrent_jobs}
        layout.write_meta(meta)


def _mark_interrupted(layout: RunDir, wall: float, known_fp: dict[str, str], computed: int,
                      error: str | None = None) -> None:
    """run.json of an invocation stopped before its last job: status ``interrupted`` (or
    ``failed``, with the ``error`` that stopped it), when, and how long it ran; the recorded
    chunks stay and the same command resumes."""
    try:
        meta = layout.read_meta()
    except DamagedFileError:
        return
    if isinstance(meta, dict):
        meta["defense_fingerprints"] = dict(known_fp)
        meta.update(status="interrupted" if error is None else "failed",
                    interrupted_at=_dt.datetime.now().isoformat(timespec="seconds"),
                    wall_seconds_this_invocation=round(wall, 2), jobs_computed=computed)
        if error is not None:
            meta["error"] = error[:500]
        try:
            layout.write_meta(meta)
        except OSError:  # a full disk cannot take run.json either: the error that stopped the run is what to say
            pass


def load_samples(run_dir: Path, jobs: list[Job], suite: SuiteConfig | None = None,
                 ) -> tuple[pd.DataFrame, dict[tuple[str, str], float]]:
    rows: list[dict[str, Any]] = []
    seconds: defaultdict[tuple[str, str], float] = defaultdict(float)
    expected = None
    layout = RunDir(run_dir)
    for j in jobs:
        path = layout.chunk(j.defense, j.threat, j.chunk)
        if not path.is_file():
            raise RunError(f"missing records for job {j.key}: {path}")
        try:
            blob = layout.read_chunk(j.defense, j.threat, j.chunk)
        except DamagedFileError as exc:
            raise RunError(f"{exc}; rerun the same command to recompute it") from None
        if expected is None and suite is not None:
            expected = data_labels(suite)
        problem = record_problem(blob, j, *expected) if expected else None
        recorded = blob.get("spec_hash") if isinstance(blob, dict) else None
        if not problem and suite is not None and recorded is not None and recorded != job_spec_hash(suite, j):
            problem = (f"a record of another job (spec hash {recorded}, job {j.key} has {job_spec_hash(suite, j)}): "
                       "never shown under this job's row")
        if problem:
            raise RunError(f"{path}: {problem}; rerun the same command to recompute it")
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
    samples, seconds = load_samples(run_dir, jobs, suite)
    samples = samples.sort_values(["defense", "threat_model", "index"], kind="stable")
    samples = samples[_column_order(samples.columns)]
    layout = RunDir(run_dir)
    layout.write_samples(samples.to_csv(index=False))
    table = summarise(suite, samples, seconds)
    # summary.md: defenses as rows, threat models as columns, rendered as `scbench report` does
    layout.write_summary(table.to_csv(index=False, float_format="%.4f"), to_markdown(report_from_suite(suite, table)))
    return table
