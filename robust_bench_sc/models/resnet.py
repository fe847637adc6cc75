"""Madry et al.'s CIFAR-10 ResNet-32, exactly as the reference checkpoints expect.

Inputs are images in [0, 1]; normalisation happens inside the model. The first unit of
``block1`` carries the quirk the published checkpoints depend on: its skip path is
``lrelu(bn1(x))`` while ``conv1`` reads the raw ``x`` (see shared/reference/README.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
LEAKY_SLOPE = 0.1


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LEAKY_SLOPE)


class ResidualUnit(nn.Module):
    """Pre-activation residual unit (bn1, conv1, bn2, conv2)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, activate_before_residual: bool):
        super().__init__()
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
        self.activate_before_residual = activate_before_residual
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate_before_residual:
            # Quirk of the published checkpoints: the activated input feeds only the skip path.
            skip = _lrelu(self.bn1(x))
            h = x
        else:
            skip = x
            h = _lrelu(self.bn1(x))
        h = self.conv2(_lrelu(self.bn2(self.conv1(h))))
        if self.in_ch != self.out_ch:
            if self.stride > 1:
                skip = F.avg_pool2d(skip, self.stride, self.stride)
            pad = (self.out_ch - self.in_ch) // 2
            skip = F.pad(skip, (0, 0, 0, 0, pad, self.out_ch - self.in_ch - pad))
        return h + skip


class ResNet32(nn.Module):
    """ResNet-32 (16/32/64 filters, 5 units per block), [0, 1] images in, logits out."""

    mean: torch.Tensor  # buffers (register_buffer): declared so they type as tensors, not Tensor | Module
    std: torch.Tensor

    def __init__(self, num_classes: int = 10, units_per_block: int = 5):
        super().__init__()
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.block1 = self._block(16, 16, 1, units_per_block, activate_first=True)
        self.block2 = self._block(16, 32, 2, units_per_block, activate_first=False)
        self.block3 = self._block(32, 64, 2, units_per_block, activate_first=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.linear = nn.Linear(64, num_classes)

    @staticmethod
    def _block(in_ch: int, out_ch: int, stride: int, n: int, activate_first: bool) -> nn.Sequential:
        units = [ResidualUnit(in_ch, out_ch, stride, activate_before_residual=activate_first)]
        units += [ResidualUnit(out_ch, out_ch, 1, activate_before_residual=False) for _ in range(n - 1)]
        return nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1((x - self.mean) / self.std)
        h = self.block3(self.block2(self.block1(h)))
        h = _lrelu(self.bn1(h))
        return self.linear(h.mean(dim=(2, 3)))


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict saved with torch.save, refusing anything but tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or not a tensor file
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds {type(state).__name__}, expected a state dict")
    return state


def load_resnet32(path: str | Path) -> ResNet32:
    """A ResNet-32 in eval mode with the weights of a reference checkpoint."""
    model = ResNet32()
    state = load_state_dict_file(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    # The reference files do not carry the normalisation buffers.
    for key in ("mean", "std"):
        state.setdefault(key, own[key])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit ResNet-32: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return model.eval()
