"""Comparison reports: one or more run directories → tables in the paper's layout.

Defenses are rows, threat models columns. Accuracy cells are in % with the number of
images and a 95 % Wilson interval; minimum-norm attacks (cw / boundary / hsj / zoo) show
the mean ‖e‖₂ of successful perturbations and the success rate. Every table says which
images it is on ("first N CIFAR-10 test images"); with ``paper=True`` the paper's own
numbers (full test set, :mod:`robust_bench_sc.paper_numbers`) are shown beside ours.

The runner's ``summary.md`` is rendered by :func:`to_markdown` too (see
:func:`robust_bench_sc.runner.finalize`).

Formats: :func:`to_markdown`, :func:`to_csv`, :func:`to_latex`, :func:`to_html`.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from robust_bench_sc import paper_numbers as pn
from robust_bench_sc.stats import mean_interval, wilson_interval
from robust_bench_sc.storage import RunDir
from robust_bench_sc.summary import (WORST_CASE, WorstCaseError, describe_images, fmt_eps, worst_case_row,
                                     worst_case_samples)

MINIMUM_NORM_KINDS = {"cw", "boundary", "hsj", "zoo"}
FORMATS = ("md", "csv", "latex", "html")
_SKIP_SETTINGS = {"name", "attack", "description", "backend", "norm", "epsilon", "bpda"}
# Settings that change how hard a threat model tries, not what it measures: runs that differ
# only in these share one column (with a line saying which setting differs in which run);
# any other difference (attack, norm, ε, loss, ℓ1 step, transfer source, worst-case set, ...)
# gives the later run its own column, with the same kind of line.
MERGEABLE_SETTINGS = {"steps", "restarts", "n_queries", "max_iter", "max_images", "apgd_iterations", "apgd_restarts",
                      "binary_search_steps", "batch_size", "eot", "recheck", "early_stop", "keep_adversarial_iterate",
                      "rescale_schedule", "init_pool_size", "max_eval", "init_eval", "init_size", "step_size",
                      "hsj_batch_size", "zoo_batch_size", "nb_parallel", "p_init", "random_start", "backend", "bpda"}


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
    meta: dict[str, Any]
    notes: list[str] = field(default_factory=list)

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

    def cell(self, defense: str, threat: str) -> dict[str, Any] | None:
        return self.cells.get((defense, threat))

    @property
    def subset(self) -> str:
        """'first N CIFAR-10 test images' (or the list of distinct subsets)."""
        subsets = []
        for row in self.cells.values():
            s = row.get("subset") or f"first {int(row['n_images'])} CIFAR-10 test images"
            if s not in subsets:
                subsets.append(s)
        if not subsets:
            return "no images"
        if len(subsets) == 1:
            return subsets[0]
        ns = sorted({int(r["n_images"]) for r in self.cells.values()})
        plain = [f"first {n} CIFAR-10 test images" for n in ns]
        where = "n per column in the last row; a cell names its images where its column mixes image sets"
        if sorted(subsets) == sorted(plain):
            return f"first {' or '.join(str(n) for n in ns)} CIFAR-10 test images ({where})"
        return "; ".join(subsets) + f" ({where})"

    def cell_images(self, defense: str, threat: str) -> str:
        """Which images a cell is on, where its column mixes image sets ("" otherwise)."""
        subsets = {_subset_of(r) for (d, t), r in self.cells.items() if t == threat}
        r = self.cells.get((defense, threat))
        if r is None or len(subsets) < 2:
            return ""
        s = _subset_of(r)
        return s.removesuffix(" CIFAR-10 test images") if s.startswith("first ") else s


def _subset_of(row: dict[str, Any]) -> str:
    return row.get("subset") if isinstance(row.get("subset"), str) and row.get("subset") else \
        f"first {int(row['n_images'])} CIFAR-10 test images"


def _is_minimum_norm(config: dict[str, Any]) -> bool:
    from robust_bench_sc.threat_models import THREAT_MODELS

    cls = THREAT_MODELS.get(str(config.get("attack")))
    if cls is not None:
        return bool(cls.minimum_norm)
    return config.get("attack") in MINIMUM_NORM_KINDS


def _nan(x) -> bool:
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return True


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
    notes = []
    if suite.profile:
        notes.append(f"Reduced profile `{suite.profile}`: not the faithful setting; run without `--profile` for the full suite.")
    if suite.overrides:
        notes.append(f"Overrides: `{' '.join(suite.overrides)}`.")
    return Report(suite.name, defenses, threats, cells, [], notes, samples)


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
    from robust_bench_sc.threat_models import THREAT_MODELS, stored_config

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
        table.loc[i, ["mean_l2_ci_low", "mean_l2_ci_high"]] = mean_interval(ok)
    return table


def _add_worst_case(run_dir: Path, config: dict[str, Any], table: pd.DataFrame, samples: pd.DataFrame | None,
                    threats: list[ThreatInfo], notes: list[str]):
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
    rows, parts = [], []
    for d in dict.fromkeys(samples["defense"]):
        try:
            part, why = worst_case_samples(samples, over, d)
        except WorstCaseError as exc:
            raise ReportError(f"{run_dir}: {exc}") from None
        if part is None:
            notes.append(f"{run_dir.name}: {why}.")
            continue
        secs = table[(table["defense"] == d) & table["threat_model"].isin(over)]["seconds"].sum()
        rows.append(worst_case_row(part, t0.norm if t0 else "", t0.epsilon if t0 else None, float(secs)))
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
    from robust_bench_sc.storage import read_json

    try:
        meta = read_json(meta_path)  # a damaged one is named, not a bare JSON error
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    if not isinstance(meta, dict):
        raise ReportError(f"{meta_path}: not a run description (a JSON {type(meta).__name__})")
    summary_path = RunDir(run_dir).summary_csv_path
    if not summary_path.is_file():
        raise ReportError(f"{run_dir}: no summary.csv (status {meta.get('status')!r}); finish it with `scbench run` first")
    table = _read_csv(summary_path, keep_default_na=True)
    missing = {"defense", "threat_model"} - set(table.columns)
    if missing:
        raise ReportError(f"{summary_path}: damaged (no column {', '.join(sorted(missing))}); rerun `scbench run` on {run_dir}")
    table["bpda"] = table["bpda"].astype(object).fillna("") if "bpda" in table else ""
    config = meta.get("config") or {}
    defenses = [DefenseInfo(d.get("name") or d["ref"], d["ref"], d.get("params") or {}) for d in config.get("defenses", [])]
    threats = [ThreatInfo(t["name"], t["name"], normalized_config(t), _is_minimum_norm(t))
               for t in config.get("threat_models", [])]
    samples = _read_samples(run_dir)
    notes: list[str] = []
    table, samples = _add_worst_case(run_dir, config, table, samples, threats, notes)
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
    return RunInfo(given, meta, notes), defenses, threats, table, samples


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
        suite = info.meta.get("suite") or info.label
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
            same = defenses.get(label)
            if same is not None and (same.ref, same.params) != (d.ref, d.params):
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
        if info.meta.get("profile"):
            notes.append(f"{info.label}: reduced profile `{info.meta['profile']}` (not the faithful setting).")
        if info.meta.get("overrides"):
            notes.append(f"{info.label}: overrides `{' '.join(info.meta['overrides'])}`.")
        if info.meta.get("status") != "complete":
            notes.append(f"{info.label}: run status {info.meta.get('status')!r}.")
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
        parts = []
        for run, c in vs:
            rows = [d for (d, t), path in origin.items() if t == label and run_label.get(path) == run]
            setting = ", ".join(f"{k}={_setting_text(c.get(k))}" for k in keys)
            parts.append(f"{setting} in {run} ({', '.join(rows) or 'no row shown'})")
        threats[label].differs = {k: [f"{_setting_text(c.get(k))} ({run})" for run, c in vs] for k in keys}
        notes.append(f"`{label}` is one column over runs whose settings differ: {'; '.join(parts)}.")
    for name, label, keys, first, later in split:
        if label in used_t:
            notes.append(f"`{name}` is two columns (`{name}`, `{label}`): {first} and {later} differ in "
                         f"{', '.join(keys)}, which change what it measures.")
    title = title or " + ".join(dict.fromkeys(r.meta.get("suite") or r.label for r in runs))
    return Report(title, [d for d in defenses.values() if d.label in used_d],
                  [t for t in threats.values() if t.label in used_t], cells, runs, notes, samples_all)


def _differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    keys = (set(a) | set(b)) - {"name", "description"}
    return {k: (a.get(k), b.get(k)) for k in sorted(keys)
            if json.dumps(a.get(k), sort_keys=True, default=str) != json.dumps(b.get(k), sort_keys=True, default=str)}


def _setting_text(v: Any) -> str:
    return json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)


# -- cells ------------------------------------------------------------------------------

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

    @property
    def missing(self) -> bool:
        return _nan(self.value)


def cell_value(row: dict[str, Any], threat: ThreatInfo) -> CellValue:
    n = int(row["n_images"])
    if threat.minimum_norm:
        eps = threat.epsilon
        lo, hi = row.get("mean_l2_ci_low"), row.get("mean_l2_ci_high")
        return CellValue(float(row["mean_l2"]) if not _nan(row.get("mean_l2")) else math.nan, n,
                         ci=None if _nan(lo) or _nan(hi) else (float(lo), float(hi)),
                         success_rate=None if _nan(row.get("success_rate")) else float(row["success_rate"]),
                         minimum_norm=True, budget=eps,
                         budget_accuracy=None if eps is None or _nan(row.get("robust_accuracy")) else float(row["robust_accuracy"]))
    acc = float(row["clean_accuracy"] if threat.kind == "none" else row["robust_accuracy"])
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


_BUDGET_SETTINGS = ("steps", "restarts", "n_queries", "max_iter", "max_images", "apgd_iterations", "apgd_restarts")


def threat_settings(t: ThreatInfo) -> str:
    """The non-default settings of a threat model, compactly."""
    from robust_bench_sc.threat_models import THREAT_MODELS

    cls = THREAT_MODELS.get(t.kind)
    parts = []
    for k, v in t.config.items():
        if k in _SKIP_SETTINGS:
            continue
        if k in t.differs:
            parts.append(f"{k}={' or '.join(t.differs[k])}")
            continue
        if k in _BUDGET_SETTINGS and v is not None:
            pass  # budgets are always shown: a reader needs them to judge a number
        elif k == "rescale_schedule" and _runs_square(t.config):
            pass  # Square's schedule decides its strength at a reduced budget: always shown
        elif cls is not None and k in cls.model_fields:
            f = cls.model_fields[k]
            default = f.get_default(call_default_factory=True) if not f.is_required() else object()
            if default == v:
                continue
        parts.append(f"{k}={json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}")
    return ", ".join(parts)


def _runs_square(c: dict[str, Any]) -> bool:
    from robust_bench_sc.threat_models import SQUARE_VERSIONS

    if c.get("attack") == "square":
        return True
    if c.get("attack") != "autoattack":
        return False
    v = c.get("version", "standard")
    return "square" in ((c.get("attacks_to_run") or []) if v == "custom" else SQUARE_VERSIONS.get(v, ()))


def _text_cell(c: CellValue | None, *, ci: bool = True, images: str = "") -> str:
    text = _text_cell_value(c, ci=ci)
    return f"{text} (on {images})" if images and c is not None and text != "—" else text


def _text_cell_value(c: CellValue | None, *, ci: bool = True) -> str:
    if c is None:
        return "—"
    if c.minimum_norm:
        sr = "" if c.success_rate is None else f" ({c.success_rate:.0f}% succ.)"
        at = "" if c.budget is None or c.budget_accuracy is None else f"; {c.budget_accuracy:.2f} at ε = {c.budget:g}"
        if c.missing:
            return f"no success{sr}{at}"
        interval = f" [{c.ci[0]:.2f}, {c.ci[1]:.2f}]" if ci and c.ci is not None else ""
        return f"‖e‖₂ = {c.value:.2f}{interval}{sr}{at}"
    if c.missing:
        return "—"
    if ci and c.ci is not None:
        return f"{c.value:.2f} [{c.ci[0]:.1f}, {c.ci[1]:.1f}]"
    return f"{c.value:.2f}"


def _paper_label(d: DefenseInfo) -> str:
    return f"paper: {d.paper_row}†"


def _paper_footnote(report: Report) -> str:
    tables = sorted({pn.paper_column(t.config).table for t in report.threats if pn.paper_column(t.config)})
    zoo = any(pn.paper_column(t.config) and pn.paper_column(t.config).key == "zoo" for t in report.threats)
    s = (f"† the paper's published numbers ({', '.join(tables) or 'Table 1'}), measured on the "
         f"{pn.FULL_TEST_SET}, not on our subset, with the paper's attack settings ({pn.PAPER_SETTINGS}), "
         f"matched to our columns by attack, norm, ε, loss and ℓ1 step")
    if zoo:
        s += "; ZOO (Table 4): 100 random correctly classified test images"
    return s + "."


def column_n(report: Report, t: ThreatInfo) -> str:
    ns = sorted({int(r["n_images"]) for (d, tt), r in report.cells.items() if tt == t.label})
    return "/".join(str(n) for n in ns) or "—"


def describe(report: Report) -> str:
    mn = ("; minimum-norm attacks as mean ‖e‖₂ of successful perturbations [95% t-interval of the mean, where the "
          "per-sample records are at hand] and success rate")
    return (f"On the {report.subset} (accuracies in % with 95% Wilson intervals in brackets"
            f"{mn if any(t.minimum_norm for t in report.threats) else ''}).")


# -- markdown ---------------------------------------------------------------------------

def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def to_markdown(report: Report, paper: bool = False, plots: list | None = None,
                plots_relative_to: Path | None = None, details: bool = True) -> str:
    ts = report.threats
    lines = [f"# {report.title}", "", describe(report)]
    for note in report.notes:
        lines += ["", note]
    lines += ["", "| defense | " + " | ".join(_md_escape(t.label) for t in ts) + " |",
              "|" + "---|" * (len(ts) + 1)]
    any_paper = False
    for d in report.defenses:
        cells = [_text_cell(cell_value(r, t) if (r := report.cell(d.label, t.label)) is not None else None,
                            images=report.cell_images(d.label, t.label)) for t in ts]
        lines.append(f"| {_md_escape(d.label)} | " + " | ".join(cells) + " |")
        if paper:
            pcs = [paper_cell(d, t) for t in ts]
            if any(p is not None for p in pcs):
                any_paper = True
                lines.append(f"| *{_paper_label(d)}* | " + " | ".join(
                    "" if p is None else f"*{_text_cell(p, ci=False)}*" for p in pcs) + " |")
    lines.append("| n images | " + " | ".join(column_n(report, t) for t in ts) + " |")
    if paper:
        lines += ["", _paper_footnote(report) if any_paper else
                  "No defense/threat model here matches a column of the paper's Tables 1, 3, 4."]
    if details:
        lines += ["", "| threat model | attack | backend | norm | ε | BPDA | settings |", "|---|---|---|---|---|---|---|"]
        for t in ts:
            c = t.config
            lines.append(f"| {_md_escape(t.label)} | {t.kind} | {c.get('backend', '')} | {t.norm or '—'} | "
                         f"{fmt_eps(t.epsilon, t.norm)} | {c.get('bpda') or '—'} | {_md_escape(threat_settings(t))} |")
    if plots:
        lines += ["", "## Plots", ""]
        for p in plots:
            png = Path(p.png)
            if plots_relative_to is not None:
                try:
                    png = png.resolve().relative_to(plots_relative_to.resolve())
                except ValueError:
                    pass
            lines += [f"![{p.title}]({png.as_posix()})", "", f"*{p.caption}*", ""]
    if report.runs:
        lines += ["", "## Runs", "", "| run | suite | suite hash | subset | seed | git commit | torch | status |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in report.runs:
            m = r.meta
            lines.append(f"| `{r.path}` | {m.get('suite', '')} | {m.get('suite_hash', '')} | {m.get('subset', '')} | "
                         f"{m.get('seed', '')} | {_git(m)} | {(m.get('versions') or {}).get('torch', '')} | {m.get('status', '')} |")
    return "\n".join(lines).rstrip() + "\n"


def _git(meta: dict) -> str:
    g = meta.get("git") or {}
    c = g.get("commit")
    if not c:
        return "unknown"
    return c[:10] + (" (dirty)" if g.get("dirty") else "")


# -- csv --------------------------------------------------------------------------------

def to_frame(report: Report, paper: bool = False) -> pd.DataFrame:
    """Wide table in the paper's layout: one row per defense (and per paper row)."""
    rows = []
    for d in report.defenses:
        out: dict[str, Any] = {"defense": d.label, "source": "ours", "subset": report.subset}
        pout: dict[str, Any] = {"defense": d.label, "source": f"paper ({d.paper_row})", "subset": pn.FULL_TEST_SET}
        has_paper = False
        for t in report.threats:
            r = report.cell(d.label, t.label)
            c = cell_value(r, t) if r is not None else None
            p = paper_cell(d, t) if paper else None
            has_paper |= p is not None
            for target, v in ((out, c), (pout, p)):
                if t.minimum_norm:
                    target[f"{t.label}_mean_l2"] = v.value if v else math.nan
                    target[f"{t.label}_mean_l2_ci_low"] = v.ci[0] if v and v.ci else math.nan
                    target[f"{t.label}_mean_l2_ci_high"] = v.ci[1] if v and v.ci else math.nan
                    target[f"{t.label}_success_rate"] = v.success_rate if v and v.success_rate is not None else math.nan
                    if t.epsilon is not None:
                        target[f"{t.label}_accuracy_at_eps"] = v.budget_accuracy if v and v.budget_accuracy is not None else math.nan
                else:
                    target[t.label] = v.value if v else math.nan
                    target[f"{t.label}_ci_low"] = v.ci[0] if v and v.ci else math.nan
                    target[f"{t.label}_ci_high"] = v.ci[1] if v and v.ci else math.nan
                target[f"{t.label}_n"] = v.n if v else math.nan
            # which images this figure is on (its own subset: merged runs may differ per row)
            out[f"{t.label}_images"] = _subset_of(r) if r is not None else ""
            pout[f"{t.label}_images"] = (pn.paper_column(t.config).subset if p is not None else "")
        rows.append(out)
        if paper and has_paper:
            rows.append(pout)
    return pd.DataFrame(rows)


