"""Suite files: YAML → validated, fully resolved configuration.

A suite names its data, its defenses and its threat models. Threat models are the names
of files in ``attack_suites/`` or inline mappings (optionally ``use: NAME`` plus
overridden fields). Errors name the file, the line, the key and the allowed values.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from robust_bench_sc.datasets import DEFAULT_DATASET, DEFAULT_SPLIT
from robust_bench_sc.paths import N_TEST_AVAILABLE, REPO_ROOT
from robust_bench_sc.registry import did_you_mean, is_reference, plugin_file, resolve_plugin_ref
from robust_bench_sc.threat_models import THREAT_MODELS, RealNumber, ThreatModel, WholeNumber
from robust_bench_sc.yamlio import ConfigError, LinedDict, line_of, load_yaml, plain

ATTACK_SUITES_DIR = REPO_ROOT / "attack_suites"
WORST_CASE = "worst case"   # the per-image worst case's threat_model name in summary.csv and its report column


class WorstCaseError(ConfigError):
    """The threat models of a worst case cannot be combined (other images, unknown names)."""


#: data fields dumped (and hashed) only when set, so suites without them keep their content hash
_OPTIONAL_DATA_FIELDS = {"dataset": DEFAULT_DATASET, "split": DEFAULT_SPLIT, "root": None}


class DataConfig(BaseModel):
    """Which images: a dataset plug-in (robust_bench_sc/datasets.py), its folder, split and the first N."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    n_images: WholeNumber = Field(N_TEST_AVAILABLE, ge=1, description="the first N images of the split (default 1000)")
    chunk_size: WholeNumber = Field(100, ge=1, description="images per planned job")
    data_dir: str | None = Field(None, description="the dataset's folder (older name of root)")
    dataset: str = Field(DEFAULT_DATASET, description="a registered dataset plug-in (scbench datasets)")
    split: str = Field(DEFAULT_SPLIT, description="which split of the dataset")
    root: str | None = Field(None, description="the dataset's folder (or file); default --data-dir, "
                             "$SCBENCH_DATA, else shared/data/cifar10")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from robust_bench_sc.datasets import DATASETS

        if ":" not in v and v not in DATASETS:  # module:attr / file.py:attr references load at run time
            raise PydanticCustomError("unknown_dataset", f"unknown dataset {v!r}{did_you_mean(v, DATASETS.names())}; "
                                      f"allowed values: {', '.join(DATASETS.names())}")
        return v

    @model_validator(mode="after")
    def _split_and_root(self) -> "DataConfig":
        from robust_bench_sc.datasets import get_dataset

        if self.root is not None and self.data_dir is not None and self.root != self.data_dir:
            raise PydanticCustomError("data_folder", f"root {self.root!r} and data_dir {self.data_dir!r} both name the "
                                      "data folder; keep root")
        try:
            ds = get_dataset(self.dataset)
        except Exception as exc:  # a referenced plug-in that does not load: one line
            raise PydanticCustomError("dataset_plugin", f"dataset {self.dataset!r}: {type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        if not ds.accepts_split(self.split):
            raise PydanticCustomError("unknown_split", f"dataset {self.dataset} has no split {self.split!r}; allowed "
                                      f"values: {', '.join(ds.splits)}")
        return self

    @property
    def folder(self) -> str | None:
        """The data folder the suite names (root, or its older name data_dir); None: the default."""
        return self.root or self.data_dir

    def dump(self) -> dict[str, Any]:
        """The resolved form; dataset, split and root only when they differ from the default, so
        suites written before datasets were plug-ins keep their content hash."""
        return self.model_dump(exclude={k for k, v in _OPTIONAL_DATA_FIELDS.items() if getattr(self, k) == v})

    def reader_settings(self) -> dict[str, str]:
        """``dataset`` / ``data_dir`` / ``split`` as the diagnostics and the binarization test take
        them, only those that differ from the default (settings of reports on the default data
        stay as they were)."""
        out = {"dataset": self.dataset, "data_dir": self.folder, "split": self.split}
        default = {"dataset": DEFAULT_DATASET, "data_dir": None, "split": DEFAULT_SPLIT}
        return {k: v for k, v in out.items() if v is not None and v != default[k]}


#: defense fields that select which jobs run, not what a job computes (not in a job's spec hash)
#: (``base_dir``: where the ref's file is, not what it is; records stay valid when a suite's folder moves)
UNHASHED_DEFENSE_FIELDS = ("threat_models", "max_images", "base_dir")


class DefenseSpec(BaseModel):
    """A defense in a suite: registry name or ``module:attr`` / ``file.py:attr``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ref: str
    name: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    threat_models: list[str] | None = Field(None, description="run only these of the suite's threat models on "
                                            "this defense (names; default: all)")
    max_images: WholeNumber | None = Field(None, ge=1, description="attack this defense on only the first max_images of the "
                                   "suite's images (a compute cap for an expensive defense; every cell states its n)")
    base_dir: str | None = Field(None, description="the folder a relative plug-in file (ref my_defense.py:make) is "
                                 "resolved from; load_suite sets it to the suite file's folder")

    @property
    def label(self) -> str:
        """The defense's row in every table and its records folder: ``name``, else ``ref``.
        A reference without a ``name`` (:attr:`takes_own_name`) gets its ``Defense(name=...)``
        as ``name`` once it is built (:func:`with_own_names`), as if the suite had said so."""
        return self.name or self.ref

    @property
    def takes_own_name(self) -> bool:
        """A ``module:attr`` / ``file.py:attr`` reference with no ``name``: its label is the
        name its Defense gives itself. A registry name keeps its label (the name given)."""
        return not self.name and is_reference(self.ref)

    @property
    def load_ref(self) -> str:
        """What to load: ``ref``, with a relative plug-in file made absolute from ``base_dir``."""
        return resolve_plugin_ref(self.ref, self.base_dir)

    def dump(self) -> dict[str, Any]:
        """The resolved form; ``threat_models`` and ``max_images`` only when set, so suites
        without them keep their content hash and job hashes."""
        return self.model_dump(exclude={k for k in UNHASHED_DEFENSE_FIELDS if getattr(self, k) is None})

    def n_images(self, threat_cap: int | None, n: int) -> int:
        """Images this defense is attacked on under a threat model capped at ``threat_cap``."""
        return min(x for x in (n, threat_cap, self.max_images) if x)

    def runs(self, threat: str) -> bool:
        return self.threat_models is None or threat in self.threat_models


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str = ""
    extends: str | None = Field(None, description="another profile of the suite whose fields this one starts "
                                "from (load_suite resolves it: set and defense_threat_models merge key by key, "
                                "the rest is replaced)")
    n_images: WholeNumber | None = Field(None, ge=1)
    defenses: list[str] | None = Field(None, description="run only these of the suite's defenses (labels)")
    threat_models: list[str] | None = Field(None, description="run only these of the suite's threat models (names)")
    defense_threat_models: dict[str, list[str]] = Field(
        default_factory=dict, description="per defense (label), run only these of the profile's threat models on it; "
        "the other defenses run all of them")
    set: dict[str, Any] = Field(default_factory=dict)


#: ``set`` keys of a profile that choose images or job sizes, not how an image is attacked
_SELECTION_KEYS = {"n_images", "chunk_size", "max_images"}  # also as data.<key> and <threat model>.<key>


#: what a profile without setting changes is, in the notes of reports, summary.md and ``scbench run``
PROFILE_SELECTION = "a selection of the suite's defenses, threat models or images, at its declared settings"


def setting_changes(profile_set: dict[str, Any]) -> list[str]:
    """The entries of a profile's ``set`` that change how an image is attacked (``key=value``),
    leaving out those that only choose images or job sizes (n_images, chunk_size, max_images)."""
    return [f"{k}={v}" for k, v in profile_set.items() if k.rsplit(".", 1)[-1] not in _SELECTION_KEYS]


class ResourcesConfig(BaseModel):
    """What one job asks of a distributed executor (Ray); does not change the numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    num_cpus: RealNumber = Field(1, gt=0, description="CPUs reserved per job (also its torch threads)")
    num_gpus: RealNumber | None = Field(None, ge=0, description="GPUs per job; default 1 with a cuda device, else 0")


class SuiteConfig(BaseModel):
    """A validated suite with every threat model resolved to its schema."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    name: str
    description: str = ""
    seed: WholeNumber = 0
    data: DataConfig = Field(default_factory=DataConfig)
    defenses: list[DefenseSpec] = Field(min_length=1)
    threat_models: list[ThreatModel] = Field(min_length=1)
    profiles: dict[str, Profile] = Field(default_factory=dict)
    # true: passive indicators per defense; "active": the binarization test per (defense, threat model);
    # "all": both (robust_bench_sc/diagnostics/suite.py: run_suite_diagnostics)
    diagnostics: bool | Literal["active", "all"] = False
    worst_case_over: list[str] = Field(default_factory=list, description="threat models of the per-sample 'worst case' "
                                       "column (robust only if robust under all); see config.resolve_worst_case")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)  # not in resolved(): no effect on numbers
    profile: str | None = None
    overrides: list[str] = Field(default_factory=list)
    # per defense label, what the probes imply (robust_bench_sc.adapt.DefenseAdaptation), set by the runner
    # before any job runs; not configuration (no YAML sets it, resolved() leaves it out), it travels with the
    # suite to the workers and its choices enter the job spec hashes (plan.job_spec_hash)
    _adaptations: dict[str, Any] = PrivateAttr(default_factory=dict)

    def adaptation(self, label: str) -> Any:
        """The probes' adaptation of defense ``label`` (robust_bench_sc.adapt), or None."""
        return self._adaptations.get(label)

    @field_validator("defenses", mode="before")
    @classmethod
    def _defense_strings(cls, v):
        if isinstance(v, list):
            return [{"ref": d} if isinstance(d, str) else d for d in v]
        return v

    def resolved(self) -> dict[str, Any]:
        """JSON-able, fully resolved configuration (embedded in every result)."""
        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "data": self.data.dump(),
            "defenses": [d.dump() for d in self.defenses],
            "threat_models": [t.model_dump() for t in self.threat_models],
            "diagnostics": self.diagnostics,
            "profile": self.profile,
            "overrides": list(self.overrides),
            # only when declared: suites without it keep their content hash
            **({"worst_case_over": list(self.worst_case_over)} if self.worst_case_over else {}),
        }

    def content_hash(self) -> str:
        """Hash of everything that determines the numbers (not the profile's label)."""
        res = self.resolved()
        res.pop("description", None)
        blob = json.dumps(res, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def threat(self, name: str) -> ThreatModel:
        for t in self.threat_models:
            if t.name == name:
                return t
        raise KeyError(name)

    @classmethod
    def build(cls, data: dict[str, Any], source: str, *, invalid: Any = None,
              line_of_defense: Any = None) -> SuiteConfig:
        """The one way to a validated suite: a suite file (:func:`load_suite`), ``benchmark()``
        (:func:`robust_bench_sc.api.build_suite`, which ``scbench audit`` uses) and a run's
        ``run.json`` (:func:`suite_from_resolved`) all come here. ``data`` holds validated
        threat models. The schema, then the checks across entries, each a one-line
        ``ConfigError`` naming ``source``: threat-model names unique, defense labels unique,
        no two labels sharing a records folder (:func:`check_labels`), each defense's
        ``threat_models`` in the suite. ``invalid(exc)`` words a schema error (a suite file
        names its lines); ``line_of_defense(i)`` the line of ``defenses[i]``, where known."""
        try:
            suite = cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(invalid(exc) if invalid is not None else _format_validation(exc, source, None)) from None
        for what, labels in (("threat model", [t.name for t in suite.threat_models]),
                             ("defense", [d.label for d in suite.defenses])):
            dup = sorted({n for n in labels if labels.count(n) > 1})
            if dup:
                raise ConfigError(f"{source}: {what} names must be unique; repeated: {', '.join(dup)} "
                                  "(give each a 'name')")
        check_labels(suite, source)
        names = [t.name for t in suite.threat_models]
        for i, d in enumerate(suite.defenses):
            unknown = [k for k in d.threat_models or [] if k not in names]
            if unknown:
                line = line_of_defense(i) if line_of_defense is not None else None
                raise ConfigError(f"{source}" + (f", line {line}" if line else "") + f": defenses[{i}] ({d.label}): "
                                  f"threat_models {', '.join(unknown)} not in the suite"
                                  f"{did_you_mean(unknown[0], names)}; suite threat_models: {', '.join(names)}")
        return suite


def check_labels(suite: SuiteConfig, source: str) -> SuiteConfig:
    """Defense and threat-model labels name folders of a run (``records/<defense>/<threat>/``,
    via :func:`robust_bench_sc.storage.safe_name`): two labels that map to one folder would
    share records (the second job never computed, its row showing the first's numbers), so
    they are refused here, both named. A label that names no folder of its own (``..``, ``☃``)
    maps to ``unnamed`` and stays inside the run folder."""
    from robust_bench_sc.storage import label_clashes

    for what, labels in (("defense", [d.label for d in suite.defenses]),
                         ("threat model", [t.name for t in suite.threat_models])):
        for first, second, folder in label_clashes(labels):
            raise ConfigError(f"{source}: {what} names {first!r} and {second!r} would share the records folder "
                              f"{folder!r} (a name keeps letters, digits and _ . - only); rename one")
    return suite


def with_own_names(suite: SuiteConfig, own: dict[int, str]) -> SuiteConfig:
    """``suite`` with each defense ``own`` names (index → its ``Defense(name=...)``; only
    those that :attr:`DefenseSpec.takes_own_name`) given that name, as if the suite had said
    ``name:``. Two defenses that would then share a label, or a records folder, are refused
    in one line naming both (records of one folder would be shared)."""
    from robust_bench_sc.storage import safe_name

    defenses = [d.model_copy(update={"name": own[i]}) if own.get(i) and d.takes_own_name else d
                for i, d in enumerate(suite.defenses)]

    def what(k: int) -> str:
        how = "its Defense(name=...)" if k in own and suite.defenses[k].takes_own_name else "as the suite names it"
        return f"defenses[{k}] ({suite.defenses[k].ref}, {how})"

    seen: dict[str, int] = {}
    for i, d in enumerate(defenses):
        j = seen.setdefault(safe_name(d.label), i)
        if j != i:
            other = defenses[j].label
            shared = (f"the label {other!r}" if other == d.label else
                      f"the records folder {safe_name(d.label)!r} ({other!r}, {d.label!r})")
            raise ConfigError(f"suite {suite.name!r}: {what(j)} and {what(i)} would share {shared}; "
                              "give one a name: in the suite")
    return suite.model_copy(update={"defenses": defenses})


# -- errors -----------------------------------------------------------------------------

def _nested_path(model: Any, loc: tuple) -> tuple[tuple, list[Any]]:
    """``loc`` without the union tags pydantic inserts at a nested threat model (``craft`` →
    ``pgd`` → ``norm`` is written ``craft.norm``), and the model holding each remaining part."""
    clean: list = []
    holders: list[Any] = []
    k = 0
    while k < len(loc):
        part = loc[k]
        clean.append(part)
        holders.append(model)
        k += 1
        if isinstance(model, type) and issubclass(model, ThreatModel) and part in model.nested_fields:
            parent = model
            if k < len(loc) and isinstance(loc[k], int):
                clean.append(loc[k])
                holders.append(parent)
                k += 1
            if k < len(loc) and loc[k] in THREAT_MODELS and loc[k] in parent.nested_kinds(part):
                model = THREAT_MODELS[loc[k]]
                k += 1
            else:
                model = None
    return tuple(clean), holders


def _nested_kind_message(err: Any, parent: type[ThreatModel], field: str) -> str:
    """``attack`` of a nested entry missing, unknown or not allowed there."""
    kinds = parent.nested_kinds(field)
    if err["type"] == "union_tag_not_found":
        return f"missing; allowed values: {', '.join(kinds)}"
    tag = str((err.get("ctx") or {}).get("tag"))
    if tag in THREAT_MODELS:
        return (f"{tag!r} cannot be nested in {parent.kind}.{field} ({parent.nesting_refused(field, tag)}); "
                f"allowed values: {', '.join(kinds)}")
    return f"unknown value {tag!r}{did_you_mean(tag, kinds)}; allowed values: {', '.join(kinds)}"


def _format_validation(exc: ValidationError, source: str, data: Any, prefix: tuple = (), cls=None,
                       blame: dict[str, str] | None = None) -> str:
    """One line per pydantic error: ``source, line N: dotted.key: message``.

    ``data``: the YAML as loaded with line numbers (:func:`line_of`); ``prefix``: where the
    validated mapping sits in its file (the line is looked up without it); ``cls``: the
    model whose keys an unknown key is checked against, or a function of the error's
    location returning it (None: pydantic's own message); a threat model's nested entries
    (transfer ``craft``, worst_case ``attacks``) are checked against their own schema;
    ``blame``: dotted key (or a parent of it) → the option that set the value, named instead
    of the file (the key is then given without ``prefix``)."""
    lines = []
    for err in exc.errors():
        raw_loc = tuple(err["loc"])
        top = cls(raw_loc) if callable(cls) and not isinstance(cls, type) else cls
        loc, holders = _nested_path(top, raw_loc)
        msg = err["msg"]
        nested_field = next((p for p in reversed(loc) if isinstance(p, str)), None)
        parent = next((h for p, h in zip(reversed(loc), reversed(holders)) if isinstance(p, str)), None)
        nesting: type[ThreatModel] | None = parent if isinstance(parent, type) and issubclass(parent, ThreatModel) \
            and nested_field in parent.nested_fields else None
        tag_error = nesting is not None and err["type"] in ("union_tag_not_found", "union_tag_invalid")
        key_loc = loc + ("attack",) if tag_error and err["type"] == "union_tag_invalid" else loc
        line = line_of(data, key_loc) if data is not None else None
        if line is None and data is not None and key_loc != loc:
            line = line_of(data, loc)
        where = f"{source}" + (f", line {line}" if line else "")
        key = ".".join(str(p) for p in tuple(prefix) + loc) or "(top level)"
        dotted = [".".join(str(p) for p in loc[:k]) for k in range(len(loc), 0, -1)]
        setter = next((blame[d] for d in dotted if blame and d in blame), None)
        if setter is not None:  # the value came from an option
            where, key = setter, dotted[0]
        model = holders[-1] if holders else top
        if nesting is not None and tag_error:
            key, msg = f"{key}.attack", _nested_kind_message(err, nesting, str(nested_field))
        elif nesting is not None and err["type"] in ("model_attributes_type", "model_type"):
            msg = f"{msg}: write the threat model inline, as a mapping with an 'attack' key"
        elif err["type"] == "extra_forbidden" and isinstance(model, type) and issubclass(model, BaseModel):
            allowed = sorted(model.model_fields)
            msg = f"unknown key{did_you_mean(str(loc[-1]), allowed)}; allowed keys: {', '.join(allowed)}"
        elif err["type"] == "literal_error":
            msg = f"{msg} (got {err.get('input')!r})"
        lines.append(f"{where}: {key}: {msg}")
    return "\n".join(lines)


# -- threat models ----------------------------------------------------------------------

def threat_model_names(search: list[Path] | None = None) -> list[str]:
    dirs = search or [ATTACK_SUITES_DIR]
    return sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.yaml")})


def _find_threat_file(name: str, search: list[Path]) -> Path:
    for d in search:
        p = d / f"{name}.yaml"
        if p.is_file():
            return p
    known = threat_model_names(search)
    raise ConfigError(
        f"unknown threat model {name!r}{did_you_mean(name, known)}; files in "
        f"{', '.join(str(d) for d in search if d.is_dir())}: {', '.join(known) or 'none'}"
    )


class ThreatEntry(BaseModel):
    """One threat-model entry resolved to a plain mapping (not yet validated): ``mapping`` with
    ``name`` defaulted to the file's stem where it came from a file; ``path``: that file (None for
    an inline mapping); ``lined``: what line numbers are read from (the file's mapping, or the
    entry as written)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)
    mapping: dict[str, Any]
    path: Path | None = None
    lined: Any = None


def _threat_file_mapping(path: Path) -> tuple[dict[str, Any], Any]:
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a threat model must be a mapping, got {type(raw).__name__}")
    d = plain(raw)
    d.setdefault("name", path.stem)
    return d, raw


def resolve_threat_entry(entry: Any, search: list[Path] | None = None, *, allow_path: bool = False) -> ThreatEntry:
    """The one resolution of a threat-model entry, as suites, ``benchmark()`` and ``diagnose
    --active`` write it: a name of a file in ``search`` (default ``attack_suites/``); with
    ``allow_path``, a ``.yaml`` / ``.yml`` file path; or a mapping, where ``use: NAME`` takes that
    file's mapping with the entry's other fields over it. Raises ConfigError (callers add where)."""
    dirs = search or [ATTACK_SUITES_DIR]
    if isinstance(entry, (str, Path)):
        text = str(entry)
        if allow_path and text.endswith((".yaml", ".yml")):
            path = Path(text)
            if not path.is_file():
                raise ConfigError(f"no threat-model file {path}")
        else:
            path = _find_threat_file(text, dirs)
        mapping, raw = _threat_file_mapping(path)
        return ThreatEntry(mapping=mapping, path=path, lined=raw)
    if isinstance(entry, dict):
        d = plain(dict(entry))
        if "use" in d:
            base_path = _find_threat_file(str(d.pop("use")), dirs)
            base, _ = _threat_file_mapping(base_path)
            base.update(d)
            d = base
        return ThreatEntry(mapping=d, lined=entry)
    raise ConfigError(f"expected a name or a mapping, got {entry!r}")


def validate_threat_model(raw: Any, source: str, lined: Any = None, default_name: str = "",
                          prefix: tuple = (), blame: dict[str, str] | None = None) -> ThreatModel:
    """Validate one threat-model mapping; errors name ``source`` and the line (or, for a
    field in ``blame``, the option that set it, e.g. ``--set steps=0``)."""
    where = lambda key: (f"{source}, line {line_of(lined, (key,))}" if lined is not None and line_of(lined, (key,)) else source)  # noqa: E731
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a threat model must be a mapping, got {type(raw).__name__}")
    kind = raw.get("attack")
    kinds = sorted(THREAT_MODELS)
    if kind is None:
        raise ConfigError(f"{where(None)}: {'.'.join(map(str, prefix)) + '.' if prefix else ''}attack: missing; allowed values: {', '.join(kinds)}")
    if kind not in THREAT_MODELS:
        raise ConfigError(
            f"{where('attack')}: {'.'.join(map(str, prefix)) + '.' if prefix else ''}attack: unknown value {kind!r}"
            f"{did_you_mean(str(kind), kinds)}; allowed values: {', '.join(kinds)}"
        )
    cls = THREAT_MODELS[kind]
    data = plain(raw)
    data.setdefault("name", default_name or kind)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, source, lined, prefix, cls, blame)) from None
    except (ArithmeticError, OverflowError) as exc:  # a validator's arithmetic on a bad value
        raise ConfigError(f"{where(None)}: {'.'.join(map(str, prefix)) or 'threat model'}: {exc}") from None


def suite_from_resolved(config: Any, source: str) -> SuiteConfig:
    """The suite a run was planned from, rebuilt from the resolved configuration its
    ``run.json`` keeps (:meth:`SuiteConfig.resolved`); the same content hash, the same jobs.
    ``source`` names the file in errors."""
    if not isinstance(config, dict) or not isinstance(config.get("threat_models"), list):
        raise ConfigError(f"{source}: no resolved suite configuration ('config' with 'threat_models')")
    data = dict(config)
    data["threat_models"] = [validate_threat_model(t, source) for t in config["threat_models"]]
    return SuiteConfig.build(data, source, invalid=lambda exc: _format_validation(exc, source, None))


def load_threat_model_file(path: Path) -> ThreatModel:
    raw = load_yaml(path)
    return validate_threat_model(raw, str(path), raw, default_name=path.stem)


# -- overrides --------------------------------------------------------------------------

def parse_set(items: list[str], option: str = "--set",
              example: str = "restarts=1 or linf_pgd_ce.steps=10") -> list[tuple[str, Any]]:
    """``key=value`` options (``--set``, ``--param``), each value read as YAML (a number, a string,
    a list); a malformed one is a ConfigError naming ``option``."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} {item!r}: expected key=value, e.g. {example}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:  # `steps=[1,2`, a `!!python/...` tag: the option is named, not a traceback
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{option} {item!r}: {key.strip()}: the value is not valid YAML ({problem}); write a "
                              f"number, a string or a list, e.g. {example}") from None
        out.append((key.strip(), parsed))
    return out


