"""Gradient attacks through third-party toolkits: torchattacks, foolbox 3 and ART.

Every toolkit parameter is passed explicitly from the threat model (toolkit defaults
differ: foolbox's SparseL1Descent takes 10 steps without random start, L2PGD a step of
0.025·ε, ...). Every toolkit attacks ``ctx.model(threat)``: the exact defense forward
with BPDA / EOT in the backward pass, so stand-ins work with every backend.

Restarts are looped here, like the native engine: a restart attacks only the samples no
earlier restart fooled (with ``early_stop``), and the first fooling restart is kept.
Whatever a toolkit returns is re-checked by :mod:`robust_bench_sc.evaluate`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from robust_bench_sc.attacks.base import Attack, AttackContext, AttackOutput
from robust_bench_sc.attacks.pgd import margin_loss
from robust_bench_sc.data import N_CLASSES
from robust_bench_sc.norms import L1, L2, LINF, Norm
from robust_bench_sc.predictions import predicted
from robust_bench_sc.progress import ProgressFn, restart_stage
from robust_bench_sc.threat_models import CWThreat, PGDThreat, SquareThreat

INPUT_SHAPE = (3, 32, 32)


def restart_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, restarts: int, early_stop: bool,
                 attempt: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], progress: ProgressFn | None = None):
    """Run ``attempt(x_active, y_active) -> x_adv`` up to ``restarts`` times.

    Returns x_adv (first fooling restart, else the last attempt), fooled (by ``model``'s
    prediction), restarts used per sample.
    """
    n = x.shape[0]
    x_adv = x.clone()
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    used = torch.zeros(n, dtype=torch.long)
    for r in range(restarts):
        active = (~fooled if early_stop else torch.ones_like(fooled)).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        xa, ya = x[active], y[active]
        adv = attempt(xa, ya).detach().to(x.device, x.dtype)
        now = predicted(model, adv) != ya
        keep = now | ~fooled[active]
        x_adv[active[keep]] = adv[keep]
        fooled[active] |= now
        used[active.cpu()] += 1
        if progress:
            progress(0, restart_stage(r + 1, restarts, int(fooled.sum()), n))
    return x_adv, fooled, used


class MarginLoss(nn.Module):
    """Carlini–Wagner margin (max wrong logit − true logit), summed; for ART's loss slot.
    Accepts integer labels or one-hot rows (ART passes either)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() > 1:
            labels = labels.argmax(1)
        return margin_loss(logits, labels.long()).sum()


class Float32Input(nn.Module):
    """Casts inputs to float32: ART's HopSkipJump queries the model with float64 arrays."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.float())


def art_classifier(model: nn.Module, device: torch.device, loss: str = "ce",
                   n_classes: int = N_CLASSES, input_shape: tuple[int, int, int] = INPUT_SHAPE):
    """ART wrapper of an attack model: numpy float32 NCHW in [0, 1], ``n_classes`` logits
    (the dataset's: ``AttackContext.n_classes`` / ``input_shape``)."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=Float32Input(model),
        loss=nn.CrossEntropyLoss() if loss == "ce" else MarginLoss(),
        input_shape=input_shape,
        nb_classes=n_classes,
        optimizer=None,
        channels_first=True,
        clip_values=(0.0, 1.0),
        preprocessing=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )


def foolbox_model(model: nn.Module, device: torch.device):
    import foolbox as fb

    return fb.PyTorchModel(model, bounds=(0.0, 1.0), device=device, preprocessing=None)


def _pgd_info(used: torch.Tensor, threat: PGDThreat) -> dict[str, torch.Tensor]:
    return {"restarts_used": used, "image_steps": used * threat.steps * threat.eot}


# -- PGD ----------------------------------------------------------------------------------

class TorchattacksPGD(Attack):
    """torchattacks ``PGD`` (ℓ∞) / ``PGDL2`` (ℓ2); cross-entropy loss only."""

    threat: PGDThreat

    def _make(self, model):
        import torchattacks

        t = self.threat
        norm = Norm.of(t.norm)
        if norm is L1:
            raise ValueError("torchattacks has no ℓ1 PGD")
        cls, extra = (torchattacks.PGD, {}) if norm is LINF else (torchattacks.PGDL2, {"eps_for_division": 1e-10})
        return cls(model, eps=t.epsilon, alpha=t.step, steps=t.steps, random_start=t.random_start, **extra)

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        t = self.threat
        model = ctx.model(t)
        atk = self._make(model)
        x_adv, fooled, used = restart_loop(model, x, y, t.restarts, t.early_stop, lambda a, b: atk(a, b), ctx.progress)
        return AttackOutput(x_adv, fooled.cpu(), _pgd_info(used, t))


def _foolbox_pgd_class(norm: Norm, loss: str):
    import foolbox as fb

    base = {LINF: fb.attacks.LinfPGD, L2: fb.attacks.L2PGD, L1: fb.attacks.SparseL1DescentAttack}[norm]
    if loss == "ce":
        return base

    class MarginPGD(base):  # type: ignore[valid-type,misc]  # foolbox documents get_loss_fn as the place to change the loss
        def get_loss_fn(self, model, labels):
            import eagerpy as ep

            def loss_fn(inputs):
                logits = model(inputs)
                return ep.astensor(margin_loss(logits.raw, labels.raw).sum())

            return loss_fn

    MarginPGD.__name__ = f"Margin{base.__name__}"
    return MarginPGD


