"""Executes jobs: loads the data and defenses it needs (once) and evaluates a chunk.

A worker gets the suite, a job and where the data lives, never the images themselves,
so the same code runs in-process (local executor) or on a remote node.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from robust_bench_sc.attacks.base import AttackContext
from robust_bench_sc.config import SuiteConfig
from robust_bench_sc.data import Split, content_hash, load_data
from robust_bench_sc.defense import Defense
from robust_bench_sc.evaluate import evaluate_threat
from robust_bench_sc.plan import Job, job_spec_hash
from robust_bench_sc.plugins import build_defense
from robust_bench_sc.progress import STARTED, ProgressFn
from robust_bench_sc.storage import ChunkRecord


@dataclass
class ChunkResult:
    job: Job
    records: list[dict[str, Any]]
    seconds: float
    spec_hash: str | None = None           # plan.job_spec_hash: what the records are of
    defense_fingerprint: str | None = None  # Defense.fingerprint(): which weights
    code_fingerprint: str | None = None     # Defense.code_fingerprint(): which code and configuration
    data: dict[str, str] | None = None      # the images: dataset, split, data hash (as run.json's)

    def to_record(self) -> ChunkRecord:
        """What its record file holds (:class:`~robust_bench_sc.storage.ChunkRecord`)."""
        return ChunkRecord(self.job.to_dict(), self.records, self.seconds, self.spec_hash, self.defense_fingerprint,
                           self.code_fingerprint, self.data)


class Worker:
    def __init__(self, suite: SuiteConfig, device: str = "cpu", data_root: str | None = None):
        self.suite = suite
        self.device = torch.device(device)
        self.data_root = data_root or suite.data.folder
        self._data: Split | None = None
        self._data_id: dict[str, str] | None = None
        self._defenses: dict[str, Defense] = {}
        self._fingerprints: dict[str, str] = {}
        self._code_fingerprints: dict[str, str] = {}
        self._cache: dict[str, Any] = {}

    @property
    def data(self) -> Split:
        if self._data is None:
            self._data = load_data(self.suite.data, root=self.data_root)
        return self._data

    @property
    def data_id(self) -> dict[str, str]:
        """What each record file says its images are: dataset, split and data hash."""
        if self._data_id is None:
            self._data_id = {"dataset": self.data.dataset, "split": self.data.split, "hash": content_hash(self.data)}
        return self._data_id

    def defense(self, index: int) -> Defense:
        spec = self.suite.defenses[index]
        if spec.label not in self._defenses:
            defense = build_defense(spec.load_ref, spec.params, name=spec.label)
            self._fingerprints[spec.label] = defense.fingerprint()
            self._code_fingerprints[spec.label] = defense.code_fingerprint()
            adapted = self.suite.adaptation(spec.label)
            if adapted is not None:  # what the probes found (undeclared randomness, exact preprocess gradients)
                adapted.apply(defense)
            self._defenses[spec.label] = defense.to(self.device)
        return self._defenses[spec.label]

    def run(self, job: Job, progress: ProgressFn | None = None) -> ChunkResult:
        """Evaluate ``job``; ``progress`` hears that it started, then the attack's reports."""
        t0 = time.perf_counter()
        if progress:
            progress(0, STARTED)
        defense = self.defense(job.defense_index)
        threat = self.suite.threat_models[job.threat_index]
        adapted = self.suite.adaptation(job.defense)
        if adapted is not None:  # auto: the threat model as the probes adapt it to this defense
            threat, _ = adapted.threat(threat)
        part = self.data.take(range(job.start, job.stop))
        ctx = AttackContext(defense=defense, device=self.device, seed=job.seed, progress=progress,
                            data_root=self.data_root, cache=self._cache, build_defense=build_defense,
                            no_gradient=adapted.no_gradient if adapted is not None else "",
                            n_classes=self.data.n_classes, input_shape=self.data.image_shape,
                            dataset=self.data.dataset)
        records = evaluate_threat(defense, threat, part.x, part.y, part.idx, ctx)
        return ChunkResult(job, records, time.perf_counter() - t0, job_spec_hash(self.suite, job),
                           self._fingerprints[job.defense], code_fingerprint=self._code_fingerprints.get(job.defense),
                           data=self.data_id)
