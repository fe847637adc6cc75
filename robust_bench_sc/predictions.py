"""The unchecked prediction loop shared by the attacks, training and binarization: predicted
classes of one forward pass each. Scored predictions go through
:func:`robust_bench_sc.evaluate.predict`, which checks the logits."""

from __future__ import annotations

from collections.abc import Callable

import torch


@torch.no_grad()
def predicted(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int | None = None,
              device: torch.device | None = None) -> torch.Tensor:
    """Predicted classes (argmax of one forward pass each), on ``x``'s device: the attacks'
    own bookkeeping of which inputs fool ``model``. With ``batch_size``, in batches moved to
    ``device`` one at a time (a large pool stays where it is). Unchecked logits: the scored
    predictions are :func:`robust_bench_sc.evaluate.predict`'s, which checks them."""
    if batch_size is None:
        return model(x if device is None else x.to(device)).argmax(1).to(x.device)
    if batch_size < 1:
        raise ValueError(f"predicted: batch_size must be ≥ 1, got {batch_size}")
    out = [model(x[i : i + batch_size] if device is None else x[i : i + batch_size].to(device)).argmax(1).to(x.device)
           for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)
