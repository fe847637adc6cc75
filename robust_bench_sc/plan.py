"""A suite becomes a plan: one job per (defense, threat model, chunk of images)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from robust_bench_sc.config import UNHASHED_DEFENSE_FIELDS, DefenseSpec, SuiteConfig
from robust_bench_sc.threat_models import UNHASHED, fields_with

if TYPE_CHECKING:
    from robust_bench_sc.storage import ChunkRecord


@dataclass(frozen=True)
class Job:
    """One unit of work; everything a worker needs besides the suite and the data."""

    defense: str          # defense label (unique in the suite)
    defense_index: int
    threat: str           # threat-model name (unique in the suite)
    threat_index: int
    chunk: int
    start: int            # positions [start, stop) in the first-N test images
    stop: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.defense}/{self.threat}/{self.chunk}"

    def to_dict(self) -> dict:
        return asdict(self)


#: how a job's seed is made, in run.json (``seed_rule``) and the README. The label is part of
#: it: committed records' spec hashes hold these seeds, so the rule stays as it is.
SEED_RULE = ("job seed = the first 31 bits of sha256('SUITE_SEED|DEFENSE_LABEL|THREAT_MODEL_NAME|CHUNK'): the "
             "defense label and the threat-model name are part of it (the weights are not), so renaming either "
             "draws other random starts, restarts and samples, and its numbers move within the attack's sampling "
             "noise; scbench check names a move on other seeds")


def job_seed(suite_seed: int, defense: str, threat: str, chunk: int) -> int:
    """Seed of a job (:data:`SEED_RULE`): independent of execution order, so resumed runs repeat
    exactly; it depends on the defense label, not on the weights."""
    blob = f"{suite_seed}|{defense}|{threat}|{chunk}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little") & 0x7FFFFFFF


def plan_jobs(suite: SuiteConfig) -> list[Job]:
    n, size = suite.data.n_images, suite.data.chunk_size
    jobs = []
    for di, d in enumerate(suite.defenses):
        for ti, t in enumerate(suite.threat_models):
            if not d.runs(t.name):  # the defense limits its threat models
                continue
            nt = d.n_images(t.max_images, n)
            for c, start in enumerate(range(0, nt, size)):
                jobs.append(Job(d.label, di, t.name, ti, c, start, min(start + size, nt),
                                job_seed(suite.seed, d.label, t.name, c)))
    return jobs


# Fields that label a threat model or size the run without changing any record of a job:
# a job's images are its start/stop, so ``max_images`` and ``n_images`` do not enter.
_LABEL_FIELDS = fields_with(UNHASHED)  # declared on the schema (threat_models.py)


def images_covered(jobs: list[Job]) -> set[int]:
    """How many of the first test images each (defense, threat model) pair of ``jobs`` covers, as
    a set (a defense's or threat model's ``max_images`` may cap a pair below the suite's n_images)."""
    last: dict[tuple[str, str], int] = {}
    for j in jobs:
        last[(j.defense, j.threat)] = max(last.get((j.defense, j.threat), 0), j.stop)
    return set(last.values())


def spec_hash(suite_seed: int, defense: dict[str, Any], threat: dict[str, Any], job: Job,
              auto: dict[str, Any] | None = None) -> str:
    """Identity of a job's records: what was attacked, how, which images, which seed.

    ``defense`` / ``threat`` are the specs dumped without their default values, so a field
    added to the code later (with its default) keeps older records valid; the code version
    of every invocation is in ``run.json`` (``history``). ``auto``: the settings the probes
    chose for this job (robust_bench_sc.adapt), only when there are any, so a job they leave
    as it was keeps its hash.
    """
    blob = {"suite_seed": suite_seed, "defense": defense,
            "threat": {k: v for k, v in threat.items() if k not in _LABEL_FIELDS},
            "start": job.start, "stop": job.stop, "seed": job.seed}
    if auto:
        blob["auto"] = auto
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def job_spec_hash(suite: SuiteConfig, job: Job, auto: dict[str, Any] | None = None) -> str:
    """The spec hash of ``job``: with the choices the suite's probe adaptation made for it, or
    ``auto`` as given (a run.json's ``probes[defense].spec_hash_auto[threat]``)."""
    d = suite.defenses[job.defense_index].model_dump(exclude_defaults=True, exclude=set(UNHASHED_DEFENSE_FIELDS))
    threat = suite.threat_models[job.threat_index]
    t = threat.model_dump(exclude_defaults=True)
    if auto is None:
        adapted = suite.adaptation(job.defense)
        auto = adapted.key(threat) if adapted is not None else None
    return spec_hash(suite.seed, d, t, job, auto)


def recorded_spec_hash(record: ChunkRecord, config: dict[str, Any] | None) -> str | None:
    """The spec hash a record file stands for: its own, or for a record written before records
    carried one, the hash rebuilt from ``config`` (the resolved configuration of the run.json
    beside it)."""
    return record.spec_hash or (legacy_spec_hash(config or {}, record.job) if record.job else None)


def legacy_spec_hash(config: dict[str, Any], job: dict[str, Any]) -> str | None:
    """The spec hash of a record written before records carried one, rebuilt from the
    resolved configuration its run.json stored; None when that is not possible."""
    from robust_bench_sc.threat_models import THREAT_MODELS, stored_config

    try:
        d = next(s for s in map(DefenseSpec.model_validate, config["defenses"]) if s.label == job["defense"])
        t = next(x for x in config["threat_models"] if x["name"] == job["threat"])
        dd = d.model_dump(exclude_defaults=True, exclude=set(UNHASHED_DEFENSE_FIELDS))
        td = THREAT_MODELS[t["attack"]].model_validate(stored_config(t)).model_dump(exclude_defaults=True)
        j = Job(job["defense"], job["defense_index"], job["threat"], job["threat_index"], job["chunk"],
                job["start"], job["stop"], job["seed"])
        return spec_hash(config["seed"], dd, td, j)
    except (KeyError, TypeError, ValueError, StopIteration):
        return None
