"""Threat-model schemas: what a YAML file in ``attack_suites/`` may say.

Each kind is a pydantic model selected by its ``attack`` field and registered in
:data:`THREAT_MODELS`; unknown keys are errors. Every budget (steps, restarts, queries,
batch size) is a field, nothing is hidden in code. Implementations live in
``robust_bench_sc.attacks`` and are imported only when a threat model is run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationInfo, field_serializer,
                      field_validator, model_serializer, model_validator)

Norm = Literal["linf", "l2", "l1"]
_FRACTION = re.compile(r"^\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*$")
_RELATIVE = re.compile(r"^\s*(?:eps|epsilon)\s*(?:([*/])\s*([0-9.eE+-]+(?:\s*/\s*[0-9.eE+-]+)?))?\s*$")


def parse_number(value: Any) -> float:
    """A number, or a fraction written like ``8/255``."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    out = None
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        m = _FRACTION.match(value)
        try:
            if m:
                if float(m.group(2)) == 0:
                    raise ValueError(f"{value!r} divides by zero")
                out = float(m.group(1)) / float(m.group(2))
            else:
                out = float(value)
        except OverflowError:
            out = math.inf
        except ValueError as exc:
            if "divides by zero" in str(exc):
                raise
    if out is None:
        raise ValueError(f"expected a number or a fraction like '8/255', got {value!r}")
    if not math.isfinite(out):  # .inf / .nan / 1e999: no budget, step or rate is infinite
        raise ValueError(f"expected a finite number, got {value!r}")
    return out


def _number(v: Any) -> float:
    return parse_number(v)


Number = Annotated[float, BeforeValidator(_number)]


def _not_bool(v: Any) -> Any:
    """YAML's ``true`` / ``false`` are not numbers: pydantic's lax mode would read them as 1 / 0
    (``--set steps=true`` ran one step)."""
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got the boolean {str(v).lower()}")
    return v


#: a whole number that is not a boolean (every count: steps, restarts, queries, batch sizes, seeds)
WholeNumber = Annotated[int, BeforeValidator(_not_bool)]
#: a real number that is not a boolean (rates, constants)
RealNumber = Annotated[float, BeforeValidator(_not_bool)]


@dataclass(frozen=True)
class SettingRole:
    """What a threat-model field is to the reports and the spec hash, declared beside the field
    (``steps: Annotated[WholeNumber, BUDGET] = ...``) and read back by :func:`fields_with`: a new
    field says its role where it is written, and no list elsewhere has to learn its name."""

    role: str


#: how much an attack runs per image (steps, restarts, queries, images): always shown beside a
#: number, and two runs differing only in these (or EFFORT fields) share one report column
BUDGET = SettingRole("budget")
#: how an attack runs, not what it measures (batches, backend, BPDA, EOT, schedules): runs
#: differing only in these share one report column (a note says which setting differs)
EFFORT = SettingRole("effort")
#: labels a threat model or sizes the run, never changes a job's records: not in its spec hash
UNHASHED = SettingRole("unhashed")


def fields_with(role: SettingRole) -> frozenset[str]:
    """The field names that carry ``role`` in any registered threat model (a name carries the
    same roles in every kind that has it: tests/test_threat_models.py checks)."""
    return frozenset(name for cls in THREAT_MODELS.values() for name, f in cls.model_fields.items()
                     if any(m is role for m in f.metadata))


def kinds_where(trait: str) -> list[str]:
    """The registered kinds whose class trait ``trait`` (``minimum_norm``, ``gradient_based``, ...)
    is true, in registration order."""
    return [k for k, cls in THREAT_MODELS.items() if getattr(cls, trait)]


def resolve_relative(value: Any, epsilon: float) -> float:
    """``step_size`` given as a number, a fraction, or relative: ``epsilon/8``, ``eps*0.25``."""
    if isinstance(value, str):
        m = _RELATIVE.match(value)
        if m:
            if m.group(1) is None:
                return epsilon
            factor = parse_number(m.group(2))
            if m.group(1) == "/" and factor == 0:
                raise ValueError(f"step_size {value!r} divides by zero")
            return epsilon / factor if m.group(1) == "/" else epsilon * factor
    return parse_number(value)


THREAT_MODELS: dict[str, type["ThreatModel"]] = {}
_NESTED_BUILT = False  # set once the nested unions (end of this module) are built


def register_threat_model(cls):
    if _NESTED_BUILT:
        raise TypeError(f"threat model {cls.kind!r} registered after the nested unions were built: define it in "
                        "robust_bench_sc/threat_models.py above them (transfer craft and worst_case members are "
                        "typed by the threat models registered before)")
    if not cls.backends:
        raise TypeError(f"threat model {cls.kind!r} declares no backends")
    THREAT_MODELS[cls.kind] = cls
    return cls


