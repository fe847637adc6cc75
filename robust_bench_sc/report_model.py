"""The report model: run directories → one :class:`Report` of defenses × threat models.

Loading a run folder (:func:`load_run`: its run.json, summary.csv and per-sample records,
its ``worst case`` column recomputed from the records, 95 % intervals of minimum-norm
cells), merging runs into one table (:func:`load_report`: which threat models share a
column, which cell comes from which run, the notes saying so), and what one table cell
says (:func:`cell_value`, :func:`paper_cell`). The text of a report is the renderers'
(:mod:`robust_bench_sc.renderers`); :mod:`robust_bench_sc.reports` ties the two together.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from robust_bench_sc import paper_numbers as pn
from robust_bench_sc.config import PROFILE_SELECTION, DefenseSpec, setting_changes
from robust_bench_sc.norms import Norm
from robust_bench_sc.stats import mean_interval, wilson_interval
from robust_bench_sc.storage import RunDir, RunMeta
from robust_bench_sc.subsets import IMAGES, describe_subset, short_subset
from robust_bench_sc.threat_models import BUDGET, EFFORT, THREAT_MODELS, fields_with, kinds_where, runs_square
from robust_bench_sc.summary import (WORST_CASE, WorstCaseError, worst_case_notes, worst_case_over_for, worst_case_row,
                                     worst_case_samples)

#: read from the schemas (threat_models.py: each kind's ``minimum_norm``)
MINIMUM_NORM_KINDS = frozenset(kinds_where("minimum_norm"))
_SKIP_SETTINGS = {"name", "attack", "description", "backend", "norm", "epsilon", "bpda"}
# Settings that change how hard a threat model tries, not what it measures: runs that differ
# only in these share one column (with a line saying which setting differs in which run);
# any other difference (attack, norm, ε, loss, ℓ1 step, transfer source, worst-case set, ...)
# gives the later run its own column, with the same kind of line.
#: settings that choose images, not how they are attacked: where they differ, every cell says which images
_IMAGE_SETTINGS = {"max_images"}
# Declared on the schema: the fields marked BUDGET or EFFORT (threat_models.py).
MERGEABLE_SETTINGS = fields_with(BUDGET) | fields_with(EFFORT)


class ReportError(RuntimeError):
    pass


# -- data model -------------------------------------------------------------------------

@dataclass
class ThreatInfo:
    label: str                      # column label (the threat model's name, made unique)
    name: str                       # its name in the run
    config: dict[str, Any]          # resolved threat-model configuration
    minimum_norm: bool
    differs: dict[str, list[str]] = field(default_factory=dict)   # merged runs: setting → "value (run)" each

    @property
    def kind(self) -> str:
        return str(self.config.get("attack", ""))

    @property
    def norm(self) -> str:
        n = self.config.get("norm")
        if n is None and isinstance(self.config.get("craft"), dict):
            n = self.config["craft"].get("norm")
        return str(n or "")

    @property
    def epsilon(self) -> float | None:
        e = self.config.get("epsilon")
        if e is None and isinstance(self.config.get("craft"), dict):
            e = self.config["craft"].get("epsilon")
        try:
            return None if e is None else float(e)
        except (TypeError, ValueError):
            return None

    def identity(self) -> str:
        """Everything that determines the numbers (not the name or description)."""
        c = {k: v for k, v in self.config.items() if k not in ("name", "description")}
        return json.dumps(c, sort_keys=True, default=str)


@dataclass
class DefenseInfo:
    label: str
    ref: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def paper_row(self) -> str | None:
        return pn.paper_defense(self.ref, self.params)


@dataclass
class RunInfo:
    path: str                       # as given (relative paths stay relative: reports are reproducible text)
    meta: RunMeta
    notes: list[str] = field(default_factory=list)
    subset: str = ""                # the images of its summary rows (run.json's "subset" predates max_images in old runs)

    @property
    def label(self) -> str:
        return Path(self.path).name


@dataclass
class Report:
    title: str
    defenses: list[DefenseInfo]
    threats: list[ThreatInfo]
    cells: dict[tuple[str, str], dict[str, Any]]     # (defense label, threat label) → summary row
    runs: list[RunInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    samples: pd.DataFrame | None = None               # per-sample records, threat_model = column label
    images: str = IMAGES                              # what the images are: "CIFAR-100 test images" (run.json)

    def cell(self, defense: str, threat: str) -> dict[str, Any] | None:
        return self.cells.get((defense, threat))

    @property
    def subset(self) -> str:
        """'first N CIFAR-10 test images' (or the list of distinct subsets)."""
        where = "n per column in the last row; a cell names its images where its column mixes image sets"
        return subsets_of(list(self.cells.values()), where)

    def cell_images(self, defense: str, threat: str) -> str:
        """Which images a cell is on, where its column mixes image sets ("" otherwise)."""
        subsets = {_subset_of(r) for (d, t), r in self.cells.items() if t == threat}
        r = self.cells.get((defense, threat))
        if r is None or len(subsets) < 2:
            return ""
        return short_subset(_subset_of(r))


def subsets_of(rows: list[dict[str, Any]], where: str = "") -> str:
    """The images of summary rows in one phrase: one subset as it is, several plain "first N"
    as "first N or M …", others listed; ``where`` (in brackets) says how to tell them apart."""
    subsets: list[str] = []
    for row in rows:
        s = _subset_of(row)
        if s not in subsets:
            subsets.append(s)
    if not subsets:
        return "no images"
    if len(subsets) == 1:
        return subsets[0]
    ns = sorted({int(r["n_images"]) for r in rows})
    text = describe_subset(ns) if sorted(subsets) == sorted(describe_subset(n) for n in ns) else "; ".join(subsets)
    return f"{text} ({where})" if where else text


def _subset_of(row: dict[str, Any]) -> str:
    """The images of a summary row: as the run wrote them, else (an old run) its first n."""
    s = row.get("subset")
    return s if isinstance(s, str) and s else describe_subset(int(row["n_images"]))


def _is_minimum_norm(config: dict[str, Any]) -> bool:
    return config.get("attack") in MINIMUM_NORM_KINDS


def _nan(x) -> bool:
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def error_notes(table: pd.DataFrame, prefix: str = "") -> list[str]:
    """One line per column an attack error left missing (or a worst case partial): summary
    rows' ``error`` (robust_bench_sc.summary.column_error)."""
    if "error" not in table.columns:
        return []
    notes = []
    for _, r in table.iterrows():
        err = r.get("error")
        if isinstance(err, str) and err:
            what = "partial" if err.startswith("worst case without") else "missing"
            notes.append(f"{prefix}{r['defense']} × {r['threat_model']}: column {what}: {err}.")
    return notes


