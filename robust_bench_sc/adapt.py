"""``auto``: the attacks adapted to what the probes found a defense to be.

:func:`robust_bench_sc.probes.probe_defense` measures a defense; :func:`adaptation` turns
the findings into a :class:`DefenseAdaptation`, which :meth:`DefenseAdaptation.threat`
applies to each threat model run on that defense. Every choice is a :class:`Choice` with
its reason (``run.json``: ``auto``; printed by ``scbench run``), and the choices of a job
enter its spec hash (:func:`robust_bench_sc.plan.job_spec_hash`), so records computed under
other choices are never mixed with these. A defense the probes find nothing unusual about
gets no choice at all, and its jobs keep the hashes they had before probes existed.

The rules (Carlini et al. 2019; Athalye et al. 2018; AutoAttack's ``rand`` version):

- **randomised** (observed, or declared): the defense is treated as randomised (an
  undeclared one with a warning): every gradient attack averages ``AUTO_EOT`` forward passes
  per gradient unless its threat model sets ``eot`` (``eot: 1`` set on it: a warning), PGD
  stops an image only at an iterate that fooled every pass, and each answer is re-checked on
  ``AUTO_RECHECK`` fresh draws unless ``recheck`` is set: robust accuracy is the expectation
  over those draws, the per-image fraction in the records (``robust_frac``);
- **a preprocess that is differentiable**: ``bpda: auto`` keeps its exact gradients (unless
  the defense declares a ``default_bpda``); **one that is not**: a gradient attack that names
  no ``bpda`` gets ``bpda: auto`` (the declared stand-in, else the identity);
- **no usable gradient even so** (a break inside the classifier): gradient attacks are not
  run; their columns say "not applicable (no gradient)", flagged, and the verdict rests on
  the gradient-free and transfer columns;
- **saturated**, or **outputs that are probabilities** (a softmax inside the classifier): PGD's
  CE loss, whose gradient underflows (or which applies a second softmax), becomes the margin
  (CW) loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from robust_bench_sc.defense import AUTO_BPDA, EXACT_BPDA, IDENTITY_BPDA, Capabilities, Defense
from robust_bench_sc.probes import ProbeFindings, gradient_status
from robust_bench_sc.threat_models import ThreatModel

AUTO_EOT = 20        # AutoAttack's rand version uses 20 EOT iterations
AUTO_RECHECK = 10    # fresh draws per answer on a randomised defense
NO_GRADIENT = "not applicable (no gradient)"


@dataclass(frozen=True)
class Choice:
    """One setting ``auto`` chose for a threat model on a defense, and why."""

    setting: str
    value: Any
    reason: str

    def line(self) -> str:
        return f"{self.setting} {self.value}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "value": self.value, "reason": self.reason}


@dataclass
class DefenseAdaptation:
    """What the probes imply for one defense (see the module's rules)."""

    label: str
    findings: ProbeFindings
    has_preprocess: bool
    declared_bpda: str | None
    exact_preprocess: bool = False      # bpda: auto keeps the exact gradients
    no_gradient: str = ""               # why gradient attacks are not applicable ("" when they are)
    warnings: list[str] = field(default_factory=list)

    @property
    def randomised(self) -> bool:
        return self.findings.treat_as_randomised

    def capabilities(self, caps: Capabilities) -> Capabilities:
        """The defense's capabilities as the attacks should see them."""
        out = caps
        if self.randomised and not caps.randomised:
            out = replace(out, randomised=True)
        if self.exact_preprocess and caps.default_bpda is None:
            out = replace(out, default_bpda=EXACT_BPDA)
        return out

    def apply(self, defense: Defense) -> Defense:
        defense.capabilities = self.capabilities(defense.capabilities)
        return defense

    def threat(self, t: ThreatModel) -> tuple[ThreatModel, list[Choice]]:
        """``t`` as run on this defense, and the choices that made it differ."""
        if t.kind == "none":
            return t, []
        choices: list[Choice] = []
        update: dict[str, Any] = {}
        f = self.findings
        why_random = "randomised (observed, not declared)" if f.undeclared_randomness else \
            "randomised (declared)" if f.randomised_declared else "randomised"
        if t.nested_fields and t.members_run_on == "defense":  # a worst case: each member, adapted
            for field in t.nested_fields:
                given = getattr(t, field)
                adapted = []
                for sub in given if isinstance(given, list) else [given]:
                    sub2, sub_choices = self.threat(sub)
                    adapted.append(sub2)
                    choices += [Choice(f"{sub.name}.{c.setting}", c.value, c.reason) for c in sub_choices]
                if adapted != (given if isinstance(given, list) else [given]):
                    update[field] = adapted if isinstance(given, list) else adapted[0]
            return (t.model_copy(update=update) if update else t), choices
        if self.randomised and t.recheck == 1 and "recheck" not in t.model_fields_set:
            update["recheck"] = AUTO_RECHECK
            choices.append(Choice("recheck", AUTO_RECHECK, f"{why_random}: robust accuracy is the expectation over "
                                                          f"{AUTO_RECHECK} fresh draws per image"))
        if t.gradient_based:
            if self.no_gradient:
                choices.append(Choice("gradient", NO_GRADIENT, self.no_gradient))
                return (t.model_copy(update=update) if update else t), choices
            if self.randomised and t.eot == 1 and "eot" not in t.model_fields_set:
                update["eot"] = AUTO_EOT
                choices.append(Choice("eot", AUTO_EOT, f"{why_random}: EOT over {AUTO_EOT} passes per gradient"))
            if self.has_preprocess and t.bpda is None and f.gradient != "ok":
                update["bpda"] = AUTO_BPDA
                stand_in = self.declared_bpda or IDENTITY_BPDA
                choices.append(Choice("bpda", f"auto ({stand_in})", f"the exact gradient is {f.gradient} and the "
                                      "preprocess is not differentiable: BPDA"))
            elif t.bpda == AUTO_BPDA and self.exact_preprocess and self.declared_bpda is None:
                choices.append(Choice("bpda", f"auto ({EXACT_BPDA})", "the preprocess is differentiable (probe): its "
                                      "exact gradients, not the identity stand-in"))
            if f.saturated and getattr(t, "loss", None) == "ce":
                update["loss"] = "cw"
                choices.append(Choice("loss", "cw", f"saturated ({round(f.saturated_frac * f.n_images)}/"
                                                    f"{f.n_images} images): the CE gradient underflows, the margin "
                                                    "loss leads"))
            elif f.probabilities and getattr(t, "loss", None) == "ce":
                update["loss"] = "cw"
                choices.append(Choice("loss", "cw", f"the outputs are probabilities, not logits "
                                                    f"({round(f.probabilities_frac * f.n_images)}/{f.n_images} "
                                                    "images): CE would apply a second softmax, the margin loss "
                                                    "leads"))
        return (t.model_copy(update=update) if update else t), choices

    def warnings_for(self, t: ThreatModel) -> list[str]:
        """One line per setting of ``t`` the probes contradict (kept as the user set it)."""
        out = []
        members = t.members() if t.nested_fields and t.members_run_on == "defense" else [t]
        for m in members:
            if self.randomised and m.gradient_based and not self.no_gradient and m.eot == 1 \
                    and "eot" in m.model_fields_set:
                out.append(f"threat model {m.name!r} sets eot: 1 on {self.label!r}, which is randomised: its gradients "
                           f"follow one random draw (auto would use eot {AUTO_EOT})")
        return out

    def key(self, t: ThreatModel) -> dict[str, Any]:
        """What enters the job's spec hash: the choices' settings and values (empty: none)."""
        _, choices = self.threat(t)
        out: dict[str, Any] = {c.setting: c.value for c in choices}
        if self.findings.undeclared_randomness and t.kind != "none":
            out["randomised"] = True  # PGD's stopping rule and the re-check change with it
        return out

    def to_dict(self, threats: list[ThreatModel]) -> dict[str, Any]:
        return {"probes": self.findings.to_dict(),
                "treated_as_randomised": self.randomised,
                "exact_preprocess_gradients": self.exact_preprocess,
                "no_gradient": self.no_gradient,
                "warnings": list(self.warnings),
                "threat_models": {t.name: [c.to_dict() for c in self.threat(t)[1]] for t in threats},
                # what entered each job's spec hash (plan.job_spec_hash's ``auto``; scbench status reads it)
                "spec_hash_auto": {t.name: self.key(t) for t in threats}}


def adaptation(label: str, defense: Defense, findings: ProbeFindings, x: torch.Tensor, y: torch.Tensor,
               device: str | torch.device = "cpu") -> DefenseAdaptation:
    """The adaptation of ``defense`` to its probe ``findings`` (``x``, ``y``: the probe images,
    for one more gradient check through the BPDA stand-in where the exact gradient fails)."""
    caps = defense.capabilities
    a = DefenseAdaptation(label, findings, defense.preprocess is not None, caps.default_bpda)
    if findings.undeclared_randomness:
        a.warnings.append(f"defense {label!r} is randomised but does not declare it (randomised=True): "
                          f"{findings.summary_lines()[0]}")
    switched = getattr(defense, "eval_switched", None)
    if switched:
        a.warnings.append(f"defense {label!r} was built in training mode ({', '.join(switched)}); it is evaluated in "
                          "eval mode (dropout off, batch norm on its running statistics), as torch models are for "
                          "inference; a defense whose randomness is dropout must apply it itself "
                          "(F.dropout(x, p, training=True)) and then gets EOT")
    if findings.batch_dependent:
        a.warnings.append(f"defense {label!r}: {findings.batch_line()}")
    if findings.preprocess_differentiable and caps.default_bpda is None:
        a.exact_preprocess = True
    if findings.gradient != "ok":
        if defense.preprocess is None:
            a.no_gradient = f"the defense's gradient is {findings.gradient} ({findings.gradient_detail})"
        else:
            stand_in = caps.default_bpda or IDENTITY_BPDA
            model = defense.attack_model(bpda=stand_in)
            status, detail, _ = gradient_status(model, x.to(device), y.to(device))
            if status != "ok":
                a.no_gradient = (f"the gradient is {findings.gradient} through the exact defense and {status} through "
                                 f"its BPDA stand-in {stand_in!r} ({detail}): the break is inside the classifier")
    if a.no_gradient:
        a.warnings.append(f"defense {label!r}: gradient attacks {NO_GRADIENT}: {a.no_gradient}; robust accuracy "
                          "rests on gradient-free and transfer attacks")
    return a
