"""``Normalize(model, mean, std)``: a model that expects normalised inputs, taking images in [0, 1].

The harness hands every model images in [0, 1] (the ε budgets are in that scale). A model
trained on ``(x - mean) / std`` (torchvision's ``transforms.Normalize``, most RobustBench
checkpoints) is wrapped so the normalisation is part of the model, as RobustBench does:

    model = Normalize(my_net, mean=CIFAR100_MEAN, std=CIFAR100_STD)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class Normalize(nn.Module):
    """``model((x - mean) / std)`` for images ``x`` in [0, 1], NCHW; one mean / std per channel."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std) or not len(mean) or any(s <= 0 for s in std):
            raise ValueError(f"Normalize: mean {tuple(mean)} and std {tuple(std)} need one value per channel, std > 0")
        self.model = model
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"Normalize: images of shape {tuple(x.shape)}; expected (N, {self.mean.shape[1]}, H, W)")
        return self.model((x - self.mean) / self.std)
