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
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads of the local executor (default: torch's); no effect on the numbers"),
):
    """Run every defense of SUITE through every threat model; write tables and per-sample records."""
    import os

    if threads:
        import torch

        torch.set_num_threads(threads)

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


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="one or more run directories (merged into one table)"),
    fmt: str = typer.Option("md", "--format", help="md, csv, latex or html (one self-contained page)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write here instead of printing"),
    paper: bool = typer.Option(False, "--paper", help="show the paper's numbers (full test set) beside ours"),
    plots: Optional[Path] = typer.Option(None, "--plots", help="folder for PNG+PDF plots (default: <out>_plots/ with md)"),
):
    """Comparison tables of one or more runs: defenses × threat models, n and 95% Wilson CIs."""
    from robust_bench_sc.reports import ReportError, render

    try:
        text = render(run_dirs, fmt, paper=paper, out=out, plots_dir=plots)
    except ReportError as exc:
        _fail(str(exc), 1)
    if out is None:
        sys.stdout.write(text)
    else:
        console.print(f"report: {out}")


@app.command()
def check(
    run_dir: Path = typer.Argument(..., help="run directory to check"),
    baseline: Path = typer.Option(..., "--baseline", help="baseline JSON, e.g. results/baselines/smoke.json"),
    tolerance: float = typer.Option(0.5, "--tolerance", help="allowed change of an accuracy, in percentage points"),
    alpha: float = typer.Option(0.01, "--alpha", help="significance level of the McNemar / two-proportion test"),
    norm_tolerance: float = typer.Option(0.05, "--norm-tolerance", help="allowed relative change of mean ‖e‖₂"),
    update: bool = typer.Option(False, "--update", help="(re)write the baseline from this run"),
):
    """Compare a run with a committed baseline; exit 1 when a number moved or a pair disappeared."""
    from robust_bench_sc.regression import BaselineError, baseline_from_run, check_run, format_result, write_baseline
    from robust_bench_sc.reports import ReportError

    try:
        if update:
            if baseline.is_file():
                res = check_run(run_dir, baseline, tolerance, alpha, norm_tolerance)
                print(format_result(res, run_dir, baseline, tolerance, alpha))
            new = baseline_from_run(run_dir)
            if baseline.is_file() and not res.changes and not res.new_pairs and not res.warnings:
                print(f"baseline unchanged (same numbers and bits): {baseline}")  # no churn in git
                return
            write_baseline(baseline, new)
            print(f"baseline written: {baseline}")
            return
        res = check_run(run_dir, baseline, tolerance, alpha, norm_tolerance)
    except (BaselineError, ReportError) as exc:
        _fail(str(exc), 2)
    print(format_result(res, run_dir, baseline, tolerance, alpha))
    if not res.ok:
        raise typer.Exit(1)


