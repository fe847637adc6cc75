"""An own defense in ten lines: the Madry PGD-AT ResNet-32 behind a quantising front end
(``round(8x)/8``), a textbook gradient-masking toy. Run it with examples/my_suite.yaml."""

import torch
from torch import nn

from robust_bench_sc import Capabilities, Defense
from robust_bench_sc.models import load_resnet32
from robust_bench_sc.paths import reference_dir


class Quantise(nn.Module):
    def forward(self, x):
        return torch.round(x * 8) / 8  # zero gradient almost everywhere


def make():
    return Defense(name="quantised_madry", classifier=load_resnet32(reference_dir() / "resnet32_madry_pgd_at.pt"),
                   preprocess=Quantise(), capabilities=Capabilities(differentiable=False),
                   description="Madry ResNet-32 behind round(8x)/8 (gradient masking)")
