"""Square and AutoAttack through pyautoattack (the reference AutoAttack implementation).

pyautoattack's API is keyword-only; its ε defaults to 0.3, so ε, norm, seed and budgets
are always passed explicitly. It logs to the ``auto-attack`` logger (debug level).
"""

from __future__ import annotations

import torch

from robust_bench_sc.attacks.base import Attack, AttackContext, AttackOutput
from robust_bench_sc.predictions import predicted
from robust_bench_sc.norms import Norm
from robust_bench_sc.threat_models import AutoAttackThreat, SquareThreat

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

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        from pyautoattack import AutoAttack

        t = self.threat
        model = ctx.model(t)
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
        x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=max(1, x.shape[0]))
        return AttackOutput(x_adv, (y_adv != y).cpu(), {})