@app.command()
def diagnose(
    defense: str = typer.Argument(..., help="defense name, 'module:attr' or 'path/to/file.py:attr'"),
    n_images: int = typer.Option(50, "--n-images", help="first N CIFAR-10 test images"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for diagnostics.json/.md (default results/diagnostics/<defense>)"),
    bpda: Optional[str] = typer.Option(None, "--bpda", help="BPDA stand-in to compare with (default: the defense's default, else identity)"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    norm: str = typer.Option("linf", "--norm", help="linf or l2"),
    epsilon: str = typer.Option("8/255", "--eps", help="budget of the plain evaluation, e.g. 8/255"),
    steps: int = typer.Option(20, "--steps", help="steps of the plain PGD"),
    restarts: int = typer.Option(1, "--restarts"),
    strong_steps: int = typer.Option(40, "--strong-steps", help="steps of the stronger PGD (Carlini check)"),
    strong_restarts: int = typer.Option(1, "--strong-restarts"),
    sweep_steps: int = typer.Option(10, "--sweep-steps", help="PGD steps at each ε of the sweep"),
    unconstrained_steps: int = typer.Option(5, "--unconstrained-steps"),
    queries: int = typer.Option(100, "--queries", help="gradient-free attack queries"),
    gradient_free: str = typer.Option("auto", "--gradient-free", help="auto, square, random_search or none"),
    noise_draws: int = typer.Option(10, "--noise-draws"),
    eot: int = typer.Option(5, "--eot", help="EOT passes for randomised defenses"),
    skip: Optional[list[str]] = typer.Option(None, "--skip", help="indicator to skip (repeatable)"),
):
    """Gradient-masking / attack-failure indicators for DEFENSE and a one-line verdict."""
    import time as _time

    from robust_bench_sc.diagnostics import INDICATORS, DiagnosticsConfig, diagnose as _diagnose, save_report
    from robust_bench_sc.plugins import build_defense
    from robust_bench_sc.registry import RegistryError
    from robust_bench_sc.storage import safe_name
    from robust_bench_sc.threat_models import parse_number

    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            _fail("--device cuda: no CUDA device is available here")
    unknown = [s for s in skip or [] if s not in INDICATORS]
    if unknown:
        _fail(f"--skip: unknown indicator(s) {', '.join(unknown)}; known: {', '.join(INDICATORS.names())}")
    if gradient_free not in ("auto", "square", "random_search", "none"):
        _fail("--gradient-free: one of auto, square, random_search, none")
    if norm not in ("linf", "l2"):
        _fail("--norm: linf or l2")
    try:
        d = build_defense(defense)
        if bpda is not None and bpda not in d.bpda_names():
            _fail(f"--bpda {bpda!r}: defense {d.name!r} offers {', '.join(d.bpda_names()) or 'no stand-ins (no preprocess)'}")
        cfg = DiagnosticsConfig(n_images=n_images, seed=seed, device=device, norm=norm, epsilon=parse_number(epsilon),
                                steps=steps, restarts=restarts, bpda=bpda, eot=eot, sweep_steps=sweep_steps,
                                strong_steps=strong_steps, strong_restarts=strong_restarts,
                                unconstrained_steps=unconstrained_steps, noise_draws=noise_draws,
                                gradient_free=gradient_free, queries=queries, skip=tuple(skip or ()))
        t0 = _time.perf_counter()
        with console.status("diagnosing") as status:
            rep = _diagnose(d, cfg, log=lambda s: status.update(f"{d.name}: {s}"))
    except (RegistryError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc), 1)
    table = Table(title=f"diagnostics: {rep.defense} (first {rep.n_images} CIFAR-10 test images; clean "
                        f"{100 * rep.clean_accuracy:.1f}%, plain PGD-{steps} {100 * rep.plain_robust_accuracy:.1f}%)")
    for col in ("indicator", "status", "evidence"):
        table.add_column(col, overflow="fold")
    colour = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}
    for r in rep.indicators:
        table.add_row(r.name, f"[{colour[r.status]}]{r.status}[/]", r.evidence)
    console.print(table)
    code_colour = "green" if rep.verdict_code == "trustworthy" else "yellow" if "warn" in rep.verdict_code else "bold red"
    console.print(f"[{code_colour}]verdict:[/] {rep.verdict}", highlight=False)
    out_dir = out or Path("results") / "diagnostics" / safe_name(rep.defense)
    j, m = save_report(rep, out_dir)
    console.print(f"wall time {_time.perf_counter() - t0:.0f} s; wrote {j} and {m}")