class FoolboxPGD(Attack):
    """foolbox 3 ``LinfPGD`` / ``L2PGD`` / ``SparseL1DescentAttack`` (ℓ1 sparse step)."""

    threat: PGDThreat

    def _make(self):
        t = self.threat
        norm = Norm.of(t.norm)
        cls = _foolbox_pgd_class(norm, t.loss)
        kw = dict(rel_stepsize=t.step / t.epsilon, abs_stepsize=t.step, steps=t.steps, random_start=t.random_start)
        if norm is L1:
            kw["quantile"] = t.l1_sparsity
        return cls(**kw)

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        t = self.threat
        model = ctx.model(t)
        fmodel = foolbox_model(model, ctx.device)
        atk = self._make()

        def attempt(xa, ya):
            _, clipped, _ = atk(fmodel, xa, ya, epsilons=t.epsilon)
            return clipped

        x_adv, fooled, used = restart_loop(model, x, y, t.restarts, t.early_stop, attempt, ctx.progress)
        return AttackOutput(x_adv, fooled.cpu(), _pgd_info(used, t))


class ArtPGD(Attack):
    """ART ``ProjectedGradientDescent`` on numpy float32.

    ART's ℓ1 step is weak (it moves few coordinates per step); it is allowed for
    comparison, not for headline numbers — use native ``l1_step: sparse`` or foolbox.
    """

    threat: PGDThreat

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        from art.attacks.evasion import ProjectedGradientDescent

        t = self.threat
        model = ctx.model(t)
        clf = art_classifier(model, ctx.device, t.loss, ctx.n_classes, ctx.input_shape)
        atk = ProjectedGradientDescent(
            clf,
            norm=Norm.of(t.norm).p,
            eps=t.epsilon,
            eps_step=t.step,
            decay=None,
            max_iter=t.steps,
            targeted=False,
            num_random_init=1 if t.random_start else 0,
            batch_size=max(1, x.shape[0]),
            random_eps=False,
            summary_writer=False,
            verbose=False,
        )

        def attempt(xa, ya):
            xn = xa.detach().cpu().numpy().astype(np.float32)
            adv = atk.generate(xn, y=ya.detach().cpu().numpy())
            return torch.from_numpy(np.asarray(adv, dtype=np.float32))

        x_adv, fooled, used = restart_loop(model, x, y, t.restarts, t.early_stop, attempt, ctx.progress)
        return AttackOutput(x_adv, fooled.cpu(), _pgd_info(used, t))


# -- Carlini–Wagner ℓ2 (minimum norm) --------------------------------------------------------

class FoolboxCW(Attack):
    """foolbox ``L2CarliniWagnerAttack``: binary search over the constant, minimum norm."""

    threat: CWThreat

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        import foolbox as fb

        t = self.threat
        fmodel = foolbox_model(ctx.model(t), ctx.device)
        atk = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=t.binary_search_steps, steps=t.steps, stepsize=t.learning_rate,
            confidence=t.confidence, initial_const=t.initial_const, abort_early=t.abort_early,
        )
        _, clipped, success = atk(fmodel, x, y, epsilons=None)
        # foolbox 3.3.4 starts its best adversarials at zeros: where every binary-search
        # step failed it returns an all-black image (often "adversarial", at a huge norm).
        # Treat those as failures and return the input instead.
        black = (clipped.flatten(1) == 0).all(1) & ~(x.flatten(1) == 0).all(1)
        x_adv = torch.where(black.view(-1, 1, 1, 1), x, clipped)
        claimed = success.bool() & ~black
        return AttackOutput(x_adv, claimed.cpu(), {"cw_failed": black.cpu().float()})


class TorchattacksCW(Attack):
    """torchattacks ``CW``: one fixed constant ``c = initial_const`` (no binary search)."""

    threat: CWThreat

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        import torchattacks

        t = self.threat
        model = ctx.model(t)
        atk = torchattacks.CW(model, c=t.initial_const, kappa=t.confidence, steps=t.steps, lr=t.learning_rate)
        adv = atk(x, y)
        claimed = predicted(model, adv) != y
        # torchattacks returns its last iterate where it failed: fall back to the input
        adv = torch.where(claimed.view(-1, 1, 1, 1), adv, x)
        return AttackOutput(adv, claimed.cpu(), {})


# -- Square (score based) --------------------------------------------------------------------

class TorchattacksSquare(Attack):
    """torchattacks ``Square`` (margin loss, untargeted), every parameter from the threat model:
    ``resc_schedule`` is ``rescale_schedule`` (torchattacks' own default is on, AutoAttack's off;
    the threat model's rule decides). Its restarts attack only the samples still robust."""

    threat: SquareThreat

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        import torchattacks

        t = self.threat
        model = ctx.model(t)
        atk = torchattacks.Square(
            model, norm=Norm.of(t.norm).toolkit, eps=t.epsilon, n_queries=t.n_queries,
            n_restarts=t.restarts, p_init=t.p_init, loss="margin", resc_schedule=t.rescale_schedule,
            seed=int(ctx.seed % (2**31 - 1)), verbose=False,
        )
        adv = atk(x, y).detach()
        return AttackOutput(adv, (predicted(model, adv) != y).cpu(), {})

