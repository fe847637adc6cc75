"""The Norm objects against straightforward torch formulas, on random tensors."""

from __future__ import annotations

import math

import pytest
import torch

from robust_bench_sc.norms import L1, L2, LINF, NORMS, Norm, project_l1

torch.set_num_threads(1)


def _batch(seed: int, shape=(6, 3, 4, 5), scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def _ref_norm(d: torch.Tensor, p: float) -> torch.Tensor:
    a = d.reshape(d.shape[0], -1).abs()
    if p == math.inf:
        return a.max(dim=1).values
    return (a ** p).sum(dim=1) ** (1.0 / p)


def _ref_project_l1(v: torch.Tensor, eps: float) -> torch.Tensor:
    """Projection onto the ℓ1 ball by sorting (Duchi et al. 2008), one sample at a time."""
    out = []
    for row in v.reshape(v.shape[0], -1):
        if row.abs().sum() <= eps:
            out.append(row.clone())
            continue
        u = row.abs().sort(descending=True).values
        css = u.cumsum(0)
        k = torch.arange(1, u.numel() + 1, dtype=u.dtype)
        rho = int((u - (css - eps) / k > 0).nonzero().max())
        theta = (css[rho] - eps) / (rho + 1)
        out.append(torch.sign(row) * (row.abs() - theta).clamp_min(0))
    return torch.stack(out).view_as(v)


def test_lookup_and_names():
    assert [Norm.of(n) for n in ("linf", "l2", "l1")] == [LINF, L2, L1]
    assert list(NORMS) == ["linf", "l2", "l1"]
    assert (LINF.p, L2.p, L1.p) == (math.inf, 2, 1)
    assert (LINF.toolkit, L2.toolkit, L1.toolkit) == ("Linf", "L2", "L1")
    assert (LINF.label, L2.label, L1.label) == ("ℓ∞", "ℓ2", "ℓ1")
    assert [n.pixel_grid for n in NORMS.values()] == [True, False, False]
    assert Norm.get("l0") is None and Norm.get(float("nan")) is None and Norm.get("l2") is L2
    with pytest.raises(ValueError, match=r"^unknown norm 'Linf'; allowed: linf, l2, l1$"):
        Norm.of("Linf")


@pytest.mark.parametrize("name", ["linf", "l2", "l1"])
def test_measure_and_size_match_the_formula(name):
    norm = Norm.of(name)
    d = _batch(1)
    d[2] = 0.0  # a zero perturbation measures 0
    ref = _ref_norm(d, norm.p)
    assert norm.measure(d).shape == (6,)
    torch.testing.assert_close(norm.measure(d), ref, rtol=1e-12, atol=0)
    assert norm.size(d).shape == (6, 1, 1, 1)
    torch.testing.assert_close(norm.size(d).flatten(), ref, rtol=1e-12, atol=0)
    assert float(norm.measure(d)[2]) == 0.0
    # measure is per sample: it does not mix samples and takes any trailing shape
    torch.testing.assert_close(norm.measure(d.flatten(1)), ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(norm.measure(d[3:4]), ref[3:4], rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["linf", "l2", "l1"])
def test_ascent_step_is_a_unit_steepest_ascent_move(name):
    norm = Norm.of(name)
    delta, grad = _batch(2, scale=0.1), _batch(3)
    step = 0.05
    moved = norm.ascent_step(delta, grad, step)
    if norm is LINF:
        ref = delta + step * torch.sign(grad)
    else:
        ref = delta + step * grad / _ref_norm(grad, norm.p).view(-1, 1, 1, 1)
    torch.testing.assert_close(moved, ref, rtol=1e-10, atol=1e-12)
    # the move has length `step` in its own norm, and a first-order gain of step·‖grad‖_dual
    torch.testing.assert_close(norm.measure(moved - delta), torch.full((6,), step, dtype=torch.float64))
    dual = {math.inf: 1, 2: 2, 1: math.inf}[norm.p]
    gain = ((moved - delta) * grad).flatten(1).sum(1)
    if norm is not L1:  # the dense ℓ1 step is the paper's eq. 1, not the ℓ1-steepest direction
        torch.testing.assert_close(gain, step * _ref_norm(grad, dual))
    # a zero gradient does not move (and does not divide by zero)
    zero = torch.zeros_like(grad)
    assert torch.equal(norm.ascent_step(delta, zero, step), delta)


@pytest.mark.parametrize("name,eps", [("linf", 0.3), ("l2", 1.5), ("l1", 4.0)])
def test_project_matches_the_formula(name, eps):
    norm = Norm.of(name)
    v = _batch(4)
    v[0] *= 1e-3  # inside the ball: unchanged
    out = norm.project(v, eps)
    if norm is LINF:
        ref = torch.clamp(v, -eps, eps)
    elif norm is L2:
        r = _ref_norm(v, 2).view(-1, 1, 1, 1)
        ref = torch.where(r > eps, v * eps / r, v)
    else:
        ref = _ref_project_l1(v, eps)
    torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-9)
    assert bool((norm.measure(out) <= eps * (1 + 1e-9)).all())
    assert torch.equal(out[0], v[0]) if norm is not L2 else torch.allclose(out[0], v[0], rtol=1e-12)
    outside = _ref_norm(v, norm.p) > eps
    assert outside[1:].all()  # the random batch is outside each ball: the test projects
    torch.testing.assert_close(norm.measure(out)[outside], torch.full((int(outside.sum()),), eps, dtype=v.dtype))
    torch.testing.assert_close(norm.project(out, eps), out, rtol=1e-7, atol=1e-9)  # idempotent


def test_l1_projection_with_a_box():
    x = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    v = _batch(6, shape=x.shape)
    d = project_l1(v, 3.0, -x, 1.0 - x)
    assert bool(((x + d) >= 0).all() and ((x + d) <= 1).all())
    assert bool((L1.measure(d) <= 3.0 + 1e-9).all())
    # optimal: no feasible point along a random feasible direction is closer to v
    for seed in range(5):
        e = _batch(10 + seed, shape=x.shape) * 1e-3
        cand = project_l1(d + e, 3.0, -x, 1.0 - x)
        assert bool(((cand - v).flatten(1).norm(dim=1) >= (d - v).flatten(1).norm(dim=1) - 1e-9).all())


@pytest.mark.parametrize("name,eps", [("linf", 8 / 255), ("l2", 0.5), ("l1", 2.0)])
def test_random_start_is_uniform_in_the_ball(name, eps):
    norm = Norm.of(name)
    x = torch.zeros(20000, 1, 1, 2)  # d = 2: the share inside the ball of radius ε/2 is 1/4
    a = norm.random_start(x, eps, torch.Generator().manual_seed(0))
    b = norm.random_start(x, eps, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    r = norm.measure(a.double())
    assert bool((r <= eps * (1 + 1e-6)).all())
    share = float((r <= eps / 2).double().mean())
    assert abs(share - 0.25) < 0.015, share
    # the direction is symmetric: every coordinate has mean ≈ 0
    assert float(a.mean(0).abs().max()) < 0.02 * eps


@pytest.mark.parametrize("name,eps", [("linf", 8 / 255), ("l2", 0.5), ("l1", 12.0)])
def test_on_sphere_draws_a_point_at_norm_epsilon(name, eps):
    norm = Norm.of(name)
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    a = norm.on_sphere(x, eps, torch.Generator().manual_seed(4))
    b = norm.on_sphere(x, eps, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert not torch.equal(a, norm.on_sphere(x, eps, torch.Generator().manual_seed(5)))
    assert abs(float(norm.measure(a[None].double())[0]) - eps) <= 1e-5 * eps
    if norm is LINF:  # a vertex of the cube: every coordinate is ±ε
        assert bool((a.abs() == torch.tensor(eps, dtype=a.dtype)).all())
        assert 0.45 < float((a > 0).float().mean()) < 0.55
    # dense and symmetric over draws: on a 2-pixel image, each quadrant gets a quarter
    g = torch.Generator().manual_seed(0)
    pts = torch.stack([norm.on_sphere(torch.zeros(1, 1, 2), eps, g).flatten() for _ in range(4000)])
    quadrant = (pts[:, 0] > 0).long() * 2 + (pts[:, 1] > 0).long()
    shares = torch.bincount(quadrant, minlength=4).double() / len(pts)
    assert float((shares - 0.25).abs().max()) < 0.03, shares
    r = norm.measure(pts.double())
    torch.testing.assert_close(r, torch.full_like(r, eps), rtol=1e-5, atol=0)
