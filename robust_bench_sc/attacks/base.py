"""One interface for every attack backend: images in, adversarial images (+ claims) out.

An attack never decides what counts: :mod:`robust_bench_sc.evaluate` re-checks bounds,
norms and predictions of whatever an attack returns.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from robust_bench_sc.defense import Defense, resolve_bpda
from robust_bench_sc.progress import ProgressFn
from robust_bench_sc.registry import Registry, RegistryError, subclass_of
from robust_bench_sc.threat_models import THREAT_MODELS, ThreatModel


@dataclass
class AttackOutput:
    """``x_adv`` for every input; ``claimed``: what the backend says succeeded (or None);
    ``info``: per-sample numbers worth keeping (steps used, queries, ...)."""

    x_adv: torch.Tensor
    claimed: torch.Tensor | None = None
    info: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class AttackContext:
    """What an attack may use besides the images."""

    defense: Defense
    device: torch.device
    seed: int
    progress: ProgressFn | None = None  # images done, and what the attack is doing now (progress.py)
    data_root: str | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    # builds a defense the threat model names besides the one under test (a transfer
    # source): ``build_defense(ref, params, name=label)``; the runner's workers pass
    # ``plugins.build_defense``, so the engine itself never imports the plug-ins
    build_defense: Callable[..., Defense] | None = None
    # why gradient attacks cannot run on this defense (robust_bench_sc.adapt: the probes found no usable
    # gradient, BPDA included); "" when they can. evaluate_threat records such a column as not applicable
    no_gradient: str = ""
    # what the dataset's images are: logits per image (checked) and (C, H, W) of one image
    n_classes: int = 10
    input_shape: tuple[int, int, int] = (3, 32, 32)
    dataset: str = "cifar10_npz"  # the dataset plug-in data_root holds (start pools of decision attacks)

    def source_defense(self, ref: str, params: dict[str, Any], label: str) -> Defense:
        """The defense ``ref`` (built once per worker, on this context's device)."""
        key = f"transfer-source:{label}"
        if key not in self.cache:
            if self.build_defense is None:
                raise RuntimeError(f"this AttackContext cannot build the transfer source {label!r}: pass "
                                   "build_defense (e.g. robust_bench_sc.plugins.build_defense) when creating it")
            self.cache[key] = self.build_defense(ref, params, name=label).to(self.device)
        return self.cache[key]

    def on(self, defense: Defense) -> AttackContext:
        """The same context (device, seed, progress, cache, builder) for another defense."""
        return replace(self, defense=defense, no_gradient="")

    def bpda_name(self, threat: ThreatModel) -> str | None:
        """Resolve ``bpda: auto`` to the defense's declared default stand-in."""
        return resolve_bpda(self.defense, threat.bpda)

    def model(self, threat: ThreatModel) -> nn.Module:
        """The module whose gradients the attack follows (exact forward, BPDA/EOT backward)."""
        return self.defense.attack_model(bpda=self.bpda_name(threat), eot=threat.eot).to(self.device).eval()

    def generator(self) -> torch.Generator:
        g = torch.Generator(device="cpu")
        g.manual_seed(self.seed)
        return g

    def seed_everything(self) -> None:
        """Toolkits draw from global generators: seed them all for this job."""
        torch.manual_seed(self.seed)
        np.random.seed(self.seed % (2**32))
        random.seed(self.seed)


class Attack(ABC):
    """An attack configured by one threat model (constructed as ``cls(threat=threat)``)."""

    def __init__(self, threat: ThreatModel):
        self.threat = threat

    @property
    def batch_size(self) -> int | None:
        """Images per :meth:`run` call (the engine splits the images it attacks into such
        batches and reports progress after each); None: all of them in one call, the attack
        batching and reporting progress (``ctx.progress``) itself."""
        return self.threat.batch_size

    @abstractmethod
    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        """Attack a batch of correctly classified images (float NCHW in [0, 1])."""


# "<kind>:<backend>" → implementation, read from each schema's ``backends`` (the one place
# they are declared, robust_bench_sc/threat_models.py); entries are imported when first run.
ATTACKS: Registry[type[Attack]] = Registry("attack backend", accepts=subclass_of(Attack),
                                           expected="a subclass of robust_bench_sc.attacks.Attack")
for _kind, _schema in THREAT_MODELS.items():
    for _backend, _target in _schema.backends.items():
        if _target is not None:
            ATTACKS.register(f"{_kind}:{_backend}", _target)


def attack_key(threat: ThreatModel) -> str:
    return f"{threat.kind}:{threat.backend}"


def attack_class(threat: ThreatModel) -> type[Attack]:
    """The implementation ``threat``'s schema declares for its backend (imported now)."""
    target = type(threat).backends.get(threat.backend)
    if target is None:
        raise RegistryError(f"threat model {threat.name!r}: attack {threat.kind!r} (backend {threat.backend!r}) "
                            "has no attack class; the engine evaluates it itself (robust_bench_sc.evaluate)")
    return ATTACKS.get(attack_key(threat))


def get_attack(threat: ThreatModel) -> Attack:
    return attack_class(threat)(threat=threat)


def _in_batch(ctx: AttackContext, b: int, n_batches: int) -> AttackContext:
    """``ctx`` whose progress stages name the batch (``batch 2/5: restart …``) when there are several."""
    report = ctx.progress
    if report is None or n_batches == 1:
        return ctx

    def in_batch(k: int, stage: str | None = None) -> None:
        report(k, None if stage is None else f"batch {b}/{n_batches}: {stage}")

    return replace(ctx, progress=in_batch)


def run_attack(threat: ThreatModel, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor,
               attack: Attack | None = None):
    """Run ``threat``'s attack (``attack``: an instance of it already built) batch by batch
    (``Attack.batch_size``); returns x_adv, claimed (or None) and info, on the CPU."""
    attack = attack or get_attack(threat)
    size = attack.batch_size or max(x.shape[0], 1)
    n_batches = -(-x.shape[0] // size)
    xs, claims, infos = [], [], []
    for i in range(0, x.shape[0], size):
        xb, yb = x[i : i + size].to(ctx.device), y[i : i + size].to(ctx.device)
        out = attack.run(_in_batch(ctx, i // size + 1, n_batches), xb, yb)
        xs.append(out.x_adv.detach().cpu().float())
        claims.append(None if out.claimed is None else out.claimed.cpu().bool())
        infos.append({k: v.detach().cpu() for k, v in out.info.items()})
        if ctx.progress and attack.batch_size:
            ctx.progress(xb.shape[0])
    x_adv = torch.cat(xs)
    given = [c for c in claims if c is not None]
    claimed = torch.cat(given) if len(given) == len(claims) else None
    keys = list(dict.fromkeys(k for inf in infos for k in inf))
    info = {k: torch.cat([inf[k] for inf in infos]) for k in keys if all(k in inf for inf in infos)}
    return x_adv, claimed, info