@app.command()
def train(
    out: Path = typer.Option(..., "--out", help="run folder: last.pt (resumable), best.pt, latest_weights.pt, log.csv/json"),
    model: str = typer.Option("sparse_coding", "--model", help="what to train: sparse_coding (frontend + ResNet-32) or resnet32 (natural ResNet-32); plug-ins may add more"),
    T: int = typer.Option(15, "--T", help="sparse_coding: top-T coefficients kept per patch (paper: 1, 2, 5, 10, 15, 20)"),
    epochs: float = typer.Option(70.0, "--epochs", help="length of the one-cycle schedule (fractions allowed)"),
    peak_lr: float = typer.Option(0.02, "--lr", help="peak LR (paper: 0.02; 0.05 for T=1,2 and for the natural ResNet-32)"),
    classifier_lr_scale: float = typer.Option(1.0, "--classifier-lr-scale", help="sparse_coding: classifier peak LR = lr x this (e.g. 0.25 with --warm-start)"),
    warmup_frac: float = typer.Option(0.5, "--warmup-frac", help="fraction of the schedule spent rising to the peak"),
    batch_size: int = typer.Option(64, "--batch-size"),
    warm_start: Optional[Path] = typer.Option(None, "--warm-start", help="sparse_coding: classifier state dict to start from (e.g. shared/reference/resnet32_behind_frontend_T15.pt)"),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="full weights to start a new run from (sparse_coding: a T{T}.pt of any T; resnet32: a ResNet-32 state dict)"),
    freeze_classifier: bool = typer.Option(False, "--freeze-classifier"),
    ckpt_every: int = typer.Option(100, "--ckpt-every", help="checkpoint every K steps (and at each epoch end)"),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="evaluate every K steps (default: --ckpt-every)"),
    n_val: int = typer.Option(1000, "--n-val", help="validation images held out from the end of the training set (pick best.pt)"),
    n_test: int = typer.Option(1000, "--n-test", help="first N test images evaluated at each evaluation (reported only)"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="stop after this global step (resume later)"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from OUT/last.pt if present"),
    dense: bool = typer.Option(False, "--dense", help="sparse_coding: dense first transposed convolution (default: the exact sparse gather)"),
):
    """Train a model (resumable: the same command continues OUT/last.pt; Ctrl-C safe at checkpoints)."""
    from robust_bench_sc.data import DataError
    from robust_bench_sc.registry import RegistryError
    from robust_bench_sc.training import TRAINABLES, DeadModelError, TrainConfig, TrainingError
    from robust_bench_sc.training import train as run_training

    if device not in ("cpu", "cuda"):
        _fail(f"--device {device}: allowed values are cpu, cuda")
    if threads is not None and threads < 1:
        _fail(f"--threads {threads}: must be a whole number >= 1")
    if model not in TRAINABLES:
        _fail(f"--model {model}: unknown; allowed: {', '.join(TRAINABLES.names())}")
    for name, value in (("--epochs", epochs), ("--lr", peak_lr), ("--batch-size", batch_size)):
        if not value > 0:
            _fail(f"{name} {value}: must be > 0")
    if not 0 <= warmup_frac <= 1:
        _fail(f"--warmup-frac {warmup_frac}: must be in [0, 1]")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            _fail("--device cuda: no CUDA device available")
    cfg = TrainConfig(model=model, T=T, epochs=epochs, batch_size=batch_size, peak_lr=peak_lr,
                      classifier_lr_scale=classifier_lr_scale, warmup_frac=warmup_frac,
                      warm_start=str(warm_start) if warm_start else None,
                      init_from=str(init_from) if init_from else None, freeze_classifier=freeze_classifier, seed=seed,
                      ckpt_every=ckpt_every, eval_every=eval_every, n_val=n_val, n_test=n_test, device=device,
                      threads=threads, fast=not dense, max_steps=max_steps)
    try:
        row = run_training(cfg, out, resume=resume, log=lambda s: console.print(s, highlight=False))
    except DeadModelError as exc:
        _fail(str(exc), code=3)
    except (TrainingError, DataError, RegistryError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"last evaluation: {row}")


@app.command("learn-dictionary")
def learn_dictionary(
    out: Path = typer.Option(..., "--out", help="output .npz (key atoms, (L, 48), unit-norm rows)"),
    n_iter: Optional[int] = typer.Option(None, "--n-iter", help="mini-batch updates (default: the reference's 1000)"),
    n_patches: int = typer.Option(200_000, "--n-patches", help="training patches sampled"),
    seed: int = typer.Option(0, "--seed"),
):
    """Learn a patch dictionary with MiniBatchDictionaryLearning (reference parameters); the shipped defense uses the reference dictionary."""
    from defenses.sparse_coding.dictionary import learn_dictionary as learn

    console.print(f"wrote {learn(out, n_iter=n_iter, n_patches=n_patches, seed=seed, log=console.print)}")


@app.command()
def figures(out: Path = typer.Option(..., "--out", help="folder for the PNGs")):
    """Paper Fig. 1a (coefficient histograms) and Fig. 3 (activation and its smooth backward approximations)."""
    from defenses.sparse_coding.figures import make_figures

    for p in make_figures(out):
        console.print(f"wrote {p}")


def main():
    app()


if __name__ == "__main__":
    main()