def _apply_threat_overrides(tms: list[dict], sets: list[tuple[str, Any]], source: str,
                            labels: list[str] | None = None) -> list[dict[str, str]]:
    """Apply threat-model overrides; returns, per threat model, field → the option that set it."""
    names = [t["name"] for t in tms]
    blame: list[dict[str, str]] = [{} for _ in tms]
    labels = labels or [f"--set {k}={v}" for k, v in sets]
    for (key, value), label in zip(sets, labels):
        if key in ("n_images", "seed", "chunk_size") or key.startswith("data."):
            continue
        target, dot, field = key.rpartition(".")
        hit = False
        for t in tms:
            if dot and t["name"] != target:
                continue
            cls = THREAT_MODELS.get(t.get("attack", ""))
            if cls is not None and field in cls.model_fields and field not in ("name", "attack"):
                t[field] = value
                blame[tms.index(t)][field] = label
                hit = True
        if not hit:
            if dot and target not in names:
                raise ConfigError(f"--set {key}: no threat model named {target!r}{did_you_mean(target, names)}; threat models: {', '.join(names)}")
            raise ConfigError(f"--set {key}: no threat model of {source} has a field {field!r}")
    return blame


# -- suites -----------------------------------------------------------------------------

def _limit_defense_threats(suite: SuiteConfig, limits: dict[str, list[str]], raw: Any, source: str,
                           profile: str) -> SuiteConfig:
    """A profile's ``defense_threat_models``: each named defense runs only the listed threat
    models of the (profiled) suite. A selection of jobs, not a setting: a defense's
    ``threat_models`` is not in its jobs' spec hashes, so records are reused either way."""
    labels = [d.label for d in suite.defenses]
    running = [t.name for t in suite.threat_models]
    line = line_of(raw, ("profiles", profile, "defense_threat_models"))
    where = f"{source}" + (f", line {line}" if line else "") + f": profile {profile!r}: defense_threat_models"
    for label, names in limits.items():
        if label not in labels:
            raise ConfigError(f"{where}: {label!r} is not a defense the profile runs{did_you_mean(label, labels)}; "
                              f"its defenses: {', '.join(labels)}")
        unknown = [n for n in names if n not in running]
        if unknown:
            raise ConfigError(f"{where}: {label}: {', '.join(unknown)} not among the profile's threat models"
                              f"{did_you_mean(unknown[0], running)}; its threat models: {', '.join(running)}")
        if not names:
            raise ConfigError(f"{where}: {label}: an empty list runs nothing; leave the defense out of the "
                              "profile's defenses instead")
    defenses = []
    for d in suite.defenses:
        if d.label in limits:
            excluded = [n for n in limits[d.label] if not d.runs(n)]
            if excluded:
                raise ConfigError(f"{where}: {d.label}: the suite does not run {', '.join(excluded)} on it "
                                  f"(its threat_models: {', '.join(d.threat_models or [])})")
            d = d.model_copy(update={"threat_models": [n for n in running if n in limits[d.label]]})
        defenses.append(d)
    return suite.model_copy(update={"defenses": defenses})


