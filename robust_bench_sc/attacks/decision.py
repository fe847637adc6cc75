"""Decision- and score-based attacks: foolbox Boundary / HopSkipJump, ART HopSkipJump / ZOO.

All of them query the exact defense (``ctx.model(threat)``: its forward pass is the
defense itself). Every toolkit parameter comes from the threat model.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from robust_bench_sc.attacks.base import Attack, AttackContext, AttackOutput
from robust_bench_sc.attacks.toolkits import art_classifier, foolbox_model
from robust_bench_sc.predictions import predicted
from robust_bench_sc.progress import zoo_stage
from robust_bench_sc.threat_models import BoundaryThreat, HopSkipJumpThreat, ZooThreat

log = logging.getLogger(__name__)


# -- closest other-label start (Boundary, HopSkipJump with init_pool train/test) ----------

def _pool_images(ctx: AttackContext, which: str, size: int | None) -> torch.Tensor:
    from robust_bench_sc.data import load_dataset

    key = f"init-pool-images:{which}:{size}"
    if key not in ctx.cache:  # the run's dataset, its train or test split
        split = load_dataset(ctx.dataset, ctx.data_root, which)
        xs = split.x if size is None else split.x[:size]
        ctx.cache[key] = xs.contiguous()
    return ctx.cache[key]


def _pool_predictions(ctx: AttackContext, which: str, size: int | None, batch: int = 500) -> torch.Tensor:
    """The defense's predicted labels on the pool, computed once per defense and cached."""
    key = f"init-pool-preds:{ctx.defense.name}:{which}:{size}"
    if key not in ctx.cache:
        xs = _pool_images(ctx, which, size)
        ctx.cache[key] = predicted(ctx.defense, xs, batch, ctx.device).cpu()
    return ctx.cache[key]


def closest_other_prediction(x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor, pool_pred: torch.Tensor,
                             block: int = 5000) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image, the pool index of the ℓ2-closest pool image whose predicted label
    differs from the image's true label, and that distance (inf where none exists)."""
    xf = x.detach().cpu().flatten(1).double()
    xn = (xf * xf).sum(1, keepdim=True)
    best_d = torch.full((x.shape[0],), float("inf"), dtype=torch.float64)
    best_i = torch.full((x.shape[0],), -1, dtype=torch.long)
    yc = y.cpu()
    for s in range(0, pool.shape[0], block):
        p = pool[s : s + block].flatten(1).double()
        d2 = xn + (p * p).sum(1)[None] - 2 * xf @ p.T
        d2 = d2.masked_fill(pool_pred[s : s + block][None] == yc[:, None], float("inf"))
        v, i = d2.min(1)
        better = v < best_d
        best_d = torch.where(better, v, best_d)
        best_i = torch.where(better, i + s, best_i)
    return best_i, best_d.clamp_min(0).sqrt()


