"""The native PGD engine: ℓ∞ / ℓ2 / ℓ1 projected gradient descent with restarts.

Per-sample early stop across restarts (a sample fooled by one restart is not attacked
again), so at Nr=100 most image·steps are never computed for the samples that fall early.
Within a restart, with ``keep_adversarial_iterate`` (the default), an image leaves the
batch at its first adversarial iterate (compaction): that iterate is its answer, and the
remaining images step on in a smaller batch. Plain last-iterate PGD
(``keep_adversarial_iterate: false``) runs every image to the last step. The step each
image stopped at and the image·steps actually computed are reported in ``info`` (see
:meth:`NativePGD.run`).

ℓ1 comes in two variants (see :class:`~robust_bench_sc.threat_models.PGDThreat`):
``dense`` (the paper's eq. 1, rescaled onto the ℓ1 sphere, clipped to the image box only
at evaluation) and ``sparse`` (steepest descent over the top coordinates, exact projection
onto the ℓ1 ball ∩ [0, 1] box).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robust_bench_sc.attacks.base import Attack, AttackContext, AttackOutput
from robust_bench_sc.norms import TINY, Norm, project_l1
from robust_bench_sc.progress import restart_stage
from robust_bench_sc.threat_models import PGDThreat


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini–Wagner margin: max wrong logit − true logit (per sample; > 0 ⇔ fooled)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.max(1).values - true


def attack_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    return margin_loss(logits, y)


def project_l1_box(v: torch.Tensor, x: torch.Tensor, eps: float, iters: int = 60) -> torch.Tensor:
    """Exact Euclidean projection of perturbations ``v`` onto {‖d‖₁ ≤ ε, 0 ≤ x+d ≤ 1}
    (:func:`robust_bench_sc.norms.project_l1` with the image box)."""
    return project_l1(v, eps, -x, 1.0 - x, iters)


class NativePGD(Attack):
    threat: PGDThreat

    def _gradient(self, model, x_in, y, eot: int):
        """EOT-mean gradient and loss; fooled on any / on every one of the ``eot`` passes."""
        grad = torch.zeros_like(x_in)
        loss_sum = torch.zeros(x_in.shape[0], device=x_in.device)
        fooled = torch.zeros(x_in.shape[0], dtype=torch.bool, device=x_in.device)
        fooled_all = torch.ones_like(fooled)
        for _ in range(eot):
            xr = x_in.detach().requires_grad_(True)
            logits = model(xr)
            loss = attack_loss(logits, y, self.threat.loss)
            if loss.requires_grad:
                (g,) = torch.autograd.grad(loss.sum(), xr, allow_unused=True)
                if g is not None:
                    grad += g
            # else: the graph is broken (a non-differentiable defense attacked without BPDA):
            # the gradient is zero, as the attacker sees it; diagnostics flag it
            # (unavailable_gradients) instead of the run crashing
            loss_sum += loss.detach()
            wrong = logits.argmax(1) != y
            fooled |= wrong
            fooled_all &= wrong
        return grad / eot, loss_sum / eot, fooled, fooled_all

    def _step(self, delta, grad, x, step):
        t = self.threat
        eps = t.epsilon
        norm = Norm.of(t.norm)
        if t.norm != "l1":
            delta = norm.project(norm.ascent_step(delta, grad, step), eps)
            return (x + delta).clamp(0, 1) - x
        if t.l1_step == "dense":
            # Paper eq. 1: dense step, rescaled onto the ℓ1 sphere; no box clipping here.
            delta = norm.ascent_step(delta, grad, step)
            return delta * (eps / (norm.size(delta) + TINY))
        # Sparse steepest ascent: the top (1 − l1_sparsity) share of |gradient| among
        # coordinates that can still move in the ascent direction.
        xd = x + delta
        movable = ~(((xd >= 1) & (grad > 0)) | ((xd <= 0) & (grad < 0)))
        g = (grad * movable).flatten(1)
        q = torch.quantile(g.abs(), t.l1_sparsity, dim=1, keepdim=True)
        e = torch.where((g.abs() >= q) & (g != 0), g.sign(), torch.zeros_like(g))
        e = e / (e.abs().sum(1, keepdim=True) + TINY)
        return project_l1_box(delta + step * e.view_as(delta), x, eps)

    def __init__(self, threat: PGDThreat, compact: bool = True):
        super().__init__(threat)
        # compact=False keeps images that have stopped in the batch (their results are
        # ignored): the same answers at the cost of the uncompacted engine. Tests and
        # benchmarks/bench_engine.py compare the two; threat models always compact.
        self.compact = compact

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        """Attack ``x`` (labels ``y``); per-sample ``info`` (per image, over its restarts):

        - ``restarts_used``: restarts that attacked the image (early stop: none after the
          first that fooled it);
        - ``stop_step``: index of the returned iterate in the restart that produced the
          answer (0 = the random start, ``steps`` = the iterate after the last step). With
          ``keep_adversarial_iterate`` an image leaves the batch at its first adversarial
          iterate, which is its answer (< ``steps`` when that happened during the steps);
          without it every image runs to ``steps``;
        - ``image_steps``: gradient evaluations computed for the image (× ``eot``), i.e.
          ``stop_step + 1`` for a restart it stopped in, ``steps`` for one it ran through;
        - ``iterate_fooled``: some computed iterate was adversarial.

        Against a randomised defense an image stops only at an iterate that fooled every
        one of its ``eot`` passes (one lucky draw is no answer); if it never does, it runs
        to the end and returns the last iterate when that fools, else its first iterate
        that fooled some pass (as without compaction). A randomised defense's draws depend
        on the batch, so there compaction keeps the answers' distribution, not each draw.
        - ``loss_first``: attack loss at the first iterate of restart 1; ``loss_3q``: at
          iterate ``3·steps//4`` of the latest restart, or at the stop iterate of an image
          that stopped before it; ``loss_last``: at the returned iterate of the latest
          restart (the stop iterate, or the one after the last step). Losses at computed
          iterates are EOT means; the one after the last step is one forward pass.
        """
        t = self.threat
        model = ctx.defense.attack_model(bpda=ctx.bpda_name(t), eot=1).to(ctx.device).eval()
        gen = ctx.generator()
        n = x.shape[0]
        x_adv = x.clone()
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        iterate_fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        restarts_used = torch.zeros(n, dtype=torch.long)
        stop_step = torch.full((n,), t.steps, dtype=torch.long)
        image_steps = torch.zeros(n, dtype=torch.long)
        loss_first = torch.full((n,), float("nan"))
        loss_3q = torch.full((n,), float("nan"))
        loss_last = torch.full((n,), float("nan"))
        step = t.step
        q3 = (3 * t.steps) // 4
        for r in range(t.restarts):
            active = (~fooled if t.early_stop else torch.ones_like(fooled)).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            xa, ya = x[active], y[active]
            delta = Norm.of(t.norm).random_start(xa, t.epsilon, gen) if t.random_start else torch.zeros_like(xa)
            if t.norm != "l1" or t.l1_step == "sparse":
                delta = (xa + delta).clamp(0, 1) - xa
            if t.norm == "l1" and t.l1_step == "sparse":
                delta = project_l1_box(delta, xa, t.epsilon)
            restarts_used[active.cpu()] += 1
            na = xa.shape[0]
            answer = xa.clone()  # the returned iterate per image of this restart
            done = torch.zeros(na, dtype=torch.bool, device=x.device)  # stopped at an adversarial iterate
            stop = torch.full((na,), t.steps, dtype=torch.long)
            # the working batch: rows[i] is the position in xa of row i; alive: still stepping
            rows = torch.arange(na, device=x.device)
            xl, yl, dl = xa, ya, delta
            alive = torch.ones(na, dtype=torch.bool, device=x.device)
            # randomised defense: the first iterate that fooled some pass, the fallback answer
            fallback, has_fallback = xa.clone(), torch.zeros(na, dtype=torch.bool, device=x.device)
            fallback_step, fallback_loss = torch.zeros(na, dtype=torch.long), torch.zeros(na)
            randomised = ctx.defense.capabilities.randomised
            for s in range(t.steps):
                x_it = (xl + dl).clamp(0, 1)
                grad, loss, it_fooled, it_fooled_all = self._gradient(model, x_it, yl, t.eot)
                image_steps[active[rows].cpu()] += t.eot
                it_fooled = it_fooled & alive
                on = active[rows[alive]].cpu()
                iterate_fooled[active[rows[it_fooled]]] = True
                if r == 0 and s == 0:
                    loss_first[on] = loss[alive].cpu()
                if s == q3:
                    loss_3q[on] = loss[alive].cpu()
                if t.keep_adversarial_iterate and randomised:
                    new = it_fooled & ~has_fallback[rows]
                    fallback[rows[new]] = x_it[new].detach()
                    has_fallback[rows[new]] = True
                    fallback_step[rows[new].cpu()] = s
                    fallback_loss[rows[new].cpu()] = loss[new].cpu()
                stops = (it_fooled_all & alive) if randomised else it_fooled
                if t.keep_adversarial_iterate and stops.any():
                    # an adversarial iterate is the image's answer: it leaves the batch here
                    pos = rows[stops]
                    answer[pos] = x_it[stops].detach()
                    done[pos] = True
                    stop[pos.cpu()] = s
                    gone = active[pos].cpu()
                    loss_last[gone] = loss[stops].cpu()
                    if s < q3:
                        loss_3q[gone] = loss[stops].cpu()
                    alive = alive & ~stops
                    if self.compact:
                        rows, xl, yl, dl, grad = rows[alive], xl[alive], yl[alive], dl[alive], grad[alive]
                        alive = alive[alive]
                        if rows.numel() == 0:
                            break
                dl = self._step(dl, grad, xl, step).detach()
            if alive.any():
                final = (xl[alive] + dl[alive]).clamp(0, 1)
                ya_live = yl[alive]
                with torch.no_grad():
                    logits = model(final)
                pos = rows[alive]
                answer[pos] = final
                done[pos] = logits.argmax(1) != ya_live
                loss_last[active[pos].cpu()] = attack_loss(logits, ya_live, t.loss).cpu()
                back = pos[~done[pos] & has_fallback[pos]]  # randomised: an earlier pass was fooled
                answer[back] = fallback[back]
                done[back] = True
                stop[back.cpu()] = fallback_step[back.cpu()]
                loss_last[active[back].cpu()] = fallback_loss[back.cpu()]
            # keep the first restart that fools a sample, else the latest attempt
            keep = done | ~fooled[active]
            x_adv[active[keep]] = answer[keep]
            stop_step[active[keep].cpu()] = stop[keep.cpu()]
            fooled[active] |= done
            if ctx.progress:
                ctx.progress(0, restart_stage(r + 1, t.restarts, int(fooled.sum()), n))
        return AttackOutput(
            x_adv=x_adv,
            claimed=fooled.cpu(),
            info={
                "restarts_used": restarts_used,
                "iterate_fooled": iterate_fooled.cpu(),
                "loss_first": loss_first,
                "loss_3q": loss_3q,
                "loss_last": loss_last,
                "stop_step": stop_step,
                "image_steps": image_steps,
            },
        )
