"""The ``scbench`` command line."""

from __future__ import annotations

import errno
import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, Optional

import click
import typer
import typer.core
import typer.main
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from robust_bench_sc.registry import Registry

console = Console()
err = Console(stderr=True)
_STATE = {"debug": bool(os.environ.get("SCBENCH_DEBUG"))}


def _warn(msg: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(msg)}", highlight=False, soft_wrap=True)


def _fail(msg: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _explain(exc: BaseException) -> str:
    """One message for an exception that reached the command line. Our own errors say what
    is wrong; anything else is shown with the innermost frame outside scbench and the
    libraries (a plug-in's own code), else as an internal error."""
    from robust_bench_sc.data import DataError
    from robust_bench_sc.predictions import DefenseOutputError
    from robust_bench_sc.probes import ProbeError
    from robust_bench_sc.registry import RegistryError, plugin_frame
    from robust_bench_sc.regression import BaselineError
    from robust_bench_sc.reports import ReportError
    from robust_bench_sc.errors import RunError
    from robust_bench_sc.storage import DamagedFileError, EscapeError, LockError
    from robust_bench_sc.yamlio import ConfigError

    ours = (ConfigError, RunError, RegistryError, DataError, ReportError, BaselineError, DefenseOutputError,
            LockError, DamagedFileError, EscapeError, ProbeError)
    if isinstance(exc, ours):
        return str(exc)
    if isinstance(exc, SyntaxError):  # a plug-in file that does not parse
        return f"{exc.filename}, line {exc.lineno}: {type(exc).__name__}: {exc.msg}"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return (f"no space left on the device{' for ' + str(exc.filename) if exc.filename else ''}: every job "
                "recorded before stays; free some space and run the same command again to resume")
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    where = plugin_frame(exc)
    if where:
        return f"plug-in code raised {what}\n  at {where}\n  (--debug for the full traceback)"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"internal error {what}{at}; rerun with --debug for the traceback"


# typer (>= 0.2x) runs commands on its own copy of click: its exceptions are not click's
_CLICK = getattr(typer.core, "_click", click)
_PASS_THROUGH = (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort, SystemExit,
                 *(getattr(_CLICK.exceptions, n) for n in ("ClickException", "Abort") if hasattr(_CLICK.exceptions, n)))
_USAGE_ERRORS = (click.exceptions.UsageError, getattr(_CLICK.exceptions, "UsageError", click.exceptions.UsageError))


def _handled(f):
    """Every command: an error is one message with exit code 2 (``--debug``: the traceback too)."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except _PASS_THROUGH:
            raise
        except KeyboardInterrupt:
            err.print("interrupted: what was recorded is kept; the same command resumes", highlight=False)
            raise typer.Exit(130) from None
        except BrokenPipeError:  # the reader went away (`scbench status … | head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None
        except Exception as exc:  # noqa: BLE001 - the one place that turns errors into messages
            if _STATE["debug"]:
                traceback.print_exc()
            _fail(_explain(exc))
    return wrapper


class _App(typer.Typer):
    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)
        return lambda f: (register(_handled(f)), f)[1]


COMMANDS_GROUP = "robust_bench_sc.commands"
#: command plug-ins (``[project.entry-points."robust_bench_sc.commands"]``): name → a function
#: written as a typer command (typer.Option/Argument defaults, a docstring)
COMMANDS: Registry[Callable[..., Any]] = Registry(
    "command plug-in", COMMANDS_GROUP, accepts=lambda f: callable(f) and not isinstance(f, type),
    expected="a command function (typer.Option/Argument defaults, a docstring)")


def _plugin_command(name: str):
    """Load one command plug-in; it runs wrapped like a built-in command."""
    func = COMMANDS.get(name)
    sub = typer.Typer(add_completion=False)
    sub.command(name, rich_help_panel="Plug-in commands")(_handled(func))
    cmd = typer.main.get_command(sub)
    cmd.name = name
    return cmd


class _Group(typer.core.TyperGroup):
    """The built-in commands plus command plug-ins, each imported only when it runs or when
    ``--help`` lists it. A plug-in that does not load is skipped with a warning naming it
    (naming it on the command line is an error); the other commands are unaffected."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plugins: dict[str, str] | None = None  # name -> its target (module:attr), before loading
        self._loaded: dict[str, Any] = {}  # name -> the loaded command
        self._broken: dict[str, str] = {}  # name -> why it did not load (warned once)

    def _plugin_entries(self) -> dict:
        if self._plugins is None:
            self._plugins = {}
            for name in COMMANDS.names():
                if name in self.commands:
                    _warn(f"command plug-in {name!r} ({COMMANDS.target(name)}) has the name of a built-in command; "
                          "ignored")
                else:
                    self._plugins[name] = COMMANDS.target(name)
            for line in COMMANDS.shadowed:
                _warn(line)
        return self._plugins

    def _load_plugin(self, name: str, warn: bool = True):
        """The plug-in's command, or None when it does not load (with a warning if ``warn``)."""
        if name in self._loaded or name in self._broken:
            return self._loaded.get(name)
        target = self._plugin_entries()[name]
        try:
            self._loaded[name] = _plugin_command(name)
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break the other commands
            if _STATE["debug"]:
                traceback.print_exc()
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._broken[name] = f"command plug-in {name!r} ({target}) did not load: {what}"
            if warn:
                _warn(self._broken[name] + "; skipped")
            return None
        return self._loaded[name]

    def list_commands(self, ctx):
        return list(super().list_commands(ctx)) + sorted(self._plugin_entries())

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name in self._plugin_entries():
            cmd = self._load_plugin(cmd_name)
        return cmd

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and args[0] in self._plugin_entries():
            if self._load_plugin(args[0], warn=False) is None:
                _fail(self._broken[args[0]])
        try:
            return super().resolve_command(ctx, args)
        except _USAGE_ERRORS as exc:  # typer suggests built-in names only
            if args and "Did you mean" not in exc.message:
                import difflib

                close = difflib.get_close_matches(args[0], list(self._plugin_entries()))
                if close:
                    # a new error, not an assignment: click >= 8.5 declares `message` Final
                    hint = f"{exc.message.rstrip('.')}. Did you mean {', '.join(repr(c) for c in close)}?"
                    raise type(exc)(hint, ctx=exc.ctx) from None
            raise


app = _App(cls=_Group, add_completion=False, no_args_is_help=True,
           help="Robustness benchmarks for image classifiers (sparse-coding frontend study).")


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="print the traceback of an error too (or set SCBENCH_DEBUG=1)")):
    """Robustness benchmarks for image classifiers (sparse-coding frontend study)."""
    _STATE["debug"] = debug or bool(os.environ.get("SCBENCH_DEBUG"))