def to_csv(report: Report, paper: bool = False) -> str:
    return to_frame(report, paper).to_csv(index=False, float_format="%.4f")


# -- latex ------------------------------------------------------------------------------

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "ε": r"$\varepsilon$", "ℓ": r"$\ell$", "∞": r"$\infty$", "‖": r"$\|$", "₂": r"$_2$",
                  "†": r"$^\dagger$", "×": r"$\times$", "—": "--", "–": "--", "≤": r"$\leq$", "·": r"$\cdot$"}


def latex_escape(s: Any) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(s))


def _latex_cell(c: CellValue | None, ci: bool = True, images: str = "") -> str:
    text = _latex_cell_value(c, ci)
    return text + f" {{\\scriptsize on {latex_escape(images)}}}" if images and c is not None and text != "--" else text


def _latex_cell_value(c: CellValue | None, ci: bool = True) -> str:
    if c is None:
        return "--"
    if c.minimum_norm:
        sr = "" if c.success_rate is None else f" {{\\scriptsize ({c.success_rate:.0f}\\%)}}"
        if c.missing:
            return "no success" + sr
        interval = f" {{\\scriptsize [{c.ci[0]:.2f}, {c.ci[1]:.2f}]}}" if ci and c.ci is not None else ""
        return f"$\\|e\\|_2 = {c.value:.2f}$" + interval + sr
    if c.missing:
        return "--"
    if ci and c.ci is not None:
        return f"{c.value:.2f} {{\\scriptsize [{c.ci[0]:.1f}, {c.ci[1]:.1f}]}}"
    return f"{c.value:.2f}"