class ThreatModel(BaseModel):
    """Fields every threat model has."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str] = ""
    gradient_based: ClassVar[bool] = False
    minimum_norm: ClassVar[bool] = False
    #: why this kind has no ε-ball an adversarial example can be planted in (the binarization
    #: test's refusal, one line); "" where it has one
    no_epsilon_ball: ClassVar[str] = ""
    #: its budget is ``n_queries`` model queries per image (score-based searches; ZOO counts iterations)
    query_budget: ClassVar[bool] = False
    #: attacks a seeded random subset of a chunk's images, not every image (no worst case over it)
    random_subset: ClassVar[bool] = False

    name: str = ""
    attack: str
    description: Annotated[str, UNHASHED] = ""
    batch_size: Annotated[WholeNumber, EFFORT] = Field(100, ge=1)
    backend: Annotated[str, EFFORT] = "native"
    bpda: Annotated[str | None, EFFORT] = Field(
        None, description="BPDA stand-in name, 'auto' for the defense's default, or null")
    eot: Annotated[WholeNumber, EFFORT] = Field(
        1, ge=1, description="forward passes averaged per gradient (randomised defenses)")
    recheck: Annotated[WholeNumber, EFFORT] = Field(
        1, ge=1, description="re-evaluations of each success against a randomised defense")
    only_correct: bool = Field(True, description="attack only images the defense classifies correctly")
    max_images: Annotated[WholeNumber | None, BUDGET, UNHASHED] = Field(
        None, ge=1, description="evaluate only the first N of the suite's images "
        "(e.g. a 25000-step Boundary column on 50 of 1000); tables state the subset")

    # The one declaration of a schema's backends: backend name → its implementation
    # ("module:Class", an ``attacks.base.Attack`` imported only when it runs), or None where
    # the engine (``robust_bench_sc.evaluate``) evaluates the threat model itself. The
    # ``backend`` validator and the attack lookup (``attacks.base.attack_class``) read it.
    backends: ClassVar[dict[str, str | None]] = {}
    # The composite protocol. ``nested_fields``: the fields holding threat models (typed,
    # validated with their parent; see nested_kinds); :meth:`members` lists them in order.
    # ``members_run_on``: where they run. "defense": each on the defense under test, and the
    # engine composes their records (worst_case: robust only where every member failed; the
    # probes adapt each member to the defense). "source": on another model, named by the
    # threat model's ``source_spec`` (ref, params, label), whose output is then evaluated on
    # the defense (transfer; the attack class runs the members). Everything that walks a
    # threat model (adapt, preflight, evaluate) reads these two, never a kind name.
    nested_fields: ClassVar[tuple[str, ...]] = ()
    members_run_on: ClassVar[Literal["defense", "source"]] = "defense"

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, v: str) -> str:
        if v not in cls.backends:
            raise ValueError(f"backend {v!r} is not available for attack {cls.kind!r}; allowed: {', '.join(cls.backends)}")
        return v

    def members(self) -> list[ThreatModel]:
        """The nested threat models, field by field in ``nested_fields`` order ([] for a plain one)."""
        out: list[ThreatModel] = []
        for f in self.nested_fields:
            v = getattr(self, f)
            out += list(v) if isinstance(v, list) else [v]
        return out

    @classmethod
    def nested_kinds(cls, field: str) -> list[str]:
        """The attack kinds a nested field (one of ``nested_fields``) accepts."""
        return []

    @classmethod
    def nesting_refused(cls, field: str, kind: str) -> str:
        """Why ``kind`` (a known attack) cannot stand in the nested ``field``."""
        return f"not allowed in {field}"

    @classmethod
    def allowed_norms(cls) -> tuple[str, ...]:
        """The norms this schema's ``norm`` field accepts (its ``Literal``), () when it has none."""
        field = cls.model_fields.get("norm")
        if field is None or get_origin(field.annotation) is not Literal:
            return ()
        return get_args(field.annotation)

    @property
    def norm_name(self) -> str:
        return getattr(self, "norm", "") or ""

    @property
    def epsilon_value(self) -> float | None:
        return getattr(self, "epsilon", None)


@register_threat_model
class CleanThreat(ThreatModel):
    """No attack: clean accuracy."""

    kind: ClassVar[str] = "none"
    no_epsilon_ball: ClassVar[str] = "the threat model runs no attack"
    backends: ClassVar[dict[str, str | None]] = {"native": None}
    attack: Literal["none"] = "none"


