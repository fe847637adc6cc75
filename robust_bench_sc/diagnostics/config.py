"""Every budget and threshold of ``scbench diagnose`` (documented in ``docs/diagnostics.md``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from robust_bench_sc.norms import Norm
from robust_bench_sc.threat_models import RandomSearchThreat, SquareThreat

# the norms the plain evaluation may use: those of the gradient-free check (Square)
NORMS: tuple[str, ...] = SquareThreat.allowed_norms()
# the gradient-free check: auto (Square via pyautoattack, else random search), square, random_search, none
GRADIENT_FREE: tuple[str, ...] = ("auto", "square", "random_search", "none")


@dataclass
class DiagnosticsConfig:
    """Every budget and threshold of ``scbench diagnose`` (all are CLI options)."""

    n_images: int = 50
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 100
    norm: str = "linf"
    epsilon: float = 8 / 255
    # the plain evaluation being diagnosed (native PGD, exact gradients)
    steps: int = 20
    restarts: int = 1
    step_size: str = "epsilon/4"
    # BPDA stand-in to compare with / to propose (None: the defense's default, else identity)
    bpda: str | None = None
    eot: int = 5  # EOT passes for randomised defenses
    # Carlini et al.: ε sweep (multiples of ε) and a stronger attack
    eps_factors: tuple[float, ...] = (0.5, 2.0)
    sweep_steps: int = 10
    strong_steps: int = 40
    strong_restarts: int = 1
    # Pintor et al.: unconstrained attack, noise draws
    unconstrained_steps: int = 5
    noise_draws: int = 10
    noise_radius: float | None = None  # default ε/10
    # AutoAttack: forward passes for the randomness check; gradient-free attack budget
    random_passes: int = 5
    gradient_free: str = "auto"  # one of GRADIENT_FREE
    queries: int = 100
    # thresholds (fractions of the N images unless said otherwise)
    fail_gain: float = 0.10  # another attack fools ≥ this share of the images the plain attack missed → fail
    warn_gain: float = 0.04
    min_gain_images: int = 2  # ... and at least this many images
    silent_fail: float = 0.05
    incomplete_tail: float = 0.05  # loss gain in the last quarter / total loss gain
    incomplete_fail: float = 0.25  # share of unfooled samples still improving → fail
    unstable_rel: float = 0.10  # |Δmargin| / max(|margin|, 1) under noise
    unstable_fail: float = 0.10
    gradient_fail: float = 0.10  # share of images with a zero / NaN / Inf gradient → fail
    unconstrained_fail: float = 0.10  # robust accuracy at ε = whole range above chance → fail
    transfer_fail: float = 0.50  # share of surrogate successes that do not transfer → fail
    transfer_warn: float = 0.20
    monotone_tol: int = 1  # images of slack before a non-monotone ε curve fails
    skip: tuple[str, ...] = ()
    # the images: a dataset plug-in (robust_bench_sc.datasets; None: cifar10_npz) and its folder or file
    # (None: $SCBENCH_DATA, else shared/data/cifar10), the first n_images of its split (None: test)
    dataset: str | None = None
    split: str | None = None
    data_dir: str | None = None
    probe_timeout: float | None = None  # seconds per probe (None: scaled from one forward pass; probes.py)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a report records them (``diagnostics.json``'s ``config``); ``split`` only
        when given, so a report on the default split reads as it did before splits were an option."""
        return {k: v for k, v in asdict(self).items() if not (k == "split" and v is None)}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """One-line ValueError for a norm or gradient-free check diagnose cannot run (also
        called by ``diagnose``, after any change of the fields)."""
        if self.norm not in NORMS:
            raise ValueError(f"diagnostics norm {self.norm!r}: the plain evaluation is one of {', '.join(NORMS)}")
        if self.gradient_free not in GRADIENT_FREE:
            raise ValueError(f"diagnostics gradient_free {self.gradient_free!r}: one of {', '.join(GRADIENT_FREE)}")
        if self.gradient_free == "random_search" and self.norm not in RandomSearchThreat.allowed_norms():
            raise ValueError(f"diagnostics gradient_free 'random_search' is {', '.join(RandomSearchThreat.allowed_norms())} "
                             f"only, the norm is {self.norm!r}; use square")

    @property
    def radius(self) -> float:
        return self.noise_radius if self.noise_radius is not None else self.epsilon / 10

    @property
    def whole_range(self) -> float:
        """ε covering the whole [0, 1] input box: the norm of the all-ones perturbation."""
        return float(Norm.of(self.norm).measure(torch.ones(1, 3, 32, 32, dtype=torch.float64))[0])
