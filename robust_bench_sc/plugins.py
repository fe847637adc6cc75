"""Defense plug-ins: the registry and how a suite's defense entry becomes a Defense."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from torch import nn

from robust_bench_sc.defense import Defense, module_defense
from robust_bench_sc.registry import Registry, RegistryError, is_reference, load_reference

if TYPE_CHECKING:
    from robust_bench_sc.config import SuiteConfig


def _defense_or_factory(obj: Any) -> bool:
    return isinstance(obj, Defense) or callable(obj)


# entries: a Defense, or a factory (params as keyword arguments) that returns one
DEFENSES: Registry[Any] = Registry("defense", entry_point_group="robust_bench_sc.defenses", accepts=_defense_or_factory,
                                   expected="a robust_bench_sc.Defense or a factory returning one")


def _plain_module(module: nn.Module, ref: str, how: str) -> Defense:
    """A plain ``nn.Module`` classifier named by ``ref`` (a module or a factory's output) as a
    Defense, labelled by the reference's last name (``file.py:make`` → ``make``)."""
    label = ref.rpartition(":")[2] or ref
    return module_defense(module, label, f"{type(module).__name__} from {ref} ({how}; a plain nn.Module: no "
                                         "preprocess declared, the probes measure randomness and gradients)")


def _materialise(obj: Any, ref: str, params: dict[str, Any]) -> Defense:
    if isinstance(obj, (Defense, nn.Module)):
        if params:
            raise RegistryError(f"defense {ref!r} is a {type(obj).__name__} instance; it takes no params "
                                f"(got {sorted(params)})")
        return obj if isinstance(obj, Defense) else _plain_module(obj, ref, "a module instance")
    if callable(obj):
        try:
            inspect.signature(obj).bind(**params)
        except TypeError as exc:
            if not params:  # a function of the images (x → logits) is a classifier, not a factory
                raise RegistryError(f"defense {ref!r} is a function that needs arguments ({exc}); a defense is a "
                                    "factory called with no arguments (or the suite's params) that returns a "
                                    "robust_bench_sc.Defense or a torch nn.Module; a function of the images "
                                    "(x → logits) is neither: wrap it in an nn.Module whose forward calls it") from None
            raise RegistryError(f"defense {ref!r} does not take params {sorted(params)}: {exc}") from None
        out = obj(**params)
        if isinstance(out, nn.Module):
            return _plain_module(out, ref, "its factory's output")
        if not isinstance(out, Defense):
            raise RegistryError(f"defense factory {ref!r} returned {type(out).__name__}, expected a "
                                "robust_bench_sc.Defense or a torch nn.Module classifier")
        return out
    raise RegistryError(f"{ref!r} is neither a Defense, an nn.Module, nor a factory returning one")


def build_defense(ref: str, params: dict[str, Any] | None = None, name: str | None = None) -> Defense:
    """A registry name, ``module:attr`` or ``path/to/file.py:attr`` → a Defense in eval mode."""
    params = dict(params or {})
    try:
        obj = load_reference(ref) if is_reference(ref) else DEFENSES.get(ref)
        defense = _materialise(obj, ref, params)
    except SystemExit as exc:  # sys.exit() in a plug-in would end scbench with no message
        raise RegistryError(f"defense {ref!r}: its module or factory called sys.exit({exc.code!r}); a plug-in "
                            "must raise an exception saying what is wrong instead") from None
    if not isinstance(obj, Defense):  # the factory's source, as built: part of Defense.code_fingerprint
        import hashlib

        try:
            src = inspect.getsourcefile(obj)
            if src:
                with open(src, "rb") as fh:
                    defense.source_digest = hashlib.sha256(fh.read()).hexdigest()  # type: ignore[attr-defined]
        except (TypeError, OSError):
            pass
    if name:
        defense.name = name
    switched = in_training_mode(defense)
    if switched:  # the tool's choice, stated (adapt.adaptation turns it into a warning)
        defense.eval_switched = switched  # type: ignore[attr-defined]
    return defense.eval()


def in_training_mode(defense: Defense) -> list[str]:
    """The mode-dependent modules (dropout, batch norm) of ``defense`` left in training mode,
    by class name: the defense is evaluated in eval mode, which turns dropout off and makes
    batch norm use its running statistics."""
    mode_dependent = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)
    return sorted({type(m).__name__ for top in defense.modules() for m in top.modules()
                   if m.training and isinstance(m, mode_dependent)})


def name_defenses(suite: SuiteConfig, built: dict[str, Defense] | None = None) -> SuiteConfig:
    """``suite`` with each defense given by reference without a ``name`` named as its
    ``Defense(name=...)`` names itself (config.with_own_names: the label rule and its clash
    check). Builds those defenses only, and puts them in ``built`` under their labels, for
    the caller to reuse; a registry name keeps its label and is not built here."""
    from robust_bench_sc.config import with_own_names

    made: dict[int, Defense] = {}
    for i, spec in enumerate(suite.defenses):
        if spec.takes_own_name:
            try:
                made[i] = build_defense(spec.load_ref, spec.params)
            except RegistryError as exc:
                raise RegistryError(f"defense {spec.label!r}: {exc}") from None
    named = with_own_names(suite, {i: d.name for i, d in made.items()})
    if built is not None:
        for i, d in made.items():
            d.name = named.defenses[i].label
            built[d.name] = d
    return named


def describe_defenses() -> list[tuple[str, str]]:
    """(name, entry point target) for ``scbench defenses``."""
    return [(n, DEFENSES.target(n)) for n in DEFENSES.names()]