@register_threat_model
class PGDThreat(ThreatModel):
    """Projected gradient descent inside an ℓp ball (Madry et al.; paper eq. 1).

    ``l1_step``: ``dense`` is the paper's ℓ1 attack (gradient / ‖gradient‖₁ · δ, then
    rescaled onto the ℓ1 sphere, clipped to [0, 1] only for evaluation: weak); ``sparse``
    is steepest descent over the top coordinates with exact projection onto the ℓ1 ball
    ∩ [0, 1] box (strong, as foolbox's SparseL1Descent).
    """

    kind: ClassVar[str] = "pgd"
    gradient_based: ClassVar[bool] = True
    backends: ClassVar[dict[str, str | None]] = {
        "native": "robust_bench_sc.attacks.pgd:NativePGD",
        "torchattacks": "robust_bench_sc.attacks.toolkits:TorchattacksPGD",
        "foolbox": "robust_bench_sc.attacks.toolkits:FoolboxPGD",
        "art": "robust_bench_sc.attacks.toolkits:ArtPGD"}

    attack: Literal["pgd"] = "pgd"
    norm: Norm
    epsilon: Number = Field(gt=0)
    steps: Annotated[WholeNumber, BUDGET] = Field(40, ge=1)
    step_size: Annotated[Number | str, EFFORT] = "epsilon/8"
    restarts: Annotated[WholeNumber, BUDGET] = Field(1, ge=1)
    random_start: Annotated[bool, EFFORT] = True
    loss: Literal["ce", "cw"] = "ce"
    early_stop: Annotated[bool, EFFORT] = Field(True, description="stop restarting a sample once it is fooled")
    keep_adversarial_iterate: Annotated[bool, EFFORT] = Field(
        True, description="native: an image's first adversarial iterate is its answer, and it leaves the batch "
                          "there (off: the last iterate, every image to the last step, as plain Madry PGD)")
    l1_step: Literal["dense", "sparse"] = "sparse"
    l1_sparsity: RealNumber = Field(0.99, ge=0.0, lt=1.0, description="sparse ℓ1 step: quantile of |gradient| kept")

    @field_validator("step_size")
    @classmethod
    def _check_step(cls, v, info: ValidationInfo):
        if isinstance(v, str):
            if _RELATIVE.match(v):
                step = resolve_relative(v, 1.0)  # a zero or non-finite factor is an error now, not at run time
            else:
                v = step = parse_number(v)
        else:
            step = v
        if not step > 0:  # 0, negative or eps*-1: every iterate stays at its start (robust = clean)
            eps = info.data.get("epsilon")
            value = f" ({step * eps:.6g} at epsilon {eps:.6g})" if isinstance(v, str) and eps else ""
            raise ValueError(f"got {v!r}{value}; must be > 0 (e.g. epsilon/8)")
        return v

    @property
    def step(self) -> float:
        return resolve_relative(self.step_size, self.epsilon)

    @model_validator(mode="after")
    def _check_combo(self):
        if self.backend != "native" and self.norm == "l1" and self.l1_step == "dense":
            raise ValueError("the paper's dense ℓ1 step (l1_step: dense) exists only in backend 'native'")
        if self.backend == "torchattacks" and self.norm == "l1":
            raise ValueError("torchattacks has no ℓ1 PGD; use backend native or foolbox")
        if self.backend == "torchattacks" and self.loss != "ce":
            raise ValueError("torchattacks PGD has cross-entropy loss only; use backend native, foolbox or art for loss: cw")
        return self


@register_threat_model
class CWThreat(ThreatModel):
    """Carlini–Wagner ℓ2 (minimum norm): success rate and perturbation norms."""

    kind: ClassVar[str] = "cw"
    gradient_based: ClassVar[bool] = True
    minimum_norm: ClassVar[bool] = True
    backends: ClassVar[dict[str, str | None]] = {"foolbox": "robust_bench_sc.attacks.toolkits:FoolboxCW",
                                                 "torchattacks": "robust_bench_sc.attacks.toolkits:TorchattacksCW"}

    attack: Literal["cw"] = "cw"
    backend: Annotated[str, EFFORT] = "foolbox"
    norm: Literal["l2"] = "l2"
    steps: Annotated[WholeNumber, BUDGET] = Field(1000, ge=1)
    binary_search_steps: Annotated[WholeNumber, EFFORT] = Field(9, ge=1)
    confidence: RealNumber = 0.0
    learning_rate: RealNumber = Field(0.01, gt=0)
    initial_const: RealNumber = Field(0.001, gt=0)
    abort_early: bool = Field(True, description="foolbox: stop a binary-search step once the loss stalls")
    epsilon: Number | None = Field(None, description="report accuracy at this ℓ2 budget too")

    @model_validator(mode="after")
    def _check_backend_params(self):
        if self.backend == "torchattacks" and self.binary_search_steps != 1:
            raise ValueError("torchattacks CW uses one fixed constant c = initial_const (no binary search); "
                             "set binary_search_steps: 1 and initial_const (e.g. 1.0), or use backend foolbox")
        return self


