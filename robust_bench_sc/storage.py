"""Atomic files and the layout of a run directory (:class:`RunDir`).

A run directory holds ``run.json`` (metadata and the resolved suite), one JSON file per
finished (defense, threat model, chunk) job under ``records/`` and, once the run is
complete, ``samples.csv``, ``summary.csv`` and ``summary.md``. Every file is written to a
temporary name and renamed, so a killed run never leaves a half-written file, and a rerun
with the same suite skips every chunk already on disk. Written files get the mode a plain
``open()`` would give them (the umask's; a replaced file keeps its mode). While a run writes
a folder, ``.scbench.lock`` (pid, host, command) makes it the only writer.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import socket
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from robust_bench_sc.subsets import IMAGES


class DamagedFileError(ValueError):
    """A file we wrote (or should have) cannot be read back: truncated, not JSON, wrong shape."""


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # fallback: read by setting; restored at once
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """An existing file keeps its mode; a new one gets what ``open()`` would give it (0666 & ~umask)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary name and rename: never a half-written file. The file gets the
    mode a plain ``open(path, "w")`` would (the umask's, or the old file's when replacing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")



def write_report_files(out_dir: str | Path, stem: str, data: Any, markdown: str) -> tuple[Path, Path]:
    """A report as ``<stem>.json`` (``data``) and ``<stem>.md`` (``markdown``), each written atomically."""
    out_dir = Path(out_dir)
    j, m = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    atomic_write_json(j, data)
    atomic_write_text(m, markdown)
    return j, m

def safe_name(name: str) -> str:
    """The folder (or file stem) of a defense, threat-model or suite name: the one place a
    label becomes a path component. Characters other than letters, digits, ``_ . -`` become
    ``_``; a name of dots only (``.``, ``..``) or of no such character becomes ``unnamed``, so a
    label never names the folder itself or the one above it. Not injective on its own
    (``x/y`` and ``x_y``): :func:`label_clashes` finds labels that would share a folder, and
    every suite is refused with them (config.load_suite, api.build_suite)."""
    out = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_")
    return "unnamed" if not out.strip(".") else out


def label_clashes(labels: list[str]) -> list[tuple[str, str, str]]:
    """Pairs of distinct labels that :func:`safe_name` maps to one folder, with that folder:
    ``[(first, second, folder), ...]`` (empty when the mapping is injective on ``labels``)."""
    seen: dict[str, str] = {}
    out = []
    for label in labels:
        folder = safe_name(label)
        if folder in seen and seen[folder] != label:
            out.append((seen[folder], label, folder))
        seen.setdefault(folder, label)
    return out


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved (symlinks followed), checked to lie inside ``root``; a path that
    would escape (a ``..`` label, a symlinked folder pointing elsewhere) raises
    :class:`EscapeError`: a run never writes outside its folder."""
    base = Path(root).resolve()
    target = Path(path).resolve()
    if target != base and base not in target.parents:
        raise EscapeError(f"{path}: resolves to {target}, outside the run folder {base} (a symlink or a label "
                          "that escapes it); refusing to write there")
    return target


class EscapeError(ValueError):
    """A path a run would write lies outside its run folder."""


def read_json(path: Path) -> Any:
    """Parse a JSON file; a truncated or damaged one raises :class:`DamagedFileError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        size = os.path.getsize(path)
        raise DamagedFileError(f"{path}: damaged or truncated JSON ({exc.msg} at line {exc.lineno}, "
                               f"column {exc.colno}; {size} bytes)") from None
    except UnicodeDecodeError as exc:
        raise DamagedFileError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                               f"{exc.start}): not a file scbench wrote") from None


# -- run.json ---------------------------------------------------------------------------

_NUM = (int, float)
#: the fields of ``run.json`` that commands read, and their JSON types (None: may be null); a
#: field may be missing (older runs lack some), never of another type
RUN_META_SCHEMA: dict[str, tuple[type, ...]] = {
    "suite": (str,), "suite_hash": (str,), "status": (str,), "subset": (str,), "data_dir": (str, type(None)),
    "data_hash": (str, type(None)), "seed": (int,), "profile": (str, type(None)), "profile_set": (dict, type(None)),
    "overrides": (list,), "device": (str,), "command": (list,), "versions": (dict,), "git": (dict,),
    "host": (dict,), "started_at": (str,), "first_started_at": (str, type(None)), "finished_at": (str, type(None)),
    "interrupted_at": (str, type(None)), "error": (str, type(None)), "n_jobs": (int,), "config": (dict,), "history": (list,),
    "defense_fingerprints": (dict,), "executor": (dict, type(None)), "jobs_computed": (int, type(None)),
    "wall_seconds_this_invocation": (*_NUM, type(None)), "wall_seconds_total": (*_NUM, type(None)),
    "images": (str, type(None)), "probes": (dict, type(None)), "code_fingerprints": (dict, type(None)),
}
_JSON_NAME = {str: "a string", int: "a whole number", float: "a number", dict: "an object", list: "a list",
              type(None): "null"}


def check_meta(meta: Any, path: str | Path) -> dict[str, Any]:
    """``run.json`` read through its schema (:data:`RUN_META_SCHEMA`): an object whose known
    fields have their types, ``config`` with lists ``defenses`` (objects with a string ``ref``)
    and ``threat_models`` (objects with a string ``name``), ``history`` a list of objects. A
    field of another type (``"config": "oops"``, edited by hand or written by another tool)
    raises :class:`DamagedFileError` naming the file and the field."""
    def bad(field: str, want: str, got: Any) -> DamagedFileError:
        return DamagedFileError(f"{path}: field {field!r} should be {want}, got {type(got).__name__} {str(got)[:40]!r}: "
                                "not as scbench wrote it")

    if not isinstance(meta, dict):
        raise DamagedFileError(f"{path}: not a run description (a JSON {type(meta).__name__}); restore it, or "
                               "choose another folder")
    for field, types in RUN_META_SCHEMA.items():
        if field not in meta:
            continue
        value = meta[field]
        if isinstance(value, bool) or not isinstance(value, types):  # no field is a boolean
            raise bad(field, " or ".join(dict.fromkeys(_JSON_NAME[t] for t in types)), value)
    config = meta.get("config")
    if isinstance(config, dict):
        for key, need in (("defenses", "ref"), ("threat_models", "name")):
            entries = config.get(key, [])
            if not isinstance(entries, list):
                raise bad(f"config.{key}", "a list", entries)
            for i, e in enumerate(entries):
                if not isinstance(e, dict) or not isinstance(e.get(need), str):
                    raise bad(f"config.{key}[{i}]", f"an object with a string {need!r}", e)
    for i, entry in enumerate(meta.get("history") or []):
        if not isinstance(entry, dict):
            raise bad(f"history[{i}]", "an object", entry)
    return meta


@dataclass(frozen=True)
class RunMeta:
    """``run.json``, read: the fields commands read, typed (:data:`RUN_META_SCHEMA` checked their
    JSON types; a missing one is None or empty), and ``raw``, the object as written (its key
    order, and fields this version does not know, kept). Written as a plain dict by the runner
    (:meth:`RunDir.write_meta`), so the file's bytes do not depend on this class."""

    raw: dict[str, Any]
    suite: str | None = None
    suite_hash: str | None = None
    status: str | None = None          # running, interrupted, failed or complete
    subset: str | None = None          # the images, in words, when the run started
    images: str | None = None          # what the images are ("CIFAR-10 test images"); older runs lack it
    data_dir: str | None = None
    data_hash: str | None = None
    seed: int | None = None
    profile: str | None = None
    profile_set: dict[str, Any] | None = None  # what the profile sets (older runs lack it: reduced)
    overrides: list[str] = field(default_factory=list)
    device: str | None = None
    command: list[str] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)
    git: dict[str, Any] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    started_at: str | None = None
    first_started_at: str | None = None  # the folder's first invocation (older runs: started_at)
    finished_at: str | None = None
    interrupted_at: str | None = None
    error: str | None = None
    n_jobs: int | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the resolved suite (config.suite_from_resolved)
    probes: dict[str, Any] | None = None                   # per defense: what the probes found, what auto chose
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier invocations (HISTORY_KEYS)
    defense_fingerprints: dict[str, str] = field(default_factory=dict)
    code_fingerprints: dict[str, str] = field(default_factory=dict)
    executor: dict[str, Any] | None = None
    jobs_computed: int | None = None
    wall_seconds_this_invocation: float | None = None
    wall_seconds_total: float | None = None  # over the invocations that finished

    @classmethod
    def from_json(cls, meta: Any, path: str | Path) -> "RunMeta":
        """``meta`` (parsed run.json) checked (:func:`check_meta`) and typed."""
        raw = check_meta(meta, path)
        known = {f.name for f in fields(cls)} - {"raw"}
        return cls(raw=raw, **{k: v for k, v in raw.items() if k in known and v is not None})

    @property
    def image_words(self) -> str:
        """What the images are; runs written before datasets were plug-ins are on CIFAR-10 test images."""
        return self.images or IMAGES

    @property
    def concurrent_jobs(self) -> int | None:
        """Jobs the last invocation ran at once (``executor``; None: not recorded)."""
        n = self.executor.get("concurrent_jobs") if isinstance(self.executor, dict) else None
        return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None

    def spec_hash_auto(self, defense: str, threat: str) -> dict[str, Any] | None:
        """What the probes' adaptation put into the job's spec hash, as recorded (None: nothing)."""
        entry = self.probes.get(defense) if isinstance(self.probes, dict) else None
        keys = entry.get("spec_hash_auto") if isinstance(entry, dict) else None
        auto = keys.get(threat) if isinstance(keys, dict) else None
        return auto if isinstance(auto, dict) else None

    @property
    def invocations(self) -> list[dict[str, Any]]:
        """Every invocation's entry, oldest first: ``history``, then this one (``raw``)."""
        return [*(h for h in self.history if isinstance(h, dict)), self.raw]


#: what ``history`` keeps of each earlier invocation; its resolved ``config`` too, so that the records a
#: folder grown under several profiles holds can each be traced to the configuration that planned them
HISTORY_KEYS = ("suite_hash", "profile", "profile_set", "overrides", "started_at", "finished_at", "interrupted_at",
                "status", "error", "n_jobs", "git", "versions", "command", "config", "wall_seconds_this_invocation",
                "jobs_computed", "executor")


def archived_invocation(old: dict[str, Any], now: str) -> dict[str, Any]:
    """The earlier invocation's entry for ``history``. The caller holds the folder's lock, so one
    that run.json still calls running was killed with no chance to say so (SIGKILL, a machine or
    session that stopped): it is recorded as ``killed``, with the time this invocation found
    it (``killed_noticed_at``), its end being unknown."""
    entry = {k: old.get(k) for k in HISTORY_KEYS}
    if entry.get("status") == "running":
        entry["status"] = "killed"
        entry["killed_noticed_at"] = now
    return entry


# -- record files ------------------------------------------------------------------------

#: the fields of every per-sample record, in samples.csv's order (docs/ARCHITECTURE.md says what
#: each is); backend info (``restarts_used``, ``fooled_by``, ``attack_error`` ...) follows them
SAMPLE_FIELDS = ("index", "label", "clean_pred", "clean_correct", "attacked", "adv_pred", "fooled", "fooled_frac",
                 "robust", "linf", "l2", "l1", "claimed", "flags")
#: those a record cannot stand without (records.record_problem)
REQUIRED_SAMPLE_FIELDS = ("index", "label", "clean_pred", "clean_correct", "robust")


@dataclass(frozen=True)
class ChunkRecord:
    """One record file (``records/<defense>/<threat>/chunk_NNNNN.json``): the job it is of,
    its spec hash, the weights' and code's fingerprints, its job seconds, the images' identity
    and one record per sample. :meth:`to_json` spells the file's keys and their order."""

    job: dict[str, Any]
    records: list[dict[str, Any]]
    seconds: float = 0.0
    spec_hash: str | None = None            # plan.job_spec_hash; older records lack it (plan.recorded_spec_hash)
    defense_fingerprint: str | None = None  # Defense.fingerprint(): which weights
    code_fingerprint: str | None = None     # Defense.code_fingerprint(): which code and configuration
    data: dict[str, str] | None = None      # the images: dataset, split, data hash

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "spec_hash": self.spec_hash, "defense_fingerprint": self.defense_fingerprint,
                "seconds": self.seconds, **({"code_fingerprint": self.code_fingerprint} if self.code_fingerprint else {}),
                **({"data": self.data} if self.data else {}), "records": self.records}

    @classmethod
    def from_json(cls, blob: Any, path: str | Path) -> "ChunkRecord":
        """A parsed record file, checked for its shape (an object with a ``records`` list, a
        ``job`` object, numeric ``seconds``); :class:`DamagedFileError` naming ``path`` otherwise.
        Its samples are checked against their job by ``records.record_problem``."""
        if not isinstance(blob, dict) or not isinstance(blob.get("records"), list):
            raise DamagedFileError(f"{path}: not a record file (no 'records' list)")
        if not isinstance(blob.get("job", {}), dict):
            raise DamagedFileError(f"{path}: not a record file ('job' is not an object)")
        seconds = blob.get("seconds", 0.0)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise DamagedFileError(f"{path}: 'seconds' is not a number")
        return cls(job=blob.get("job", {}), records=blob["records"], seconds=float(seconds),
                   spec_hash=blob.get("spec_hash"), defense_fingerprint=blob.get("defense_fingerprint"),
                   code_fingerprint=blob.get("code_fingerprint"), data=blob.get("data"))


# -- ownership of a run directory ----------------------------------------------------------

LOCK_NAME = ".scbench.lock"


class LockError(RuntimeError):
    """Another process owns the run directory (or it cannot be written)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # a killed child its parent has not reaped yet is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _owner_alive(holder: dict) -> bool | None:
    """Whether a lock owner's process still runs: True/False for a pid on this host, None when
    that cannot be checked (another host's lock, or no pid in it)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return None
    return _pid_alive(holder["pid"])


class RunLock:
    """Exclusive ownership of a run directory: ``.scbench.lock``, created atomically with its
    content (:meth:`_publish`), holding the owner's pid, host and command. A lock left by a dead process on this host is stale
    and taken over; a live (or other-host) owner is refused with who it is."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.stale_owner: dict | None = None
        self._held = False

    def _describe(self, info: dict) -> str:
        return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started_at')}: "
                f"{' '.join(map(str, info.get('command') or []))[:200]}")

    def _publish(self, info: dict) -> None:
        """Create the lock file with its content in one step: the owner record is written to a
        temporary file, then hard-linked to the lock's name, which fails with FileExistsError
        when a lock exists. Another process never sees a lock file without its owner record
        (an O_EXCL create followed by a write leaves an empty file for a moment, which a racing
        process read as an unreadable lock). Where the file system has no hard links, O_EXCL
        and a write are the fallback (readers wait briefly for an empty lock to fill)."""
        data = json.dumps(info).encode("utf-8")
        fd, tmp = tempfile.mkstemp(dir=self.run_dir, prefix=f"{LOCK_NAME}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~current_umask())
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
                return
            except FileExistsError:
                raise
            except OSError:  # no hard links here (some network or FUSE file systems)
                pass
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def acquire(self) -> "RunLock":
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started_at": _dt.datetime.now().isoformat(timespec="seconds"), "command": list(sys.argv)}
        for _ in range(2):
            try:
                self._publish(info)
            except FileExistsError:
                holder = self._holder(wait=True)
                if isinstance(holder, str):  # "gone": released meanwhile
                    continue
                if holder is None:
                    raise LockError(f"{self.path}: an unreadable lock file (another scbench process may own "
                                    f"{self.run_dir}); delete it if no scbench run uses that folder") from None
                if _owner_alive(holder) is False:  # its process is gone: a stale lock
                    self.stale_owner = holder
                    try:
                        self.path.unlink()
                    except FileNotFoundError:
                        pass
                    continue
                where = "" if holder.get("host") == socket.gethostname() else \
                    " (another host: its liveness cannot be checked from here)"
                raise LockError(f"{self.run_dir} is in use by another scbench run ({self._describe(holder)}){where}; "
                                f"wait for it, choose another --out, or delete {self.path} if that run is gone") from None
            except PermissionError:
                raise LockError(f"{self.run_dir}: not writable (permission denied); choose another --out") from None
            except OSError as exc:
                raise LockError(f"{self.run_dir}: cannot be written ({exc.strerror}); choose another --out") from None
            self._held = True
            return self
        raise LockError(f"{self.path}: could not take over a stale lock (another process raced for it)")

    def _holder(self, wait: bool = False) -> dict | Literal["gone"] | None:
        """The lock file's owner record; "gone" when the file vanished, None when unreadable.
        With ``wait``, an empty lock file (one being written by the O_EXCL fallback of
        :meth:`_publish`) is read again for up to a second before it counts as unreadable."""
        for attempt in range(21 if wait else 1):
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                return "gone"
            except OSError:
                return None
            if not text and attempt < (20 if wait else 0):
                time.sleep(0.05)
                continue
            try:
                data = json.loads(text)
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
        return None

    def owner(self) -> dict | None:
        """Read-only: the lock file's owner record with ``alive`` added (True or False on this
        host, None for another host's, whose liveness cannot be checked); None when there is
        no lock file, or it is unreadable (then ``{"unreadable": True, "alive": None}``)."""
        holder = self._holder()
        if holder == "gone":
            return None
        if holder is None:
            return {"unreadable": True, "alive": None}
        return {**holder, "alive": _owner_alive(holder)}

    def release(self) -> None:
        if self._held:
            self._held = False
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# -- the layout of a run directory -----------------------------------------------------------

class RunDir:
    """The one place that knows a run folder's layout; reading and writing its files.

    ``run.json`` (the run's description), ``records/<defense>/<threat>/chunk_NNNNN.json`` (one
    per finished job), ``samples.csv``, ``summary.csv``, ``summary.md`` (once complete),
    ``.scbench.lock`` and ``progress.json`` (while a process writes it: its lock, and the
    latest stage of each job in flight) and ``diagnostics/`` (the suite's diagnostics hook). Every write is atomic (:func:`atomic_write_bytes`); every JSON read
    names a damaged file (:class:`DamagedFileError`)."""

    META = "run.json"
    RECORDS = "records"
    SAMPLES = "samples.csv"
    SUMMARY_CSV = "summary.csv"
    SUMMARY_MD = "summary.md"
    LOCK = LOCK_NAME
    PROGRESS = "progress.json"
    DIAGNOSTICS = "diagnostics"
    FILES = (META, SAMPLES, SUMMARY_CSV, SUMMARY_MD)  # the plain files a complete run holds

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    # paths
    @property
    def meta_path(self) -> Path:
        return self.path / self.META

    @property
    def records_dir(self) -> Path:
        return self.path / self.RECORDS

    @property
    def samples_path(self) -> Path:
        return self.path / self.SAMPLES

    @property
    def summary_csv_path(self) -> Path:
        return self.path / self.SUMMARY_CSV

    @property
    def summary_md_path(self) -> Path:
        return self.path / self.SUMMARY_MD

    @property
    def lock_path(self) -> Path:
        return self.path / self.LOCK

    @property
    def progress_path(self) -> Path:
        return self.path / self.PROGRESS

    @property
    def diagnostics_dir(self) -> Path:
        return self.path / self.DIAGNOSTICS

    def chunk(self, defense: str, threat: str, chunk: int) -> Path:
        """The record file of one job (folders named by :func:`safe_name`, checked to stay
        inside the run folder)."""
        path = self.records_dir / safe_name(defense) / safe_name(threat) / f"chunk_{chunk:05d}.json"
        inside(self.path, path.parent)
        return path

    def is_run(self) -> bool:
        """True when the folder holds a run description (it is a run folder, finished or not)."""
        return self.meta_path.is_file()

    # reading and writing
    def read_meta(self) -> Any:
        """The parsed ``run.json``, checked by :func:`check_meta`; None when there is none;
        :class:`DamagedFileError` when damaged or of the wrong shape."""
        return check_meta(read_json(self.meta_path), self.meta_path) if self.meta_path.exists() else None

    def read_run_meta(self) -> RunMeta | None:
        """``run.json`` typed (:class:`RunMeta`); None when there is none."""
        return RunMeta.from_json(read_json(self.meta_path), self.meta_path) if self.meta_path.exists() else None

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_json(inside(self.path, self.meta_path), meta)

    def update_meta(self, **changes: Any) -> None:
        """Set fields of ``run.json`` (a field already there keeps its place); nothing when there
        is none. :class:`DamagedFileError` when it cannot be read."""
        meta = self.read_meta()
        if isinstance(meta, dict):
            meta.update(changes)
            self.write_meta(meta)

    def read_chunk(self, defense: str, threat: str, chunk: int) -> Any:
        """The parsed record file, as it is (:meth:`read_record`: checked and typed)."""
        return read_json(self.chunk(defense, threat, chunk))

    def read_record(self, defense: str, threat: str, chunk: int) -> ChunkRecord:
        """The record file typed (:class:`ChunkRecord`); :class:`DamagedFileError` when it is
        damaged or not of a record file's shape."""
        path = self.chunk(defense, threat, chunk)
        return ChunkRecord.from_json(read_json(path), path)

    def write_chunk(self, defense: str, threat: str, chunk: int, blob: dict[str, Any]) -> None:
        path = self.chunk(defense, threat, chunk)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(inside(self.path, path), blob)

    def write_record(self, record: ChunkRecord) -> None:
        """A job's record file, where its ``job`` (defense, threat, chunk) says."""
        self.write_chunk(record.job["defense"], record.job["threat"], record.job["chunk"], record.to_json())

    def write_samples(self, samples_csv: str) -> None:
        """``samples.csv`` (as text)."""
        atomic_write_text(self.samples_path, samples_csv)

    def write_summary(self, summary_csv: str, summary_md: str) -> None:
        """``summary.csv`` and ``summary.md`` (as text), each written atomically."""
        atomic_write_text(self.summary_csv_path, summary_csv)
        atomic_write_text(self.summary_md_path, summary_md)

    def write_progress(self, state: dict[str, Any]) -> None:
        """``progress.json``: the jobs in flight (:class:`robust_bench_sc.progress.InFlight`)."""
        atomic_write_json(self.progress_path, state)

    def read_progress(self) -> Any:
        """The parsed ``progress.json``; None when there is none or it cannot be read (it is
        advisory: the records say what a run computed)."""
        try:
            return read_json(self.progress_path) if self.progress_path.exists() else None
        except (DamagedFileError, OSError):
            return None

    def remove_progress(self) -> None:
        self.progress_path.unlink(missing_ok=True)

    def read_summary_md(self) -> str:
        return self.summary_md_path.read_text(encoding="utf-8")

    def lock(self) -> RunLock:
        """The (not yet acquired) lock of this folder: ``with run_dir.lock(): ...``."""
        return RunLock(self.path)

    def locked_by_live_process(self) -> bool:
        """True while another live process holds this folder's lock."""
        if not self.lock_path.exists():
            return False
        try:
            RunLock(self.path).acquire().release()
            return False
        except LockError:
            return True
