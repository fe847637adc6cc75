"""A small score-based random search in the ℓ∞ ball (our own, Square-like; gradient free).

Start at a random vertex of the ball (±ε per pixel, one sign per channel and column); each
query redraws ±ε per channel inside one random square window and keeps the window when the
margin (max wrong logit − true logit, averaged over ``eot`` forward passes) grows. The
window shrinks from ``p_init`` of the image area to one pixel over the query budget. An
image leaves the search once its margin is positive.

It only ever writes ±ε into the perturbation and clips the image to [0, 1], but like every
attack it is not trusted: :mod:`robust_bench_sc.evaluate` re-checks the box, the budget
and the prediction of what it returns. ``scbench diagnose`` uses it for the gradient-free
check when Square (pyautoattack) is not importable; a suite uses it as
``attack: random_search``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from robust_bench_sc.attacks.base import Attack, AttackContext, AttackOutput
from robust_bench_sc.attacks.pgd import margin_loss
from robust_bench_sc.threat_models import RandomSearchThreat

Model = Callable[[torch.Tensor], torch.Tensor]  # images -> logits (an nn.Module or a Defense)


def random_search_linf(model: Model, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int,
                       seed: int, device: torch.device | str, p_init: float = 0.1) -> torch.Tensor:
    """The adversarial images of :func:`search` (see there), on the CPU."""
    return search(model, x, y, eps, queries, seed, device, p_init)[0]


def search(model: Model, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int, seed: int,
           device: torch.device | str, p_init: float = 0.1, eot: int = 1,
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Search the ℓ∞ ball of radius ``eps`` around each image of ``x`` (float NCHW in [0, 1]).

    Args:
        model: maps images to logits (queried under ``torch.no_grad``; never differentiated).
        x, y: images and labels (any device; the search itself runs on the CPU, the model
            on ``device``).
        eps: ℓ∞ radius.
        queries: model queries per image after the initial one (an image stops once fooled).
        seed: seeds the search's own generator (independent of the global one).
        device: where ``model`` runs.
        p_init: the first window's share of the image area.
        eot: forward passes averaged per score (randomised models).

    Returns ``(x_adv, margin, queries_used)``: the adversarial images (CPU), each image's
    best margin (> 0: the search saw it misclassified) and the queries it used.
    """
    x, y = x.detach().cpu().float(), y.detach().cpu()
    g = torch.Generator().manual_seed(int(seed))
    n, ch, h, w = x.shape
    sign = torch.randint(0, 2, (n, ch, 1, w), generator=g).float() * 2 - 1
    delta = eps * sign.expand(n, ch, h, w).clone()

    def score(d: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        xb = (x[idx] + d).clamp(0, 1).to(device)
        m = torch.zeros(idx.numel())
        with torch.no_grad():
            for _ in range(eot):
                m = m + margin_loss(model(xb).float().cpu(), y[idx])
        return m / eot

    best = score(delta, torch.arange(n))
    used = torch.ones(n, dtype=torch.long)
    for q in range(queries):
        active = (best <= 0).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        frac = p_init * (1 - q / max(queries, 1)) ** 2
        s = min(h, w, max(1, int(round(math.sqrt(frac * h * w)))))
        cand = delta[active].clone()
        for j in range(active.numel()):
            r = int(torch.randint(0, h - s + 1, (1,), generator=g))
            c = int(torch.randint(0, w - s + 1, (1,), generator=g))
            v = (torch.randint(0, 2, (ch, 1, 1), generator=g).float() * 2 - 1) * eps
            cand[j, :, r: r + s, c: c + s] = v
        new = score(cand, active)
        used[active] += 1
        better = new > best[active]
        delta[active[better]] = cand[better]
        best[active[better]] = new[better]
    return (x + delta).clamp(0, 1), best, used


class RandomSearch(Attack):
    """``attack: random_search`` (backend ``native``): :func:`search` on the exact defense with the
    threat model's ε, ``n_queries``, ``p_init`` and ``eot``, seeded by the job's seed. Its
    claim is "the best margin it saw is positive"; ``queries`` (per image) goes into the
    records."""

    threat: RandomSearchThreat

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        t = self.threat
        x_adv, margin, used = search(ctx.defense, x, y, t.epsilon, t.n_queries, ctx.seed, ctx.device,
                                     p_init=t.p_init, eot=t.eot)
        return AttackOutput(x_adv, claimed=margin > 0, info={"queries": used.double()})