@register_threat_model
class BoundaryThreat(ThreatModel):
    """Brendel et al.'s decision-based Boundary attack (foolbox), started from the closest
    image (ℓ2) of another predicted label. Steps default to foolbox's 25000 as in the paper."""

    kind: ClassVar[str] = "boundary"
    minimum_norm: ClassVar[bool] = True
    no_epsilon_ball: ClassVar[str] = ("the Boundary attack is a minimum-norm decision-based attack with no ε-ball to "
                                      "plant an adversarial example in")
    backends: ClassVar[dict[str, str | None]] = {"foolbox": "robust_bench_sc.attacks.decision:FoolboxBoundary"}

    attack: Literal["boundary"] = "boundary"
    backend: Annotated[str, EFFORT] = "foolbox"
    norm: Literal["l2"] = "l2"
    steps: Annotated[WholeNumber, BUDGET] = Field(25000, ge=1)
    spherical_step: RealNumber = Field(0.01, gt=0)
    source_step: RealNumber = Field(0.01, gt=0)
    source_step_convergance: RealNumber = Field(1e-7, gt=0)
    step_adaptation: RealNumber = Field(1.5, gt=1)
    update_stats_every_k: WholeNumber = Field(10, ge=1)
    init_pool: Literal["train", "test"] = "train"
    init_pool_size: Annotated[WholeNumber | None, EFFORT] = Field(
        None, ge=1, description="use only the first N pool images (None: all; 50000 for train)")
    epsilon: Number | None = Field(None, description="report accuracy at this ℓ2 budget too")


@register_threat_model
class HopSkipJumpThreat(ThreatModel):
    """HopSkipJumpAttack (decision based, ℓ2): mean norm of successful perturbations."""

    kind: ClassVar[str] = "hsj"
    minimum_norm: ClassVar[bool] = True
    no_epsilon_ball: ClassVar[str] = ("HopSkipJump is a minimum-norm decision-based attack with no ε-ball to plant an "
                                      "adversarial example in")
    backends: ClassVar[dict[str, str | None]] = {"art": "robust_bench_sc.attacks.decision:ArtHopSkipJump",
                                                 "foolbox": "robust_bench_sc.attacks.decision:FoolboxHopSkipJump"}

    attack: Literal["hsj"] = "hsj"
    backend: Annotated[str, EFFORT] = "art"
    norm: Literal["l2"] = "l2"
    max_iter: Annotated[WholeNumber, BUDGET] = Field(50, ge=1)
    max_eval: Annotated[WholeNumber, EFFORT] = Field(10000, ge=1)
    init_eval: Annotated[WholeNumber, EFFORT] = Field(100, ge=1)
    init_size: Annotated[WholeNumber, EFFORT] = Field(100, ge=1)
    gamma: RealNumber = Field(1.0, gt=0, description="foolbox only: binary-search threshold factor")
    stepsize_search: Literal["geometric_progression", "grid_search"] = "geometric_progression"
    hsj_batch_size: Annotated[WholeNumber, EFFORT] = Field(64, ge=1, description="ART only: batch of model queries")
    init_pool: Literal["noise", "train", "test"] = Field(
        "noise", description="starting point: noise = the toolkit's own uniform-noise search (ART: init_size "
        "draws; an image none of them misleads comes back unchanged); train/test = the ℓ2-closest image of that "
        "split the defense predicts as another label than the true one (as Boundary), passed as ART's "
        "x_adv_init / foolbox's starting_points")
    init_pool_size: Annotated[WholeNumber | None, EFFORT] = Field(
        None, ge=1, description="init_pool train/test: use only the first N pool "
        "images (None: all; 50000 for train)")
    epsilon: Number | None = None

    @model_validator(mode="after")
    def _check_init_pool(self):
        if self.init_pool == "noise" and self.init_pool_size is not None:
            raise ValueError("init_pool_size needs init_pool: train or test (init_pool is noise)")
        return self


