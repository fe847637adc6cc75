"""A zoo of defense archetypes from the literature, written as a naive author would ship them.

Every archetype wraps the reference Madry PGD-AT ResNet-32 (``shared/reference``), so the
truth about each is known: none adds robustness that a tailored attack cannot remove, and
most of them hide the classifier's gradients from a plain attack. They exist to test
``scbench audit`` (``tests/test_audit.py``, ``benchmarks/bench_audit.py``) and to show what
it reports. Each factory returns a :class:`robust_bench_sc.defense.Defense`; they are
registered under ``archetype_*`` names (``pyproject.toml``) and are usable as
``defenses.archetypes:NAME`` references without installation.

| factory | what it is | reference | what a plain attack sees |
|---|---|---|---|
| :func:`random_resize_pad` | random nearest-neighbour resize to r ∈ [32, 36) and random zero padding to 36 × 36, one draw per call, ``randomised=True`` declared | Xie et al. 2018, "Mitigating adversarial effects through randomization" (ICLR); broken by EOT in Athalye et al. 2018 | gradients of one random draw |
| :func:`random_resize_pad_undeclared` | the same, but the author forgot to declare ``randomised`` | idem | idem, and a harness that believes the declaration |
| :func:`gaussian_noise` | Gaussian input noise σ = 0.03 per image and call, declared randomised | noise defenses in Athalye et al. 2018 §5; Tramèr et al. 2020 | noisy gradients |
| :func:`quantised_classifier` | coarse quantisation (16 levels) by a NumPy round trip *inside the classifier* (no separate preprocess, nothing declared): the autograd graph is broken | thermometer / JPEG-style input transforms (Buckman et al. 2018, Guo et al. 2018), broken by BPDA in Athalye et al. 2018 | no input gradient at all |
| :func:`saturated_logits` | the logits ×10⁴ (folded into the last linear layer): softmax is one-hot, the cross-entropy gradient underflows | Carlini & Wagner 2017 (defensive distillation's temperature); Tramèr et al. 2020 | zero CE gradients |
| :func:`median_filter` | a 3 × 3 median filter as a *differentiable* preprocess (torch.median selects one input per output, so exact gradients exist) | median smoothing, Xu et al. 2018 (feature squeezing) | exact gradients; an identity BPDA stand-in is weaker |
| :func:`detached_logits` | the logits ``.detach()``-ed at the classifier's output (predictions unchanged) | a broken-graph bug rather than a defense; the plain cause of "element 0 of tensors does not require grad" | no input gradient at all; a backend that asks for one raises |
| :func:`madry` | the honest control: the Madry ResNet-32 alone | Madry et al. 2018 | honest gradients |
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when a model is built, not for `scbench --help`
    from robust_bench_sc.defense import Defense

MADRY_FILE = "resnet32_madry_pgd_at.pt"
RESIZE_MAX = 36          # Xie et al.: resize to [299, 331), pad to 331; scaled to CIFAR-10's 32 pixels
NOISE_SIGMA = 0.03
QUANTISE_LEVELS = 16
SATURATION = 1e4
MEDIAN_WINDOW = 3


def _madry_net(checkpoint: str | None = None):
    from robust_bench_sc.models.resnet import load_resnet32
    from robust_bench_sc.paths import reference_dir

    return load_resnet32(checkpoint or reference_dir() / MADRY_FILE)


def _random_resize_pad_module():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class RandomResizePad(nn.Module):
        """Xie et al. 2018: resize (nearest neighbour) to a random r in [32, RESIZE_MAX), then
        zero-pad to RESIZE_MAX at a random offset; one draw for the whole batch per call, from
        torch's global generator (as a naive author writes it; seeded runs repeat)."""

        def __init__(self, size_max: int = RESIZE_MAX):
            super().__init__()
            self.size_max = size_max

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n_in = x.shape[-1]
            r = int(torch.randint(n_in, self.size_max, (1,)))
            h = F.interpolate(x, size=(r, r), mode="nearest")
            room = self.size_max - r
            left = int(torch.randint(0, room + 1, (1,)))
            top = int(torch.randint(0, room + 1, (1,)))
            return F.pad(h, (left, room - left, top, room - top), value=0.0)

    return RandomResizePad()


def random_resize_pad(checkpoint: str | None = None) -> "Defense":
    """Random resize + pad in front of Madry's ResNet-32, declared randomised (Xie et al. 2018)."""
    from robust_bench_sc.defense import Capabilities, Defense

    return Defense(name="archetype_random_resize_pad", classifier=_madry_net(checkpoint),
                   preprocess=_random_resize_pad_module(),
                   capabilities=Capabilities(differentiable=True, randomised=True),
                   description="archetype: random resize to [32, 36) + random pad to 36 (Xie et al. 2018) in front "
                               "of Madry's ResNet-32, declared randomised")


def random_resize_pad_undeclared(checkpoint: str | None = None) -> "Defense":
    """The same as :func:`random_resize_pad`, with ``randomised`` left at its default (False)."""
    from robust_bench_sc.defense import Capabilities, Defense

    return Defense(name="archetype_random_resize_pad_undeclared", classifier=_madry_net(checkpoint),
                   preprocess=_random_resize_pad_module(), capabilities=Capabilities(),
                   description="archetype: random resize + pad (Xie et al. 2018) in front of Madry's ResNet-32, "
                               "randomness NOT declared")


