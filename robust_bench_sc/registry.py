"""A small lazy registry of plug-ins (defenses, attacks, diagnostics).

Entries are objects or ``"module:attr"`` placeholders imported on first use; entry-point
groups are read lazily too. Registering a name twice is an error; an unknown name gets a
"did you mean" hint. Out-of-registry references (``module:attr`` or
``path/to/file.py:attr``) are resolved by :func:`load_reference`.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class RegistryError(LookupError):
    pass


def did_you_mean(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _import_attr(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _load_file_attr(path_str: str, attr: str) -> Any:
    path = Path(path_str).expanduser().resolve()
    if not path.is_file():
        raise RegistryError(f"plug-in file not found: {path}")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    mod_name = f"scbench_plugin_{path.stem}_{digest}"
    if mod_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise RegistryError(f"cannot import plug-in file {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception:
            del sys.modules[mod_name]
            raise
    obj: Any = sys.modules[mod_name]
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RegistryError(f"{path} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def is_reference(name: str) -> bool:
    """True for ``module:attr`` / ``file.py:attr`` references (not plain registry names)."""
    return ":" in name


def plugin_file(ref: str) -> str | None:
    """The file part of a ``path/to/file.py:attr`` reference (None for registry names and
    ``module:attr``)."""
    target, sep, attr = ref.rpartition(":")
    if sep and target and attr and (target.endswith(".py") or "/" in target or "\\" in target):
        return target
    return None


def resolve_plugin_ref(ref: str, base_dir: str | Path | None) -> str:
    """``ref`` with a relative plug-in file made absolute from ``base_dir`` (a suite's folder);
    registry names, ``module:attr``, absolute and ``~`` paths, and any ref without a base stay."""
    target = plugin_file(ref)
    if target is None or base_dir is None or target.startswith("~") or Path(target).is_absolute():
        return ref
    return f"{Path(base_dir) / target}:{ref.rpartition(':')[2]}"


def load_reference(ref: str) -> Any:
    """Import ``module:attr`` or ``path/to/file.py:attr``."""
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise RegistryError(f"reference {ref!r} must look like 'module:attr' or 'path/to/file.py:attr'")
    if target.endswith(".py") or "/" in target or "\\" in target:
        return _load_file_attr(target, attr)
    try:
        return _import_attr(ref)
    except (ImportError, AttributeError) as exc:
        raise RegistryError(f"cannot load {ref!r}: {exc}") from exc


def _what(obj: Any) -> str:
    """``obj`` in a few words, for "is X, expected Y" messages."""
    if isinstance(obj, type):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    name = type(obj).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def subclass_of(base: type) -> Callable[[Any], bool]:
    """An ``accepts`` test for registries of classes: a subclass of ``base``."""
    return lambda obj: isinstance(obj, type) and issubclass(obj, base)


class Registry(Generic[T]):
    """Name → plug-in of one kind, filled by decorators, direct registration and entry points.

    ``accepts`` says what an entry must be: a class or protocol (``isinstance``), or a test
    (then ``expected`` says in words what it accepts). An entry is checked when registered, or,
    for a lazy ``"module:attr"`` placeholder or an entry point, when first used; a wrong one is
    one line naming the kind, the name and what was expected.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None, *,
                 accepts: type | Callable[[Any], bool] | None = None, expected: str | None = None):
        self.kind = kind
        self.group = entry_point_group
        self._entries: dict[str, Any] = {}
        self._eps_loaded = False
        #: one line per entry point left out because its name was taken (the first one wins)
        self.shadowed: list[str] = []
        if accepts is None:
            self._accepts: Callable[[Any], bool] = lambda obj: True
            self.expected = expected or "anything"
        elif isinstance(accepts, type):
            base = accepts
            self._accepts = lambda obj: isinstance(obj, base)
            self.expected = expected or f"a {base.__module__}.{base.__qualname__}"
        else:
            if expected is None:
                raise TypeError(f"Registry({kind!r}): a test as accepts= needs expected= (what it accepts, in words)")
            self._accepts, self.expected = accepts, expected

    def check(self, name: str, obj: Any) -> T:
        """``obj`` if this registry accepts it, else a :class:`RegistryError` saying what was expected."""
        if not self._accepts(obj):
            raise RegistryError(f"{self.kind} {name!r} is {_what(obj)}, expected {self.expected}")
        return obj

    def register(self, name: str, obj: Any = None):
        """``register(name, obj)``, ``register(name, "module:attr")`` or ``@register(name)``."""
        if obj is None:
            def deco(o):
                self.register(name, o)
                return o
            return deco
        if name in self._entries and self._entries[name] is not obj:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        if not isinstance(obj, str):  # a "module:attr" placeholder is checked when it is imported
            self.check(name, obj)
        self._entries[name] = obj
        return obj

    def _load_entry_points(self) -> None:
        if self._eps_loaded or self.group is None:
            return
        self._eps_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name not in self._entries:
                self._entries[ep.name] = ep.value
            elif ep.value != self.target(ep.name):
                self.shadowed.append(f"{self.kind} {ep.name!r} ({ep.value}) is registered twice; "
                                     f"{self.target(ep.name)} is used")

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries

    def unknown(self, name: str) -> RegistryError:
        """The error for a name that is not registered: a did-you-mean hint and the names there are."""
        self._load_entry_points()
        return RegistryError(f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)}; "
                             f"registered: {', '.join(sorted(self._entries)) or 'none'}")

    def target(self, name: str) -> str:
        """Where the entry ``name`` lives, as ``module:attr`` (without importing it)."""
        self._load_entry_points()
        if name not in self._entries:
            raise self.unknown(name)
        obj = self._entries[name]
        if isinstance(obj, str):
            return obj
        return f"{getattr(obj, '__module__', type(obj).__module__)}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"

    def get(self, name: str) -> T:
        self._load_entry_points()
        if name not in self._entries:
            raise self.unknown(name)
        obj = self._entries[name]
        if isinstance(obj, str):
            obj = self.check(name, _import_attr(obj))
            self._entries[name] = obj
        return obj

    def replace(self, name: str, obj: T) -> None:
        """Put ``obj`` (checked) in the place of the registered ``name``: a plug-in built once, cached."""
        if name not in self._entries:
            raise self.unknown(name)
        self._entries[name] = self.check(name, obj)


def plugin_frame(exc: BaseException) -> str | None:
    """``file:line, in function: source`` of the innermost frame of ``exc``'s traceback that is
    neither this package's, nor an installed library's, nor the standard library's: where the
    plug-in's own code raised. None when no such frame exists."""
    import os
    import traceback

    pkg = str(Path(__file__).resolve().parent) + os.sep
    library = ("site-packages", "dist-packages", os.path.dirname(os.__file__))
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not str(Path(f.filename).resolve()).startswith(pkg)
              and not any(part in f.filename for part in library) and not f.filename.startswith("<frozen")]
    if not frames:
        return None
    f = frames[-1]
    return f"{f.filename}:{f.lineno}, in {f.name}: {(f.line or '').strip()}"