_NORM_TEX = {"linf": r"\ell_\infty", "l2": r"\ell_2", "l1": r"\ell_1"}


def to_latex(report: Report, paper: bool = False) -> str:
    ts = report.threats
    ncol = len(ts) + 1
    out = [f"% {report.title}: generated by scbench report",
           r"\begin{tabular}{l" + "c" * len(ts) + "}", r"\hline",
           "Defense & " + " & ".join(latex_escape(t.label) for t in ts) + r" \\"]
    sub = []
    for t in ts:
        bits = []
        if t.norm in _NORM_TEX:
            bits.append(_NORM_TEX[t.norm])
        eps = fmt_eps(t.epsilon, t.norm)
        if eps:
            bits.append(r"\varepsilon = " + eps.replace("/", "/"))
        sub.append(("{\\scriptsize $" + ", ".join(bits) + "$}") if bits else "")
    out.append(" & " + " & ".join(sub) + r" \\")
    out.append(r"\hline")
    any_paper = False
    for d in report.defenses:
        cells = [_latex_cell(cell_value(r, t) if (r := report.cell(d.label, t.label)) is not None else None,
                             images=report.cell_images(d.label, t.label)) for t in ts]
        out.append(latex_escape(d.label) + " & " + " & ".join(cells) + r" \\")
        if paper:
            pcs = [paper_cell(d, t) for t in ts]
            if any(p is not None for p in pcs):
                any_paper = True
                out.append(r"\quad\textit{paper: " + latex_escape(d.paper_row) + r"}$^\dagger$ & " + " & ".join(
                    "" if p is None else r"\textit{" + _latex_cell(p, ci=False) + "}" for p in pcs) + r" \\")
    out.append(r"\hline")
    out.append("$n$ images & " + " & ".join(latex_escape(column_n(report, t)) for t in ts) + r" \\")
    out.append(r"\hline")
    # short footer lines: a long \multicolumn{l} would widen the whole table
    notes = [latex_escape(report.subset[0].upper() + report.subset[1:]) + r"; accuracies in \%, [95\% Wilson interval].",
             r"Minimum-norm attacks: mean $\|e\|_2$ of successful perturbations (success rate)."]
    if not any(t.minimum_norm for t in ts):
        notes.pop()
    if paper and any_paper:
        tables = sorted({c.table for t in ts if (c := pn.paper_column(t.config))})
        notes.append(r"$^\dagger$ The paper's numbers (" + ", ".join(tables) + r"), on the full CIFAR-10 test set,")
        notes.append(latex_escape(f"with the paper's attack settings ({pn.PAPER_SETTINGS})."))
    for note in notes:
        out.append(f"\\multicolumn{{{ncol}}}{{l}}{{\\footnotesize {note}}}" + r" \\")
    out.append(r"\end{tabular}")
    return "\n".join(out) + "\n"