#: profile fields that ``extends`` merges key by key (the child's entries win); the others it replaces
_PROFILE_MERGED = ("set", "defense_threat_models")


def _flatten_profiles(raw: LinedDict, source: str) -> dict[str, dict[str, Any]]:
    """The suite's profiles with every ``extends: NAME`` resolved: the named profile's fields,
    then the extending one's on top (``set`` and ``defense_threat_models`` merged key by key,
    the rest replaced). Chains are followed; an unknown name or a cycle is a ConfigError with
    its line."""
    lined = raw.get("profiles")
    if lined is None:
        return {}
    if not isinstance(lined, LinedDict):
        raise ConfigError(f"{source}, line {raw.key_lines.get('profiles')}: profiles: a mapping of name → profile")
    names = [str(k) for k in lined]
    flat: dict[str, dict[str, Any]] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> dict[str, Any]:
        if name in flat:
            return flat[name]
        body = lined[name]
        own = plain(body) if isinstance(body, dict) else ({} if body is None else body)
        if not isinstance(own, dict):
            raise ConfigError(f"{source}, line {lined.key_lines.get(name)}: profile {name!r}: a mapping of its fields")
        parent = own.pop("extends", None)
        if parent is None:
            flat[name] = own
            return own
        where = f"{source}, line {body.key_lines.get('extends')}"  # a profile with extends is a mapping
        if not isinstance(parent, str) or parent not in lined:
            raise ConfigError(f"{where}: profile {name!r}: extends {parent!r}: no such profile"
                              f"{did_you_mean(str(parent), names)}; profiles: {', '.join(names)}")
        if parent in (*chain, name):
            loop = " → ".join((*chain, name, parent))
            raise ConfigError(f"{where}: profile {name!r}: extends is circular ({loop})")
        merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in resolve(parent, (*chain, name)).items()}
        for key, value in own.items():
            if key in _PROFILE_MERGED and isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        flat[name] = merged
        return merged

    for n in lined:
        resolve(n, ())
    return flat


