"""Transfer attack: adversarial examples crafted on another defense (the source).

The craft (a white-box threat model, :class:`~robust_bench_sc.threat_models.TransferThreat`'s
``craft``, with the defaults its schema fills in) runs against the source through the same
engine loop as any attack; the engine then re-checks the crafted images on the defense
under test as it re-checks every attack's output. The source is built through the
context's ``build_defense`` (the runner supplies it), once per worker.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from robust_bench_sc.attacks.base import Attack, AttackContext, AttackOutput, get_attack, run_attack
from robust_bench_sc.defense import Defense
from robust_bench_sc.predictions import predict
from robust_bench_sc.threat_models import TransferThreat


class SourceGradient(nn.Module):
    """The ``defense``'s logits with the ``source``'s gradient: ``d(x) + s(x) − s(x).detach()``
    with ``d(x)`` computed without a graph (BPDA, the source standing in for the whole
    defense)."""

    def __init__(self, defense: nn.Module, source: nn.Module):
        super().__init__()
        self.defense, self.source = defense, source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            d = self.defense(x).float()
        if not (torch.is_grad_enabled() and x.requires_grad):
            return d
        s = self.source(x).float()
        return d + (s - s.detach())


def hybrid(defense: Defense, source: Defense, source_bpda: str | None) -> Defense:
    """``defense``'s forward, ``source``'s gradient (:class:`SourceGradient`), as a Defense
    with ``defense``'s capabilities (its randomness: EOT and PGD's stopping rule apply)."""
    caps = replace(defense.capabilities, differentiable=True, default_bpda=None)
    return Defense(name=f"{defense.name} (gradients of {source.name})",
                   classifier=SourceGradient(defense.attack_model(eot=1), source.attack_model(bpda=source_bpda, eot=1)),
                   capabilities=caps, description="transfer craft_forward: defense")


class TransferAttack(Attack):
    """Craft on ``threat.source`` with ``threat.craft``; report whether each crafted image
    fools the source (``info["source_fooled"]``). Claims nothing about the defense under test.

    Args:
        threat: the transfer threat model (source, source_bpda, craft).
    """

    threat: TransferThreat

    def __init__(self, *, threat: TransferThreat):
        super().__init__(threat)
        self.craft = get_attack(threat.craft)  # the craft's backend is imported (and checked) now

    @property
    def batch_size(self) -> int | None:
        # all selected images in one call: every craft batch runs before the source judges
        # them, so the global generators a toolkit craft draws from see the same sequence
        # whatever the source does; the craft's batches report progress
        return None

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        ref, params, label = self.threat.source_spec
        source = ctx.source_defense(ref, params, label)
        target = source if self.threat.craft_forward == "source" else \
            hybrid(ctx.defense, source, self.threat.source_bpda)
        x_adv, _, info = run_attack(self.threat.craft, ctx.on(target), x, y, attack=self.craft)
        src_pred = predict(source, x_adv, self.threat.batch_size, ctx.device, non_finite="flag", n_classes=ctx.n_classes)
        return AttackOutput(x_adv, None, {**info, "source_fooled": (src_pred != y.cpu()).float()})
