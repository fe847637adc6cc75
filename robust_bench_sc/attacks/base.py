"""One interface for every attack backend: images in, adversarial images (+ claims) out.

An attack never decides what counts: :mod:`robust_bench_sc.evaluate` re-checks bounds,
norms and predictions of whatever an attack returns.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from robust_bench_sc.defense import Defense
from robust_bench_sc.registry import Registry
from robust_bench_sc.threat_models import ThreatModel


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
    progress: Callable[[int], None] | None = None
    data_root: str | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    def bpda_name(self, threat: ThreatModel) -> str | None:
        """Resolve ``bpda: auto`` to the defense's declared default stand-in."""
        if threat.bpda == "auto":
            if self.defense.preprocess is None:
                return None
            return self.defense.capabilities.default_bpda or "identity"
        return threat.bpda

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
    """An attack configured by one threat model."""

    def __init__(self, threat: ThreatModel):
        self.threat = threat

    @abstractmethod
    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        """Attack a batch of correctly classified images (float NCHW in [0, 1])."""


ATTACKS: Registry = Registry("attack backend")
for _key, _target in {
    "pgd:native": "robust_bench_sc.attacks.pgd:NativePGD",
    "pgd:torchattacks": "robust_bench_sc.attacks.toolkits:TorchattacksPGD",
    "pgd:foolbox": "robust_bench_sc.attacks.toolkits:FoolboxPGD",
    "pgd:art": "robust_bench_sc.attacks.toolkits:ArtPGD",
    "cw:foolbox": "robust_bench_sc.attacks.toolkits:FoolboxCW",
    "cw:torchattacks": "robust_bench_sc.attacks.toolkits:TorchattacksCW",
    "boundary:foolbox": "robust_bench_sc.attacks.decision:FoolboxBoundary",
    "hsj:art": "robust_bench_sc.attacks.decision:ArtHopSkipJump",
    "hsj:foolbox": "robust_bench_sc.attacks.decision:FoolboxHopSkipJump",
    "zoo:art": "robust_bench_sc.attacks.decision:ArtZoo",
    "square:autoattack": "robust_bench_sc.attacks.autoattack:AutoAttackSquare",
    "square:torchattacks": "robust_bench_sc.attacks.toolkits:TorchattacksSquare",
    "autoattack:autoattack": "robust_bench_sc.attacks.autoattack:AutoAttackRunner",
}.items():
    ATTACKS.register(_key, _target)


def get_attack(threat: ThreatModel) -> Attack:
    cls = ATTACKS.get(f"{threat.kind}:{threat.backend}")
    return cls(threat)
