"""One call from Python: ``benchmark(defense, threat_models=[...], n_images=N, out=DIR)``.

A thin layer over the command line's path, not a second one: it builds the same validated
:class:`~robust_bench_sc.config.SuiteConfig` that ``scbench run`` loads from a suite file
(threat models from ``attack_suites/`` or inline, checked by the same schemas, nested ones
too), hands it to :func:`~robust_bench_sc.runner.run_suite` (preflight, plan, records, resume,
weight fingerprints, ``run.json``, ``summary.csv``) and returns the summary as a DataFrame.

Calling it again with the same ``out`` reuses every recorded job whose spec hash matches and
computes the rest; a defense whose weights differ from those its records in ``out`` were
computed with is refused (both fingerprints named), as ``scbench run`` refuses it.

An in-memory defense (a :class:`Defense` or an ``nn.Module``) enters the suite as the
reference ``robust_bench_sc.api:in_memory_defense`` with ``params: {key: <name>}``: its job
hashes depend on its name and the settings, its records carry the fingerprint of its weights.
It exists only in the calling process, so such a run is local (no Ray) and cannot be resumed
by ``scbench run``; registered names and ``module:attr`` references have neither limit.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from robust_bench_sc.registry import RegistryError, did_you_mean
from robust_bench_sc.yamlio import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

    from robust_bench_sc.config import SuiteConfig
    from robust_bench_sc.defense import Defense
    from robust_bench_sc.threat_models import ThreatModel

    DefenseLike = Union[Defense, nn.Module, str]
    ThreatLike = Union[str, Mapping[str, Any], ThreatModel]

IN_MEMORY_REF = "robust_bench_sc.api:in_memory_defense"
SOURCE = "benchmark()"

# label -> the in-memory Defense of the latest benchmark() call that used that label
_IN_MEMORY: dict[str, Defense] = {}


def in_memory_defense(key: str) -> Defense:
    """The defense object passed to :func:`benchmark` under the name ``key`` (this process only)."""
    try:
        return _IN_MEMORY[key]
    except KeyError:
        raise RegistryError(f"in-memory defense {key!r} was passed to benchmark() in another process; it exists "
                            "only there (name a registered defense or a 'module:attr' factory to run it elsewhere)"
                            ) from None


def hold_tensors(x: Any, y: Any, n_classes: int | None = None) -> tuple[str, int]:
    """Keep ``x``, ``y`` (this process) as the ``tensors`` dataset under their content hash;
    returns (hash, number of images). One-line ConfigError for anything a run could not use."""
    import hashlib

    import numpy as np
    import torch

    from robust_bench_sc.datasets import Arrays, InMemory

    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ConfigError(f"{SOURCE}: x and y must both be torch tensors (got {type(x).__name__}, {type(y).__name__})")
    if x.dim() != 4 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ConfigError(f"{SOURCE}: x {tuple(x.shape)}, y {tuple(y.shape)}: expected x (N, C, H, W) and y (N,), N ≥ 1")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ConfigError(f"{SOURCE}: y is {y.dtype}; expected integer class labels")
    if x.dtype == torch.uint8:
        xf = x.float() / 255.0
    elif x.dtype.is_floating_point:
        xf = x.detach().float()
        if not torch.isfinite(xf).all() or xf.min() < 0 or xf.max() > 1:
            raise ConfigError(f"{SOURCE}: x has values outside [0, 1] (min {xf.min().item():.4g}, max "
                              f"{xf.max().item():.4g}); models take images in [0, 1] (wrap a model that expects "
                              "normalised inputs in Normalize, docs/datasets.md)")
    else:
        raise ConfigError(f"{SOURCE}: x is {x.dtype}; expected float in [0, 1] or uint8")
    yl = y.detach().cpu().long()
    k = int(yl.max()) + 1 if n_classes is None else n_classes
    if isinstance(k, bool) or not isinstance(k, int) or k < 2 or int(yl.min()) < 0 or int(yl.max()) >= k:
        raise ConfigError(f"{SOURCE}: labels {int(yl.min())}..{int(yl.max())} with n_classes={k!r}: expected "
                          "labels in 0..n_classes-1 and at least 2 classes")
    nhwc = xf.cpu().permute(0, 2, 3, 1).contiguous().numpy()
    h = hashlib.sha256(nhwc.tobytes())
    h.update(yl.numpy().tobytes())
    h.update(str((k, nhwc.shape)).encode())
    key = "tensors-" + h.hexdigest()[:16]
    InMemory.held[key] = Arrays(nhwc, yl.numpy(), np.arange(len(yl), dtype=np.int64), k, "given", key)
    return key, int(x.shape[0])


def wrap_module(module: nn.Module, name: str | None = None) -> Defense:
    """A plain classifier as a :class:`Defense`: no preprocess, differentiable, deterministic.

    ``module`` maps float images in [0, 1], NCHW (CIFAR-10: ``(n, 3, 32, 32)``), to logits
    ``(n, 10)``; it is put in eval mode. ``name`` (default: the module's class name) labels it
    in the tables and enters its job hashes; its weight fingerprint is a hash of its
    ``state_dict()`` (every parameter and buffer), so other weights under one name are refused
    in a run folder that holds records of the first.
    """
    from robust_bench_sc.defense import module_defense

    return module_defense(module, name or type(module).__name__,
                          f"{type(module).__name__} passed to benchmark() ([0, 1] NCHW images -> logits)")


#: fixed images on which :func:`model_identity` records what an in-memory model answers
PROBE_SHAPE = (2, 3, 32, 32)


def model_identity(obj: Defense) -> str:
    """What an in-memory defense is beyond its name and weights (whose hash its records carry
    as the fingerprint): the qualified name and source of each module's class, and its logits
    on fixed probe images (seeded, RNG state restored; 4 significant digits, so that a
    parameter-free model is told apart by what it computes). 16 hex digits; the same object
    (or a copy of the same code and weights) always gets the same one in one environment."""
    import hashlib
    import inspect

    import torch

    h = hashlib.sha256()
    for module in obj.modules():
        cls = type(module)
        h.update(f"{cls.__module__}.{cls.__qualname__}".encode())
        try:
            h.update(inspect.getsource(cls).encode())
        except (OSError, TypeError):  # a class typed at a prompt or built at run time: its name only
            pass
    modules = obj.modules()
    state = _module_state(modules)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            x = torch.rand(PROBE_SHAPE, generator=torch.Generator().manual_seed(0))
            device = next((p.device for m in modules for p in m.parameters()), torch.device("cpu"))
            for m in modules:
                m.eval()
            out = obj(x.to(device))
            if isinstance(out, torch.Tensor) and out.device.type != "meta":
                values = out.detach().float().cpu().flatten().tolist()
                h.update(" ".join(f"{v:.4g}" for v in values).encode())
            else:
                h.update(f"probe:{type(out).__name__}".encode())
    except Exception as exc:  # noqa: BLE001 - a model that fails here fails the run's own checks, with their message
        h.update(f"probe failed:{type(exc).__name__}".encode())
    finally:
        _restore_module_state(state)
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _in_memory_class() -> Any:
    """The InMemoryDefense class, built on first use (importing api.py does not import torch)."""
    from robust_bench_sc.defense import Defense

    @dataclasses.dataclass
    class InMemoryDefense(Defense):
        """A defense passed to :func:`benchmark`: its fingerprint covers its weights (as every
        defense's) and its :func:`model_identity` (class code and probe outputs), so two models
        under one name with the same (or no) weights never share records."""

        identity: str = ""

        @classmethod
        def of(cls, obj: Defense) -> "InMemoryDefense":
            fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(Defense)}
            return cls(**fields, identity=model_identity(obj))

        def fingerprint(self) -> str:
            import hashlib

            return hashlib.sha256(f"{super().fingerprint()}:{self.identity}".encode()).hexdigest()[:16]

    return InMemoryDefense




def _module_state(modules: Sequence[Any]) -> list[tuple[Any, bool, list[tuple[Any, bool]]]]:
    """Train/eval mode of every (sub)module and ``requires_grad`` of every parameter."""
    seen: set[int] = set()
    out = []
    for root in modules:
        for m in root.modules():
            if id(m) in seen:
                continue
            seen.add(id(m))
            out.append((m, m.training, [(p, p.requires_grad) for p in m.parameters(recurse=False)]))
    return out


def _restore_module_state(state: list[tuple[Any, bool, list[tuple[Any, bool]]]]) -> None:
    for m, training, params in state:
        m.training = training
        for p, grad in params:
            p.requires_grad_(grad)


def _caller_modules(defense: Any) -> list[Any]:
    """The caller's modules that a run may put in eval mode or freeze."""
    from torch import nn

    from robust_bench_sc.defense import Defense

    if isinstance(defense, nn.Module):
        return [defense]
    if isinstance(defense, Defense):
        return defense.modules()
    return []


def _defense_spec(defense: Any, name: str | None, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The suite's defense entry for ``defense`` (registering an in-memory one)."""
    from torch import nn

    from robust_bench_sc.defense import Defense

    if isinstance(defense, str):
        if not defense.strip():
            raise ConfigError(f"{SOURCE}: defense: an empty name; give a registered name (scbench defenses), "
                              "'module:attr', a Defense or an nn.Module")
        return {"ref": defense, "name": name or "", "params": dict(params or {})}
    if params:
        raise ConfigError(f"{SOURCE}: params: only for a registered name or 'module:attr' factory, not for a "
                          f"{type(defense).__name__} object (got {sorted(params)})")
    if isinstance(defense, Defense):
        obj = dataclasses.replace(defense, name=name or defense.name)  # the caller's object keeps its name
    elif isinstance(defense, nn.Module):
        obj = wrap_module(defense, name)
    else:
        raise ConfigError(f"{SOURCE}: defense: expected a robust_bench_sc.Defense, a torch nn.Module, a registered "
                          f"defense name or 'module:attr', got {type(defense).__name__}")
    if not obj.name or not isinstance(obj.name, str):
        raise ConfigError(f"{SOURCE}: defense: the Defense has no name; pass name=...")
    _IN_MEMORY[obj.name] = _in_memory_class().of(obj)
    return {"ref": IN_MEMORY_REF, "name": obj.name, "params": {"key": obj.name}}


def _threat_model(entry: Any, i: int) -> ThreatModel:
    """One entry of ``threat_models`` → a validated threat model (its schema validates the
    nested ones, transfer ``craft`` and worst_case ``attacks``, too)."""
    from robust_bench_sc.config import resolve_threat_entry, validate_threat_model
    from robust_bench_sc.threat_models import ThreatModel

    where = f"{SOURCE}: threat_models[{i}]"
    if isinstance(entry, ThreatModel):
        return entry
    if not isinstance(entry, (str, Path, Mapping)):
        raise ConfigError(f"{where}: expected a name in attack_suites/, a mapping or a ThreatModel, got "
                          f"{type(entry).__name__}")
    try:  # a name in attack_suites/ or a .yaml path; a mapping, with use: as in a suite
        r = resolve_threat_entry(dict(entry) if isinstance(entry, Mapping) else entry, allow_path=True)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    d = r.mapping
    if r.path is not None:  # errors name that file and line
        return validate_threat_model(r.lined, str(r.path), r.lined, default_name=r.path.stem)
    return validate_threat_model(d, where, default_name=str(d.get("name") or d.get("attack") or f"threat_model_{i}"))


def build_suite(defense: Any, threat_models: Sequence[Any], *, n_images: int | None = None, name: str | None = None,
                params: Mapping[str, Any] | None = None, seed: int = 0, chunk_size: int = 100,
                worst_case_over: Sequence[str] = (), data_dir: str | Path | None = None,
                suite_name: str = "benchmark", dataset: str | None = None, split: str | None = None,
                x: Any = None, y: Any = None, n_classes: int | None = None) -> SuiteConfig:
    """The validated suite :func:`benchmark` runs (arguments as there); raises ConfigError."""
    from robust_bench_sc.config import SuiteConfig, resolve_worst_case

    n_given = None
    if x is not None or y is not None:
        if dataset is not None or data_dir is not None or split is not None:
            raise ConfigError(f"{SOURCE}: x, y are the images; dataset, data_dir and split name other images: give one")
        key, n_given = hold_tensors(x, y, n_classes)
        dataset, data_dir = "tensors", key
    elif n_classes is not None:
        raise ConfigError(f"{SOURCE}: n_classes goes with x, y (a dataset declares its own)")
    high = n_given
    for label, value, low, top in (("n_images", n_images, 1, high), ("chunk_size", chunk_size, 1, None),
                                   ("seed", seed, 0, None)):
        if value is None and label == "n_images":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (top is not None and value > top):
            allowed = f"{low}..{top}" if top is not None else f">= {low}"
            extra = f" (x holds {n_given} images)" if label == "n_images" and n_given else ""
            raise ConfigError(f"{SOURCE}: {label}={value!r}: must be a whole number in {allowed}{extra}")
    if n_images is None and n_given is not None:
        n_images = n_given
    if isinstance(threat_models, (str, Mapping)) or not isinstance(threat_models, Sequence) or not threat_models:
        raise ConfigError(f"{SOURCE}: threat_models: a non-empty list of names in attack_suites/, mappings or "
                          f"ThreatModel objects, got {threat_models!r}")
    tms = [_threat_model(t, i) for i, t in enumerate(threat_models)]
    data: dict[str, Any] = {"chunk_size": chunk_size}
    if n_images is not None:
        data["n_images"] = n_images
    if data_dir is not None:
        data["root" if dataset else "data_dir"] = str(data_dir)
    if dataset is not None:
        data["dataset"] = dataset
    if split is not None:
        data["split"] = split
    suite = SuiteConfig.build({"name": suite_name, "seed": seed, "data": data,
                               "defenses": [_defense_spec(defense, name, params)], "threat_models": tms,
                               "worst_case_over": list(worst_case_over)}, SOURCE)
    return resolve_worst_case(suite, tms, None, SOURCE)


def benchmark(defense: DefenseLike, threat_models: Sequence[ThreatLike] = ("clean",), *,
              n_images: int | None = None, out: str | Path | None = None, name: str | None = None,
              params: Mapping[str, Any] | None = None, seed: int = 0, chunk_size: int = 100,
              worst_case_over: Sequence[str] = (), device: str = "cpu", threads: int | None = None,
              data_dir: str | Path | None = None, suite_name: str = "benchmark", results_root: str | Path = "results",
              progress: bool = False, quiet: bool = False, dataset: str | None = None, split: str | None = None,
              x: Any = None, y: Any = None, n_classes: int | None = None,
              probe_timeout: float | None = None) -> pd.DataFrame:
    """Run ``defense`` through ``threat_models`` on the first ``n_images`` of a dataset (default:
    the CIFAR-10 test images of ``cifar10_npz``) or on your own tensors ``x``, ``y``.

    Args:
        defense: a :class:`~robust_bench_sc.Defense`; a plain ``torch.nn.Module`` classifier
            (float images in [0, 1], NCHW ``(n, 3, 32, 32)`` → logits ``(n, 10)``; wrapped
            as a Defense named ``name`` or its class name, its weight fingerprint computed from
            its ``state_dict()``); or a registered defense name (``scbench defenses``) or
            ``module:attr`` / ``file.py:attr`` factory, built with ``params``.
        threat_models: names of files in ``attack_suites/`` (``scbench threat-models``), paths
            of threat-model YAML files, mappings as a suite's inline entries (``use: NAME``
            plus overrides allowed), or :class:`~robust_bench_sc.threat_models.ThreatModel`
            objects.
        n_images: the first N images (default 1000; with ``x``: all of them).
        dataset, split, data_dir: a registered dataset plug-in (``scbench datasets``: ``cifar10``,
            ``cifar100``, ``cifar10_npz``, ``npz``, ...), its split and its folder (or file).
        x, y: your own images instead: float tensor (N, C, H, W) in [0, 1] (or uint8 0-255)
            and integer labels (N,); hashed like a dataset (``run.json``'s ``data_hash``).
            ``n_classes``: logits per image (default max(y) + 1). Such a run is local.
        out: run folder, as ``scbench run --out``. Called again with the same folder, the
            run resumes (recorded jobs with the same spec hash are reused, not recomputed); a
            defense whose weights changed, a record of other settings under a planned job's
            name, or a folder of another suite is refused. Default: as the CLI,
            ``<results_root>/<suite_name>/<timestamp>`` (the newest unfinished run of the
            same settings is resumed).
        name: the defense's label in the tables (enters its job seeds and hashes).
        params: keyword arguments of a registered factory.
        seed, chunk_size, worst_case_over: as in a suite file.
        device: ``cpu`` or ``cuda``; threads: torch CPU threads (no effect on the numbers).
        progress: progress bars; quiet: no messages at all on stderr.
        probe_timeout: seconds each probe may take (``scbench run --probe-timeout``; default:
            scaled from one forward pass); a defense that hangs is a ``RunError`` naming the probe.

    Returns:
        The summary, one row per (defense, threat model), with the columns of ``summary.csv``
        (accuracies in %); ``.attrs`` holds ``run_dir``, ``computed_jobs`` and ``reused_jobs``.

    Raises:
        ConfigError (a ValueError) for bad arguments, one line naming the argument and the
        allowed values; ``RunError`` for what the run refuses (as ``scbench run`` does).
    """
    import torch
    from rich.console import Console

    from robust_bench_sc.runner import run_suite

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"{SOURCE}: device={device!r}: allowed values are cpu, cuda, cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{SOURCE}: device={device!r}: no CUDA device is available here")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"{SOURCE}: threads={threads!r}: must be a whole number >= 1")
    if probe_timeout is not None and (isinstance(probe_timeout, bool) or not isinstance(probe_timeout, (int, float))
                                      or not probe_timeout > 0):
        raise ConfigError(f"{SOURCE}: probe_timeout={probe_timeout!r}: must be a number of seconds > 0")
    state = _module_state(_caller_modules(defense))  # the caller's model is theirs: restored as found
    try:
        return _benchmark(defense, threat_models, n_images=n_images, out=out, name=name, params=params, seed=seed,
                          chunk_size=chunk_size, worst_case_over=worst_case_over, device=device, threads=threads,
                          data_dir=data_dir, suite_name=suite_name, results_root=results_root, progress=progress,
                          quiet=quiet, dataset=dataset, split=split, x=x, y=y, n_classes=n_classes,
                          probe_timeout=probe_timeout)
    finally:
        _restore_module_state(state)


def _benchmark(defense: Any, threat_models: Sequence[Any], *, n_images: int | None, out: str | Path | None,
               name: str | None, params: Mapping[str, Any] | None, seed: int, chunk_size: int,
               worst_case_over: Sequence[str], device: str, threads: int | None, data_dir: str | Path | None,
               suite_name: str, results_root: str | Path, progress: bool, quiet: bool, dataset: str | None,
               split: str | None, x: Any, y: Any, n_classes: int | None,
               probe_timeout: float | None = None) -> pd.DataFrame:
    import torch
    from rich.console import Console

    from robust_bench_sc.runner import run_suite

    suite = build_suite(defense, threat_models, n_images=n_images, name=name, params=params, seed=seed,
                        chunk_size=chunk_size, worst_case_over=worst_case_over, data_dir=data_dir,
                        suite_name=suite_name, dataset=dataset, split=split, x=x, y=y, n_classes=n_classes)
    if threads is not None:
        torch.set_num_threads(threads)
    label = suite.defenses[0].label
    call = (f"robust_bench_sc.benchmark({label!r}, threat_models={[t.name for t in suite.threat_models]!r}, "
            f"n_images={suite.data.n_images}, seed={suite.seed})")
    outcome = run_suite(suite, out=out, device=device, console=Console(stderr=True, quiet=quiet),
                        results_root=results_root, command=[call], show_progress=progress,
                        probe_timeout=probe_timeout)
    table = outcome.summary.reset_index(drop=True)
    table.attrs.update(run_dir=str(outcome.run_dir), computed_jobs=outcome.computed_chunks,
                       reused_jobs=outcome.resumed_chunks)
    return table