def auto_notes(probes: Any, prefix: str = "") -> list[str]:
    """One line per setting ``auto`` chose from the probes (run.json's ``probes``:
    label → {threat_models: name → [{setting, value, reason}]}), so a table says why."""
    notes = []
    for label, entry in (probes.items() if isinstance(probes, dict) else []):
        per = entry.get("threat_models") if isinstance(entry, dict) else None
        for tname, choices in (per.items() if isinstance(per, dict) else []):
            for c in choices if isinstance(choices, list) else []:
                if isinstance(c, dict):
                    notes.append(f"{prefix}auto, {label} × {tname}: {c.get('setting')} {c.get('value')} "
                                 f"({c.get('reason')}).")
    return notes


# -- building reports -------------------------------------------------------------------

def report_from_suite(suite, table: pd.DataFrame, samples: pd.DataFrame | None = None) -> Report:
    """A report of one suite's summary table (what the runner writes as summary.md)."""
    threats = [ThreatInfo(t.name, t.name, t.model_dump(), bool(t.minimum_norm))
               for t in suite.threat_models if (table["threat_model"] == t.name).any()]
    over = list(getattr(suite, "worst_case_over", []) or [])
    if over and (table["threat_model"] == WORST_CASE).any():
        t0 = suite.threat(over[0])
        threats.append(ThreatInfo(WORST_CASE, WORST_CASE, {"name": WORST_CASE, "attack": "worst_case", "over": over,
                                                           "norm": t0.norm_name, "epsilon": t0.epsilon_value}, False))
    defenses = [DefenseInfo(d.label, d.ref, dict(d.params)) for d in suite.defenses]
    cells = {(r["defense"], r["threat_model"]): r.to_dict() for _, r in table.iterrows()}
    notes = worst_case_notes(over, [(d.label, d.threat_models) for d in suite.defenses]) if over else []
    notes += error_notes(table)
    adaptations = getattr(suite, "_adaptations", None) or {}
    notes += auto_notes({label: a.to_dict([t for t in suite.threat_models
                                           if next(d for d in suite.defenses if d.label == label).runs(t.name)])
                         for label, a in adaptations.items()})
    if suite.profile in suite.profiles:
        changes = setting_changes(suite.profiles[suite.profile].set)
        notes.append(f"Reduced profile `{suite.profile}` ({', '.join(changes)}): not the suite's declared setting; run "
                     "without `--profile` for that." if changes else
                     f"Profile `{suite.profile}`: {PROFILE_SELECTION}; run without `--profile` for the full suite.")
    elif suite.profile:
        notes.append(f"Reduced profile `{suite.profile}`: not the faithful setting; run without `--profile` for the full suite.")
    if suite.overrides:
        notes.append(f"Overrides: `{' '.join(suite.overrides)}`.")
    from robust_bench_sc.datasets import images_of

    return Report(suite.name, defenses, threats, cells, [], notes, samples, images_of(suite.data))


