"""Before a run computes anything: every check of the suite and its plug-ins (:func:`preflight`:
defenses load and fit the data, BPDA stand-ins and attack backends exist), and the probes of each
defense with the adaptations they choose (:func:`probe_suite`). A failing check is one
:class:`~robust_bench_sc.errors.RunError` line."""

from __future__ import annotations

from typing import Any, Callable

from rich.console import Console
from rich.markup import escape

from robust_bench_sc.config import SuiteConfig
from robust_bench_sc.data import load_data
from robust_bench_sc.errors import RunError
from robust_bench_sc.plugins import build_defense


def preflight(suite: SuiteConfig, warn: Callable[[str], None] | None = None,
              built: dict[str, Any] | None = None, probe_timeout: float | None = None) -> dict[str, str]:
    """Every check ``run`` would otherwise make only when it reaches a job: each defense loads
    (registry name or reference, parameters bound to its factory's signature, weights), each
    threat model's BPDA stand-in exists on each defense it is run against, transfer sources
    load and offer the craft's stand-in, every attack backend is registered. Nested
    threat models are validated when the suite loads. Returns each defense's weight
    fingerprint. Imports and builds the plug-ins: a suite is code.

    ``warn`` hears of suites that run but measure the wrong thing: a gradient attack without
    BPDA on a defense that declares its gradients meaningless (``Capabilities.differentiable``
    False) measures gradient masking, not robustness. ``built``, when given, receives the
    defenses built (label → Defense), for the probes; those already in it are reused (as
    ``plugins.name_defenses`` leaves them)."""
    from robust_bench_sc.attacks.base import ATTACKS, attack_class, attack_key
    from robust_bench_sc.registry import RegistryError

    def build(ref, params, label, what):
        try:
            return build_defense(ref, params, name=label)
        except RegistryError as exc:
            raise RunError(f"{what}: {exc}") from None

    defenses = {d.label: (built or {}).get(d.label) or build(d.load_ref, d.params, d.label, f"defense {d.label!r}")
                for d in suite.defenses}
    probe = load_data(suite.data, n_images=min(2, suite.data.n_images))  # the data folder, read as run reads it
    for d in defenses.values():
        check_defense_fits(d, probe, probe_timeout)
    if built is not None:
        built.update(defenses)

    def check_bpda(tm, defense, what):
        if tm.bpda is None and tm.gradient_based and not defense.capabilities.differentiable and warn is not None:
            stand_ins = f" (it offers {', '.join(defense.bpda_names())})" if defense.bpda_names() else ""
            warn(f"threat model {what}: a gradient attack without BPDA on {defense.name!r}, whose gradients are "
                 f"not meaningful (Capabilities.differentiable is False): `scbench run` probes the defense and "
                 f"chooses BPDA where its gradients fail; with --no-probes it would measure gradient masking, not "
                 f"robustness; set bpda: auto{stand_ins} to say so in the suite")
        if tm.bpda in (None, "auto"):
            return
        names = defense.bpda_names()
        if tm.bpda not in names:
            offers = f"offers {', '.join(names)}" if names else "has no preprocess, so no BPDA stand-in applies"
            raise RunError(f"threat model {what}: bpda {tm.bpda!r}: defense {defense.name!r} {offers}")

    def check_backend(tm, what):
        if type(tm).backends.get(tm.backend) is None:  # evaluated by the engine itself (clean, worst case)
            return
        key = attack_key(tm)
        if key not in ATTACKS:
            raise RunError(f"threat model {what}: no attack implementation {key!r}; available: "
                           f"{', '.join(ATTACKS.names())}")
        try:
            attack_class(tm)
        except ImportError as exc:
            raise RunError(f"threat model {what}: backend {tm.backend!r} cannot be imported ({exc})") from None

    sources: dict[str, object] = {}

    def walk(tm, targets):  # nested threat models are typed and validated already (threat_models.py)
        if tm.kind == "none":
            return
        check_backend(tm, repr(tm.name))
        if tm.nested_fields:  # the composite protocol (threat_models.ThreatModel.members_run_on)
            if tm.members_run_on == "source":
                ref, params, label = tm.source_spec
                if label not in sources:
                    sources[label] = build(ref, params, label, f"threat model {tm.name!r}: source")
                targets = [sources[label]]
            for sub in tm.members():
                walk(sub, targets)
            return
        for d in targets:
            check_bpda(tm, d, repr(tm.name))

    for t in suite.threat_models:  # against the defenses that run it
        walk(t, [defenses[d.label] for d in suite.defenses if d.runs(t.name)])
    return {label: d.fingerprint() for label, d in defenses.items()}