@register_threat_model
class ZooThreat(ThreatModel):
    """ZOO (ART): zeroth-order coordinate descent, on a seeded random subset of correctly
    classified images (paper Table 4: 100 images)."""

    kind: ClassVar[str] = "zoo"
    minimum_norm: ClassVar[bool] = True
    no_epsilon_ball: ClassVar[str] = "ZOO is a minimum-norm attack with no ε-ball to plant an adversarial example in"
    random_subset: ClassVar[bool] = True
    backends: ClassVar[dict[str, str | None]] = {"art": "robust_bench_sc.attacks.decision:ArtZoo"}

    attack: Literal["zoo"] = "zoo"
    backend: Annotated[str, EFFORT] = "art"
    norm: Literal["l2"] = "l2"
    n_samples: WholeNumber = Field(100, ge=1, description="random correctly classified images attacked")
    confidence: RealNumber = 0.0
    learning_rate: RealNumber = Field(0.01, gt=0)
    max_iter: Annotated[WholeNumber, BUDGET] = Field(100, ge=1)
    binary_search_steps: Annotated[WholeNumber, EFFORT] = Field(1, ge=1)
    initial_const: RealNumber = Field(1e-3, gt=0)
    nb_parallel: Annotated[WholeNumber, EFFORT] = Field(128, ge=1)
    variable_h: RealNumber = Field(1e-4, gt=0)
    use_resize: bool = False
    use_importance: bool = False
    abort_early: bool = True
    zoo_batch_size: Annotated[WholeNumber, EFFORT] = Field(
        1, ge=1, description="ART ZooAttack batch_size (images optimised together)")
    batch_size: Annotated[WholeNumber, EFFORT] = Field(
        1000, ge=1, description="images per attack call: the n_samples are drawn from each call's correctly "
        "classified images, so keep it ≥ the suite's chunk_size")
    epsilon: Number | None = None


# AutoAttack runs Square with 5000 queries and ``resc_schedule=False``: its schedule of the
# square size (p halves at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000) is
# calibrated for 10 000 queries, and at 5000 it reaches p_init / 128.
AUTOATTACK_SQUARE_QUERIES = 5000
_RESCALE_DOC = ("rescale the square-size schedule to the query budget (the toolkit's resc_schedule). Unset: on "
                f"whenever the budget is not AutoAttack's {AUTOATTACK_SQUARE_QUERIES} queries, off at "
                f"{AUTOATTACK_SQUARE_QUERIES} (AutoAttack's own setting)")


def _rescale_rule(data: Any, queries_run: bool = True) -> Any:
    """Fill an unset (or null) ``rescale_schedule``: on iff Square runs with a budget other than
    AutoAttack's 5000 queries. Without it, Square at 1000 queries never gets below p_init / 16
    (large squares for the whole run); at 5000 the unrescaled schedule is AutoAttack's.

    The rule's value is stored explicitly, so a threat model whose behaviour it changed
    (a budget ≠ 5000) has ``rescale_schedule: true`` in its spec hash and never reuses records
    computed without rescaling, while every 5000-query threat model keeps its old hash."""
    if not isinstance(data, dict) or data.get("rescale_schedule") is not None:
        return data
    q = data.get("n_queries", AUTOATTACK_SQUARE_QUERIES)
    if isinstance(q, bool) or not isinstance(q, (int, float, str)):
        return data  # let the field's own validation name the bad value
    try:
        q = int(q)
    except ValueError:
        return data
    return {**data, "rescale_schedule": bool(queries_run and q != AUTOATTACK_SQUARE_QUERIES)}


# Fields added after records were first written, with what their absence from a stored
# configuration (run.json) meant: the code then behaved as this value, whatever the default
# rule says today. Used to rebuild old records' identity (plan.legacy_spec_hash, reports).
ABSENT_MEANT: dict[str, dict[str, Any]] = {
    "square": {"rescale_schedule": False},
    "autoattack": {"rescale_schedule": False},
}


def stored_config(config: dict[str, Any]) -> dict[str, Any]:
    """A threat-model configuration read back from a run.json, with fields that did not exist
    when it was written set to the behaviour of the code that wrote it."""
    missing = {k: v for k, v in ABSENT_MEANT.get(str(config.get("attack")), {}).items() if k not in config}
    return {**config, **missing} if missing else config


