"""Square and AutoAttack through pyautoattack (the reference AutoAttack implementation).

pyautoattack's API is keyword-only; its ε defaults to 0.3, so ε, norm, seed and budgets
are always passed explicitly. It logs to the ``auto-attack`` logger (debug level).

**EOT on a randomised defense.** The threat model's ``eot`` reaches pyautoattack through
the model it attacks, whose logits are the mean over ``eot`` forward passes (so every
gradient is an EOT gradient). pyautoattack then decides success on those mean logits: APGD
keeps as its answer (``x_best_adv``) the latest iterate whose *mean* logits misclassify,
which neither one lucky draw nor all draws decide. The project's rule (the native PGD's,
:mod:`robust_bench_sc.attacks.pgd`) is that an iterate counts as adversarial only when
*every one* of its ``eot`` draws is fooled. :class:`AllDrawsFooled` applies it without
forking the library: it computes the ``eot`` passes itself (the same passes, the same
random numbers, the same mean as before), and records, per image, every point the attack
queries (within ε of the image) at which all the draws are fooled, keeping the one with
the largest worst-draw margin. That point replaces pyautoattack's answer; an image with no
such point keeps pyautoattack's (as PGD falls back to an iterate that fooled some pass).
The engine re-checks every answer on ``recheck`` fresh draws either way.
"""

from __future__ import annotations

import torch
from torch import nn

from robust_bench_sc.attacks.base import Attack, AttackContext, AttackOutput
from robust_bench_sc.predictions import predicted
from robust_bench_sc.norms import Norm
from robust_bench_sc.threat_models import AutoAttackThreat, SquareThreat

class AllDrawsFooled(nn.Module):
    """``model`` (one pass of the attack model) averaged over ``eot`` passes, as
    :class:`robust_bench_sc.defense.AttackModel` with ``eot`` does, and recording, for each
    of the images ``x`` (labels ``y``), the queried point within ``epsilon`` (``norm``) at
    which every one of the ``eot`` passes misclassifies, with the largest worst-pass margin
    (max wrong logit − true logit): ``found`` / ``best``. Queries are matched to the image
    they perturb by the nearest image (ℓ2) and kept only within the budget."""

    def __init__(self, model: nn.Module, eot: int, x: torch.Tensor, y: torch.Tensor, norm: str, epsilon: float):
        super().__init__()
        self.model, self.eot, self.norm, self.epsilon = model, int(eot), Norm.of(norm), float(epsilon)
        self.x, self.y = x.detach(), y.detach()
        self.best = x.detach().clone()
        self.best_margin = torch.full((x.shape[0],), float("-inf"), device=x.device)
        self.found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def forward(self, xq: torch.Tensor) -> torch.Tensor:
        draws = torch.stack([self.model(xq) for _ in range(self.eot)])
        with torch.no_grad():
            self._record(xq.detach(), draws.detach())
        return draws.mean(0)

    def _record(self, xq: torch.Tensor, draws: torch.Tensor) -> None:
        from robust_bench_sc.attacks.pgd import margin_loss

        if xq.shape[1:] != self.x.shape[1:] or xq.shape[0] == 0:
            return
        j = torch.cdist(xq.flatten(1).double(), self.x.flatten(1).double()).argmin(1)  # the image each row perturbs
        within = self.norm.measure(xq - self.x[j]) <= self.epsilon * (1 + 1e-5) + 1e-7
        yj = self.y[j]
        worst = torch.stack([margin_loss(d.float(), yj) for d in draws]).min(0).values  # > 0: every draw fooled
        better = within & (worst > 0) & (worst > self.best_margin[j])
        for row in better.nonzero().squeeze(1).tolist():  # rows of one image: the best of them wins
            i = int(j[row])
            if worst[row] > self.best_margin[i]:
                self.best_margin[i] = worst[row]
                self.best[i] = xq[row]
                self.found[i] = True


def _seed(ctx: AttackContext) -> int:
    return int(ctx.seed % (2**31 - 1))


class AutoAttackSquare(Attack):
    """pyautoattack's Square attack (margin loss), constructed directly so that every
    parameter (n_queries, p_init, restarts, the schedule) is a constructor argument rather
    than an attribute changed after AutoAttack has set its own. ``resc_schedule`` is the
    threat model's ``rescale_schedule`` (off at AutoAttack's 5000 queries, on otherwise,
    unless set). Its restarts attack only the samples still robust."""

    threat: SquareThreat

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        from pyautoattack.square import SquareAttack

        t = self.threat
        model = ctx.model(t)
        atk = SquareAttack(
            model, norm=Norm.of(t.norm).toolkit, n_queries=t.n_queries, eps=t.epsilon, p_init=t.p_init,
            n_restarts=t.restarts, seed=_seed(ctx), verbose=False, targeted=False, loss="margin",
            resc_schedule=t.rescale_schedule, device=ctx.device,
        )
        with torch.no_grad():
            adv = atk.perturb(x, y)
        return AttackOutput(adv, (predicted(model, adv) != y).cpu(), {})


class AutoAttackRunner(Attack):
    """``AutoAttack(version=standard|plus|rand|custom)``; per-sample worst case over its
    attacks is AutoAttack's own."""

    threat: AutoAttackThreat
    # on a randomised defense with eot > 1: answers where every EOT draw is fooled (AllDrawsFooled);
    # False gives pyautoattack's own answers (benchmarks/bench_audit.py --eot-rule compares the two)
    all_draws_rule = True

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        from pyautoattack import AutoAttack

        t = self.threat
        recorder: AllDrawsFooled | None = None
        if self.all_draws_rule and t.eot > 1 and ctx.defense.capabilities.randomised:
            once = ctx.defense.attack_model(bpda=ctx.bpda_name(t), eot=1).to(ctx.device).eval()
            recorder = AllDrawsFooled(once, t.eot, x.to(ctx.device), y.to(ctx.device), t.norm, float(t.epsilon))
        model: nn.Module = recorder if recorder is not None else ctx.model(t)
        aa = AutoAttack(
            model, attacks=list(t.attacks_to_run) if t.version == "custom" else None, device=ctx.device,
            eps=t.epsilon, norm=Norm.of(t.norm).toolkit, seed=_seed(ctx), version=t.version,
        )
        aa.verbose = False  # pyautoattack has no constructor switch for it
        aa.square.n_queries = t.n_queries  # the versions hard-code 5000; the threat model decides
        aa.square.rescale_schedule = t.rescale_schedule  # AutoAttack sets False (right at 5000 queries only)
        if t.apgd_iterations is not None:
            aa.apgd.n_iter = aa.apgd_targeted.n_iter = t.apgd_iterations
        if t.apgd_restarts is not None:
            aa.apgd.n_restarts = t.apgd_restarts
        # the targeted attacks try the top-9 other classes; a dataset with fewer has fewer to try
        # (pyautoattack would index past the logits: IndexError on a 5-class dataset)
        aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, ctx.n_classes - 1)
        aa.fab.n_target_classes = min(aa.fab.n_target_classes, ctx.n_classes - 1)
        x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=max(1, x.shape[0]))
        claimed = (y_adv != y).cpu()
        if recorder is None:
            return AttackOutput(x_adv, claimed, {})
        found = recorder.found.to(x_adv.device)
        x_adv = torch.where(found.view(-1, *[1] * (x_adv.dim() - 1)), recorder.best.to(x_adv.device), x_adv)
        return AttackOutput(x_adv, claimed | found.cpu(), {})
