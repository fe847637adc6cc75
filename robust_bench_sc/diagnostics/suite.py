"""The suite hook: ``diagnostics: true | active | all`` in a suite runs after ``scbench run``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robust_bench_sc.diagnostics.config import NORMS, DiagnosticsConfig
from robust_bench_sc.diagnostics.report import diagnose, save_report


def config_for_suite(suite, **overrides: Any) -> DiagnosticsConfig:
    """Diagnostics settings for a suite: its seed, its first ℓ∞/ℓ2 budget, ≤ 50 images."""
    cfg = DiagnosticsConfig(seed=suite.seed, n_images=min(suite.data.n_images, DiagnosticsConfig.n_images),
                            **suite.data.reader_settings())  # the suite's own images
    for t in suite.threat_models:
        eps, norm = t.epsilon_value, t.norm_name
        if eps is not None and norm in NORMS:
            cfg.norm, cfg.epsilon = norm, float(eps)
            break
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise ValueError(f"diagnostics override {k!r}: not a setting of DiagnosticsConfig")
        setattr(cfg, k, v)
    return cfg


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def run_suite_diagnostics(suite, run_dir: str | Path, device: str = "cpu", console=None,
                          overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """Diagnose every defense of ``suite``; writes ``diagnostics/<defense>.json/.md`` (resumable:
    a report with the same settings is kept).

    ``diagnostics: active`` (or ``all``) in the suite runs the binarization test instead
    (or as well): ``diagnostics/binarization/<defense>/<threat>.json/.md``."""
    from robust_bench_sc.plugins import build_defense
    from robust_bench_sc.storage import RunDir, read_json, safe_name

    verdicts: dict[str, str] = {}
    if suite.diagnostics in ("active", "all"):
        from robust_bench_sc.binarization import run_suite_binarization

        verdicts.update(run_suite_binarization(suite, run_dir, device=device, console=console))
        if suite.diagnostics == "active":
            return verdicts
    out = RunDir(run_dir).diagnostics_dir
    cfg = config_for_suite(suite, device=device, **(overrides or {}))
    for spec in suite.defenses:
        stem = safe_name(spec.label)
        path = out / f"{stem}.json"
        if path.is_file():
            try:
                old = read_json(path)
                if old.get("config") == _jsonable(cfg.to_dict()):
                    verdicts[spec.label] = old["verdict"]
                    continue
            except ValueError:
                pass
        defense = build_defense(spec.load_ref, spec.params, name=spec.label)
        log = (lambda s, label=spec.label: console.print(f"  diagnostics {label}: {s}")) if console else None
        rep = diagnose(defense, cfg, log=log)
        save_report(rep, out, stem)
        verdicts[spec.label] = rep.verdict
        if console:
            console.print(f"[bold]diagnostics[/] {spec.label}: {rep.verdict}")
    return verdicts
