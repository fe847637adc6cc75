"""ResNet-32 baselines: the authors' published checkpoints (shared/reference), and the natural
ResNet-32 trained here (the reference natural checkpoint is suspect: 67.1 % clean)."""

from __future__ import annotations

from pathlib import Path

from robust_bench_sc.defense import Capabilities, Defense
from robust_bench_sc.models.resnet import load_resnet32
from robust_bench_sc.paths import reference_dir

#: the natural ResNet-32 trained by `scbench train --model resnet32` (docs/training.md)
NATURAL_WEIGHTS = Path(__file__).resolve().parent / "weights" / "resnet32_natural.pt"

CHECKPOINTS = {
    "natural": (str(NATURAL_WEIGHTS), "ResNet-32, natural training here (scbench train --model resnet32, 40 epochs, one-cycle η_max 0.05; 91.7% on the first 1000 test images; docs/training.md)"),
    "natural_reference": ("resnet32_natural.pt", "ResNet-32, natural training (reference checkpoint; 67.1% on the first 1000 test images, not the paper's 92.66%)"),
    "madry_pgd_at": ("resnet32_madry_pgd_at.pt", "ResNet-32, Madry PGD adversarial training, linf 8/255 (reference checkpoint)"),
    "trades": ("resnet32_trades.pt", "ResNet-32, TRADES beta=6, linf 8/255 (reference checkpoint)"),
}


def _baseline(name: str, checkpoint: str | None = None) -> Defense:
    file, description = CHECKPOINTS[name]
    path = checkpoint or (Path(file) if Path(file).is_absolute() else reference_dir() / file)
    return Defense(name=name, classifier=load_resnet32(path), capabilities=Capabilities(), description=description)


def natural(checkpoint: str | None = None) -> Defense:
    return _baseline("natural", checkpoint)


def natural_reference(checkpoint: str | None = None) -> Defense:
    return _baseline("natural_reference", checkpoint)


def madry_pgd_at(checkpoint: str | None = None) -> Defense:
    return _baseline("madry_pgd_at", checkpoint)


def trades(checkpoint: str | None = None) -> Defense:
    return _baseline("trades", checkpoint)