def gaussian_noise(checkpoint: str | None = None, sigma: float = NOISE_SIGMA) -> "Defense":
    """Gaussian noise (σ per pixel, fresh per image and call) added to the input, clipped to
    [0, 1], in front of Madry's ResNet-32; declared randomised."""
    import torch
    from torch import nn

    from robust_bench_sc.defense import Capabilities, Defense

    class GaussianNoise(nn.Module):
        def __init__(self, sigma: float):
            super().__init__()
            self.sigma = float(sigma)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x + self.sigma * torch.randn_like(x)).clamp(0.0, 1.0)

    return Defense(name="archetype_gaussian_noise", classifier=_madry_net(checkpoint), preprocess=GaussianNoise(sigma),
                   capabilities=Capabilities(differentiable=True, randomised=True),
                   description=f"archetype: Gaussian input noise σ={sigma:g} in front of Madry's ResNet-32, declared "
                               "randomised")


def quantised_classifier(checkpoint: str | None = None, levels: int = QUANTISE_LEVELS) -> "Defense":
    """Madry's ResNet-32 behind a quantisation to ``levels`` grey levels computed in NumPy,
    inside the classifier: nothing is declared, and the autograd graph is broken there (no
    input gradient exists; BPDA identity is the right stand-in, Athalye et al. 2018)."""
    import numpy as np
    import torch
    from torch import nn

    from robust_bench_sc.defense import Defense

    class NumpyQuantise(nn.Module):
        def __init__(self, levels: int):
            super().__init__()
            self.levels = int(levels)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            arr = x.detach().cpu().numpy()
            q = np.round(arr * (self.levels - 1)) / (self.levels - 1)
            return torch.from_numpy(q.astype(arr.dtype)).to(x.device)

    classifier = nn.Sequential(NumpyQuantise(levels), _madry_net(checkpoint))
    return Defense(name="archetype_quantised_classifier", classifier=classifier,
                   description=f"archetype: {levels}-level quantisation by a NumPy round trip inside the classifier "
                               "(graph broken, nothing declared) + Madry's ResNet-32")


def saturated_logits(checkpoint: str | None = None, scale: float = SATURATION) -> "Defense":
    """Madry's ResNet-32 with its last linear layer multiplied by ``scale``: the same
    predictions, a one-hot softmax (the cross-entropy gradient underflows to zero)."""
    import torch

    from robust_bench_sc.defense import Defense

    net = copy.deepcopy(_madry_net(checkpoint))
    with torch.no_grad():
        net.linear.weight.mul_(scale)
        net.linear.bias.mul_(scale)
    return Defense(name="archetype_saturated_logits", classifier=net,
                   description=f"archetype: Madry's ResNet-32 with logits ×{scale:g} folded into the last layer")


def median_filter(checkpoint: str | None = None, window: int = MEDIAN_WINDOW) -> "Defense":
    """A ``window`` × ``window`` median filter (reflect padding) as a differentiable preprocess
    (gradients flow to each output's median input) in front of Madry's ResNet-32."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from robust_bench_sc.defense import Capabilities, Defense

    class MedianFilter(nn.Module):
        def __init__(self, window: int):
            super().__init__()
            self.window = int(window)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            k = self.window
            n, c, h, w = x.shape
            padded = F.pad(x, (k // 2, k // 2, k // 2, k // 2), mode="reflect")
            patches = padded.unfold(2, k, 1).unfold(3, k, 1)  # n, c, h, w, k, k
            return patches.reshape(n, c, h, w, k * k).median(dim=-1).values

    return Defense(name="archetype_median_filter", classifier=_madry_net(checkpoint), preprocess=MedianFilter(window),
                   capabilities=Capabilities(differentiable=True),
                   description=f"archetype: {window}×{window} median filter (differentiable) in front of Madry's "
                               "ResNet-32")


def detached_logits(checkpoint: str | None = None) -> "Defense":
    """Madry's ResNet-32 with its logits detached from the autograd graph: the same
    predictions, no input gradient (a gradient attack's loss has none to follow; a backend
    that calls ``backward`` raises). tests/test_adapt.py and tests/test_attack_errors.py run it."""
    import torch
    from torch import nn

    from robust_bench_sc.defense import Defense

    class Detached(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x).detach()

    return Defense(name="archetype_detached_logits", classifier=Detached(_madry_net(checkpoint)),
                   description="archetype: Madry's ResNet-32 with its logits detached (no input gradient)")


def madry(checkpoint: str | None = None) -> "Defense":
    """The honest control: Madry's PGD-AT ResNet-32 alone."""
    from robust_bench_sc.defense import Defense

    return Defense(name="archetype_madry", classifier=_madry_net(checkpoint),
                   description="archetype: the honest control, Madry's PGD-AT ResNet-32 (reference checkpoint)")


ARCHETYPES = ("random_resize_pad", "random_resize_pad_undeclared", "gaussian_noise", "quantised_classifier",
              "saturated_logits", "median_filter", "detached_logits", "madry")
