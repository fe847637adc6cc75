"""The defense plugin API.

A :class:`Defense` is a classifier (``[0, 1]`` images → logits) with an optional
``preprocess`` in front of it. Calling it computes ``classifier(preprocess(x))``. A
preprocess may be non-differentiable; its ``bpda`` mapping then offers differentiable
stand-ins that attacks use in the backward pass only (Athalye et al.'s BPDA): the forward
pass is always the exact defense.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

IDENTITY_BPDA = "identity"


@dataclass(frozen=True)
class Capabilities:
    """What a defense declares about itself; the runner adapts to it.

    differentiable: gradients of the whole defense are meaningful (False for a preprocess
        with quantisation, top-k selection, ...: gradient attacks then need BPDA).
    randomised: repeated forward passes can disagree (attacks need EOT; successes are
        re-checked several times).
    input_range: the pixel range the defense takes.
    default_bpda: the stand-in a threat model with ``bpda: auto`` uses (the strongest the
        authors know of); None means ``identity`` when there is a preprocess.
    """

    differentiable: bool = True
    randomised: bool = False
    input_range: tuple[float, float] = (0.0, 1.0)
    default_bpda: str | None = None


@dataclass
class Defense:
    """A defense plugin: ``classifier(preprocess(x))``.

    name: registry name, used in tables.
    classifier: nn.Module mapping images in ``input_range`` to logits.
    preprocess: optional nn.Module applied first (may be non-differentiable).
    bpda: approximation name → differentiable stand-in for ``preprocess`` (backward only).
        ``identity`` is always available when there is a preprocess.
    capabilities: see :class:`Capabilities`.
    description: one line for ``scbench defenses``.
    """

    name: str
    classifier: nn.Module
    preprocess: nn.Module | None = None
    bpda: Mapping[str, nn.Module] = field(default_factory=dict)
    capabilities: Capabilities = field(default_factory=Capabilities)
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.classifier, nn.Module):
            raise TypeError(f"defense {self.name!r}: classifier must be an nn.Module")
        if self.preprocess is not None and not isinstance(self.preprocess, nn.Module):
            raise TypeError(f"defense {self.name!r}: preprocess must be an nn.Module or None")
        if self.bpda and self.preprocess is None:
            raise ValueError(f"defense {self.name!r}: bpda stand-ins need a preprocess")
        for key, module in self.bpda.items():
            if not isinstance(module, nn.Module):
                raise TypeError(f"defense {self.name!r}: bpda[{key!r}] must be an nn.Module")

    # -- evaluation -----------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.preprocess(x) if self.preprocess is not None else x
        return self.classifier(h)

    def bpda_names(self) -> list[str]:
        if self.preprocess is None:
            return []
        return sorted({IDENTITY_BPDA, *self.bpda})

    def stand_in(self, name: str) -> nn.Module:
        """The differentiable stand-in for ``preprocess`` named ``name``."""
        if self.preprocess is None:
            raise ValueError(f"defense {self.name!r} has no preprocess, so BPDA {name!r} does not apply")
        if name in self.bpda:
            return self.bpda[name]
        if name == IDENTITY_BPDA:
            return nn.Identity()
        raise ValueError(f"defense {self.name!r} offers BPDA stand-ins {self.bpda_names()}, not {name!r}")

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.classifier, self.preprocess, *self.bpda.values()) if m is not None]

    def fingerprint(self) -> str:
        """Hash of every parameter and buffer (classifier, preprocess, stand-ins): records
        carry it, so a run never mixes numbers of different weights under one name."""
        import hashlib

        h = hashlib.sha256()
        parts = {"classifier": self.classifier, "preprocess": self.preprocess,
                 **{f"bpda.{k}": v for k, v in self.bpda.items()}}
        for prefix, module in sorted(parts.items()):
            if module is None:
                continue
            for key, value in sorted(module.state_dict().items()):
                h.update(f"{prefix}.{key}:{value.dtype}:{tuple(value.shape)}".encode())
                h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def to(self, device: str | torch.device) -> "Defense":
        for m in self.modules():
            m.to(device)
        return self

    def eval(self) -> "Defense":
        for m in self.modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        return self

    def attack_model(self, bpda: str | None = None, eot: int = 1) -> nn.Module:
        """The nn.Module that attacks differentiate: exact forward, chosen backward."""
        return AttackModel(self, bpda=bpda, eot=eot)


class _BPDAFunction(torch.autograd.Function):
    """Forward: ``exact(x)``. Backward: the vector-Jacobian product of ``stand_in`` at x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, exact: nn.Module, stand_in: nn.Module) -> torch.Tensor:
        ctx.stand_in = stand_in
        ctx.save_for_backward(x)
        with torch.no_grad():
            return exact(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            out = ctx.stand_in(xd)
            (grad_x,) = torch.autograd.grad(out, xd, grad_out, allow_unused=False)
        return grad_x, None, None


def bpda_apply(x: torch.Tensor, exact: nn.Module, stand_in: nn.Module) -> torch.Tensor:
    return _BPDAFunction.apply(x, exact, stand_in)


class AttackModel(nn.Module):
    """What toolkits see: logits of the exact defense; gradients through BPDA / EOT.

    With ``eot > 1`` the logits are averaged over ``eot`` forward passes of a randomised
    defense, so every gradient toolkit gets an EOT gradient without knowing about it.
    """

    def __init__(self, defense: Defense, bpda: str | None = None, eot: int = 1):
        super().__init__()
        if eot < 1:
            raise ValueError("eot must be >= 1")
        self.defense = defense
        self.bpda = bpda
        self.eot = eot
        # registered so .to()/.eval() reach them
        self.classifier = defense.classifier
        self.preprocess = defense.preprocess
        self.stand_in_module = defense.stand_in(bpda) if bpda else None

    def _once(self, x: torch.Tensor) -> torch.Tensor:
        if self.preprocess is None:
            h = x
        elif self.stand_in_module is not None and torch.is_grad_enabled() and x.requires_grad:
            h = bpda_apply(x, self.preprocess, self.stand_in_module)
        else:
            h = self.preprocess(x)
        return self.classifier(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.eot == 1:
            return self._once(x)
        return torch.stack([self._once(x) for _ in range(self.eot)]).mean(0)


DefenseFactory = Callable[[], Defense]