@register_threat_model
class SquareThreat(ThreatModel):
    """Square attack (score based, margin loss): pyautoattack (``backend: autoattack``, the
    reference implementation) or torchattacks (``backend: torchattacks``).

    ``rescale_schedule`` (the toolkits' ``resc_schedule``): unset, it is **on whenever
    ``n_queries`` is not AutoAttack's 5000** and off at 5000 (AutoAttack's own setting). The
    toolkits' schedule halves the square size at fixed iterations calibrated for 10 000
    queries; without rescaling, a 1000-query run keeps squares of at least p_init / 16 of the
    image for its whole budget. Set it explicitly to override the rule.
    """

    kind: ClassVar[str] = "square"
    query_budget: ClassVar[bool] = True
    backends: ClassVar[dict[str, str | None]] = {
        "autoattack": "robust_bench_sc.attacks.autoattack:AutoAttackSquare",
        "torchattacks": "robust_bench_sc.attacks.toolkits:TorchattacksSquare"}

    attack: Literal["square"] = "square"
    backend: Annotated[str, EFFORT] = "autoattack"
    norm: Literal["linf", "l2"]
    epsilon: Number = Field(gt=0)
    n_queries: Annotated[WholeNumber, BUDGET] = Field(AUTOATTACK_SQUARE_QUERIES, ge=1)
    p_init: Annotated[RealNumber, EFFORT] = Field(0.8, gt=0)
    restarts: Annotated[WholeNumber, BUDGET] = Field(1, ge=1)
    rescale_schedule: Annotated[bool, EFFORT] = Field(False, description=_RESCALE_DOC)

    @model_validator(mode="before")
    @classmethod
    def _schedule_rule(cls, data: Any) -> Any:
        return _rescale_rule(data)


# the attacks of pyautoattack's fixed versions (the ones with Square matter for its schedule)
SQUARE_VERSIONS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
                   "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
                   "rand": ("apgd-ce", "apgd-dlr")}


def autoattack_runs_square(version: str, attacks_to_run: list[str] | None) -> bool:
    """Whether AutoAttack ``version`` (with ``attacks_to_run`` for ``custom``) runs Square."""
    return "square" in ((attacks_to_run or []) if version == "custom" else SQUARE_VERSIONS.get(version, ()))


def runs_square(config: dict[str, Any]) -> bool:
    """Whether a threat-model configuration (as a run.json stores it) runs the Square attack:
    a square threat model, or an AutoAttack whose version runs it."""
    if config.get("attack") == "square":
        return True
    return config.get("attack") == "autoattack" and autoattack_runs_square(config.get("version", "standard"),
                                                                           config.get("attacks_to_run"))


