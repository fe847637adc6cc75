"""The ``scbench`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Robustness benchmarks for image classifiers (sparse-coding frontend study).")
console = Console()
err = Console(stderr=True)


def _fail(msg: str, code: int = 2):
    err.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _load(suite: Path, set_: list[str] | None, profile: str | None, n_images: int | None, seed: int | None):
    from robust_bench_sc.config import load_suite
    from robust_bench_sc.yamlio import ConfigError

    try:
        return load_suite(suite, overrides=set_ or [], profile=profile, n_images=n_images, seed=seed)
    except ConfigError as exc:
        _fail(str(exc))


@app.command()
def run(
    suite: Path = typer.Argument(..., help="suite YAML file, e.g. suites/table1.yaml"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default results/<suite>/<timestamp>; an unfinished run of the same suite is resumed)"),
    n_images: Optional[int] = typer.Option(None, "--n-images", help="first N CIFAR-10 test images (≤ 1000)"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    seed: Optional[int] = typer.Option(None, "--seed", help="suite seed (default: the suite's)"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a field: key=value or THREAT.key=value (repeatable)"),
    profile: Optional[str] = typer.Option(None, "--profile", help="a reduced profile declared in the suite, e.g. quick"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="CIFAR-10 folder (default $SCBENCH_DATA or ../shared/data/cifar10)"),
    executor: str = typer.Option("local", "--executor", help="local or ray"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="address of a Ray cluster (with --executor ray)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
):
    """Run every defense of SUITE through every threat model; write tables and per-sample records."""
    import os

    if data_dir:
        os.environ["SCBENCH_DATA"] = str(data_dir)
    cfg = _load(suite, set_, profile, n_images, seed)
    from robust_bench_sc.data import DataError
    from robust_bench_sc.registry import RegistryError
    from robust_bench_sc.runner import RunError, make_executor, run_suite

    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            _fail("--device cuda: no CUDA device is available here")
    try:
        ex = make_executor(executor, device, address=ray_address) if executor != "local" else None
        outcome = run_suite(cfg, out=out, device=device, executor=ex, command=sys.argv, show_progress=not quiet)
    except (RunError, RegistryError, DataError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc), 1)
    console.print((outcome.run_dir / "summary.md").read_text(), highlight=False)
    if cfg.profile:
        console.print(f"[yellow]Reduced profile '{cfg.profile}': numbers are not the faithful setting; "
                      f"run `scbench run {suite}` without --profile for that.[/]")
    console.print(f"results: {outcome.run_dir}")


@app.command()
def validate(suite: Path = typer.Argument(..., help="suite YAML file"),
             set_: Optional[list[str]] = typer.Option(None, "--set", help="key=value overrides to check too"),
             profile: Optional[str] = typer.Option(None, "--profile")):
    """Check a suite (and the threat models it names) without running it."""
    cfg = _load(suite, set_, profile, None, None)
    from robust_bench_sc.plan import plan_jobs

    table = Table(title=f"{cfg.name}: {len(plan_jobs(cfg))} jobs on the first {cfg.data.n_images} CIFAR-10 test images")
    for col in ("threat model", "attack", "backend", "norm", "ε", "bpda"):
        table.add_column(col)
    for t in cfg.threat_models:
        eps = t.epsilon_value
        table.add_row(t.name, t.kind, t.backend, t.norm_name or "—", "" if eps is None else f"{eps:.6g}", t.bpda or "—")
    console.print(table)
    console.print("defenses: " + ", ".join(d.label for d in cfg.defenses))
    console.print(f"[green]ok[/] suite hash {cfg.content_hash()}")


@app.command()
def defenses():
    """List the registered defense plug-ins."""
    from robust_bench_sc.plugins import describe_defenses

    table = Table(title="registered defenses (entry-point group robust_bench_sc.defenses)")
    table.add_column("name")
    table.add_column("factory")
    for name, target in describe_defenses():
        table.add_row(name, target)
    console.print(table)
    console.print("Out-of-tree defenses: name them in a suite as 'module:attr' or 'path/to/file.py:attr'.")


@app.command("threat-models")
def threat_models():
    """List the threat-model files in attack_suites/ and the attack kinds they may use."""
    from robust_bench_sc.config import ATTACK_SUITES_DIR, load_threat_model_file
    from robust_bench_sc.threat_models import THREAT_MODELS

    table = Table(title=f"threat models in {ATTACK_SUITES_DIR}")
    for col in ("name", "attack", "backend", "norm", "ε"):
        table.add_column(col)
    for p in sorted(ATTACK_SUITES_DIR.glob("*.yaml")):
        t = load_threat_model_file(p)
        eps = t.epsilon_value
        table.add_row(p.stem, t.kind, t.backend, t.norm_name or "—", "" if eps is None else f"{eps:.6g}")
    console.print(table)
    console.print("attack kinds: " + ", ".join(sorted(THREAT_MODELS)))


def main():
    app()


if __name__ == "__main__":
    main()
