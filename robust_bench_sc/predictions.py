"""Predictions of a defense. :func:`predict` is the scored one: it checks the logits (one
finite score per class, on the images' device) through :func:`checked_logits`.
:func:`predicted` is the unchecked loop shared by the attacks, training and binarization:
predicted classes of one forward pass each. Both sit below the attacks and the engine
(``evaluate``), which import them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from robust_bench_sc.data import N_CLASSES

if TYPE_CHECKING:
    from robust_bench_sc.defense import Defense


@torch.no_grad()
def predicted(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int | None = None,
              device: torch.device | None = None) -> torch.Tensor:
    """Predicted classes (argmax of one forward pass each), on ``x``'s device: the attacks'
    own bookkeeping of which inputs fool ``model``. With ``batch_size``, in batches moved to
    ``device`` one at a time (a large pool stays where it is). Unchecked logits: the scored
    predictions are `predict`'s, which checks them."""
    if batch_size is None:
        return model(x if device is None else x.to(device)).argmax(1).to(x.device)
    if batch_size < 1:
        raise ValueError(f"predicted: batch_size must be ≥ 1, got {batch_size}")
    out = [model(x[i : i + batch_size] if device is None else x[i : i + batch_size].to(device)).argmax(1).to(x.device)
           for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


NO_PREDICTION = -1  # a sample whose logits were not finite: never counted as any class


class DefenseOutputError(RuntimeError):
    """A defense returned something that is not a batch of finite logits."""


def checked_logits(defense: Defense, xb: torch.Tensor, n_classes: int = N_CLASSES) -> torch.Tensor:
    """``defense(xb)``, refused unless it is a tensor of shape (n, n_classes): one logit per
    class of the dataset (``AttackContext.n_classes``; 10 for CIFAR-10, the default)."""
    out = defense(xb)
    n = xb.shape[0]
    if not isinstance(out, torch.Tensor):
        hint = (" (a tuple or list, e.g. logits and features: return the logits alone, or wrap the model in an "
                "nn.Module whose forward returns out[0])" if isinstance(out, (tuple, list)) else
                " (a dict, e.g. a model output object: wrap the model in an nn.Module whose forward returns the "
                "logits entry)" if isinstance(out, dict) else "")
        raise DefenseOutputError(f"defense {defense.name!r} returned {type(out).__name__}, expected a tensor of "
                                 f"logits of shape ({n}, {n_classes}){hint}")
    if tuple(out.shape) != (n, n_classes) or not out.is_floating_point():
        raise DefenseOutputError(f"defense {defense.name!r} returned {out.dtype} of shape {tuple(out.shape)} for "
                                 f"{n} images; expected float logits of shape ({n}, {n_classes}) (one score per "
                                 f"class of the dataset, which has {n_classes})")
    if out.device.type != xb.device.type:  # `meta` (no values at all), or left on another device
        raise DefenseOutputError(f"defense {defense.name!r} returned logits on device {out.device.type!r} for "
                                 f"images on {xb.device.type!r}; return them on the images' device")
    return out


@torch.no_grad()
def predict(defense: Defense, x: torch.Tensor, batch_size: int, device: torch.device,
            non_finite: str = "raise", n_classes: int = N_CLASSES) -> torch.Tensor:
    """Predicted classes. Logits are checked (shape (n, n_classes)); a row with a NaN or inf logit
    raises :class:`DefenseOutputError` (``non_finite="raise"``) or predicts ``NO_PREDICTION``
    (``"flag"``: it then matches no label), never argmax-of-NaN counted as a class."""
    out = []
    for i in range(0, x.shape[0], batch_size):
        logits = checked_logits(defense, x[i : i + batch_size].to(device), n_classes)
        pred = logits.argmax(1)
        bad = ~torch.isfinite(logits).all(1)
        if bad.any():
            if non_finite == "raise":
                rows = (bad.nonzero().squeeze(1) + i).tolist()
                raise DefenseOutputError(
                    f"defense {defense.name!r} returned non-finite logits (NaN or inf) for {len(rows)} of "
                    f"{x.shape[0]} images evaluated (positions {', '.join(map(str, rows[:5]))}"
                    f"{', ...' if len(rows) > 5 else ''}); its predictions would be meaningless")
            pred = torch.where(bad, torch.full_like(pred, NO_PREDICTION), pred)
        out.append(pred.cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