def _item_line(raw: Any, key: str, i: int) -> int | None:
    """Line of item ``i`` of the list ``raw[key]``: its own for a mapping; for a scalar the
    list's first line plus ``i`` in a block list (one item a line), the list's line in a flow one."""
    node = raw.get(key) if isinstance(raw, dict) else None
    start: int | None = getattr(node, "line", None)
    if isinstance(node, list) and 0 <= i < len(node) and getattr(node[i], "line", None) is None and start is not None:
        return start + (i if start != getattr(raw, "key_lines", {}).get(key) else 0)
    return line_of(raw, (key, i))


def _plugin_files_from(defenses: list[DefenseSpec], path: Path, raw: Any, source: str) -> list[DefenseSpec]:
    """Each defense whose ref is a relative plug-in file (``my_defense.py:make``) resolved from
    the suite file's folder (as the threat-model files beside a suite are), whatever the current
    folder; a missing file is a ConfigError naming the line and the path looked at."""
    out = []
    for i, d in enumerate(defenses):
        target = plugin_file(d.ref)
        if target is not None:
            relative = not (target.startswith("~") or Path(target).is_absolute())
            if relative:  # an absolute ref keeps no base_dir: its run.json and suite hash stay as they were
                base = Path(d.base_dir) if d.base_dir else path.resolve().parent
                if d.base_dir and not base.is_absolute():
                    base = path.resolve().parent / base
                d = d.model_copy(update={"base_dir": str(base.resolve())})
            file = Path(d.load_ref.rpartition(":")[0]).expanduser()
            if not file.is_file():
                line = _item_line(raw, "defenses", i)
                where = "relative paths in a suite are resolved from the suite file's folder" if relative \
                    else "an absolute path"
                raise ConfigError(f"{source}" + (f", line {line}" if line else "") + f": defenses[{i}]: plug-in file "
                                  f"{target!r} not found: looked for {file} ({where})")
        out.append(d)
    return out


