"""The perturbation norms ℓ∞, ℓ2, ℓ1: one :class:`Norm` object each, looked up by the name
threat models use (``Norm.of("linf")``).

A norm measures per-sample perturbations (what the records store and the budget checks
compare), moves a perturbation one step along its steepest-ascent direction, projects onto
its ε-ball, draws a random start inside the ball (and a random point on its sphere), and names itself for tables, plots and
the toolkits. Every operation is the expression the attacks used before this module
existed, in the same floating-point order, so committed PGD records reproduce bit for bit.

Two per-sample sizes exist on purpose: :meth:`Norm.measure` is the records' formula
(``abs().sum()`` for ℓ1) and :meth:`Norm.size` torch's p-norm, which the PGD step has
always used (on CPU it accumulates ℓ1 in double); they agree to float rounding, not bitwise.
This module imports nothing of ours.
"""

from __future__ import annotations

import math

import torch

TINY = 1e-12  # keeps a zero gradient or perturbation from dividing by zero


class Norm:
    """One ℓp norm over a flattened image (a batch's first dimension is the sample)."""

    name: str = ""        # as threat models spell it: linf, l2, l1
    p: float = math.nan   # its p (math.inf for ℓ∞; 2 and 1 as ints, as ART and torch were given them)
    label: str = ""       # for tables and plots: ℓ∞
    tex: str = ""         # for LaTeX tables: \ell_\infty
    toolkit: str = ""     # torchattacks' and pyautoattack's spelling: Linf
    pixel_grid: bool = False  # budgets read as k/255 (ℓ∞ on 8-bit images)

    @staticmethod
    def of(name: str) -> Norm:
        """The norm named ``name``; an unknown name is a one-line error listing the allowed ones."""
        norm = NORMS.get(name) if isinstance(name, str) else None
        if norm is None:
            raise ValueError(f"unknown norm {name!r}; allowed: {', '.join(NORMS)}")
        return norm

    @staticmethod
    def get(name: object) -> Norm | None:
        """The norm named ``name``, or None (a report of an old run may have none)."""
        return NORMS.get(name) if isinstance(name, str) else None

    def measure(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample norm of a batch of perturbations, shape (n,): the value records store."""
        raise NotImplementedError

    def size(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample p-norm, shaped (n, 1, ..., 1) to scale a batch shaped like ``t``."""
        return t.flatten(1).norm(p=self.p, dim=1).view(-1, *([1] * (t.dim() - 1)))

    def ascent_step(self, delta: torch.Tensor, grad: torch.Tensor, step: float) -> torch.Tensor:
        """``delta`` moved by ``step`` along the steepest-ascent direction of ``grad`` in this
        norm (unit length in it): sign(grad) for ℓ∞, grad / ‖grad‖ for ℓ2 and for ℓ1 (the
        paper's dense ℓ1 step, eq. 1)."""
        return delta + step * grad / (self.size(grad) + TINY)

    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        """Euclidean projection of each perturbation onto the ε-ball of this norm."""
        raise NotImplementedError

    def random_start(self, x: torch.Tensor, eps: float, g: torch.Generator) -> torch.Tensor:
        """A random perturbation inside the ε-ball, shaped like ``x``, drawn on the CPU from ``g``."""
        raise NotImplementedError

    def on_sphere(self, x: torch.Tensor, eps: float, g: torch.Generator) -> torch.Tensor:
        """A random perturbation of norm exactly ε for the single image ``x`` (any shape), drawn
        on the CPU from ``g``: a vertex of the cube for ℓ∞, a uniform direction for ℓ2, a
        normalised Laplace direction for ℓ1 (the binarization test's planted point)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"Norm.of({self.name!r})"


class _Linf(Norm):
    name, p, label, tex, toolkit, pixel_grid = "linf", math.inf, "ℓ∞", r"\ell_\infty", "Linf", True

    def measure(self, delta):
        return delta.flatten(1).abs().max(1).values

    def ascent_step(self, delta, grad, step):
        return delta + step * grad.sign()

    def project(self, delta, eps):
        return delta.clamp(-eps, eps)

    def random_start(self, x, eps, g):
        """Uniform in the ε-cube."""
        return ((torch.rand(x.shape, generator=g) * 2 - 1) * eps).to(x.device, x.dtype)

    def on_sphere(self, x, eps, g):
        return ((torch.randint(0, 2, x.shape, generator=g).float() * 2 - 1) * eps).to(x.device, x.dtype)


class _L2(Norm):
    name, p, label, tex, toolkit = "l2", 2, "ℓ2", r"\ell_2", "L2"

    def measure(self, delta):
        return delta.flatten(1).norm(dim=1)

    def project(self, delta, eps):
        return delta * torch.clamp(eps / (self.size(delta) + TINY), max=1.0)

    def random_start(self, x, eps, g):
        """Uniform in the ε-ball: a uniform direction at radius ε·U^(1/d)."""
        b, d = x.shape[0], x[0].numel()
        u = torch.randn(b, d, generator=g)
        u = u / u.norm(dim=1, keepdim=True)
        r = torch.rand(b, 1, generator=g) ** (1.0 / d)
        return (u * r * eps).view_as(x).to(x.device, x.dtype)

    def on_sphere(self, x, eps, g):
        u = torch.randn(x.numel(), generator=g)
        return (eps * u / u.norm()).view_as(x).to(x.device, x.dtype)


class _L1(Norm):
    name, p, label, tex, toolkit = "l1", 1, "ℓ1", r"\ell_1", "L1"

    def measure(self, delta):
        return delta.flatten(1).abs().sum(1)

    def project(self, delta, eps):
        return project_l1(delta, eps)

    def random_start(self, x, eps, g):
        """Uniform in the ε-ball: the first d of a Dirichlet(1, ..., 1) over d+1, random signs."""
        b, d = x.shape[0], x[0].numel()
        e = -torch.log(torch.rand(b, d + 1, generator=g).clamp_min(1e-20))
        w = (e / e.sum(1, keepdim=True))[:, :d]
        sign = torch.randint(0, 2, (b, d), generator=g) * 2 - 1
        return (w * sign * eps).view_as(x).to(x.device, x.dtype)

    def on_sphere(self, x, eps, g):
        d = x.numel()
        u = -torch.log(torch.rand(d, generator=g).clamp_min(1e-12)) * (torch.randint(0, 2, (d,), generator=g) * 2 - 1)
        return (eps * u / u.abs().sum()).view_as(x).to(x.device, x.dtype)


def project_l1(v: torch.Tensor, eps: float, lo: torch.Tensor | None = None, hi: torch.Tensor | None = None,
               iters: int = 60) -> torch.Tensor:
    """Exact Euclidean projection of perturbations ``v`` onto {‖d‖₁ ≤ ε} (∩ {lo ≤ d ≤ hi}
    elementwise when ``lo`` and ``hi`` are given: the image box is lo = −x, hi = 1 − x).

    The problem is separable given the multiplier λ: d = clip(soft(v, λ), lo, hi), with
    λ ≥ 0 the smallest value whose ℓ1 norm is ≤ ε (bisection; the feasible end is returned).
    """
    shape = v.shape
    vf = v.flatten(1)
    box = None if lo is None or hi is None else (lo.flatten(1), hi.flatten(1))

    def shrink(lam):
        s = torch.sign(vf) * torch.clamp(vf.abs() - lam, min=0.0)
        return s if box is None else torch.clamp(s, box[0], box[1])

    d0 = shrink(torch.zeros(vf.shape[0], 1, dtype=v.dtype, device=v.device))
    need = d0.abs().sum(1) > eps
    if not need.any():
        return d0.view(shape)
    lam_lo = torch.zeros(vf.shape[0], 1, dtype=v.dtype, device=v.device)
    lam_hi = vf.abs().max(1, keepdim=True).values
    for _ in range(iters):
        mid = (lam_lo + lam_hi) / 2
        over = shrink(mid).abs().sum(1, keepdim=True) > eps
        lam_lo = torch.where(over, mid, lam_lo)
        lam_hi = torch.where(over, lam_hi, mid)
    d = torch.where(need[:, None], shrink(lam_hi), d0)
    return d.view(shape)


LINF, L2, L1 = _Linf(), _L2(), _L1()
NORMS: dict[str, Norm] = {n.name: n for n in (LINF, L2, L1)}

__all__ = ["Norm", "NORMS", "LINF", "L2", "L1", "TINY", "project_l1"]