# -- html -------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.35em .6em;text-align:right;vertical-align:top}
th{background:#f1f3f6}td:first-child,th:first-child{text-align:left}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:after{content:" \\2195";color:#999}
table.sortable th.asc:after{content:" \\2191";color:#333}table.sortable th.desc:after{content:" \\2193";color:#333}
.ci{color:#666;font-size:.85em;display:block}.paper{color:#8a4b00;font-size:.85em;display:block;font-style:italic}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em}
.meta td{text-align:left;font-family:monospace;font-size:.85em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.9em}
code{background:#f4f4f4;padding:0 .2em}
"""

_JS = r"""
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('thead th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var asc=!th.classList.contains('asc');
      t.querySelectorAll('thead th').forEach(function(h){h.classList.remove('asc','desc')});
      th.classList.add(asc?'asc':'desc');
      var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){
        var x=a.cells[i].getAttribute('data-v'),y=b.cells[i].getAttribute('data-v');
        var nx=parseFloat(x),ny=parseFloat(y);
        if(!isNaN(nx)&&!isNaN(ny))return asc?nx-ny:ny-nx;
        if(isNaN(nx)!==isNaN(ny))return isNaN(nx)?1:-1;
        return asc?String(x).localeCompare(y):String(y).localeCompare(x);
      });
      rows.forEach(function(r){body.appendChild(r)});
    });
  });
});
// "#sort=K" or "#sort=K,desc" sorts the results table by column K on load (links, tests)
(function(){var m=/^#sort=(\d+)(,desc)?$/.exec(location.hash);if(!m)return;
  var th=document.querySelectorAll('#results thead th')[+m[1]];if(!th)return;th.click();if(m[2])th.click();})();