@register_threat_model
class AutoAttackThreat(ThreatModel):
    """AutoAttack (pyautoattack, the reference implementation): standard or a custom list."""

    kind: ClassVar[str] = "autoattack"
    gradient_based: ClassVar[bool] = True
    backends: ClassVar[dict[str, str | None]] = {"autoattack": "robust_bench_sc.attacks.autoattack:AutoAttackRunner"}

    attack: Literal["autoattack"] = "autoattack"
    backend: Annotated[str, EFFORT] = "autoattack"
    norm: Norm
    epsilon: Number = Field(gt=0)
    version: Literal["standard", "plus", "rand", "custom"] = "standard"
    attacks_to_run: list[str] = Field(default_factory=list)
    n_queries: Annotated[WholeNumber, BUDGET] = Field(5000, ge=1, description="Square's query budget")
    apgd_iterations: Annotated[WholeNumber | None, BUDGET] = Field(
        None, ge=1, description="APGD-CE/DLR and APGD-T iterations (None: the version's 100)")
    apgd_restarts: Annotated[WholeNumber | None, BUDGET] = Field(
        None, ge=1, description="APGD-CE/DLR restarts (None: the version's own — 1 in standard, 5 in custom)")
    rescale_schedule: Annotated[bool, EFFORT] = Field(
        False, description="Square's schedule: " + _RESCALE_DOC + " (only where Square "
        "runs: standard, plus, or custom with square)")

    @model_validator(mode="before")
    @classmethod
    def _schedule_rule(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return _rescale_rule(data, queries_run=autoattack_runs_square(data.get("version", "standard"),
                                                                     data.get("attacks_to_run")))

    @model_validator(mode="after")
    def _custom_needs_list(self):
        if self.version == "custom" and not self.attacks_to_run:
            raise ValueError("version 'custom' needs attacks_to_run, e.g. [apgd-ce, apgd-dlr]")
        return self


@register_threat_model
class RandomSearchThreat(ThreatModel):
    """A score-based random search in the ℓ∞ ball (``robust_bench_sc.attacks.random_search``,
    our own, Square-like, gradient free): ±ε windows that shrink from ``p_init`` of the image
    to one pixel over ``n_queries``; scores average ``eot`` forward passes."""

    kind: ClassVar[str] = "random_search"
    query_budget: ClassVar[bool] = True
    backends: ClassVar[dict[str, str | None]] = {"native": "robust_bench_sc.attacks.random_search:RandomSearch"}

    attack: Literal["random_search"] = "random_search"
    norm: Literal["linf"] = "linf"
    epsilon: Number = Field(gt=0)
    n_queries: Annotated[WholeNumber, BUDGET] = Field(100, ge=1)
    p_init: Annotated[RealNumber, EFFORT] = Field(
        0.1, gt=0, le=1, description="the first window's share of the image area")


# -- threat models holding threat models ---------------------------------------------------

def _as_written(v: Any) -> Any:
    """A nested entry as its author wrote it: a mapping (copied), or a threat model built in
    Python as the mapping of the fields it was given. What a parent serialises (spec hash,
    run.json), so that the defaults a parent fills in below never enter a record's identity."""
    if isinstance(v, ThreatModel):
        return {"attack": v.kind, **v.model_dump(exclude_unset=True)}
    if isinstance(v, dict):
        return {k: _as_written(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_as_written(x) for x in v]
    return v


class _Nesting(ThreatModel):
    """A threat model holding others: each nested entry is validated as written (its errors
    name its own keys and lines), then again with the defaults it takes from its parent
    (:meth:`_filled`). It serialises as written: the spec hashes of records computed when these
    entries were untyped mappings stay the same."""

    _written: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _validate_nested(cls, data: Any, handler: Any) -> Any:
        if not isinstance(data, dict):
            return handler(data)
        written = {f: _as_written(data[f]) for f in cls.nested_fields if f in data}
        first = handler({**data, **written})
        filled = first._filled(written)
        out = handler({**data, **filled}) if filled != written else first
        out._written = written
        return out

    def _filled(self, written: dict[str, Any]) -> dict[str, Any]:
        return written

    def _as_given(self, field: str) -> Any:
        if field in self._written:
            return _as_written(self._written[field])
        return _as_written(getattr(self, field))  # built without validation (model_construct)


def _nested_union(kinds: list[str]) -> Any:
    return Annotated[Union[tuple(THREAT_MODELS[k] for k in kinds)], Field(discriminator="attack")]  # noqa: UP007


@register_threat_model
class TransferThreat(_Nesting):
    """Adversarial examples crafted on ``source`` (any defense plugin) with the white-box
    threat model ``craft``, evaluated on the defense under test.

    ``craft`` is a gradient-based threat model (pgd, cw, autoattack; not nested transfer or
    worst_case). Unless it says otherwise it is named ``NAME/craft``, runs with the transfer's
    ``batch_size``, follows ``source_bpda`` and, as PGD, runs every step
    (``keep_adversarial_iterate: false``: the source's first adversarial iterate transfers far
    worse than the last, measured +10 of 60 images robust on trades).

    ``craft_forward: defense`` crafts on a hybrid instead: the forward pass (logits, loss,
    the craft's stop decisions) is the defense under test's, the gradient the source's — BPDA
    with the whole source as the differentiable approximation (Athalye et al. 2018 §4.1;
    Tramèr et al. 2020), for a defense whose own gradient is unusable and cannot be split
    into a preprocess. There the craft keeps its first adversarial iterate unless it says
    otherwise (it is adversarial on the defense itself)."""

    kind: ClassVar[str] = "transfer"
    no_epsilon_ball: ClassVar[str] = ("a transfer attack is crafted on another model, not on the two-class network the "
                                      "test builds")
    backends: ClassVar[dict[str, str | None]] = {"native": "robust_bench_sc.attacks.transfer:TransferAttack"}
    nested_fields: ClassVar[tuple[str, ...]] = ("craft",)
    members_run_on: ClassVar[Literal["defense", "source"]] = "source"

    attack: Literal["transfer"] = "transfer"
    source: str | dict[str, Any] = Field(description="a defense: registry name or reference, or "
                                         "{ref, name, params} as in a suite's defenses")
    source_bpda: str | None = None
    craft_forward: Literal["source", "defense"] = Field(
        default="source", description="source: craft on the source; defense: the defense's forward pass with the "
                                      "source's gradient (BPDA, the source standing in for the whole defense)")
    craft: CraftThreat

    @classmethod
    def nested_kinds(cls, field: str) -> list[str]:
        return sorted(k for k, c in THREAT_MODELS.items() if c.gradient_based and not c.nested_fields)

    @classmethod
    def nesting_refused(cls, field: str, kind: str) -> str:
        if kind == "none":
            return "crafting needs an attack"
        if THREAT_MODELS[kind].nested_fields:
            return f"craft is one white-box attack on the source, not a {kind}"
        return "craft is a white-box attack on the source; a gradient-free one belongs on the defense itself"

    @field_validator("source")
    @classmethod
    def _check_source(cls, v: str | dict[str, Any]) -> str | dict[str, Any]:
        if isinstance(v, dict):
            unknown = sorted(set(v) - {"ref", "name", "params"})
            if unknown:
                raise ValueError(f"unknown key {unknown[0]!r}; allowed keys: name, params, ref")
            if not isinstance(v.get("ref"), str) or not v["ref"]:
                raise ValueError("a source mapping needs ref: a registry name or module:attr / file.py:attr")
            if not isinstance(v.get("name", ""), str) or not isinstance(v.get("params", {}), dict):
                raise ValueError("source name must be a string and params a mapping")
        return v

    @field_serializer("craft")
    def _dump_craft(self, craft: ThreatModel) -> Any:
        return self._as_given("craft")

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        # craft_forward came later: at its default it is left out, so every transfer threat model
        # written before dumps (and hashes: the suite's content hash) as it did
        d = handler(self)
        if isinstance(d, dict) and d.get("craft_forward") == "source":
            d.pop("craft_forward")
        return d

    def _filled(self, written: dict[str, Any]) -> dict[str, Any]:
        craft = dict(written["craft"])
        craft.setdefault("name", f"{self.name}/craft")
        craft.setdefault("batch_size", self.batch_size)
        if self.source_bpda is not None and self.craft_forward == "source":  # else the hybrid's source takes it
            craft.setdefault("bpda", self.source_bpda)
        if craft.get("attack") == "pgd":
            craft.setdefault("keep_adversarial_iterate", self.craft_forward == "defense")
        return {"craft": craft}

    @property
    def source_spec(self) -> tuple[str, dict[str, Any], str]:
        """The source defense as (ref, params, label)."""
        if isinstance(self.source, str):
            return self.source, {}, self.source
        return self.source["ref"], dict(self.source.get("params") or {}), self.source.get("name") or self.source["ref"]

    @property
    def norm_name(self) -> str:
        return self.craft.norm_name

    @property
    def epsilon_value(self) -> float | None:
        return self.craft.epsilon_value


@register_threat_model
class WorstCaseThreat(_Nesting):
    """Several attacks; a sample is robust only if it survives all of them (AutoAttack's
    per-sample worst case). Each attack runs only on the samples still robust.

    Members are any threat model but clean and worst_case; unless one says otherwise it is
    named ``NAME[j]`` and takes the parent's bpda, eot, recheck and batch_size where those are
    not their defaults."""

    kind: ClassVar[str] = "worst_case"
    no_epsilon_ball: ClassVar[str] = ("a worst-case threat model is a list of attacks: test each of its attacks on "
                                      "its own")
    backends: ClassVar[dict[str, str | None]] = {"native": None}  # evaluate.py runs the members
    nested_fields: ClassVar[tuple[str, ...]] = ("attacks",)
    INHERITED: ClassVar[tuple[str, ...]] = ("bpda", "eot", "recheck", "batch_size")

    attack: Literal["worst_case"] = "worst_case"
    attacks: list[MemberThreat] = Field(min_length=1)

    @classmethod
    def nested_kinds(cls, field: str) -> list[str]:
        return sorted(k for k in THREAT_MODELS if k not in ("none", "worst_case"))

    @classmethod
    def nesting_refused(cls, field: str, kind: str) -> str:
        if kind == "none":
            return "clean accuracy is already where every worst case starts"
        return "list its attacks in this one"

    @field_serializer("attacks")
    def _dump_attacks(self, attacks: list[ThreatModel]) -> Any:
        return self._as_given("attacks")

    def _filled(self, written: dict[str, Any]) -> dict[str, Any]:
        members = written["attacks"]
        if not isinstance(members, list):
            return written
        out = []
        for j, raw in enumerate(members):
            d = dict(raw)
            d.setdefault("name", f"{self.name}[{j}]")
            for k in self.INHERITED:
                if k not in d and getattr(self, k) != type(self).model_fields[k].default:
                    d[k] = getattr(self, k)
            out.append(d)
        return {"attacks": out}

    @property
    def norm_name(self) -> str:
        norms = {a.norm_name for a in self.attacks}
        return norms.pop() if len(norms) == 1 else "mixed"

    @property
    def epsilon_value(self) -> float | None:
        eps = {a.epsilon_value for a in self.attacks if a.epsilon_value is not None}
        return eps.pop() if len(eps) == 1 else None


# The nested unions, from every threat model registered above (keep this block last: a
# threat model registered after it could not be nested; register_threat_model refuses it).
if TYPE_CHECKING:  # the type checker sees the base class; pydantic the discriminated unions
    CraftThreat = ThreatModel
    MemberThreat = ThreatModel
else:
    CraftThreat = _nested_union(TransferThreat.nested_kinds("craft"))
    MemberThreat = _nested_union(WorstCaseThreat.nested_kinds("attacks"))
TransferThreat.model_rebuild()
WorstCaseThreat.model_rebuild()
_NESTED_BUILT = True