def load_suite(path: str | Path, overrides: list[str] | None = None, profile: str | None = None,
               n_images: int | None = None, seed: int | None = None, dataset: str | None = None) -> SuiteConfig:
    """Read, resolve and validate a suite file (threat-model files included); ``dataset``
    replaces the suite's ``data.dataset`` (``--dataset``)."""
    path = Path(path)
    raw = load_yaml(path)
    source = str(path)
    if not isinstance(raw, LinedDict):  # every YAML mapping loads as a LinedDict
        raise ConfigError(f"{source}: a suite must be a mapping with name, data, defenses, threat_models")
    allowed_top = sorted(SuiteConfig.model_fields.keys() - {"profile", "overrides"})
    for key in raw:
        if key not in allowed_top:
            raise ConfigError(
                f"{source}, line {raw.key_lines.get(key)}: unknown key {key!r}{did_you_mean(str(key), allowed_top)}; "
                f"allowed keys: {', '.join(allowed_top)}"
            )
    data = plain(raw)
    data.setdefault("name", path.stem)
    data.setdefault("data", {})
    sets = parse_set(overrides or [])
    labels = [f"--set {item}" for item in overrides or []]
    top_blame: dict[str, str] = {}  # suite field → the option (or profile) that set it

    profiles_raw = _flatten_profiles(raw, source)
    if profiles_raw:
        data["profiles"] = profiles_raw
    if profile is not None:
        if profile not in profiles_raw:
            raise ConfigError(f"{source}: no profile {profile!r}{did_you_mean(profile, profiles_raw)}; profiles: {', '.join(profiles_raw) or 'none'}")
        prof = profiles_raw[profile] or {}
        if prof.get("n_images") is not None:
            data["data"]["n_images"] = prof["n_images"]
        prof_sets = (prof.get("set") or {}).items()
        sets = parse_set([f"{k}={json.dumps(v)}" for k, v in prof_sets]) + sets
        labels = [f"{source}: profile {profile!r}: set.{k}" for k, _ in prof_sets] + labels
        if prof.get("n_images") is not None:
            top_blame["data.n_images"] = f"{source}: profile {profile!r}: n_images"

    for (key, value), label in zip(sets, labels):
        if key in ("n_images", "data.n_images"):
            data["data"]["n_images"] = value
            top_blame["data.n_images"] = label
        elif key in ("chunk_size", "data.chunk_size"):
            data["data"]["chunk_size"] = value
            top_blame["data.chunk_size"] = label
        elif key == "seed":
            data["seed"] = value
            top_blame["seed"] = label
        elif key in ("data.dataset", "data.split", "data.root", "data.data_dir"):
            data["data"][key[5:]] = value
            top_blame[key] = label
        elif key.startswith("data."):
            raise ConfigError(f"{label}: unknown data key {key[5:]!r}; allowed keys: "
                              f"{', '.join(sorted(DataConfig.model_fields))}")
    if dataset is not None:
        data["data"]["dataset"] = dataset
        top_blame["data.dataset"] = f"--dataset {dataset}"
    if n_images is not None:
        data["data"]["n_images"] = n_images
        top_blame["data.n_images"] = f"--n-images {n_images}"
    if seed is not None:
        data["seed"] = seed
        top_blame["seed"] = f"--seed {seed}"

    search = [path.resolve().parent.parent / "attack_suites", ATTACK_SUITES_DIR, path.resolve().parent]
    tms_raw = raw.get("threat_models")
    if not isinstance(tms_raw, list) or not tms_raw:
        raise ConfigError(f"{source}, line {raw.key_lines.get('threat_models', raw.line)}: threat_models: "
                          "a non-empty list of names in attack_suites/ or mappings")
    resolved: list[dict] = []
    origins: list[tuple[str, Any]] = []
    for i, entry in enumerate(tms_raw):
        if not isinstance(entry, (str, dict)):
            raise ConfigError(f"{source}: threat_models[{i}]: expected a name or a mapping, got {entry!r}")
        try:
            r = resolve_threat_entry(entry, search)
        except ConfigError as exc:
            line = getattr(entry, "line", None) or (tms_raw.line + i if hasattr(tms_raw, "line") else "?")
            raise ConfigError(f"{source}, line {line}: threat_models[{i}]: {exc}") from None
        mapping = r.mapping
        if r.path is None:
            mapping.setdefault("name", str(mapping.get("attack", f"threat_model_{i}")))
        resolved.append(mapping)
        origins.append((str(r.path), r.lined) if r.path else (source, entry))
    blames = _apply_threat_overrides(resolved, sets, source, labels)

    tms = []
    for i, (tm_map, (src, lined)) in enumerate(zip(resolved, origins)):
        default = tm_map.get("name") or tm_map.get("attack", f"tm{i}")
        prefix = () if src != source else ("threat_models", i)
        tm = validate_threat_model(tm_map, src, lined, default_name=default, prefix=prefix, blame=blames[i])
        tms.append(tm)
    names = [t.name for t in tms]
    data["threat_models"] = tms
    data["profile"] = profile
    data["overrides"] = list(overrides or [])
    section = {"data": DataConfig, "resources": ResourcesConfig, "defenses": DefenseSpec}
    suite = SuiteConfig.build(
        data, source, line_of_defense=lambda i: line_of(raw, ("defenses", i, "threat_models")),
        invalid=lambda exc: _format_validation(exc, source, raw, cls=lambda loc: section.get(loc[0]) if loc else None,
                                               blame=top_blame))
    labels = [d.label for d in suite.defenses]
    suite = suite.model_copy(update={"defenses": _plugin_files_from(suite.defenses, path, raw, source)})
    if profile is not None:  # a profile may run a subset of the rows / columns
        chosen = suite.profiles[profile]
        for field, have, label_of in (("defenses", labels, lambda d: d.label), ("threat_models", names, lambda t: t.name)):
            keep = getattr(chosen, field)
            if not keep:
                continue
            unknown = [k for k in keep if k not in have]
            if unknown:
                raise ConfigError(f"{source}: profile {profile!r}: {field} {', '.join(unknown)} not in the suite"
                                  f"{did_you_mean(unknown[0], have)}; suite {field}: {', '.join(have)}")
            suite = suite.model_copy(update={field: [x for x in getattr(suite, field) if label_of(x) in keep]})
        if chosen.defense_threat_models:
            suite = _limit_defense_threats(suite, chosen.defense_threat_models, raw, source, profile)
    return resolve_worst_case(suite, tms, raw, source)  # validated against every threat model, then profiled