"""


def _h(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _html_cell(c: CellValue | None, p: CellValue | None, images: str = "") -> str:
    if c is None:
        inner, v = "—", ""
    elif c.minimum_norm:
        sr = "" if c.success_rate is None else f'<span class="ci">{c.success_rate:.0f}% succ., n={c.n}</span>'
        interval = f'<span class="ci">[{c.ci[0]:.2f}, {c.ci[1]:.2f}]</span>' if c.ci is not None and not c.missing else ""
        inner = ("no success" if c.missing else f"‖e‖₂ = {c.value:.2f}") + interval + sr
        if c.budget is not None and c.budget_accuracy is not None:
            inner += f'<span class="ci">{c.budget_accuracy:.2f}% robust at ε = {c.budget:g}</span>'
        v = "" if c.missing else f"{c.value:.6g}"
    else:
        inner = "—" if c.missing else f"{c.value:.2f}"
        if c.ci is not None and not c.missing:
            inner += f'<span class="ci">[{c.ci[0]:.1f}, {c.ci[1]:.1f}], n={c.n}</span>'
        v = "" if c.missing else f"{c.value:.6g}"
    if images and c is not None:
        inner += f'<span class="ci">on {_h(images)}</span>'
    if p is not None:
        inner += f'<span class="paper">paper† {_h(_text_cell(p, ci=False))}</span>'
    return f'<td data-v="{_h(v)}">{inner}</td>'


def to_html(report: Report, paper: bool = False, plots: list | None = None) -> str:
    ts = report.threats
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{_h(report.title)}: scbench report</title>", f"<style>{_CSS}</style></head><body>",
             f"<h1>{_h(report.title)}</h1>", f"<p>{_h(describe(report))} Click a column header to sort.</p>"]
    for note in report.notes:
        parts.append(f'<p class="note">{_h(note)}</p>')
    parts.append('<table class="sortable" id="results"><thead><tr><th>defense</th>')
    for t in ts:
        eps = fmt_eps(t.epsilon, t.norm)
        sub = " ".join(x for x in (t.kind, t.norm, f"ε={eps}" if eps else "") if x)
        parts.append(f'<th title="{_h(threat_settings(t))}">{_h(t.label)}<span class="ci">{_h(sub)}</span></th>')
    parts.append("</tr></thead><tbody>")
    any_paper = False
    for d in report.defenses:
        parts.append(f'<tr><td data-v="{_h(d.label)}">{_h(d.label)}'
                     + (f'<span class="paper">paper: {_h(d.paper_row)}</span>' if paper and d.paper_row else "") + "</td>")
        for t in ts:
            r = report.cell(d.label, t.label)
            p = paper_cell(d, t) if paper else None
            any_paper |= p is not None
            parts.append(_html_cell(cell_value(r, t) if r is not None else None, p, report.cell_images(d.label, t.label)))
        parts.append("</tr>")
    parts.append("</tbody><tfoot><tr><td>n images</td>" +
                 "".join(f"<td>{_h(column_n(report, t))}</td>" for t in ts) + "</tr></tfoot></table>")
    if paper:
        parts.append(f"<p>{_h(_paper_footnote(report)) if any_paper else 'No cell matches the paper.'}</p>")
    parts.append('<h2>Threat models</h2><table class="sortable"><thead><tr><th>threat model</th><th>attack</th>'
                 "<th>backend</th><th>norm</th><th>ε</th><th>BPDA</th><th>settings</th></tr></thead><tbody>")
    for t in ts:
        c = t.config
        vals = [t.label, t.kind, c.get("backend", ""), t.norm or "—", fmt_eps(t.epsilon, t.norm), c.get("bpda") or "—",
                threat_settings(t)]
        parts.append("<tr>" + "".join(f'<td data-v="{_h(v)}" style="text-align:left">{_h(v)}</td>' for v in vals) + "</tr>")
    parts.append("</tbody></table>")
    if plots:
        parts.append("<h2>Plots</h2>")
        for p in plots:
            data = base64.b64encode(Path(p.png).read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{_h(p.title)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{_h(p.caption)}</figcaption></figure>")
    if report.runs:
        parts.append("<h2>Runs</h2>")
        for r in report.runs:
            m = r.meta
            rows = [("run directory", r.path), ("suite", m.get("suite")), ("suite hash", m.get("suite_hash")),
                    ("subset", m.get("subset")), ("data hash", m.get("data_hash")), ("seed", m.get("seed")),
                    ("profile", m.get("profile") or "—"), ("overrides", " ".join(m.get("overrides") or []) or "—"),
                    ("git commit", _git(m)), ("device", m.get("device")), ("status", m.get("status")),
                    ("started / finished", f"{m.get('started_at', '')} / {m.get('finished_at', '')}"),
                    ("command", " ".join(m.get("command") or [])),
                    ("versions", ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items() if v))]
            parts.append('<table class="meta"><tbody>' + "".join(
                f"<tr><th>{_h(k)}</th><td>{_h(v)}</td></tr>" for k, v in rows) + "</tbody></table>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts) + "\n"


# -- entry point ------------------------------------------------------------------------

def render(run_dirs: list[str | Path], fmt: str = "md", paper: bool = False, out: str | Path | None = None,
           plots_dir: str | Path | None = None, with_plots: bool | None = None, embed: bool = False) -> str:
    """Render a report of ``run_dirs``; write it to ``out`` when given. Returns the text.

    ``embed`` (md): headings two levels down (``#`` → ``###``), for a section of another
    document, as the README's "Status against the paper" embeds it.

    Plots (PNG + PDF) go to ``plots_dir`` (default: ``<out stem>_plots/`` beside ``out``);
    the HTML page embeds them. Without ``out`` and ``plots_dir`` only HTML makes plots
    (in a temporary folder).
    """
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    report = load_report(run_dirs)
    out_path = Path(out) if out else None
    if with_plots is None:
        with_plots = fmt in ("md", "html") and (plots_dir is not None or out_path is not None or fmt == "html")
    plots = []
    if with_plots:
        from robust_bench_sc.plots import make_plots

        if plots_dir is None and out_path is not None:
            plots_dir = out_path.parent / f"{out_path.stem}_plots"
        if plots_dir is None:
            import tempfile

            plots_dir = tempfile.mkdtemp(prefix="scbench_plots_")
        plots = make_plots(report, Path(plots_dir))
    if fmt == "md":
        text = to_markdown(report, paper, plots, plots_relative_to=out_path.parent if out_path else None)
        if embed:
            text = "\n".join("##" + ln if ln.startswith("#") else ln for ln in text.split("\n"))
    elif fmt == "csv":
        text = to_csv(report, paper)
    elif fmt == "latex":
        text = to_latex(report, paper)
    else:
        text = to_html(report, paper, plots)
    if out_path is not None:
        from robust_bench_sc.storage import atomic_write_text

        atomic_write_text(out_path, text)
        out_path.chmod(0o644)  # a report is for reading (atomic writes create 0600 files)
    return text


__all__ = ["Report", "ReportError", "ThreatInfo", "DefenseInfo", "RunInfo", "CellValue", "load_report", "load_run",
           "report_from_suite", "to_markdown", "to_csv", "to_latex", "to_html", "to_frame", "render", "latex_escape",
           "cell_value", "paper_cell", "FORMATS"]
