"""The defense plugin API.

A :class:`Defense` is a classifier (``[0, 1]`` images → logits) with an optional
``preprocess`` in front of it. Calling it computes ``classifier(preprocess(x))``. A
preprocess may be non-differentiable; its ``bpda`` mapping then offers differentiable
stand-ins that attacks use in the backward pass only (Athalye et al.'s BPDA): the forward
pass is always the exact defense.
"""

from __future__ import annotations

from collections.abc import Mapping
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
        ``identity`` is always available when there is a preprocess. A stand-in module whose
        forward value is *bitwise* ``preprocess(x)`` for every x (deterministic, same dtype) may
        say so with the class or instance attribute ``exact_forward = True``: attacks then run
        the stand-in alone with autograd (one forward + backward per step) instead of the exact
        forward plus the stand-in's forward and backward. Without it (the default) the exact
        forward gives the values and the stand-in only the backward (``bpda_apply``).
    capabilities: see :class:`Capabilities`.
    description: one line for ``scbench defenses``.
    features, readout: optional split of ``classifier`` for the binarization test
        (``robust_bench_sc.binarization``): ``classifier(h) == readout(features(h))`` with
        ``readout`` an ``nn.Linear``. Leave both None when the classifier's last executed
        ``nn.Linear`` is its final operation (ResNet-32 and every bundled defense): the split
        is then found by :meth:`feature_split`. A defense with neither gets "not applicable".
    """

    name: str
    classifier: nn.Module
    preprocess: nn.Module | None = None
    bpda: Mapping[str, nn.Module] = field(default_factory=dict)
    capabilities: Capabilities = field(default_factory=Capabilities)
    description: str = ""
    features: nn.Module | None = None
    readout: nn.Linear | None = None

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
        if (self.features is None) != (self.readout is None):
            raise ValueError(f"defense {self.name!r}: give both features and readout, or neither")
        if self.features is not None and not isinstance(self.features, nn.Module):
            raise TypeError(f"defense {self.name!r}: features must be an nn.Module")
        if self.readout is not None and not isinstance(self.readout, nn.Linear):
            raise TypeError(f"defense {self.name!r}: readout must be an nn.Linear")

    # -- evaluation -----------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # a copy: a forward that normalises its input in place (x.sub_(mean)) must not change the
        # caller's images (the attack's iterate, the data), nor make repeated passes differ
        return self.forward(x.clone())

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
        return [m for m in (self.classifier, self.preprocess, *self.bpda.values(), self.features, self.readout)
                if m is not None]

    def feature_split(self, probe: torch.Tensor) -> "FeatureSplit":
        """``classifier`` as features (everything up to its last linear layer) + readout.

        ``probe``: a classifier input (``preprocess(x)`` for a few images) on which the
        split is verified: ``readout(features(probe))`` must reproduce ``classifier(probe)``.
        Raises :class:`NoFeatureSplit` (one line, why) when the defense cannot be split.
        """
        return FeatureSplit.of(self, probe)

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

    def code_fingerprint(self) -> str:
        """Hash of the code and configuration behind the weights: every module's class and its
        plain settings (a JPEG quality, a noise σ, a flag; not tensors, not ``training``), the
        source of every module class outside torch, the declared capabilities, and the factory's
        source file (its digest ``source_digest``, set by ``plugins.build_defense``). Records carry it beside
        :meth:`fingerprint`, so the same name with other code is refused as other weights are."""
        import hashlib
        import inspect

        h = hashlib.sha256()
        h.update(repr(self.capabilities).encode())
        parts = {"classifier": self.classifier, "preprocess": self.preprocess,
                 **{f"bpda.{k}": v for k, v in self.bpda.items()}}
        files: set[str] = set()
        for prefix, module in sorted(parts.items()):
            if module is None:
                continue
            for name, m in module.named_modules():
                cls = type(m)
                h.update(f"{prefix}.{name}:{cls.__module__}.{cls.__qualname__}".encode())
                for key, value in sorted(vars(m).items()):
                    if not key.startswith("_") and key != "training":
                        h.update(f"{key}={_setting_repr(value)};".encode())
                if cls.__module__.split(".")[0] != "torch":
                    try:
                        src = inspect.getsourcefile(cls)
                    except (TypeError, OSError):
                        src = None
                    if src:
                        files.add(src)
        contents = [str(getattr(self, "source_digest", ""))]
        for f in files:  # by content, not path: the same code elsewhere is the same code
            try:
                with open(f, "rb") as fh:
                    contents.append(hashlib.sha256(fh.read()).hexdigest())
            except OSError:
                contents.append(f"unreadable:{f.rsplit('/', 1)[-1]}")
        for c in sorted(contents):
            h.update(c.encode())
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


def module_defense(module: nn.Module, name: str, description: str) -> Defense:
    """A plain classifier (float images in [0, 1], NCHW → logits) as a :class:`Defense`: no
    preprocess, declared differentiable and deterministic. Nothing is taken on trust: the
    probes (``robust_bench_sc.probes``) measure randomness and the gradient before any attack,
    and every run and audit adapts to what they find."""
    return Defense(name=name, classifier=module, capabilities=Capabilities(differentiable=True, randomised=False),
                   description=description)


def _setting_repr(value: object) -> str:
    """A module attribute as its code fingerprint sees it: plain values in full, others by type."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, (tuple, list)) and all(v is None or isinstance(v, (bool, int, float, str)) for v in value):
        return repr(tuple(value))
    return type(value).__qualname__


AUTO_BPDA = "auto"
# ``default_bpda`` meaning "no stand-in: the preprocess's own gradients" (a differentiable
# preprocess; robust_bench_sc.adapt sets it when the probes find the preprocess differentiable)
EXACT_BPDA = "exact"


