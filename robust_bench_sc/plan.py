"""A suite becomes a plan: one job per (defense, threat model, chunk of images)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from robust_bench_sc.config import SuiteConfig


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


def job_seed(suite_seed: int, defense: str, threat: str, chunk: int) -> int:
    """Seed of a job: independent of execution order, so resumed runs repeat exactly."""
    blob = f"{suite_seed}|{defense}|{threat}|{chunk}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little") & 0x7FFFFFFF


def plan_jobs(suite: SuiteConfig) -> list[Job]:
    n, size = suite.data.n_images, suite.data.chunk_size
    jobs = []
    for di, d in enumerate(suite.defenses):
        for ti, t in enumerate(suite.threat_models):
            nt = min(n, t.max_images) if t.max_images else n
            for c, start in enumerate(range(0, nt, size)):
                jobs.append(Job(d.label, di, t.name, ti, c, start, min(start + size, nt),
                                job_seed(suite.seed, d.label, t.name, c)))
    return jobs
