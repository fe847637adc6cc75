"""Paper figures 1a and 3 (matplotlib, PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported on use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: str | Path) -> Path:
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=130)
    _pyplot().close(fig)
    return out_png


def fig1a(out_png: str | Path, n_images: int = 100) -> Path:
    """Histogram of encoder coefficients (dictionary projections) vs the first-layer outputs of a
    standard CNN (the natural ResNet-32's conv1 on the same images). Each patch's (spatial
    position's) coefficients are divided by that patch's largest |coefficient|, so the plot shows
    how many coefficients of a typical patch are small (sparse) versus comparable to the largest."""
    plt = _pyplot()
    import torch.nn.functional as F

    from defenses.sparse_coding.frontend import load_dictionary
    from robust_bench_sc.data import describe_subset, load_test
    from robust_bench_sc.models.resnet import load_resnet32
    from robust_bench_sc.paths import reference_dir

    x = load_test(n_images).x
    with torch.no_grad():
        ours = F.conv2d(x, load_dictionary(), stride=2)
        cnn = load_resnet32(reference_dir() / "resnet32_natural.pt")
        first = cnn.conv1((x - cnn.mean) / cnn.std)
        ours = (ours / ours.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)).flatten()
        first = (first / first.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)).flatten()
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(-1, 1, 101)
    for v, label in ((ours, "sparse-coding encoder (dictionary projections)"),
                     (first, "first layer of a standard CNN (natural ResNet-32 conv1)")):
        v = v.numpy()
        ax.hist(v, bins=bins, density=True, histtype="step", linewidth=1.5, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("coefficient / largest |coefficient| of the same patch")
    ax.set_ylabel("density (log)")
    ax.set_title(f"Fig. 1a: coefficient distributions ({describe_subset(n_images)})", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out_png)


def fig3(out_png: str | Path, steepness=(2.0, 4.0, 8.0, 32.0)) -> Path:
    """The ternary activation and its smooth backward-pass approximations (axes divided by ||d||_1)."""
    plt = _pyplot()

    from defenses.sparse_coding.frontend import BETA, EPSILON, smooth_ternary, ternary

    u = torch.linspace(-0.6, 0.6, 2001)
    one = torch.ones_like(u)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(u, ternary(u, one, BETA, EPSILON), color="k", linewidth=2, label="Activation")
    for s in steepness:
        ax.plot(u, smooth_ternary(u, one, BETA, EPSILON, s), linewidth=1.2, label=f"steepness={s}")
    ax.set_xlabel(r"$\hat{x}_{ij}(l)\,/\,\|d_l\|_1$")
    ax.set_ylabel(r"$\bar{x}_{ij}(l)\,/\,\|d_l\|_1$")
    ax.set_title(rf"Fig. 3: activation (threshold $\beta\epsilon$ = {BETA * EPSILON:.3f}) and smooth approximations",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out_png)


def make_figures(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [fig1a(out / "fig1a_coefficient_histogram.png"), fig3(out / "fig3_activation_backward.png")]