def closest_other_label_starts(ctx: AttackContext, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                               which: str, size: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Starting points for a decision-based attack: for each image the ℓ2-closest image of the
    pool ``which`` (first ``size`` images) that the defense predicts as a label other than the
    image's true label. Returns (starts, found, distance): ``starts`` is the image itself where
    ``found`` is False (no such pool image, or the model's re-check of the start disagrees),
    ``distance`` is NaN there."""
    pool = _pool_images(ctx, which, size)
    pool_pred = _pool_predictions(ctx, which, size)
    idx, dist = closest_other_prediction(x, y, pool, pool_pred)
    found = idx >= 0
    starts = x.clone()
    starts[found.to(x.device)] = pool[idx[found]].to(x.device, x.dtype)
    # a randomised defense may disagree with the cached prediction: re-check the starts
    found &= (predicted(model, starts) != y).cpu()
    return starts, found, dist.float().masked_fill(~found, float("nan"))


class FoolboxBoundary(Attack):
    """foolbox ``BoundaryAttack`` started, for each image, from the ℓ2-closest pool image
    (training set or test images) that the defense predicts as another label."""

    threat: BoundaryThreat

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        import foolbox as fb

        t = self.threat
        model = ctx.model(t)
        starts, start_ok, start_l2 = closest_other_label_starts(ctx, model, x, y, t.init_pool, t.init_pool_size)
        n = x.shape[0]
        x_adv = x.clone()
        claimed = torch.zeros(n, dtype=torch.bool)
        run_on = start_ok.nonzero().squeeze(1)
        if run_on.numel():
            atk = fb.attacks.BoundaryAttack(
                init_attack=None, steps=t.steps, spherical_step=t.spherical_step, source_step=t.source_step,
                source_step_convergance=t.source_step_convergance, step_adaptation=t.step_adaptation,
                tensorboard=False, update_stats_every_k=t.update_stats_every_k,
            )
            ro = run_on.to(x.device)
            _, clipped, success = atk(foolbox_model(model, ctx.device), x[ro], y[ro], epsilons=None,
                                      starting_points=starts[ro])
            x_adv[ro] = clipped.to(x.dtype)
            claimed[run_on] = success.cpu().bool()
        return AttackOutput(x_adv, claimed, {"start_l2": start_l2, "start_found": start_ok.float()})


# -- HopSkipJump ----------------------------------------------------------------------------

class ArtHopSkipJump(Attack):
    """ART ``HopSkipJump``, untargeted, ℓ2. ``init_pool: noise`` leaves the start to ART
    (uniform noise, ``init_size`` draws); ``train``/``test`` passes the closest other-label
    pool image as ``x_adv_init``. Images with no such pool image get ART's noise search
    (info ``start_found`` = 0)."""

    threat: HopSkipJumpThreat

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        from art.attacks.evasion import HopSkipJump

        t = self.threat
        model = ctx.model(t)
        atk = HopSkipJump(
            art_classifier(model, ctx.device, n_classes=ctx.n_classes, input_shape=ctx.input_shape), batch_size=t.hsj_batch_size, targeted=False, norm=2,
            max_iter=t.max_iter, max_eval=t.max_eval, init_eval=t.init_eval, init_size=t.init_size, verbose=False,
        )
        xn = x.detach().cpu().numpy().astype(np.float32)
        yn = y.detach().cpu().numpy()
        if t.init_pool == "noise":
            adv = torch.from_numpy(np.asarray(atk.generate(xn, y=yn), dtype=np.float32)).to(x.device)
            claimed = predicted(model, adv) != y
            return AttackOutput(adv, claimed.cpu(), {})
        starts, found, start_l2 = closest_other_label_starts(ctx, model, x, y, t.init_pool, t.init_pool_size)
        # ART takes a start only if it predicts it as another label than the image's own prediction;
        # where none was found the start is the image itself, so ART falls back to its noise search
        x_init = starts.detach().cpu().numpy().astype(np.float32)
        adv = torch.from_numpy(np.asarray(atk.generate(xn, y=yn, x_adv_init=x_init), dtype=np.float32)).to(x.device)
        claimed = predicted(model, adv) != y
        return AttackOutput(adv, claimed.cpu(), {"start_l2": start_l2, "start_found": found.float()})


class FoolboxHopSkipJump(Attack):
    """foolbox ``HopSkipJumpAttack`` (ℓ2), initialised (``init_pool: noise``) by foolbox's
    blended-uniform-noise line search with ``init_size`` directions, or (``train``/``test``) from
    the closest other-label pool image as ``starting_points``; images without a start are
    returned unchanged (info ``start_found`` = 0) instead of aborting the batch."""

    threat: HopSkipJumpThreat

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        import eagerpy as ep
        import foolbox as fb

        t = self.threat
        model = ctx.model(t)
        fmodel = foolbox_model(model, ctx.device)
        info: dict[str, torch.Tensor] = {}
        if t.init_pool == "noise":
            init = fb.attacks.LinearSearchBlendedUniformNoiseAttack(distance=fb.distances.l2, directions=t.init_size,
                                                                    steps=1000)
            starts = ep.astensor(init.run(fmodel, x, fb.criteria.Misclassification(y))).raw
            ok = (predicted(model, starts) != y)
        else:
            starts, found, info["start_l2"] = closest_other_label_starts(ctx, model, x, y, t.init_pool,
                                                                         t.init_pool_size)
            ok = found.to(x.device)
        x_adv = x.clone()
        claimed = torch.zeros(x.shape[0], dtype=torch.bool)
        if ok.any():
            atk = fb.attacks.HopSkipJumpAttack(
                init_attack=None, steps=t.max_iter, initial_gradient_eval_steps=t.init_eval,
                max_gradient_eval_steps=t.max_eval, stepsize_search=t.stepsize_search, gamma=t.gamma,
                tensorboard=False, constraint="l2",
            )
            _, clipped, success = atk(fmodel, x[ok], y[ok], epsilons=None, starting_points=starts[ok])
            x_adv[ok] = clipped.to(x.dtype)
            claimed[ok.cpu()] = success.cpu().bool()
        info["start_found"] = ok.cpu().float()
        return AttackOutput(x_adv, claimed, info)


# -- ZOO ------------------------------------------------------------------------------------

class ArtZoo(Attack):
    """ART ``ZooAttack`` on ``n_samples`` seeded random correctly classified images of the
    call (the paper's Table 4 uses 100). The others are returned unchanged with info
    ``selected`` = 0: tables must count ZOO over ``selected`` = 1 only.

    Info ``queries``: the images each attacked image sent through the model. ZOO estimates
    each coordinate's gradient by finite differences and stops early (``abort_early``) when
    its loss stops falling, so a defense whose output ignores single-pixel changes ends the
    attack after few queries: a low count beside a failure says the attack gave up, not that
    the defense held. Counted per image when ``zoo_batch_size`` is 1 (ART then attacks one
    image at a time anyway); otherwise each image gets its call's mean."""

    threat: ZooThreat

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        from art.attacks.evasion import ZooAttack

        t = self.threat
        model = ctx.model(t)
        n = x.shape[0]
        correct = (predicted(model, x) == y).cpu().nonzero().squeeze(1)
        perm = correct[torch.randperm(correct.numel(), generator=ctx.generator())]
        chosen = perm[: t.n_samples].sort().values
        selected = torch.zeros(n, dtype=torch.bool)
        selected[chosen] = True
        x_adv = x.clone()
        claimed = torch.zeros(n, dtype=torch.bool)
        queries = torch.zeros(n)
        if chosen.numel():
            counter = _CountingModel(model)
            atk = ZooAttack(
                art_classifier(counter, ctx.device, n_classes=ctx.n_classes, input_shape=ctx.input_shape), confidence=t.confidence, targeted=False,
                learning_rate=t.learning_rate, max_iter=t.max_iter, binary_search_steps=t.binary_search_steps,
                initial_const=t.initial_const, abort_early=t.abort_early, use_resize=t.use_resize,
                use_importance=t.use_importance, nb_parallel=t.nb_parallel, batch_size=t.zoo_batch_size,
                variable_h=t.variable_h, verbose=False,
            )
            c = chosen.to(x.device)
            xn = x[c].detach().cpu().numpy().astype(np.float32)
            yn = y[c].detach().cpu().numpy()
            calls = [[i] for i in range(len(xn))] if t.zoo_batch_size == 1 else [list(range(len(xn)))]
            parts, fooled = [], []
            for idx in calls:
                counter.n = 0
                part = np.asarray(atk.generate(xn[idx], y=yn[idx]), dtype=np.float32)
                queries[chosen[idx]] = counter.n / len(idx)
                parts.append(torch.from_numpy(part).to(x.device, x.dtype))
                fooled.append((predicted(model, parts[-1]) != y[c[idx]]).cpu())
                if ctx.progress:  # one image takes minutes on the sparse-coding defense
                    so_far = torch.cat(fooled)
                    ctx.progress(0, zoo_stage(len(so_far), len(xn), int(so_far.sum())))
            x_adv[c] = torch.cat(parts)
            claimed[chosen] = torch.cat(fooled)
        return AttackOutput(x_adv, claimed, {"selected": selected.float(), "queries": queries})


class _CountingModel(torch.nn.Module):
    """The model, counting the images sent through it (``n``)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.n = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.n += x.shape[0]
        return self.model(x)