def _check_device(device: str) -> None:
    if device == "cpu":  # always there: no torch import before the suite is even read
        return
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        _fail(f"--device {device}: allowed values are cpu, cuda, cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        _fail(f"--device {device}: no CUDA device is available here")


def _check_out_folder(path: Path, own: set[str] | None) -> None:
    """Before any compute: ``path`` is (or can become) a writable folder (holding only files
    named in ``own``, unless that is None)."""
    if path.exists() and not path.is_dir():
        _fail(f"--out {path}: is a file, not a folder")
    if path.is_dir() and own is not None:
        foreign = sorted(p.name for p in path.iterdir() if p.name not in own and not p.name.endswith(".tmp"))
        if foreign:
            _fail(f"--out {path}: holds files this command did not write ({', '.join(foreign[:5])}); choose a new or empty folder")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        _fail(f"--out {path}: {probe} is not writable")


def _fresh_dir(base: Path) -> Path:
    import datetime as _dt

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    cand, k = base / stamp, 1
    while cand.exists():
        cand, k = base / f"{stamp}-{k}", k + 1
    return cand


def _interrupt_on_sigterm() -> None:
    """SIGTERM (``kill PID``, a scheduler's stop) becomes KeyboardInterrupt, so a run marks its
    folder interrupted and releases its lock, as it does on Ctrl-C; recorded chunks are kept."""
    import signal
    import threading

    def _raise(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)


def _check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        _fail(f"--threads {threads}: must be a whole number >= 1")


DATA_DIR_HELP = ("the dataset's folder (or .npz file) where the suite names no data.root (default $SCBENCH_DATA, "
                 "else ../shared/data/cifar10)")
DATASET_HELP = ("dataset plug-in (scbench datasets): cifar10, cifar100, cifar10_npz (default), npz, imagefolder, "
                "mnist, fashion_mnist, svhn, cifar10c, ...")
SPLIT_HELP = ("the dataset's split to read (default test; scbench datasets lists each dataset's splits, e.g. train, "
              "or cifar10c's gaussian_noise-5)")
PROBE_TIMEOUT_HELP = ("seconds each probe may take before the defense is reported as hanging (default: 100 × one "
                      "forward pass on the probe images, at least 60 s; 300 s for that first pass)")
PARAM_HELP = ("a keyword argument of the defense's factory, KEY=VALUE read as YAML (repeatable), e.g. T=15 or "
              "checkpoint=weights/mine.pt: what a suite's params: gives")
EXECUTOR_HELP = "local, ray, or an executor plug-in (entry point robust_bench_sc.executors)"
RAY_ADDRESS_HELP = "address of a Ray cluster (with --executor ray; default: a local instance with every CPU)"
ACCEPT_CODE_CHANGE_HELP = ("reuse the folder's records although the defense's code fingerprint (its factory's source "
                           "file, its modules' settings) changed since they were computed: for a change known not to "
                           "touch this defense, e.g. another plug-in added to the same file")


def _executor(name: str, device: str, ray_address: str | None) -> Any:
    """``--executor NAME`` → the Executor, or None for ``local`` (``run_suite`` then runs the jobs
    in this process); an unknown name or a missing extra is a RunError (one line)."""
    from robust_bench_sc.executor import make_executor

    return make_executor(name, device, address=ray_address) if name != "local" else None


def _factory_params(items: list[str] | None) -> dict[str, Any]:
    """``--param KEY=VALUE`` options → the factory's keyword arguments (a key given twice is an error)."""
    from robust_bench_sc.config import parse_set

    pairs = parse_set(items or [], "--param", "T=15 or checkpoint=weights/mine.pt")
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            _fail(f"--param {key}: given twice")
        seen.add(key)
    return dict(pairs)


def _check_probe_timeout(probe_timeout: float | None) -> None:
    if probe_timeout is not None and not probe_timeout > 0:
        _fail(f"--probe-timeout {probe_timeout:g}: must be a number of seconds > 0")


def _test_images(dataset: str | None, data_dir: Path | None, n_images: int, what: str,
                 split: str | None = None) -> None:
    """One line unless the dataset exists, has the split ``split`` (default test) and that split
    holds ``n_images`` (>= 1) images."""
    from robust_bench_sc.data import DataError, load_dataset
    from robust_bench_sc.datasets import DEFAULT_DATASET, DEFAULT_SPLIT, check_split, get_dataset
    from robust_bench_sc.registry import RegistryError

    name = dataset or DEFAULT_DATASET
    if split is not None:
        try:
            check_split(get_dataset(name), split)
        except DataError as exc:
            _fail(f"--split {split}: {exc}")
        except RegistryError as exc:
            _fail(f"--dataset {name}: {exc}")
    split = split or DEFAULT_SPLIT
    try:
        n_all = len(load_dataset(name, data_dir, split))
    except (DataError, RegistryError) as exc:
        _fail(f"--dataset {name}: {exc}")
    if not 1 <= n_images <= n_all:
        _fail(f"--n-images {n_images}: must be in 1..{n_all} ({what} reads the {split} split of {name}, which holds "
              f"{n_all} images here)")


def _load(suite: Path, set_: list[str] | None, profile: str | None, n_images: int | None, seed: int | None,
          dataset: str | None = None):
    from robust_bench_sc.config import load_suite
    from robust_bench_sc.yamlio import ConfigError

    try:
        return load_suite(suite, overrides=set_ or [], profile=profile, n_images=n_images, seed=seed, dataset=dataset)
    except ConfigError as exc:
        _fail(str(exc))


@app.command()
def run(
    suite: Path = typer.Argument(..., help="suite YAML file, e.g. suites/table1.yaml"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default results/<suite>/<timestamp>; an unfinished run of the same suite is resumed)"),
    n_images: Optional[int] = typer.Option(None, "--n-images", help="the first N images of the dataset's split (default: the suite's)"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    seed: Optional[int] = typer.Option(None, "--seed", help="suite seed (default: the suite's)"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a field: key=value or THREAT.key=value (repeatable)"),
    profile: Optional[str] = typer.Option(None, "--profile", help="a reduced profile declared in the suite, e.g. quick"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    dataset: Optional[str] = typer.Option(None, "--dataset", help=DATASET_HELP),
    executor: str = typer.Option("local", "--executor", help=EXECUTOR_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
    quiet: bool = typer.Option(False, "--quiet", help="no progress and no table: only warnings, errors and the results folder"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads of the local executor (default: torch's); no effect on the numbers"),
    no_probes: bool = typer.Option(False, "--no-probes", help="skip the probes (randomness, gradients, saturation) and run every threat model exactly as written, without auto's adaptations"),
    probe_timeout: Optional[float] = typer.Option(None, "--probe-timeout", help=PROBE_TIMEOUT_HELP),
    accept_code_change: bool = typer.Option(False, "--accept-code-change", help=ACCEPT_CODE_CHANGE_HELP),
):
    """Run every defense of SUITE through every threat model; write tables and per-sample records."""
    _check_threads(threads)
    _check_device(device)
    _check_probe_timeout(probe_timeout)
    if data_dir:
        os.environ["SCBENCH_DATA"] = str(data_dir)
    cfg = _load(suite, set_, profile, n_images, seed, dataset)  # a bad suite fails here, before torch is imported
    if threads:
        import torch

        torch.set_num_threads(threads)
    from robust_bench_sc.runner import run_suite

    ex = _executor(executor, device, ray_address)
    _interrupt_on_sigterm()  # `kill` or a job scheduler: the run records it was interrupted, then exits
    outcome = run_suite(cfg, out=out, device=device, executor=ex, command=sys.argv, show_progress=not quiet,
                        probes=not no_probes, accept_code_change=accept_code_change, quiet=quiet,
                        probe_timeout=probe_timeout)
    from robust_bench_sc.storage import RunDir

    if not quiet:  # --quiet: warnings, errors and where the results are; the table is in summary.md
        from robust_bench_sc.renderers.terminal import fit_markdown

        console.print(fit_markdown(RunDir(outcome.run_dir).read_summary_md(), console.width), highlight=False,
                      markup=False)
    if cfg.profile:
        from robust_bench_sc.config import PROFILE_SELECTION, setting_changes

        changes = setting_changes(cfg.profiles[cfg.profile].set)
        if changes:
            console.print(f"[yellow]Reduced profile '{cfg.profile}' ({', '.join(changes)}): numbers are not the "
                          f"suite's declared setting; run `scbench run {suite}` without --profile for that.[/]")
        else:
            console.print(f"Profile '{cfg.profile}': {PROFILE_SELECTION}.")
    console.print(f"results: {outcome.run_dir}")


@app.command()
def validate(suite: Path = typer.Argument(..., help="suite YAML file"),
             set_: Optional[list[str]] = typer.Option(None, "--set", help="key=value overrides to check too"),
             profile: Optional[str] = typer.Option(None, "--profile"),
             data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
             dataset: Optional[str] = typer.Option(None, "--dataset", help=DATASET_HELP),
             n_images: Optional[int] = typer.Option(None, "--n-images", help="the first N images (default: the suite's)")):
    """Check a suite without running it: everything `run` checks before computing (threat models,
    nested ones too; defenses load with their parameters; BPDA names; attack backends; the data
    folder is read as `run` reads it and each defense takes its images and class count)."""
    if data_dir:
        os.environ["SCBENCH_DATA"] = str(data_dir)
    cfg = _load(suite, set_, profile, n_images, None, dataset)
    if profile is None:  # every profile's set and selection is checked too, not only the one --profile names
        for name in cfg.profiles:
            _load(suite, set_, name, n_images, None, dataset)
    from robust_bench_sc.plan import plan_jobs
    from robust_bench_sc.plugins import name_defenses
    from robust_bench_sc.preflight import preflight

    built: dict[str, Any] = {}
    cfg = name_defenses(cfg, built)  # a plug-in without name: labelled by its Defense(name=...), as run does
    fingerprints = preflight(cfg, warn=_warn, built=built)

    from robust_bench_sc.datasets import images_of
    from robust_bench_sc.subsets import describe_subset
    from robust_bench_sc.summary import fmt_eps

    table = Table(title=f"{cfg.name}: {len(plan_jobs(cfg))} jobs on the "
                        f"{describe_subset(cfg.data.n_images, images=images_of(cfg.data))}")
    for col in ("threat model", "attack", "backend", "norm", "ε", "bpda"):
        table.add_column(col)
    for t in cfg.threat_models:
        table.add_row(t.name, t.kind, t.backend, t.norm_name or "—", fmt_eps(t.epsilon_value, t.norm_name), t.bpda or "—")
    console.print(table)
    console.print("defenses (weight fingerprint): " + ", ".join(f"{d.label} ({fingerprints[d.label]})" for d in cfg.defenses))
    console.print(f"[green]ok[/] suite hash {cfg.content_hash()}")


def _print_registered(what: str, group: str, second: str, rows: list[tuple[str, str]], note: str) -> None:
    """``scbench datasets`` / ``scbench defenses``: the registered plug-ins of entry-point
    ``group`` as a table (name and ``second``), then ``note``."""
    table = Table(title=f"registered {what} (entry-point group {group})")
    table.add_column("name")
    table.add_column(second)
    for name, text in rows:
        table.add_row(name, text)
    console.print(table)
    console.print(note)


@app.command()
def datasets():
    """List the registered dataset plug-ins and the file layout each reads."""
    from robust_bench_sc.datasets import describe_datasets

    _print_registered("datasets", "robust_bench_sc.datasets", "what it reads", describe_datasets(),
                      "A suite names one as data: {dataset: NAME, root: DIR, split: test, n_images: N}; "
                      "see docs/datasets.md.")


@app.command()
def defenses():
    """List the registered defense plug-ins."""
    from robust_bench_sc.plugins import describe_defenses

    _print_registered("defenses", "robust_bench_sc.defenses", "factory", describe_defenses(),
                      "Out-of-tree defenses: name them in a suite as 'module:attr' or 'path/to/file.py:attr'.")


@app.command("threat-models")
def threat_models():
    """List the threat-model files in attack_suites/ and the attack kinds they may use."""
    from robust_bench_sc.config import ATTACK_SUITES_DIR, load_threat_model_file
    from robust_bench_sc.threat_models import THREAT_MODELS

    from robust_bench_sc.summary import fmt_eps

    table = Table(title=f"threat models in {ATTACK_SUITES_DIR}")
    for col in ("name", "attack", "backend", "norm", "ε", "budget"):  # fits 80 columns
        table.add_column(col)
    from robust_bench_sc.yamlio import ConfigError

    for p in sorted(ATTACK_SUITES_DIR.glob("*.yaml")):
        try:
            t = load_threat_model_file(p)
        except ConfigError as exc:  # one bad file does not hide the others
            err.print(f"[yellow]warning:[/] skipped {escape(str(exc))}", highlight=False, soft_wrap=True)
            continue
        steps = getattr(t, "steps", None) or getattr(t, "max_iter", None)  # iterations; queries for score-based
        restarts = getattr(t, "restarts", None)
        queries = getattr(t, "n_queries", None)
        if queries and t.query_budget:
            budget = f"{queries} queries"
        else:
            budget = "" if steps is None else f"{steps} × {restarts}" if restarts is not None else str(steps)
        table.add_row(p.stem, t.kind, t.backend, t.norm_name or "—", fmt_eps(t.epsilon_value, t.norm_name), budget)
    console.print(table)
    console.print("budget: steps × restarts, or iterations; queries for score-based attacks")
    console.print("attack kinds: " + ", ".join(sorted(THREAT_MODELS)))


@app.command()
def status(run_dirs: list[Path] = typer.Argument(..., help="one or more run folders (finished or not)")):
    """Where run folders stand: per (defense, threat model) images recorded of those planned,
    robust so far with its 95% Wilson interval, job time, and job and wall time to go (wall:
    over the jobs run.json says the last invocation ran at once); whether a live
    process writes the folder and, if one does, the jobs in flight with their attack's latest
    stage (progress.json). Read-only: safe beside a running `scbench run`."""
    from robust_bench_sc.run_status import STATUS_HEADER, StatusError, run_status, status_lines, status_rows
    from robust_bench_sc.yamlio import ConfigError

    for i, d in enumerate(run_dirs):
        try:
            st = run_status(d)
        except (StatusError, ConfigError) as exc:
            _fail(str(exc))
        lines = status_lines(st)
        rows = [STATUS_HEADER, *status_rows(st)]
        widths = [max(len(r[c]) for r in rows) for c in range(len(STATUS_HEADER))]
        table = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        # plain text, never wrapped: readable in a log file and in a narrow terminal alike
        sys.stdout.write(("\n" if i else "") + "\n".join([*lines[:2], *table, *lines[2:]]) + "\n")


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="one or more run directories (merged into one table)"),
    fmt: str = typer.Option("md", "--format", help="md, csv, latex or html (one self-contained page)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write here instead of printing"),
    paper: bool = typer.Option(False, "--paper", help="show the paper's numbers (full test set) beside ours"),
    plots: Optional[Path] = typer.Option(None, "--plots", help="folder for PNG+PDF plots (default: <out>_plots/ with md)"),
    embed: bool = typer.Option(False, "--embed", help="md: headings two levels down, for a section of another document"),
    force: bool = typer.Option(False, "--force", help="replace an existing --out file"),
):
    """Comparison tables of one or more runs: defenses × threat models, n and 95% Wilson CIs."""
    from robust_bench_sc.reports import ReportError, render

    if out is not None and out.exists() and not force:
        _fail(f"--out {out}: the file exists; pass --force to replace it (nothing was written)")
    try:
        dirs: list[str | Path] = list(run_dirs)
        text = render(dirs, fmt, paper=paper, out=out, plots_dir=plots, embed=embed, on_note=_warn)
    except ReportError as exc:
        _fail(str(exc))
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
    force: bool = typer.Option(False, "--force", help="with --update: replace a baseline of another suite (or a damaged one)"),
):
    """Compare a run with a committed baseline; exit 1 when a number moved or a pair disappeared."""
    import math

    for option, value, ok, allowed in (("--tolerance", tolerance, lambda v: v >= 0, ">= 0 percentage points"),
                                       ("--alpha", alpha, lambda v: 0 < v < 1, "in (0, 1), e.g. 0.01"),
                                       ("--norm-tolerance", norm_tolerance, lambda v: v >= 0, ">= 0 (relative)")):
        if not math.isfinite(value) or not ok(value):  # nan compares false: a nan tolerance passed every drop
            _fail(f"{option} {value}: must be a finite number {allowed}")
    from robust_bench_sc.regression import (BaselineError, baseline_from_run, check_run, compare, format_result,
                                            read_baseline, write_baseline)
    from robust_bench_sc.reports import ReportError

    try:
        if update:
            new = baseline_from_run(run_dir)
            old = None
            if baseline.exists():
                try:
                    old = read_baseline(baseline)
                except BaselineError as exc:
                    if not force:
                        raise BaselineError(f"{exc}; --update --force replaces it") from None
                if old is not None and old.get("suite") != new.get("suite") and not force:
                    raise BaselineError(f"baseline {baseline} is of suite {old.get('suite')!r}, this run of "
                                        f"{new.get('suite')!r}; --update --force replaces it")
            if old is not None:
                res = compare(old, new, tolerance, alpha, norm_tolerance)
                print(format_result(res, run_dir, baseline, tolerance, alpha))
            if old is not None and not res.changes and not res.new_pairs and not res.warnings:
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
    n_images: int = typer.Option(50, "--n-images", help="first N images of the dataset's split (default: test)"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for diagnostics.json/.md (default results/diagnose/<defense>/<timestamp>; the committed reports in results/diagnostics/ are never overwritten unless named here)"),
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
    active: bool = typer.Option(False, "--active", help="run the binarization test (Zimmermann et al. 2022) instead of the passive indicators; --n-images then counts correctly classified images"),
    threat: Optional[str] = typer.Option(None, "--threat", help="--active: threat model to test (name in attack_suites/ or a YAML file; default: the plain PGD of --norm/--eps/--steps/--restarts)"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="--active: threat-model field override key=value (repeatable), e.g. restarts=10"),
    inner: int = typer.Option(99, "--inner", help="--active: inner points per image"),
    threshold: float = typer.Option(0.95, "--threshold", help="--active: pass rate below which the evaluation fails the test"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help=DATASET_HELP),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="the dataset's folder (or .npz file) (default $SCBENCH_DATA, else ../shared/data/cifar10)"),
    probe_timeout: Optional[float] = typer.Option(None, "--probe-timeout", help=PROBE_TIMEOUT_HELP),
    split: Optional[str] = typer.Option(None, "--split", help=SPLIT_HELP),
    param: Optional[list[str]] = typer.Option(None, "--param", help=PARAM_HELP),
):
    """Gradient-masking / attack-failure indicators for DEFENSE and a one-line verdict
    (``--active``: the binarization test of one threat model)."""
    import time as _time

    from robust_bench_sc.diagnostics import INDICATORS, DiagnosticsConfig, diagnose as _diagnose, save_report
    from robust_bench_sc.diagnostics.config import GRADIENT_FREE, NORMS
    from robust_bench_sc.plugins import build_defense
    from robust_bench_sc.registry import RegistryError
    from robust_bench_sc.storage import safe_name
    from robust_bench_sc.subsets import describe_subset
    from robust_bench_sc.probes import ProbeError
    from robust_bench_sc.threat_models import parse_number

    _check_device(device)
    _check_probe_timeout(probe_timeout)
    params = _factory_params(param)
    data = None if data_dir is None else str(data_dir)
    if active:
        if n_images < 1:
            _fail(f"--n-images {n_images}: must be >= 1 (correctly classified images to test)")
        _test_images(dataset, data_dir, 1, "the binarization test", split)
        return _diagnose_active(defense, n_images, out, bpda, seed, device, norm, epsilon, steps, restarts, threat,
                                set_ or [], inner, threshold, dataset, data, split, params)
    _test_images(dataset, data_dir, n_images, "diagnose", split)
    _check_out_folder(out or Path("results") / "diagnose", {"diagnostics.json", "diagnostics.md"} if out else None)
    unknown = [s for s in skip or [] if s not in INDICATORS]
    if unknown:
        _fail(f"--skip: unknown indicator(s) {', '.join(unknown)}; known: {', '.join(INDICATORS.names())}")
    if gradient_free not in GRADIENT_FREE:
        _fail(f"--gradient-free: one of {', '.join(GRADIENT_FREE)}")
    if norm not in NORMS:
        _fail(f"--norm: {' or '.join(NORMS)}")
    try:
        d = build_defense(defense, params)
        if bpda is not None and bpda not in d.bpda_names():
            _fail(f"--bpda {bpda!r}: defense {d.name!r} offers {', '.join(d.bpda_names()) or 'no stand-ins (no preprocess)'}")
        cfg = DiagnosticsConfig(n_images=n_images, seed=seed, device=device, norm=norm, epsilon=parse_number(epsilon),
                                steps=steps, restarts=restarts, bpda=bpda, eot=eot, sweep_steps=sweep_steps,
                                strong_steps=strong_steps, strong_restarts=strong_restarts,
                                unconstrained_steps=unconstrained_steps, noise_draws=noise_draws,
                                gradient_free=gradient_free, queries=queries, skip=tuple(skip or ()),
                                dataset=dataset, split=split, data_dir=data, probe_timeout=probe_timeout)
        t0 = _time.perf_counter()
        with console.status("diagnosing") as status:
            rep = _diagnose(d, cfg, log=lambda s: status.update(f"{d.name}: {s}"))
        from robust_bench_sc.datasets import DEFAULT_DATASET, DEFAULT_SPLIT, images_label

        images = images_label(dataset or DEFAULT_DATASET, split or DEFAULT_SPLIT, data)
    except (RegistryError, FileNotFoundError, ValueError, ProbeError) as exc:
        _fail(str(exc))
    table = Table(title=f"diagnostics: {rep.defense} ({describe_subset(rep.n_images, images=images)}; clean "
                        f"{100 * rep.clean_accuracy:.1f}%, plain PGD-{steps} {100 * rep.plain_robust_accuracy:.1f}%)")
    for col in ("indicator", "status", "evidence"):
        table.add_column(col, overflow="fold")
    colour = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}
    for r in rep.indicators:
        table.add_row(r.name, f"[{colour[r.status]}]{r.status}[/]", r.evidence)
    console.print(table)
    code_colour = "green" if rep.verdict_code == "trustworthy" else "yellow" if "warn" in rep.verdict_code else "bold red"
    console.print(f"[{code_colour}]verdict:[/] {rep.verdict}", highlight=False)
    out_dir = out or _fresh_dir(Path("results") / "diagnose" / safe_name(rep.defense))
    j, m = save_report(rep, out_dir)
    console.print(f"wall time {_time.perf_counter() - t0:.0f} s; wrote {j} and {m}")


def _diagnose_active(defense, n_images, out, bpda, seed, device, norm, epsilon, steps, restarts, threat, sets,
                     inner, threshold, dataset=None, data_dir=None, split=None, params=None):
    """``scbench diagnose --active``: the binarization test (robust_bench_sc/binarization.py)."""
    import time as _time

    from robust_bench_sc.binarization import (BinarizationConfig, NotApplicable, binarization_test, resolve_threat,
                                              save_report)
    from robust_bench_sc.plugins import build_defense
    from robust_bench_sc.registry import RegistryError
    from robust_bench_sc.storage import safe_name
    from robust_bench_sc.yamlio import ConfigError

    if out is not None:
        _check_out_folder(out, {"binarization.json", "binarization.md", "COMMAND.md"})
    try:
        tm = resolve_threat(threat, sets, norm=norm, epsilon=epsilon, steps=steps, restarts=restarts, bpda=bpda)
        d = build_defense(defense, params)
        if tm.bpda not in (None, "auto") and tm.bpda not in d.bpda_names():
            _fail(f"bpda {tm.bpda!r}: defense {d.name!r} offers {', '.join(d.bpda_names()) or 'no stand-ins (no preprocess)'}")
        cfg = BinarizationConfig(n_samples=n_images, n_inner=inner, pass_threshold=threshold, seed=seed, device=device,
                                 dataset=dataset, split=split, data_dir=data_dir)
        t0 = _time.perf_counter()
        with console.status("binarization test") as status:
            rep = binarization_test(d, tm, cfg, log=lambda s: status.update(f"{d.name}: {s}"))
    except NotApplicable as exc:
        console.print(f"[yellow]not applicable:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(3)
    except (ConfigError, RegistryError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc), 1)
    colour = {"pass": "green", "fail": "bold red", "not_applicable": "yellow"}[rep.status]
    console.print(f"[{colour}]binarization test {rep.status}:[/] {escape(rep.evidence)}", highlight=False, soft_wrap=True)
    out_dir = out or _fresh_dir(Path("results") / "diagnose" / safe_name(rep.defense))
    j, m = save_report(rep, out_dir)
    console.print(f"wall time {_time.perf_counter() - t0:.0f} s; wrote {j} and {m}")
    if rep.status == "fail":
        raise typer.Exit(4)


@app.command()
def audit(
    defense: str = typer.Argument(..., help="defense name, 'module:attr' or 'path/to/file.py:attr'"),
    n_images: int = typer.Option(100, "--n-images", help="first N images of the dataset's split (default: test)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (resumable; default results/audit/<defense>/<timestamp>); audit.json/.md/.html are written into it"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (no effect on the numbers)"),
    budget: str = typer.Option("standard", "--budget", help="standard (APGD 100 iterations, Square 5000 queries, EOT 20) or quick (smoke runs)"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help=DATASET_HELP),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="the dataset's folder (or .npz file) (default $SCBENCH_DATA, else ../shared/data/cifar10)"),
    probe_timeout: Optional[float] = typer.Option(None, "--probe-timeout", help=PROBE_TIMEOUT_HELP),
    split: Optional[str] = typer.Option(None, "--split", help=SPLIT_HELP),
    norm: str = typer.Option("linf", "--norm", help="linf or l2: the ball every attack of the cascade searches"),
    epsilon: Optional[str] = typer.Option(None, "--eps", "--epsilon", help="its radius, e.g. 8/255 or 0.3 (default: RobustBench's CIFAR-10 radius, 8/255 for linf, 0.5 for l2)"),
    accept_code_change: bool = typer.Option(False, "--accept-code-change", help=ACCEPT_CODE_CHANGE_HELP),
    param: Optional[list[str]] = typer.Option(None, "--param", help=PARAM_HELP),
    executor: str = typer.Option("local", "--executor", help=EXECUTOR_HELP + "; the cascade's chunks run there, the probes, indicators and binarization test here"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
):
    """Probe DEFENSE, attack it with a cascade chosen by the probes, run the indicators and the
    binarization test, and write a report card with a verdict (docs/audit.md)."""
    from dataclasses import replace

    from robust_bench_sc.audit import AUDIT_NORMS, BUDGETS, DEFAULT_EPSILON, AuditError, audit as _audit
    from robust_bench_sc.threat_models import parse_number

    _check_device(device)
    _check_threads(threads)
    _check_probe_timeout(probe_timeout)
    if budget not in BUDGETS:
        _fail(f"--budget {budget}: allowed values are {', '.join(BUDGETS)}")
    if norm not in AUDIT_NORMS:
        _fail(f"--norm {norm}: allowed values are {', '.join(AUDIT_NORMS)}")
    try:
        eps = DEFAULT_EPSILON[norm] if epsilon is None else parse_number(epsilon)
    except ValueError as exc:
        _fail(f"--eps {epsilon}: {exc}")
    if not eps > 0:
        _fail(f"--eps {epsilon}: must be > 0")
    params = _factory_params(param)
    ex = _executor(executor, device, ray_address)
    _interrupt_on_sigterm()
    try:
        card = _audit(defense, n_images=n_images, out=out, device=device, threads=threads, executor=ex, params=params,
                      budget=replace(BUDGETS[budget], norm=norm, epsilon=eps),
                      console=err, show_progress=not quiet, command=sys.argv, dataset=dataset, data_dir=data_dir,
                      probe_timeout=probe_timeout, split=split, accept_code_change=accept_code_change)
    except AuditError as exc:
        _fail(str(exc))
    v, wc = card["verdict"], card["worst_case"]
    code_colour = "green" if v["code"] == "trustworthy" else "yellow" if v["code"].startswith("trustworthy") else "bold red"
    for m in card["cascade"]:
        acc = "—" if m["robust_accuracy"] is None else f"{m['robust_accuracy']:.1f}%"
        console.print(f"  {m['name']}: ran on {m['ran_on']}, fooled {m['fooled']}, robust there {acc}", highlight=False)
    console.print(f"worst case {wc['robust_accuracy']:.1f}% ({wc['robust']}/{wc['n']})", highlight=False)
    console.print(f"[{code_colour}]verdict:[/] {escape(v['text'])}", highlight=False, soft_wrap=True)
    console.print(f"wrote {card['run_dir']}/audit.json, audit.md, audit.html", highlight=False)


# Aliases of model options (flag, the option it sets), kept because committed COMMAND.md files use
# them: --T 15 is -o T=15, --dense is -o fast=false, --freeze-classifier is -o freeze_classifier=true.
TRAIN_OPTION_ALIASES = (("--T", "T"), ("--classifier-lr-scale", "classifier_lr_scale"), ("--warm-start", "warm_start"),
                        ("--freeze-classifier", "freeze_classifier"), ("--dense", "fast"))


@app.command()
def train(
    out: Path = typer.Option(..., "--out", help="run folder: last.pt (resumable), best.pt, latest_weights.pt, log.csv/json"),
    model: str = typer.Option("sparse_coding", "--model", help="what to train: sparse_coding (frontend + ResNet-32; the default) or resnet32 (natural ResNet-32); plug-ins may add more"),
    options: Optional[list[str]] = typer.Option(None, "--option", "-o", help="an option of the model, NAME=VALUE (repeatable), e.g. -o T=15; a wrong name lists the model's options (docs/training.md)"),
    T: Optional[int] = typer.Option(None, "--T", help="alias of -o T=...: sparse_coding's top-T coefficients kept per patch (default 15; paper: 1, 2, 5, 10, 15, 20)"),
    epochs: float = typer.Option(70.0, "--epochs", help="length of the one-cycle schedule (fractions allowed)"),
    peak_lr: float = typer.Option(0.02, "--lr", help="peak LR (paper: 0.02; 0.05 for T=1,2 and for the natural ResNet-32)"),
    classifier_lr_scale: Optional[float] = typer.Option(None, "--classifier-lr-scale", help="alias of -o classifier_lr_scale=...: sparse_coding's classifier peak LR = lr x this (default 1; e.g. 0.25 with --warm-start)"),
    warmup_frac: float = typer.Option(0.5, "--warmup-frac", help="fraction of the schedule spent rising to the peak"),
    batch_size: int = typer.Option(64, "--batch-size"),
    warm_start: Optional[Path] = typer.Option(None, "--warm-start", help="alias of -o warm_start=...: sparse_coding's classifier state dict to start from (e.g. shared/reference/resnet32_behind_frontend_T15.pt)"),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="full weights to start a new run from (sparse_coding: a T{T}.pt of any T; resnet32: a ResNet-32 state dict)"),
    freeze_classifier: bool = typer.Option(False, "--freeze-classifier", help="alias of -o freeze_classifier=true (sparse_coding: train the decoder only)"),
    ckpt_every: int = typer.Option(100, "--ckpt-every", help="checkpoint every K steps (and at each epoch end)"),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="evaluate every K steps (default: --ckpt-every)"),
    n_val: int = typer.Option(1000, "--n-val", help="validation images held out from the end of the training set (pick best.pt)"),
    n_test: int = typer.Option(1000, "--n-test", help="first N test images evaluated at each evaluation (reported only)"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="stop after this global step (resume later)"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from OUT/last.pt if present"),
    dense: bool = typer.Option(False, "--dense", help="alias of -o fast=false: sparse_coding's dense first transposed convolution (default: the exact sparse gather)"),
):
    """Train a model (resumable: the same command continues OUT/last.pt; Ctrl-C safe at checkpoints)."""
    from robust_bench_sc.data import DataError
    from robust_bench_sc.registry import RegistryError
    from robust_bench_sc.training import (TRAINABLES, DeadModelError, TrainConfig, TrainingError, option_fields,
                                          option_names, parse_option, resolve_options)
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
    for name, count, low in (("--ckpt-every", ckpt_every, 1), ("--eval-every", eval_every, 1), ("--n-val", n_val, 1),
                             ("--n-test", n_test, 1), ("--max-steps", max_steps, 0)):
        if count is not None and count < low:  # --ckpt-every 0 divided by zero at the first step
            _fail(f"{name} {count}: must be a whole number >= {low}")
    trainable = TRAINABLES.get(model)
    opts: dict[str, Any] = {}
    try:
        for text in options or []:
            key, value = parse_option(trainable, model, text)
            opts[key] = value
    except ValueError as exc:
        _fail(str(exc))
    aliased = {"--T": T, "--classifier-lr-scale": classifier_lr_scale,
               "--warm-start": str(warm_start) if warm_start else None,
               "--freeze-classifier": True if freeze_classifier else None, "--dense": False if dense else None}
    for flag, key in TRAIN_OPTION_ALIASES:
        if aliased[flag] is None:
            continue
        if key not in option_fields(trainable):
            _fail(f"{flag}: not an option of model {model}; its options: {option_names(trainable)}")
        if key in opts and opts[key] != aliased[flag]:
            _fail(f"{flag} and -o {key}=... disagree; give one of them")
        opts[key] = aliased[flag]
    try:
        cfg = resolve_options(TrainConfig(
            model=model, options=opts, epochs=epochs, batch_size=batch_size, peak_lr=peak_lr, warmup_frac=warmup_frac,
            init_from=str(init_from) if init_from else None, seed=seed, ckpt_every=ckpt_every, eval_every=eval_every,
            n_val=n_val, n_test=n_test, device=device, threads=threads, max_steps=max_steps))
    except ValueError as exc:
        alias = next((f for f, k in TRAIN_OPTION_ALIASES if str(exc).startswith(f"{k}=") and aliased[f] is not None), None)
        _fail(f"{alias} {str(exc).partition('=')[2]}" if alias else f"-o {exc}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            _fail("--device cuda: no CUDA device available")
    try:
        row = run_training(cfg, out, resume=resume, log=lambda s: console.print(s, highlight=False))
    except DeadModelError as exc:
        _fail(str(exc), code=3)
    except (TrainingError, DataError, RegistryError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"last evaluation: {row}")


def main():
    if "--debug" in sys.argv[1:]:  # accepted anywhere on the line, not only before the command
        sys.argv.remove("--debug")
        os.environ["SCBENCH_DEBUG"] = "1"
    app()


if __name__ == "__main__":
    main()