PROBE_IMAGES = 8  # the first images of the suite the probes run on


def probe_suite(suite: SuiteConfig, defenses: dict[str, Any], device: str = "cpu",
                console: Console | None = None, quiet: bool = False,
                probe_timeout: float | None = None) -> tuple[SuiteConfig, dict[str, Any]]:
    """Probe every defense (robust_bench_sc.probes) on the suite's first ``PROBE_IMAGES``
    images, before any attack; return the suite carrying the adaptations (``auto``,
    robust_bench_sc.adapt) and what run.json keeps of them (``probes``). Prints each finding
    and each choice with its reason; a defense whose probes cannot run is one RunError line."""
    from robust_bench_sc.adapt import adaptation
    from robust_bench_sc.probes import ProbeError, probe_defense

    split = load_data(suite.data, n_images=min(PROBE_IMAGES, suite.data.n_images))
    adaptations: dict[str, Any] = {}
    record: dict[str, Any] = {}
    for spec in suite.defenses:
        d = defenses[spec.label].to(device)
        try:
            found = probe_defense(d, split.x, split.y, device=device, seed=suite.seed, n_classes=split.n_classes,
                                  timeout=probe_timeout)
            adapted = adaptation(spec.label, d, found, split.x, split.y, device)
        except ProbeError as exc:
            raise RunError(str(exc)) from None  # it names the probe and the defense
        adaptations[spec.label] = adapted
        threats = [t for t in suite.threat_models if spec.runs(t.name)]
        record[spec.label] = adapted.to_dict(threats)
        if console is None:
            continue
        if not quiet:  # --quiet: the warnings only (every finding and choice stays in run.json)
            console.print(f"[bold]probes[/] {escape(spec.label)} ({found.n_images} images, {found.seconds:.1f}s)",
                          highlight=False)
            for line in found.summary_lines():
                console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
        for w in adapted.warnings + [w for t in threats for w in adapted.warnings_for(t)]:
            console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
        for t in threats if not quiet else []:
            for c in adapted.threat(t)[1]:
                console.print(f"  auto {escape(spec.label)} × {escape(t.name)}: {escape(c.line())}", highlight=False,
                              soft_wrap=True)
    out = suite.model_copy()
    out._adaptations = adaptations
    return out, record


CIFAR_SHAPE = (3, 32, 32)


def check_defense_fits(defense, split, probe_timeout: float | None = None) -> None:
    """One forward pass on the dataset's first images, before anything is computed: a defense
    that returns another number of logits than the dataset has classes, or that cannot take
    the dataset's image shape (it fails on them but runs on 3×32×32 images: e.g. a 32×32-only
    model on 64×64 images), is refused in one line. A defense that fails on any input is left
    to the run, which records or reports it as before. A forward pass that gives no answer
    within ``probe_timeout`` seconds (default ``probes.FIRST_FORWARD_LIMIT``) is one line."""
    import torch

    from robust_bench_sc.probes import FIRST_FORWARD_LIMIT, ProbeTimeout, time_limit
    from robust_bench_sc.registry import plugin_frame

    from robust_bench_sc.predictions import DefenseOutputError, checked_logits

    c, h, w = split.image_shape
    what = f"the {split.images} ({c}×{h}×{w}, {split.n_classes} classes, dataset {split.dataset})"

    def forward(x):
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # leaves the RNG as it was
            return defense(x)

    limit = probe_timeout or FIRST_FORWARD_LIMIT
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), time_limit(limit, f"defense {defense.name!r}'s first "
                                                                                   "forward pass"):
            checked_logits(defense, split.x[:2], split.n_classes)
    except ProbeTimeout as exc:
        where = plugin_frame(exc)
        raise RunError(f"defense {defense.name!r}: one forward pass on 2 images gave no answer within {limit:g} s "
                       + ("(--probe-timeout)" if probe_timeout else "(the first pass's limit; --probe-timeout sets it)")
                       + "; the defense hangs"
                       + (f"\n  stopped at {where}" if where else "")) from None
    except DefenseOutputError as exc:
        raise RunError(f"{exc}; it does not fit {what}") from None
    except Exception as exc:
        if split.image_shape == CIFAR_SHAPE:
            return
        try:
            forward(torch.zeros(2, *CIFAR_SHAPE))
        except Exception:
            return  # fails on CIFAR-shaped images too: not a question of shape
        first = (str(exc).strip().splitlines() or [""])[0]
        raise RunError(f"defense {defense.name!r} cannot take {what} (it runs on 3×32×32 images): "
                       f"{type(exc).__name__}: {first}") from None
