"""Progress of the jobs in flight: what an attack says inside a chunk, and what the driver
keeps of it.

A chunk of the paper's strongest PGD on the sparse-coding defense runs for over an hour;
until it is recorded, the records say nothing. So attacks report *stages* as they go
(``ctx.progress(0, "restart 37/100: 54 of 81 attacked images fooled")``), workers forward
them (in-process, or to the driver through Ray), and the driver keeps the latest stage of
each job in flight in the run folder's ``progress.json`` (:class:`InFlight`). ``scbench
status`` reads that file while a live process holds the folder (:func:`in_flight_lines`);
the runner removes it when the invocation ends, so a finished folder never carries it.

The file is advisory: the records alone say what a run computed, and a damaged or stale
``progress.json`` is ignored, never an error.

On the terminal, :class:`RunProgress` draws one bar per (defense, threat model) with its
latest stage: one line each where the terminal is wide enough, three short lines each
where it is not (80 columns), wrapped between words, never cut.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Column, Table
from rich.text import Text

from robust_bench_sc.plan import Job

STARTED = "started"
"""The stage a worker reports when it begins a job (before any image is done)."""


class ProgressFn(Protocol):
    """What an attack calls: ``k`` images finished since the last call (0: none, a heartbeat),
    and optionally what it is doing now (one short line, counts with what they count)."""

    def __call__(self, k: int, stage: str | None = None) -> None: ...


def restart_stage(done: int, restarts: int, fooled: int, attacked: int) -> str:
    """The stage line of a restart loop (native PGD and the toolkits' loops)."""
    return f"restart {done}/{restarts}: {fooled} of {attacked} attacked images fooled"


def zoo_stage(done: int, selected: int, fooled: int) -> str:
    """The stage line of ZOO's loop over its selected images."""
    return f"ZOO image {done}/{selected}: {fooled} of {done} fooled"


@dataclass
class JobProgress:
    """The latest word on one job in flight."""

    job: str              # Job.key: defense/threat/chunk
    defense: str
    threat: str
    chunk: int
    start: int            # image positions [start, stop)
    stop: int
    images_done: int      # images the attack has finished (batches), of stop - start
    stage: str | None     # the attack's latest stage line
    started_at: float     # epoch seconds of the first word from the job
    updated_at: float     # epoch seconds of the latest

    def line(self, now: float) -> str:
        """``defense × threat chunk c (images a-b): stage; N min in, last heard S ago``."""
        what = self.stage if self.stage and self.stage != STARTED else "started, no stage reported yet"
        n = self.stop - self.start
        done = f", {self.images_done}/{n} images done" if self.images_done else ""
        return (f"{self.defense} × {self.threat} chunk {self.chunk} (images {self.start}-{self.stop - 1}): "
                f"{what}{done}; {duration(now - self.started_at)} in, last heard {duration(now - self.updated_at)} ago")


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class InFlight:
    """The driver's view of the jobs in flight.

    ``event`` takes a worker's report; ``finished`` drops a recorded job. ``write`` is
    called with the jobs' state as a JSON-ready dict (the runner passes
    ``RunDir.write_progress``) at most every ``every`` seconds, and at once when a job
    starts or ends, so ``scbench status`` is never more than ``every`` seconds behind.
    """

    def __init__(self, write: Callable[[dict[str, Any]], None], every: float = 10.0,
                 clock: Callable[[], float] = time.time):
        self._write = write
        self.every = every
        self._clock = clock
        self.jobs: dict[str, JobProgress] = {}
        self._written_at: float | None = None

    def event(self, job: Job, k: int = 0, stage: str | None = None) -> JobProgress:
        now = self._clock()
        p = self.jobs.get(job.key)
        new = p is None
        if p is None:
            p = self.jobs[job.key] = JobProgress(job.key, job.defense, job.threat, job.chunk, job.start, job.stop,
                                                 0, None, now, now)
        p.images_done = min(p.images_done + max(k, 0), job.stop - job.start)
        if stage is not None:
            p.stage = stage
        p.updated_at = now
        self.flush(force=new)
        return p

    def finished(self, job: Job) -> None:
        if self.jobs.pop(job.key, None) is not None:
            self.flush(force=True)

    def flush(self, force: bool = False) -> None:
        now = self._clock()
        if force or self._written_at is None or now - self._written_at >= self.every:
            self._write(self.state(now))
            self._written_at = now

    def state(self, now: float | None = None) -> dict[str, Any]:
        return {"written_at": self._clock() if now is None else now,
                "jobs": [asdict(p) for p in self.jobs.values()]}


def parse_in_flight(blob: Any) -> tuple[float | None, list[JobProgress]]:
    """``progress.json``'s content as (written_at, jobs); anything malformed gives (None, [])."""
    if not isinstance(blob, dict) or not isinstance(blob.get("jobs"), list):
        return None, []
    out = []
    try:
        for j in blob["jobs"]:
            out.append(JobProgress(**j))
        written = float(blob["written_at"])
    except (TypeError, ValueError, KeyError):
        return None, []
    return written, out


def in_flight_lines(blob: Any, now: float | None = None) -> list[str]:
    """The lines ``scbench status`` prints for a live run's ``progress.json``."""
    now = time.time() if now is None else now
    written, jobs = parse_in_flight(blob)
    if written is None:
        return []
    if not jobs:
        return [f"in flight: no job (progress.json written {duration(now - written)} ago)"]
    head = f"in flight ({len(jobs)} job{'s' * (len(jobs) != 1)}; progress.json written {duration(now - written)} ago):"
    return [head, *(f"  {p.line(now)}" for p in sorted(jobs, key=lambda p: p.started_at))]


# -- on the terminal ----------------------------------------------------------------------

STAGE_MIN = 30   # the fewest cells the stage column gets on a one-line row; narrower, rows stack
BAR = 40         # the bar's width on a one-line row (rich's default)
INDENT = "  "    # a stacked row's second and third lines


class RunProgress(Progress):
    """The runner's bars. Each task's ``description`` is ``defense × threat model``, its
    fields ``acc`` (robust so far) and ``stage`` (the attack's latest word).

    Where ``defense × threat model``, the bar, the counts, the times and :data:`STAGE_MIN`
    cells of stage fit on one line, one line per task (the stage wraps between words in its
    column); else each task stacks: its name (broken between words, or after ``_``), then
    the bar with the counts and times, then the stage, each within the terminal's width."""

    def __init__(self, console: Console, disable: bool = False):
        self._counts: list[ProgressColumn] = [MofNCompleteColumn(), TextColumn("robust {task.fields[acc]}")]
        self._times: list[ProgressColumn] = [TimeElapsedColumn(), TimeRemainingColumn()]
        super().__init__(TextColumn("{task.description}"), BarColumn(bar_width=BAR), MofNCompleteColumn(),
                         TextColumn("robust {task.fields[acc]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                         TextColumn("{task.fields[stage]}", table_column=Column(no_wrap=False)),
                         console=console, disable=disable, transient=False)

    def _counts_width(self, task: Task) -> int:
        """The cells of ``M/N`` (M padded to N's digits) and ``robust …``."""
        return 2 * len(f"{task.total:.0f}") + 1 + cell_len(f"robust {task.fields.get('acc', '')}")

    def one_line(self, width: int) -> bool:
        """Whether every task fits one line of ``width`` cells (times: 7 cells each)."""
        need = max((cell_len(t.description) + BAR + self._counts_width(t) for t in self.tasks), default=0)
        return need + 2 * 7 + STAGE_MIN + 6 <= width  # six gaps of one cell between seven columns

    def get_renderables(self):
        if not self.tasks or self.one_line(width := self.console.width):
            yield self.make_tasks_table(self.tasks)
            return
        tasks = [t for t in self.tasks if t.visible]
        counts = max((self._counts_width(t) for t in tasks), default=0)
        bar = width - cell_len(INDENT) - counts - 2  # a gap of one cell after the bar and each count column
        times = bar - 2 * 8 >= 10  # room for the times too
        bar -= 2 * 8 if times else 0
        yield Group(*(part for t in tasks for part in self.stacked(t, width, max(bar, 1), times)))

    def stacked(self, task: Task, width: int, bar: int, times: bool) -> list[RenderableType]:
        """One task on up to three lines of at most ``width`` cells: its name, the bar (``bar``
        cells) with the counts (and the times, with ``times``), its stage."""
        from robust_bench_sc.renderers.terminal import wrap_cell

        columns = [BarColumn(bar_width=bar), *self._counts, *(self._times if times else [])]
        grid = Table.grid(padding=(0, 1, 0, 0))
        for _ in columns:
            grid.add_column(no_wrap=True)
        grid.add_row(*(c(task) for c in columns))
        parts: list[RenderableType] = [Text("\n".join(wrap_cell(task.description, width, label=True))),
                                       _indented(grid)]
        stage = task.fields.get("stage") or ""
        if stage:
            parts.append(Text("\n".join(INDENT + ln for ln in wrap_cell(stage, width - cell_len(INDENT)))))
        return parts


def _indented(renderable: RenderableType) -> RenderableType:
    grid = Table.grid()
    grid.add_column(width=cell_len(INDENT), no_wrap=True)
    grid.add_column()
    grid.add_row("", renderable)
    return grid