def _read_csv(path: Path, **kw) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kw)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: damaged or truncated CSV ({str(exc).splitlines()[0]}); rerun `scbench run` "
                          f"on {path.parent}") from None


def _read_samples(run_dir: Path) -> pd.DataFrame | None:
    path = RunDir(run_dir).samples_path
    if not path.is_file():
        return None
    df = _read_csv(path, low_memory=False)
    for col in ("clean_correct", "attacked", "fooled", "robust"):
        if col in df:
            df[col] = df[col].astype(str).str.lower().isin(("true", "1", "1.0"))
    return df


def normalized_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored threat-model configuration with every field spelled out (a field added to the
    code after the run counts as the behaviour the code then had: threat_models.ABSENT_MEANT),
    so that two runs compare by what they did, not by which fields their code version wrote."""
    from robust_bench_sc.threat_models import stored_config

    cls = THREAT_MODELS.get(str(config.get("attack")))
    if cls is None:
        return dict(config)
    try:
        out = cls.model_validate(stored_config(config)).model_dump()
    except ValueError:  # a configuration of an older schema: compare it as written
        return dict(config)
    out["name"] = config.get("name", out.get("name"))
    return out


def _norm_intervals(table: pd.DataFrame, samples: pd.DataFrame | None, threats: list[ThreatInfo]) -> pd.DataFrame:
    """95 % interval of the mean ‖e‖₂ of the successes for every minimum-norm cell."""
    table = table.copy()
    table["mean_l2_ci_low"] = math.nan
    table["mean_l2_ci_high"] = math.nan
    if samples is None:
        return table
    mn = {t.name for t in threats if t.minimum_norm}
    for i, r in table.iterrows():
        if r["threat_model"] not in mn:
            continue
        part = samples[(samples["defense"] == r["defense"]) & (samples["threat_model"] == r["threat_model"])]
        if "selected" in part.columns and part["selected"].notna().any():
            part = part[part["selected"] == 1]
        ok = part[part["attacked"] & part["fooled"]]["l2"]
        table.loc[i, ["mean_l2_ci_low", "mean_l2_ci_high"]] = mean_interval(ok, lower_bound=0.0)  # a norm
    return table


def _add_worst_case(run_dir: Path, config: dict[str, Any], table: pd.DataFrame, samples: pd.DataFrame | None,
                    threats: list[ThreatInfo], notes: list[str], images: str = IMAGES):
    """The run's ``worst case`` column (its suite's ``worst_case_over``), recomputed from its
    per-sample records (the same function as summary.csv's row), per-sample records included."""
    over = [str(x) for x in (config.get("worst_case_over") or [])]
    if not over:
        return table, samples
    by_name = {t.name: t for t in threats}
    t0 = by_name.get(over[0])
    threats.append(ThreatInfo(WORST_CASE, WORST_CASE, {
        "name": WORST_CASE, "attack": "worst_case", "over": over, "norm": t0.norm if t0 else "",
        "epsilon": t0.epsilon if t0 else None}, False))
    if samples is None:
        return table, samples  # summary.csv's rows, as written
    table = table[table["threat_model"] != WORST_CASE]
    runs = {d.label: d.threat_models for d in map(DefenseSpec.model_validate, config.get("defenses") or [])}
    notes.extend(f"{run_dir.name}: {n}" for n in worst_case_notes(over, [(d, runs.get(d)) for d in
                                                                         dict.fromkeys(samples["defense"])]))
    rows, parts = [], []
    for d in dict.fromkeys(samples["defense"]):
        over_d = worst_case_over_for(over, runs.get(d))
        if not over_d:
            continue
        try:
            part, why = worst_case_samples(samples, over_d, d)
        except WorstCaseError as exc:
            raise ReportError(f"{run_dir}: {exc}") from None
        if part is None:
            notes.append(f"{run_dir.name}: {why}.")
            continue
        secs = table[(table["defense"] == d) & table["threat_model"].isin(over_d)]["seconds"].sum()
        rows.append(worst_case_row(part, t0.norm if t0 else "", t0.epsilon if t0 else None, float(secs), images))
        parts.append(part)
    if rows:
        table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
        samples = pd.concat([samples, *parts], ignore_index=True)
    return table, samples


def load_run(run_dir: str | Path) -> tuple[RunInfo, list[DefenseInfo], list[ThreatInfo], pd.DataFrame, pd.DataFrame | None]:
    """One run directory: its defenses, threat models (configurations normalised, see
    :func:`normalized_config`), summary rows and per-sample records, with the ``worst case``
    column its suite declares (``worst_case_over``) computed from the per-sample records."""
    given = str(run_dir)
    run_dir = Path(run_dir)
    meta_path = RunDir(run_dir).meta_path
    if not meta_path.is_file():
        raise ReportError(f"{run_dir}: not a run directory (no run.json)")
    try:
        meta = RunDir(run_dir).read_run_meta()  # a damaged one is named, not a bare JSON error
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    assert meta is not None  # run.json is there
    summary_path = RunDir(run_dir).summary_csv_path
    if not summary_path.is_file():
        raise ReportError(f"{run_dir}: no summary.csv (status {meta.status!r}); finish it with `scbench run` "
                          f"first (`scbench status {run_dir}` shows what it holds so far)")
    table = _read_csv(summary_path, keep_default_na=True)
    missing = {"defense", "threat_model"} - set(table.columns)
    if missing:
        raise ReportError(f"{summary_path}: damaged (no column {', '.join(sorted(missing))}); rerun `scbench run` on {run_dir}")
    table["bpda"] = table["bpda"].astype(object).fillna("") if "bpda" in table else ""
    config = meta.config
    defenses = [DefenseInfo(d.get("name") or d["ref"], d["ref"], d.get("params") or {}) for d in config.get("defenses", [])]
    threats = [ThreatInfo(t["name"], t["name"], normalized_config(t), _is_minimum_norm(t))
               for t in config.get("threat_models", [])]
    samples = _read_samples(run_dir)
    notes: list[str] = error_notes(table, f"{run_dir.name}: ") + auto_notes(meta.probes, f"{run_dir.name}: ")
    table, samples = _add_worst_case(run_dir, config, table, samples, threats, notes, meta.image_words)
    table = _norm_intervals(table, samples, threats)
    # threat models/defenses found only in the table (old run.json): still shown
    for name in table["threat_model"].unique():
        if name not in {t.name for t in threats}:
            row = table[table["threat_model"] == name].iloc[0]
            cfg = {"name": name, "attack": row.get("attack"), "norm": row.get("norm"), "epsilon": row.get("epsilon")}
            threats.append(ThreatInfo(name, name, cfg, _is_minimum_norm(cfg)))
    for name in table["defense"].unique():
        if name not in {d.label for d in defenses}:
            defenses.append(DefenseInfo(name, name))
    return RunInfo(given, meta, notes, subsets_of(table.to_dict("records"))), defenses, threats, table, samples


def load_report(run_dirs: Iterable[str | Path], title: str | None = None) -> Report:
    """Merge runs: union of defenses (rows) and threat models (columns), in order of appearance.

    A threat-model name used by two runs with different settings stays one column when they
    differ only in :data:`MERGEABLE_SETTINGS` (budgets, backend, BPDA: how hard it tries) and
    becomes two columns (``name (suite)``) otherwise; either way one note line says which
    setting differs in which run and rows. A (defense, threat model) measured by two runs is
    taken from the later run, with a note.
    """
    run_dirs = list({str(Path(r).resolve()): r for r in run_dirs}.values())  # each run once
    if not run_dirs:
        raise ReportError("no run directories given")
    runs: list[RunInfo] = []
    defenses: dict[str, DefenseInfo] = {}
    threats: dict[str, ThreatInfo] = {}
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    origin: dict[tuple[str, str], str] = {}
    notes: list[str] = []
    variants: dict[str, list[tuple[str, dict[str, Any]]]] = {}   # column label → (run label, config) per setting
    split: list[tuple[str, str, list[str], str, str]] = []
    sample_parts = []
    for rd in run_dirs:
        info, ds, ts, table, samples = load_run(rd)
        runs.append(info)
        notes.extend(info.notes)
        suite = info.meta.suite or info.label
        tlabel: dict[str, str] = {}
        for t in ts:
            label = t.name
            same = threats.get(label)
            if same is not None and same.identity() != t.identity():
                diff = _differences(variants[label][0][1], t.config)
                if set(diff) <= MERGEABLE_SETTINGS:
                    variants[label].append((info.label, t.config))
                else:
                    label = f"{t.name} ({suite})"
                    k = 2
                    while label in threats and threats[label].identity() != t.identity():
                        label = f"{t.name} ({suite} {k})"
                        k += 1
                    split.append((t.name, label, sorted(diff), variants[t.name][0][0], info.label))
            tlabel[t.name] = label
            if label not in threats:
                threats[label] = ThreatInfo(label, t.name, t.config, t.minimum_norm)
                variants[label] = [(info.label, t.config)]
        dlabel: dict[str, str] = {}
        for d in ds:
            label = d.label
            same_d = defenses.get(label)
            if same_d is not None and (same_d.ref, same_d.params) != (d.ref, d.params):
                label = f"{d.label} ({suite})"
            dlabel[d.label] = label
            defenses.setdefault(label, DefenseInfo(label, d.ref, d.params))
        for _, r in table.iterrows():
            key = (dlabel.get(r["defense"], r["defense"]), tlabel.get(r["threat_model"], r["threat_model"]))
            if key in cells:
                notes.append(f"{key[0]} × {key[1]} is in {origin[key]} and {info.path}; showing the latter.")
            row = r.to_dict()
            row["defense"], row["threat_model"] = key
            row["run"] = info.path
            cells[key] = row
            origin[key] = info.path
        if samples is not None:
            s = samples.copy()
            s["defense"] = s["defense"].map(lambda x: dlabel.get(x, x))
            s["threat_model"] = s["threat_model"].map(lambda x: tlabel.get(x, x))
            s["run"] = info.path
            sample_parts.append(s)
        if info.meta.profile:
            notes.append(_profile_note(info.label, info.meta))
        if info.meta.overrides:
            notes.append(f"{info.label}: overrides `{' '.join(info.meta.overrides)}`.")
        if info.meta.status != "complete":
            notes.append(f"{info.label}: run status {info.meta.status!r}.")
    if sample_parts:
        samples_all = pd.concat(sample_parts, ignore_index=True)
        # keep only the samples behind the cells shown
        shown = [origin.get(k) for k in zip(samples_all["defense"], samples_all["threat_model"])]
        samples_all = samples_all[[a == b for a, b in zip(shown, samples_all["run"])]].reset_index(drop=True)
    else:
        samples_all = None
    used_t = {k[1] for k in cells}
    used_d = {k[0] for k in cells}
    run_label = {r.path: r.label for r in runs}
    for label, vs in variants.items():
        if len(vs) < 2 or label not in used_t:
            continue
        keys = sorted(set().union(*(_differences(vs[0][1], c) for _, c in vs[1:])))
        threats[label].differs = {k: [f"{_setting_text(c.get(k))} ({run})" for run, c in vs] for k in keys}
        keys = [k for k in keys if k not in _IMAGE_SETTINGS]  # each cell names its images already
        if not keys:
            continue
        parts = []
        for run, c in vs:
            rows = [d for (d, t), path in origin.items() if t == label and run_label.get(path) == run]
            setting = ", ".join(f"{k}={_setting_text(c.get(k))}" for k in keys)
            parts.append(f"{setting} in {run} ({', '.join(rows) or 'no row shown'})")
        notes.append(f"`{label}` is one column over runs whose settings differ: {'; '.join(parts)}.")
    for name, label, keys, first, later in split:
        if label in used_t:
            notes.append(f"`{name}` is two columns (`{name}`, `{label}`): {first} and {later} differ in "
                         f"{', '.join(keys)}, which change what it measures.")
    title = title or " + ".join(dict.fromkeys(r.meta.suite or r.label for r in runs))
    kinds = list(dict.fromkeys(r.meta.image_words for r in runs))
    return Report(title, [d for d in defenses.values() if d.label in used_d],
                  [t for t in threats.values() if t.label in used_t], cells, runs, notes, samples_all,
                  kinds[0] if len(kinds) == 1 else " / ".join(kinds))


def _differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    keys = (set(a) | set(b)) - {"name", "description"}
    return {k: (a.get(k), b.get(k)) for k in sorted(keys)
            if json.dumps(a.get(k), sort_keys=True, default=str) != json.dumps(b.get(k), sort_keys=True, default=str)}


# -- cells ------------------------------------------------------------------------------

#: what "N flagged" in a minimum-norm cell means (for bounded attacks an unchanged image is just
#: a robust one: AutoAttack and Square return the input where they fail, so those are not shown)
FLAGGED_NOTE = ("N flagged (minimum-norm attacks): images the attack returned unmodified (e.g. HopSkipJump found "
                "no adversarial start) or whose claimed success the re-check did not confirm; they count as not "
                "fooled and are left out of ‖e‖₂, so the attack failed on them rather than the defense holding. "
                "Per image: samples.csv, column flags.")


def any_flagged(report: "Report") -> bool:
    return any(cell_value(r, t).flagged for t in report.threats if t.minimum_norm
               for d in report.defenses if (r := report.cell(d.label, t.label)) is not None)


@dataclass
class CellValue:
    """What one table cell says."""

    value: float            # accuracy in %, or mean ‖e‖₂
    n: int
    ci: tuple[float, float] | None = None        # Wilson 95 % (accuracies)
    success_rate: float | None = None            # minimum-norm attacks
    minimum_norm: bool = False
    source: str = "ours"                         # "ours" or "paper"
    budget: float | None = None                  # minimum-norm attacks with an ε: accuracy at that budget
    budget_accuracy: float | None = None
    flagged: int = 0                             # minimum-norm attacks: records the engine flagged (FLAGGED_NOTE)
    success_ci: tuple[float, float] | None = None  # minimum-norm attacks: Wilson 95 % of the success rate

    @property
    def missing(self) -> bool:
        return _nan(self.value)


def cell_value(row: dict[str, Any], threat: ThreatInfo) -> CellValue:
    n = int(row["n_images"])
    if threat.minimum_norm:
        eps = threat.epsilon
        lo: Any = row.get("mean_l2_ci_low")
        hi: Any = row.get("mean_l2_ci_high")
        sr: Any = row.get("success_rate")
        # the images attacked: the correctly classified (or drawn) ones, clean_accuracy % of n
        attacked = 0 if _nan(row.get("clean_accuracy")) else int(round(float(row["clean_accuracy"]) * n / 100))
        success_ci = (wilson_interval(int(round(float(sr) * attacked / 100)), attacked)
                      if attacked and not _nan(sr) else None)
        return CellValue(float(row["mean_l2"]) if not _nan(row.get("mean_l2")) else math.nan, n,
                         ci=None if _nan(lo) or _nan(hi) else (float(lo), float(hi)),
                         success_rate=None if _nan(row.get("success_rate")) else float(row["success_rate"]),
                         minimum_norm=True, budget=eps,
                         budget_accuracy=None if eps is None or _nan(row.get("robust_accuracy")) else float(row["robust_accuracy"]),
                         flagged=0 if _nan(row.get("n_flagged")) else int(row.get("n_flagged") or 0),
                         success_ci=success_ci)
    acc = float(row["clean_accuracy"] if threat.kind == "none" else row["robust_accuracy"])
    if _nan(acc):  # no number (the attack raised: the notes say why)
        return CellValue(math.nan, n)
    k = int(round(acc * n / 100))
    return CellValue(acc, n, wilson_interval(k, n))


def paper_cell(defense: DefenseInfo, threat: ThreatInfo) -> CellValue | None:
    row = defense.paper_row
    col = pn.paper_column(threat.config)
    if row is None or col is None:
        return None
    pc = pn.paper_value(row, col)
    if pc is None:
        return None
    return CellValue(pc.value, pc.n_images, None, pc.success_rate, col.minimum_norm, "paper")


_BUDGET_SETTINGS = fields_with(BUDGET)


def threat_settings(t: ThreatInfo) -> str:
    """The non-default settings of a threat model, compactly."""
    cls = THREAT_MODELS.get(t.kind)
    parts = []
    for k, v in t.config.items():
        if k in _SKIP_SETTINGS:
            continue
        if k in t.differs:
            parts.append(f"{k}={' or '.join(t.differs[k])}")
            continue
        if k == "n_queries" and t.config.get("attack") == "autoattack" and not runs_square(t.config):
            continue  # Square's budget, in an AutoAttack that does not run Square
        if k in _BUDGET_SETTINGS and v is not None:
            pass  # budgets are always shown: a reader needs them to judge a number
        elif k == "rescale_schedule" and runs_square(t.config):
            pass  # Square's schedule decides its strength at a reduced budget: always shown
        elif cls is not None and k in cls.model_fields:
            f = cls.model_fields[k]
            default = f.get_default(call_default_factory=True) if not f.is_required() else object()
            if default == v:
                continue
        parts.append(f"{k}={_setting_text(v, k, t.norm)}")
    return ", ".join(parts)


def _setting_text(v: Any, key: str = "", norm: str = "") -> str:
    """A setting as a table prints it; an ℓ∞ step on the 8-bit grid (or half of it) as k/255."""
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    if key == "step_size" and isinstance(v, float) and (n := Norm.get(norm)) is not None and n.pixel_grid:
        k2 = v * 255 * 2
        if abs(k2 - round(k2)) < 1e-6 and round(k2) > 0:
            return f"{round(k2) / 2:g}/255"
    return str(v)


def column_n(report: Report, t: ThreatInfo) -> str:
    ns = sorted({int(r["n_images"]) for (d, tt), r in report.cells.items() if tt == t.label})
    return "/".join(str(n) for n in ns) or "—"


def _profile_note(label: str, meta: RunMeta) -> str:
    """What a run's profile did: a selection of the suite at its declared settings, or reduced
    settings (named). Runs recorded before run.json kept the profile's ``set`` are called reduced."""
    profile = meta.profile
    if meta.profile_set is None:
        return f"{label}: reduced profile `{profile}` (not the faithful setting)."
    changes = setting_changes(meta.profile_set)
    if changes:
        return f"{label}: reduced profile `{profile}`: {', '.join(changes)} (not the suite's declared setting)."
    return f"{label}: profile `{profile}`: {PROFILE_SELECTION}."