def resolve_worst_case(suite: SuiteConfig, all_threats: list, raw: Any, source: str) -> SuiteConfig:
    """Validate a suite's ``worst_case_over`` against all its threat models (errors name the
    file and line); then keep the names the (profiled) suite runs. A worst case needs ≥ 2
    accuracy threat models at one norm and ε on the same images."""
    over = list(suite.worst_case_over)
    names = [t.name for t in all_threats]
    if WORST_CASE in names:
        raise WorstCaseError(f"{source}: a threat model may not be named {WORST_CASE!r} (the worst-case column's name)")
    if not over:
        return suite
    line = getattr(raw, "key_lines", {}).get("worst_case_over")
    where = f"{source}, line {line}: worst_case_over" if line else f"{source}: worst_case_over"
    dup = sorted({n for n in over if over.count(n) > 1})
    if dup:
        raise WorstCaseError(f"{where}: repeated {', '.join(dup)}")
    if len(over) < 2:
        raise WorstCaseError(f"{where}: needs at least two threat models (a worst case over one is that one)")
    by_name = {t.name: t for t in all_threats}
    for n in over:
        if n not in by_name:
            raise WorstCaseError(f"{where}: unknown threat model {n!r}{did_you_mean(str(n), names)}; "
                                 f"threat models of the suite: {', '.join(names)}")
        t = by_name[n]
        if t.kind == "none":
            raise WorstCaseError(f"{where}: {n!r} is the clean evaluation, not an attack; list attacks only")
        if t.random_subset:
            raise WorstCaseError(f"{where}: {n!r} ({t.kind}) attacks a random subset of the images; "
                                 "a worst case needs every image under every threat model")
        if t.minimum_norm and t.epsilon_value is None:
            raise WorstCaseError(f"{where}: {n!r} is a minimum-norm attack ({t.kind}) without epsilon; "
                                 "give it an epsilon so that it has a robust bit at a budget")
    budgets = {(by_name[n].norm_name, None if by_name[n].epsilon_value is None else round(by_name[n].epsilon_value, 9))
               for n in over}
    if len(budgets) > 1:
        each = ", ".join(f"{n}: {by_name[n].norm_name} ε={by_name[n].epsilon_value:.6g}" for n in over)
        raise WorstCaseError(f"{where}: the threat models must share one norm and ε ({each})")
    caps = {by_name[n].max_images for n in over}
    if len(caps) > 1:
        each = ", ".join(f"{n}: {by_name[n].max_images or 'all'}" for n in over)
        raise WorstCaseError(f"{where}: the threat models are on different images (max_images {each}); "
                             "give them the same max_images")
    running = {t.name for t in suite.threat_models}
    kept = [n for n in over if n in running]
    return suite.model_copy(update={"worst_case_over": kept if len(kept) >= 2 else []})
