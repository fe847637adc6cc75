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
| :func:`softmax_output` | Madry's ResNet-32 with a softmax at its output: the "logits" are probabilities | a common mistake (Carlini & Wagner 2017 §V, "on the softmax output"; Carlini et al. 2019 §4.4) | CE on probabilities: a loss bounded in [log(1 + 9/e), log(1 + 9e)] whose gradient vanishes where the softmax saturates |
| :func:`majority_vote_smoothing` | randomized smoothing's prediction as a naive author ships it: ``n`` Gaussian-noised copies (σ = 0.04, fresh per call), the output is the vote counts | Cohen, Rosenfeld, Kolter 2019 (PREDICT); attacked with EOT on the smoothed soft classifier in Salman et al. 2019 | no input gradient (argmax votes), and randomised |
| :func:`stochastic_activation_pruning` | SAP: after each of the three residual stages, activations are sampled with probability ∝ their magnitude, the rest set to zero, the kept ones scaled by their inverse keep probability; fresh per image and call | Dhillon et al. 2018 (ICLR), broken by EOT in Athalye et al. 2018 §5.3.1 | gradients of one random pruning, inside the classifier; nothing declared |
| :func:`random_bit_depth` | bit-depth reduction to a random depth b ∈ {3, 4, 5} per call by ``torch.round``, as a declared preprocess, declared randomised (no BPDA stand-in declared) | Xu et al. 2018 (feature squeezing's bit-depth reduction) with the per-call randomness of Xie et al. 2018; BPDA + EOT in Athalye et al. 2018 | a zero gradient through the rounding, of one random depth |
| :func:`test_time_batchnorm` | every BatchNorm layer normalises with the statistics of the batch it is given (``track_running_stats=False``), in eval mode too | prediction-time BatchNorm / test-time adaptation, Schneider et al. 2020 ("Improving robustness against common corruptions by covariate shift adaptation"), Nado et al. 2020; transductive defenses, Croce et al. 2022 | exact gradients, but an image's prediction depends on its batch-mates |
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
VOTE_SIGMA = 0.04        # Cohen et al. train for σ ∈ {0.12, 0.25, 0.5}; Madry's net was not trained with noise
VOTE_SAMPLES = 8         # Cohen et al.'s PREDICT uses n = 100 000 (with an abstention test); a naive author a handful
BIT_DEPTHS = (3, 4, 5)   # Xu et al. 2018 squeeze CIFAR-10 to 5 bits; the random depth per call is the naive twist
SAP_SAMPLES = 1.0        # SAP draws this many × (activations per image) samples, with replacement (Dhillon et al.)


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


def softmax_output(checkpoint: str | None = None) -> "Defense":
    """Madry's ResNet-32 followed by a softmax inside the classifier: the defense returns
    probabilities where logits are expected (the same predictions). An attack's cross-entropy
    then applies a second softmax to values in [0, 1]: the loss is nearly flat, and its gradient
    through the first softmax vanishes where that one saturates (Carlini & Wagner 2017 §V on
    attacking the softmax output; Carlini et al. 2019 §4.4). The right loss is a margin on the
    log of the outputs (the logits up to a constant per image)."""
    from torch import nn

    from robust_bench_sc.defense import Defense

    return Defense(name="archetype_softmax_output", classifier=nn.Sequential(_madry_net(checkpoint), nn.Softmax(dim=1)),
                   description="archetype: Madry's ResNet-32 with a softmax at its output (probabilities, not logits)")


def majority_vote_smoothing(checkpoint: str | None = None, sigma: float = VOTE_SIGMA,
                            n_samples: int = VOTE_SAMPLES) -> "Defense":
    """Randomized smoothing's prediction (Cohen, Rosenfeld, Kolter 2019, "Certified adversarial
    robustness via randomized smoothing", PREDICT without the abstention test) as a naive author
    ships it: ``n_samples`` copies of each image with fresh Gaussian noise σ (clipped to [0, 1])
    through Madry's ResNet-32, and the output is the *vote counts* per class (float). Nothing is
    declared. The votes are an argmax, so no input gradient exists, and they change per call.
    The attack that works is EOT on the smoothed soft classifier (the base network's mean softmax
    under the same noise; Salman et al. 2019, "Provably robust deep learning via adversarially
    trained smoothed classifiers")."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from robust_bench_sc.defense import Defense

    class MajorityVote(nn.Module):
        def __init__(self, base: nn.Module, sigma: float, n_samples: int):
            super().__init__()
            self.base, self.sigma, self.n_samples = base, float(sigma), int(n_samples)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = x.shape[0]
            noisy = (x.repeat(self.n_samples, 1, 1, 1) + self.sigma * torch.randn(
                (self.n_samples * n, *x.shape[1:]), device=x.device, dtype=x.dtype)).clamp(0.0, 1.0)
            logits = self.base(noisy)
            votes = F.one_hot(logits.argmax(1), logits.shape[1]).view(self.n_samples, n, -1).sum(0)
            return votes.to(x.dtype)

    return Defense(name="archetype_majority_vote_smoothing",
                   classifier=MajorityVote(_madry_net(checkpoint), sigma, n_samples),
                   description=f"archetype: majority vote of Madry's ResNet-32 over {n_samples} Gaussian-noised copies "
                               f"(σ={sigma:g}; Cohen et al. 2019's PREDICT), vote counts out, nothing declared")


def stochastic_activation_pruning(checkpoint: str | None = None, samples: float = SAP_SAMPLES) -> "Defense":
    """Stochastic activation pruning (Dhillon et al. 2018, "Stochastic activation pruning for
    robust adversarial defense", ICLR) inside Madry's ResNet-32: after each of its three residual
    stages, per image, ``samples`` × (activations) draws with replacement, each activation drawn
    with probability |h| / Σ|h|; the drawn ones are kept and scaled by 1 / (1 − (1 − p)^draws),
    the others set to zero. Fresh per image and call, in eval mode too; nothing declared.
    Gradients exist (those of one random pruning): Athalye et al. 2018 §5.3.1 broke it with EOT."""
    import torch
    from torch import nn

    from robust_bench_sc.defense import Defense

    class StochasticActivationPruning(nn.Module):
        def __init__(self, samples: float):
            super().__init__()
            self.samples = float(samples)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            flat = h.flatten(1)
            mag = flat.detach().abs()
            total = mag.sum(1, keepdim=True)
            p = torch.where(total > 0, mag / total.clamp_min(1e-30), torch.full_like(mag, 1.0 / mag.shape[1]))
            draws = max(1, int(self.samples * flat.shape[1]))
            picked = torch.multinomial(p, draws, replacement=True)
            keep = torch.zeros_like(p).scatter_(1, picked, 1.0)
            scale = 1.0 / (1.0 - (1.0 - p) ** draws).clamp_min(1e-12)
            return (flat * keep * scale).view_as(h)

    net = copy.deepcopy(_madry_net(checkpoint))
    net.block1 = nn.Sequential(net.block1, StochasticActivationPruning(samples))
    net.block2 = nn.Sequential(net.block2, StochasticActivationPruning(samples))
    net.block3 = nn.Sequential(net.block3, StochasticActivationPruning(samples))
    return Defense(name="archetype_stochastic_activation_pruning", classifier=net,
                   description=f"archetype: stochastic activation pruning (Dhillon et al. 2018; {samples:g} × "
                               "activations drawn) after each residual stage of Madry's ResNet-32, nothing declared")


def random_bit_depth(checkpoint: str | None = None, depths: tuple[int, ...] = BIT_DEPTHS) -> "Defense":
    """Bit-depth reduction (Xu et al. 2018, "Feature squeezing: detecting adversarial examples
    in deep neural networks", NDSS) to a depth drawn from ``depths`` per call (one draw per
    batch, torch's global generator), by ``torch.round``, as a declared preprocess in front of
    Madry's ResNet-32; declared randomised, no BPDA stand-in declared. The rounding's gradient
    is zero almost everywhere: BPDA (the identity) with EOT over the depths is the attack
    (Athalye et al. 2018 §4.1, §4.2)."""
    import torch
    from torch import nn

    from robust_bench_sc.defense import Capabilities, Defense

    class RandomBitDepth(nn.Module):
        def __init__(self, depths: tuple[int, ...]):
            super().__init__()
            self.depths = tuple(int(d) for d in depths)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            levels = 2 ** self.depths[int(torch.randint(len(self.depths), (1,)))] - 1
            return torch.round(x * levels) / levels

    return Defense(name="archetype_random_bit_depth", classifier=_madry_net(checkpoint),
                   preprocess=RandomBitDepth(depths), capabilities=Capabilities(randomised=True),
                   description=f"archetype: bit-depth reduction to a random depth in {list(depths)} per call "
                               "(torch.round; Xu et al. 2018) in front of Madry's ResNet-32, declared randomised")


def test_time_batchnorm(checkpoint: str | None = None) -> "Defense":
    """Prediction-time BatchNorm (Schneider et al. 2020; Nado et al. 2020): every BatchNorm layer
    of Madry's ResNet-32 normalises with the statistics of the batch it is given
    (``track_running_stats=False``, so in eval mode too), as test-time adaptation to a shifted
    input distribution does. Deterministic and differentiable, but an image's prediction depends
    on the other images in its batch: a per-image robust accuracy is not defined by the defense
    alone (the batch-dependence probe)."""
    from torch import nn

    from robust_bench_sc.defense import Defense

    net = _madry_net(checkpoint)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None
    return Defense(name="archetype_test_time_batchnorm", classifier=net,
                   description="archetype: Madry's ResNet-32 whose BatchNorm layers use the statistics of the "
                               "batch they are given (prediction-time BN; Schneider et al. 2020): batch-dependent")


def madry(checkpoint: str | None = None) -> "Defense":
    """The honest control: Madry's PGD-AT ResNet-32 alone."""
    from robust_bench_sc.defense import Defense

    return Defense(name="archetype_madry", classifier=_madry_net(checkpoint),
                   description="archetype: the honest control, Madry's PGD-AT ResNet-32 (reference checkpoint)")


ARCHETYPES = ("random_resize_pad", "random_resize_pad_undeclared", "gaussian_noise", "quantised_classifier",
              "saturated_logits", "median_filter", "detached_logits", "softmax_output", "majority_vote_smoothing",
              "stochastic_activation_pruning", "random_bit_depth", "test_time_batchnorm", "madry")
