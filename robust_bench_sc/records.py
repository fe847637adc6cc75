"""The records a run folder holds, checked before they are reused or shown: a record file
stands for its job only with the job's images, in order, with their labels and the documented
fields (:func:`record_problem`); :func:`reconcile_records` finds the planned jobs a folder
already holds (resume, grow), :func:`load_samples` reads every job's samples for the tables."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape

from robust_bench_sc.config import SuiteConfig
from robust_bench_sc.errors import RunError
from robust_bench_sc.plan import Job, job_spec_hash, recorded_spec_hash
from robust_bench_sc.provenance import data_hash
from robust_bench_sc.storage import REQUIRED_SAMPLE_FIELDS, SAMPLE_FIELDS, ChunkRecord, DamagedFileError, RunDir, RunMeta

def record_problem(record: ChunkRecord, job: Job, idx, labels) -> str | None:
    """Why a record file cannot stand for ``job`` (None when it can): every sample of the
    job's images, in order, with their labels and the fields no record lacks
    (``storage.REQUIRED_SAMPLE_FIELDS``)."""
    recs = record.records
    want = list(idx[job.start:job.stop])
    if len(recs) != len(want):
        return f"holds {len(recs)} samples, the job has {len(want)} (images {job.start}-{job.stop - 1})"
    for pos, (r, i, lab) in enumerate(zip(recs, want, labels[job.start:job.stop])):
        if not isinstance(r, dict) or any(k not in r for k in REQUIRED_SAMPLE_FIELDS):
            missing = [k for k in REQUIRED_SAMPLE_FIELDS if not isinstance(r, dict) or k not in r]
            return f"sample {pos} lacks {', '.join(missing)}"
        if r["index"] != i or r["label"] != lab:
            return f"sample {pos} is image {r['index']} (label {r['label']}), the job's is {i} (label {lab})"
        if not isinstance(r["robust"], bool) or not isinstance(r["clean_correct"], bool):
            return f"sample {pos}: robust / clean_correct are not booleans"
    return None


def data_labels(suite: SuiteConfig) -> tuple[list[int], list[int]]:
    """The suite's image indices and labels, in order (what every record is checked against)."""
    from robust_bench_sc.data import load_data

    split = load_data(suite.data)
    return split.idx.tolist(), split.y.tolist()


def reconcile_records(suite: SuiteConfig, run_dir: Path, jobs: list[Job],
                      old: RunMeta | None, console: Console | None = None,
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
    if old is not None and old.suite not in (None, suite.name):
        raise RunError(f"{run_dir} holds a run of suite {old.suite!r}, not {suite.name!r}; "
                       "choose another --out")
    if old is not None and old.data_hash:
        n_old = old.config.get("data", {}).get("n_images", suite.data.n_images)
        here = data_hash(suite, n_old)
        if old.data_hash != here:
            raise RunError(f"{run_dir} was computed on different images (data hash {old.data_hash} of the first "
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
            record = layout.read_record(j.defense, j.threat, j.chunk)
        except DamagedFileError as exc:
            damaged.append((path, str(exc).split(": ", 1)[-1]))
            continue
        rec = recorded_spec_hash(record, old.config if old is not None else None)
        start, stop = record.job.get("start"), record.job.get("stop")
        if rec == job_spec_hash(suite, j):
            expected = expected or data_labels(suite)
            problem = record_problem(record, j, *expected)
            if problem:
                damaged.append((path, problem))
                continue
            done.append(j)
            if record.code_fingerprint:
                recorded_code[j.defense].add(str(record.code_fingerprint))
            if record.defense_fingerprint:
                recorded_fp[j.defense].add(record.defense_fingerprint)
            else:
                unverified.add(j.defense)
        elif isinstance(start, int) and isinstance(stop, int) and (start, stop) != (j.start, j.stop) and \
                rec == job_spec_hash(suite, replace(j, start=start, stop=stop)):
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
    from robust_bench_sc.plugins import build_defense  # a defense whose fingerprint preflight did not measure
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
            record = layout.read_record(j.defense, j.threat, j.chunk)
        except DamagedFileError as exc:
            raise RunError(f"{exc}; rerun the same command to recompute it") from None
        if expected is None and suite is not None:
            expected = data_labels(suite)
        problem = record_problem(record, j, *expected) if expected else None
        recorded = record.spec_hash
        if not problem and suite is not None and recorded is not None and recorded != job_spec_hash(suite, j):
            problem = (f"a record of another job (spec hash {recorded}, job {j.key} has {job_spec_hash(suite, j)}): "
                       "never shown under this job's row")
        if problem:
            raise RunError(f"{path}: {problem}; rerun the same command to recompute it")
        seconds[(j.defense, j.threat)] += record.seconds
        for r in record.records:
            rows.append({"defense": j.defense, "threat_model": j.threat, "chunk": j.chunk, **r})
    return pd.DataFrame(rows), seconds


SAMPLE_COLUMNS = ("defense", "threat_model", "chunk", *SAMPLE_FIELDS)  # samples.csv: the job, then the record


def column_order(columns) -> list[str]:
    """The documented record fields first, backend info after them by name: the same
    samples.csv whichever process (and hash seed) produced the records."""
    cols = list(columns)
    return [c for c in SAMPLE_COLUMNS if c in cols] + sorted(c for c in cols if c not in SAMPLE_COLUMNS)