def resolve_bpda(defense: Defense, bpda: str | None) -> str | None:
    """The stand-in that ``bpda`` names on ``defense`` (the one ``bpda: auto`` rule): ``auto``
    is the declared ``default_bpda``, else ``identity``, and None without a preprocess (there
    is nothing to stand in for) or where ``default_bpda`` is ``exact``; any other value (None,
    a stand-in name) as given."""
    if bpda != AUTO_BPDA:
        return bpda
    if defense.preprocess is None:
        return None
    chosen = defense.capabilities.default_bpda or IDENTITY_BPDA
    return None if chosen == EXACT_BPDA else chosen


class NoFeatureSplit(ValueError):
    """The defense exposes no features / linear readout split (binarization test: not applicable)."""


class FeatureSplit:
    """``classifier == readout ∘ features`` with a linear ``readout``.

    ``features(h)``: the readout's input for classifier inputs ``h`` (flattened to N × d).
    ``with_readout(linear)``: a new classifier module, the same features followed by
    ``linear`` instead of the readout (the original modules are shared, not copied, and
    are left unchanged).
    """

    def __init__(self, defense: "Defense", readout: nn.Linear, features: nn.Module | None):
        self.defense, self.readout, self._features = defense, readout, features

    @property
    def dim(self) -> int:
        return int(self.readout.in_features)

    @classmethod
    def of(cls, defense: "Defense", probe: torch.Tensor) -> "FeatureSplit":
        name = defense.name
        if defense.readout is not None:  # __post_init__: features and readout come together
            split = cls(defense, defense.readout, defense.features)
            how = "the declared features/readout"
        else:
            linears = [m for m in defense.classifier.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise NoFeatureSplit(f"defense {name!r}: its classifier has no nn.Linear and it declares no "
                                     f"features/readout split (Defense(features=..., readout=...)), so there is no "
                                     f"last linear layer to replace")
            order: list[nn.Linear] = []
            handles = [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in linears]
            try:
                with torch.no_grad():
                    defense.classifier(probe)
            finally:
                for h in handles:
                    h.remove()
            if not order:
                raise NoFeatureSplit(f"defense {name!r}: no nn.Linear of its classifier runs in its forward pass")
            split = cls(defense, order[-1], None)
            how = "the classifier's last executed nn.Linear"
        # same random draws for both passes (a randomised classifier must still split exactly)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            ref = defense.classifier(probe)
            torch.manual_seed(0)
            feats = split.features(probe)
            if feats.shape[1] != split.dim:
                raise NoFeatureSplit(f"defense {name!r}: features have {feats.shape[1]} values, the readout takes "
                                     f"{split.dim}")
            rebuilt = split.readout(feats)
        if rebuilt.shape != ref.shape or not torch.allclose(rebuilt, ref, rtol=1e-4, atol=1e-4 * (1 + ref.abs().max())):
            raise NoFeatureSplit(f"defense {name!r}: {how} is not the classifier's final operation (its output "
                                 f"differs from the classifier's logits), so replacing it would change more than "
                                 f"the readout; declare Defense(features=..., readout=...)")
        return split

    def features(self, h: torch.Tensor) -> torch.Tensor:
        if self._features is not None:
            return self._features(h).flatten(1)
        box: list[torch.Tensor] = []

        def grab(mod, inputs, out):
            box.append(inputs[0])

        handle = self.readout.register_forward_hook(grab)
        try:
            self.defense.classifier(h)
        finally:
            handle.remove()
        return box[-1].flatten(1)

    def with_readout(self, linear: nn.Module) -> nn.Module:
        return _ReadoutSwapped(self.defense.classifier, self.readout, linear, self._features)


class _ReadoutSwapped(nn.Module):
    """The classifier with its readout replaced by ``linear`` (differentiable end to end)."""

    def __init__(self, classifier: nn.Module, readout: nn.Linear, linear: nn.Module, features: nn.Module | None):
        super().__init__()
        self.classifier, self.linear, self.features = classifier, linear, features
        self._readout = [readout]  # not registered: it is part of classifier

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.features is not None:
            return self.linear(self.features(h).flatten(1))
        handle = self._readout[0].register_forward_hook(lambda mod, inputs, out: self.linear(inputs[0]))
        try:
            return self.classifier(h)
        finally:
            handle.remove()


class _BPDAFunction(torch.autograd.Function):
    """Forward: ``exact(x)``. Backward: the vector-Jacobian product of ``stand_in`` at x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, exact: nn.Module, stand_in: nn.Module) -> torch.Tensor:
        ctx.stand_in = stand_in
        ctx.save_for_backward(x)
        with torch.no_grad():
            return exact(x.clone())  # a preprocess that works in place must not change the saved input

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
        x = x.clone()  # as Defense.__call__: a forward that works in place changes a copy (each EOT pass its own)
        if self.preprocess is None:
            h = x
        elif self.stand_in_module is not None and torch.is_grad_enabled() and x.requires_grad:
            if getattr(self.stand_in_module, "exact_forward", False) is True:
                h = self.stand_in_module(x)  # its value is the exact preprocess's: one forward + backward
            else:
                h = bpda_apply(x, self.preprocess, self.stand_in_module)
        else:
            h = self.preprocess(x)
        return self.classifier(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._once(x) if self.eot == 1 else torch.stack([self._once(x) for _ in range(self.eot)]).mean(0)
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dtype != torch.float32:
            out = out.float()  # float64 / float16 / bfloat16 logits: attacks and their losses work in float32
        return out
