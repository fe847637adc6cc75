"""Probes: what a defense *is*, measured on a few images in seconds, before any attack.

Carlini et al. 2019's checklist asks the evaluator to find out whether a defense is
randomised, whether its gradients exist, and whether its softmax saturates; a defense's
own declarations (``Capabilities``) may be wrong or missing. :func:`probe_defense` measures
each on the images it is given:

- **randomness**: ``n_passes`` forward passes on the same inputs; logits that differ (beyond
  float noise) mean the defense is randomised, declared or not. Where they are identical, the
  outputs may hide it (vote counts of noisy copies agree on every pass far from a decision
  boundary), so two more checks: ``n_passes`` passes at points next to a decision boundary
  (``BOUNDARY_STEPS`` bisection steps from each image towards another probe image of another
  predicted class), and whether each pass draws from a global random generator (torch's, on
  the CPU and the probe's device, NumPy's, Python's: each pass leaves it in a new state; a pass
  that reseeds it itself leaves it in the same state, not randomised). Either one found makes
  the defense randomised;
- **gradient**: the input gradient of the loss through the exact defense (preprocess and
  classifier), ``missing`` (the graph is broken: a ``.detach()``, a numpy round trip, a
  backward that raises), ``zero`` (a quantisation step, ``torch.round``), ``nonfinite``, or
  ``ok``. The gradient of the margin (CW) loss decides, since CE's gradient vanishes on a
  saturated softmax for reasons of its own (the saturation probe says so);
- **preprocess differentiability**: the same check through the preprocess alone (None when
  the defense has no separate preprocess);
- **probabilities**: the outputs are already probabilities (every pass's rows non-negative and
  summing to 1 within ``PROBABILITY_TOL``: a softmax inside the classifier), not logits. An
  attack's CE then applies a second softmax to values in [0, 1] (a nearly flat loss whose
  gradient vanishes where the first softmax saturates; Carlini & Wagner 2017 §V, Carlini et al.
  2019 §4.4), so margin losses lead; the saturation probe then reads the outputs themselves as
  the probabilities;
- **saturation**: softmax one-hot (max probability ≥ 1 − 1e-6) or a CE input gradient that
  underflows to zero where the margin's does not;
- **input mutation**: the defense's own ``forward`` on a copy of the images; a copy that has
  changed means the forward works in place on its input (``x.sub_(mean)``). Every forward pass
  the tool makes goes through ``Defense.__call__`` / the attack model, which pass a copy, so the
  numbers are those of the function; the finding is a line, not a failure;
- **batch dependence** (deterministic defenses only): each probe image run alone against the
  same image in the probe batch, in full float32 (CUDA's TF32 off while they run). Logits that
  change beyond float noise (``BATCH_REL_TOL`` × the largest |logit|; a batch size changes a
  convolution's summation order by ~1e-6) mean an
  image's prediction depends on the other images in its batch: batch statistics
  (``BatchNorm2d(track_running_stats=False)``, a batch-mean normalisation) or test-time
  adaptation on the batch, the transductive defenses of Chen et al. 2022 and Croce et al. 2022.
  A per-image robust accuracy is then not defined by the defense alone: it depends on the
  batch the images are attacked and checked in (Wu et al. 2023 attack an image through its
  batch-mates), so the verdict says so. A randomised defense's passes differ anyway: not
  measured there (``batch_dependent`` None).

A probe that cannot run (the defense raises, or returns something that is not a batch of
finite logits) raises :class:`ProbeError`, one line naming the probe. So does a probe that
runs past its **time limit** (:func:`time_limit`): ``timeout`` seconds per probe when given
(``--probe-timeout``), else ``FIRST_FORWARD_LIMIT`` for the first forward pass and then
``PROBE_TIME_FACTOR`` × that pass's duration (at least ``PROBE_TIME_FLOOR``) per probe (per
pass for the passes next to a decision boundary and for the batch probe's one-image passes); the
line names the probe, the limit and where the defense's own code was when it was stopped.
Probes change no global random state and leave the defense's modules in the mode they found
them in.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from robust_bench_sc.defense import Defense

GradientStatus = Literal["ok", "missing", "zero", "nonfinite"]
GRADIENT_STATUSES: tuple[str, ...] = get_args(GradientStatus)

SATURATION_GAP = 1e-6     # softmax max ≥ 1 − this: one-hot
RANDOM_REL_TOL = 1e-5     # logits differing by more than this × max(|logit|, 1) differ (the diagnostics' rule)
PROBABILITY_TOL = 1e-3    # rows ≥ 0 summing to 1 within this: the outputs are probabilities, not logits
BOUNDARY_STEPS = 8        # bisection steps towards a decision boundary (randomness hidden by quantised outputs)
MAJORITY = 0.5            # share of images that makes an image-level finding the defense's
BATCH_REL_TOL = 1e-3      # an image's logits alone vs in the probe batch: float noise is ~1e-6 × max |logit| on CPU


FIRST_FORWARD_LIMIT = 300.0  # seconds for the first forward pass on the probe images (no timeout given)
PROBE_TIME_FACTOR = 100.0    # ... then each probe may take this many times that pass's duration,
PROBE_TIME_FLOOR = 60.0      # and at least this many seconds
STUCK_REPORT_AFTER = 10.0    # seconds past the limit before a probe stuck in uninterruptible code is reported


class ProbeError(Exception):
    """A probe could not run: the defense raised, or returned something that is not logits."""


class ProbeTimeout(BaseException):
    """Raised inside code that ran past its :func:`time_limit`. A BaseException, so that a
    defense's own ``except Exception`` does not swallow it."""


@contextmanager
def time_limit(seconds: float | None, what: str = "the call") -> Iterator[None]:
    """Raise :class:`ProbeTimeout` in the code run inside when it takes more than ``seconds``
    (None: no limit).

    In the main thread on a system with ``signal.setitimer`` (Linux, macOS): a SIGALRM timer,
    which also interrupts a sleep or a blocking wait; the previous handler and any outer timer
    are restored afterwards. In another thread no signal can reach the code: the exception is
    raised when the call returns past its limit (an asynchronous exception injected from a
    watchdog, ``PyThreadState_SetAsyncExc``, was tried and left the interpreter broken for
    later calls in the process: pyautoattack's traced forward pass then never returned).
    Either way Python cannot interrupt a single long operation in C (a torch kernel that never
    returns), nor, outside the main thread, a loop: a watchdog writes one line to stderr
    ``STUCK_REPORT_AFTER`` seconds past the limit saying so."""
    if seconds is None:
        yield
        return
    if seconds <= 0:
        raise ValueError(f"time limit {seconds!r}: must be > 0 seconds")
    state = {"armed": True}
    done = threading.Event()
    main = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")

    def watchdog() -> None:
        if done.wait(seconds):
            return
        if not done.wait(STUCK_REPORT_AFTER):
            sys.stderr.write(f"{what} has run {seconds + STUCK_REPORT_AFTER:g} s, past its time limit of {seconds:g} s, "
                             "inside code Python cannot interrupt (a torch or C operation); it stops when that "
                             "returns (Ctrl-C or kill to stop now)\n")

    def alarm(signum: int, frame: Any) -> None:
        if state["armed"]:
            raise ProbeTimeout()

    dog = threading.Thread(target=watchdog, name="scbench-time-limit", daemon=True)
    t0 = time.monotonic()
    old_handler: Any = None
    old_timer = (0.0, 0.0)
    if main:
        old_handler = signal.signal(signal.SIGALRM, alarm)
        old_timer = signal.setitimer(signal.ITIMER_REAL, seconds)
    dog.start()
    try:
        yield
        if not main and time.monotonic() - t0 > seconds:  # no signal outside the main thread
            raise ProbeTimeout()
    finally:
        try:  # a timeout that arrives during this block still runs the restoring one below
            state["armed"] = False
            if main:
                signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            done.set()
            if main:
                signal.signal(signal.SIGALRM, old_handler)
                if old_timer[0] > 0:  # an outer timer (another time limit, a test timeout) keeps running
                    signal.setitimer(signal.ITIMER_REAL, max(old_timer[0] - (time.monotonic() - t0), 1e-3),
                                     old_timer[1])


@dataclass(frozen=True)
class ProbeFindings:
    """What the probes found on ``n_images`` images (``run.json``: ``probes[<defense>]``).

    randomised: observed — forward passes on the same inputs disagree (``outputs_differ``; or
    at points next to a decision boundary, ``boundary_differ``), or each draws from a global
    random generator (``draws_random``).
    randomised_declared: ``Capabilities.randomised``.
    prediction_flip_frac: share of images whose predicted label changed across the passes.
    gradient: the exact defense's input gradient: ok / missing / zero / nonfinite.
    gradient_detail: one line, the evidence.
    preprocess_differentiable: the preprocess alone has a usable gradient (None: no preprocess).
    saturated / saturated_frac: softmax one-hot or CE gradient underflow, on most images / the share.
    probabilities / probabilities_frac: the outputs are probabilities (rows ≥ 0 summing to 1 on
    every pass), not logits, on most images / the share.
    batch_dependent: an image's logits change when it is run alone instead of in the probe
    batch (None: not measured, the defense is randomised); batch_changed_frac /
    batch_flip_frac: the share of probe images whose logits / predicted label changed.
    """

    n_images: int
    randomised: bool
    randomised_declared: bool
    prediction_flip_frac: float
    gradient: str
    gradient_detail: str
    preprocess_differentiable: bool | None
    saturated: bool
    saturated_frac: float
    seconds: float
    n_passes: int = 4
    probabilities: bool = False
    probabilities_frac: float = 0.0
    outputs_differ: bool | None = None   # None: findings written before this field (randomised meant this)
    draws_random: bool = False
    boundary_differ: bool | None = None  # None: not measured (the outputs already differed)
    batch_dependent: bool | None = None  # None: not measured (randomised, or findings written before the probe)
    batch_changed_frac: float = 0.0      # share of probe images whose logits changed when run alone
    batch_flip_frac: float = 0.0         # ... whose predicted label changed
    mutates_input: bool = False          # the forward changes the tensor it is given (in place)

    def __post_init__(self) -> None:
        if self.gradient not in GRADIENT_STATUSES:
            raise ValueError(f"gradient {self.gradient!r}; allowed: {', '.join(GRADIENT_STATUSES)}")

    @property
    def treat_as_randomised(self) -> bool:
        """Randomised as observed or as declared: attacks need EOT, successes a re-check."""
        return self.randomised or self.randomised_declared

    @property
    def undeclared_randomness(self) -> bool:
        return self.randomised and not self.randomised_declared

    @property
    def gradient_ok(self) -> bool:
        return self.gradient == "ok"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prediction_flip_frac"] = round(self.prediction_flip_frac, 6)
        d["saturated_frac"] = round(self.saturated_frac, 6)
        d["probabilities_frac"] = round(self.probabilities_frac, 6)
        d["batch_changed_frac"] = round(self.batch_changed_frac, 6)
        d["batch_flip_frac"] = round(self.batch_flip_frac, 6)
        d["seconds"] = round(self.seconds, 3)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProbeFindings":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})

    def summary_lines(self) -> list[str]:
        """One line per finding and what it implies for the attacks."""
        n, k = self.n_images, round(self.prediction_flip_frac * self.n_images)
        passes = f"{self.n_passes} passes"
        hidden = []
        if self.boundary_differ:
            hidden.append(f"{passes} at points next to a decision boundary gave different outputs")
        if self.draws_random:
            hidden.append(f"each of {passes} drew random numbers (a global random generator advanced)")
        evidence = (f"{k}/{n} predictions changed over {passes}, logits differ" if self.outputs_differ is not False else
                    f"{' and '.join(hidden)}, though the outputs were identical on the {n} images (quantised "
                    "outputs, e.g. votes, hide it there)")
        if self.undeclared_randomness:
            rand = f"randomised (not declared): {evidence} -> treated as randomised, EOT on"
        elif self.randomised:
            rand = f"randomised (declared): {evidence} -> EOT on"
        elif self.randomised_declared:
            rand = (f"declared randomised, but {passes} gave identical logits on {n} images -> treated as "
                    "randomised, as declared (EOT on)")
        else:
            rand = f"deterministic: {passes} gave identical logits on {n} images -> no EOT"
        implications = {
            "ok": "gradient attacks follow it",
            "missing": "gradient attacks cannot follow it: BPDA for a preprocess; a break inside the classifier "
                       "leaves gradient columns not applicable",
            "zero": "gradient attacks see a flat loss (gradient masking): BPDA for a preprocess, else rely on "
                    "gradient-free and transfer attacks",
            "nonfinite": "gradient attacks step on NaN/inf: rely on gradient-free and transfer attacks",
        }
        grad = f"gradient {self.gradient}: {self.gradient_detail} -> {implications[self.gradient]}"
        lines = [rand, grad]
        if self.preprocess_differentiable is None:
            lines.append("preprocess: none separate (the classifier is the whole defense)")
        elif self.preprocess_differentiable:
            lines.append("preprocess differentiable -> bpda: auto keeps its exact gradients")
        else:
            lines.append("preprocess not differentiable -> bpda: auto uses a stand-in (identity unless declared)")
        if self.probabilities:
            lines.append(f"outputs are probabilities, not logits: on {round(self.probabilities_frac * n)}/{n} images "
                         "every pass's scores are ≥ 0 and sum to 1 (a softmax inside the classifier) -> CE would "
                         "apply a second softmax (a flat loss, vanishing gradients): margin (DLR/CW) losses lead; "
                         "the saturation probe reads the outputs as the probabilities")
        s = round(self.saturated_frac * n)
        if self.saturated:
            lines.append(f"saturated: {s}/{n} images have a one-hot softmax or a CE gradient that underflows -> "
                         "margin (DLR/CW) loss leads")
        else:
            lines.append(f"not saturated: {s}/{n} images with a one-hot softmax")
        if self.batch_dependent:
            lines.append(self.batch_line())
        if self.mutates_input:
            lines.append("the forward modifies its input in place (x.sub_, x.clamp_, ...) -> every forward pass here "
                         "gets a copy of the images, so the numbers are those of the function it computes; in your "
                         "own code it changes the caller's tensor")
        return lines

    def batch_evidence(self) -> str:
        """What the batch-dependence probe measured, in words (``run``'s warning, the audit's
        finding and ``diagnose``'s verdict all say it so)."""
        n = self.n_images
        return (f"{round((self.batch_changed_frac or 0) * n)}/{n} probe images' logits changed when run alone instead "
                f"of in a batch of {n} ({round((self.batch_flip_frac or 0) * n)}/{n} changed prediction)")

    def batch_line(self) -> str:
        """The batch-dependence finding in one line (for a defense found batch-dependent)."""
        return (f"batch-dependent: {self.batch_evidence()} -> an image's prediction depends on the other images in "
                "its batch (batch statistics, test-time adaptation): per-image robust accuracy depends on how the "
                "images are batched")


# --------------------------------------------------------------------------- helpers
def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Max wrong logit − true logit, per image (as ``attacks.pgd.margin_loss``, imported lazily there)."""
    from robust_bench_sc.attacks.pgd import margin_loss as _margin

    return _margin(logits, y)


def probability_rows(out: torch.Tensor) -> torch.Tensor:
    """Per row of ``out`` (images, classes): scores that are probabilities, not logits — in
    [0, 1] (within 1e-6) and summing to 1 within ``PROBABILITY_TOL``. The probe's rule and the
    ``probability_outputs`` indicator's (AutoAttack's check)."""
    in_unit = ((out >= -1e-6) & (out <= 1 + 1e-6)).all(1)
    return in_unit & ((out.double().sum(1) - 1).abs() < PROBABILITY_TOL)


def bad_gradients(g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image: all-zero, non-finite, and either."""
    f = g.flatten(1)
    nonfinite = ~torch.isfinite(f).all(1)
    zero = (f == 0).all(1)
    return {"zero": zero & ~nonfinite, "nonfinite": nonfinite, "bad": zero | nonfinite}


def input_gradient(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   loss: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor | None, str | None]:
    """The gradient of ``loss(model(x)).sum()`` with respect to ``x`` and None, or None and
    why there is none (one line): the output is not in the autograd graph, the input is not
    part of it, or backward raised."""
    grads, broken = input_gradients(model, x, [loss])
    return (None, broken) if grads is None else (grads[0], None)


def input_gradients(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                    losses: list[Callable[[torch.Tensor], torch.Tensor]]
                    ) -> tuple[list[torch.Tensor] | None, str | None]:
    """:func:`input_gradient` of each of ``losses``, from one forward pass."""
    xr = x.detach().clone().requires_grad_(True)
    out_grads = []
    with torch.enable_grad():
        try:
            out = model(xr)
        except Exception as exc:  # noqa: BLE001 - it ran on plain inputs (the randomness probe): no gradient
            msg = " ".join(str(exc).split())[:120]
            return None, (f"the forward raised on an input that requires grad ({type(exc).__name__}"
                          f"{': ' + msg if msg else ''}), a NumPy round trip without .detach() perhaps")
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return None, "the output does not require grad (the autograd graph is broken: .detach(), numpy, no_grad)"
        for k, loss in enumerate(losses):
            try:
                (g,) = torch.autograd.grad(loss(out).sum(), xr, allow_unused=True, retain_graph=k < len(losses) - 1)
            except RuntimeError as exc:
                return None, f"backward raised: {str(exc).splitlines()[0][:120]}"
            if g is None:
                return None, "the input is not part of the autograd graph"
            out_grads.append(g.detach())
    return out_grads, None


def gradient_status(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                    y: torch.Tensor) -> tuple[str, str, torch.Tensor | None]:
    """(status, one-line detail, per-image CE-gradient-all-zero mask or None) of ``model``'s
    input gradient on ``x``: the margin loss's gradient decides ok / zero / nonfinite; the
    CE gradient is returned for the saturation probe."""
    grads, broken = input_gradients(model, x, [lambda out: margin_loss(out, y),
                                               lambda out: F.cross_entropy(out, y, reduction="none")])
    n = x.shape[0]
    if grads is None:
        return "missing", str(broken), None
    g, ce = grads
    b = bad_gradients(g)
    k_zero, k_nf = int(b["zero"].sum()), int(b["nonfinite"].sum())
    detail = f"{k_zero}/{n} all-zero, {k_nf}/{n} non-finite input gradients (margin loss)"
    ce_zero = bad_gradients(ce)["zero"].cpu()
    if k_nf:
        return "nonfinite", detail, ce_zero
    if k_zero >= max(1, MAJORITY * n):
        return "zero", detail, ce_zero
    return "ok", detail, ce_zero


@contextmanager
def _eval_mode(defense: Defense) -> Iterator[None]:
    """Every module of the defense in eval mode while probing, restored afterwards."""
    modes = [(m, m.training) for top in defense.modules() for m in top.modules()]
    try:
        for top in defense.modules():
            top.eval()
        yield
    finally:
        for m, training in modes:
            m.train(training)


def _raised(probe: str, defense: Defense, exc: BaseException) -> str:
    from robust_bench_sc.registry import plugin_frame

    msg = str(exc).splitlines()[0][:160] if str(exc).strip() else ""
    where = plugin_frame(exc)
    return (f"probe {probe!r} on defense {defense.name!r}: the defense raised "
            f"{type(exc).__name__}{': ' + msg if msg else ''}" + (f"\n  at {where}" if where else ""))


def _timed_out(probe: str, defense: Defense, limit: float, exc: BaseException, given: bool) -> str:
    from robust_bench_sc.registry import plugin_frame

    where = plugin_frame(exc)
    why = "--probe-timeout" if given else \
        (f"the default: {PROBE_TIME_FACTOR:g} × one forward pass, at least {PROBE_TIME_FLOOR:g} s; "
         f"{FIRST_FORWARD_LIMIT:g} s for the first pass; --probe-timeout sets it")
    return (f"probe {probe!r} on defense {defense.name!r}: no answer within its time limit of {limit:g} s ({why}); "
            "the defense hangs or is far slower than one forward pass suggests"
            + (f"\n  stopped at {where}" if where else ""))


@contextmanager
def _limited(probe: str, defense: Defense, limit: float, given: bool) -> Iterator[None]:
    """``probe`` may take ``limit`` seconds; past that, a :class:`ProbeError` naming it."""
    try:
        with time_limit(limit, f"probe {probe!r} on defense {defense.name!r}"):
            yield
    except ProbeTimeout as exc:
        raise ProbeError(_timed_out(probe, defense, limit, exc, given)) from None


def _call(probe: str, defense: Defense, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ProbeError:
        raise
    except Exception as exc:  # the defense's own code: any exception is a probe that could not run
        raise ProbeError(_raised(probe, defense, exc)) from None


def _logits(probe: str, defense: Defense, x: torch.Tensor, n_classes: int | None = None,
            finite: bool = True) -> torch.Tensor:
    """The defense's checked logits on ``x``; ``finite``: a NaN or inf on these (clean) images is
    a ProbeError (off the data, at points next to a decision boundary, it is left to the caller)."""
    from robust_bench_sc.predictions import N_CLASSES, DefenseOutputError, checked_logits

    try:
        out = checked_logits(defense, x, N_CLASSES if n_classes is None else n_classes)
    except DefenseOutputError as exc:
        raise ProbeError(f"probe {probe!r}: {exc}") from None
    except Exception as exc:  # the defense's own code
        raise ProbeError(_raised(probe, defense, exc)) from None
    if finite and not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out).all(1)).sum())
        raise ProbeError(f"probe {probe!r} on defense {defense.name!r}: non-finite logits (NaN or inf) on {bad} of "
                         f"{x.shape[0]} clean images")
    return out.detach()


def _differ(outs: torch.Tensor) -> torch.Tensor:
    """Per image: do the passes' outputs ``outs`` (passes, images, classes) differ beyond float
    noise (``RANDOM_REL_TOL`` × the largest |logit|, at least 1)?"""
    spread = (outs - outs[0:1]).abs().flatten(2).amax(dim=(0, 2))
    return spread > RANDOM_REL_TOL * outs[0].abs().amax(1).clamp_min(1.0)


def _boundary_points(logits: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, pred: torch.Tensor,
                     steps: int = BOUNDARY_STEPS) -> torch.Tensor:
    """Per image, a point on the segment to the next probe image with another predicted class,
    next to where the prediction changes (``steps`` bisection steps, one forward pass each):
    there a randomised defense whose outputs are quantised (votes) disagrees with itself."""
    n = x.shape[0]
    partner = torch.tensor([next((j % n for j in range(i + 1, i + n) if pred[j % n] != pred[i]), (i + 1) % n)
                            for i in range(n)], device=x.device)
    direction = x[partner] - x
    lo, hi = torch.zeros(n, device=x.device), torch.ones(n, device=x.device)
    for _ in range(steps):
        mid = (lo + hi) / 2
        same = logits(x + mid.view(-1, 1, 1, 1) * direction).argmax(1) == pred
        lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
    return x + ((lo + hi) / 2).view(-1, 1, 1, 1) * direction


def _rng_states(devices: list[torch.device]) -> tuple[bytes, ...]:
    """The states of the global random generators a forward pass may draw from: torch's (CPU
    and ``devices``), NumPy's legacy global one, Python's."""
    import pickle
    import random

    import numpy as np

    return (torch.get_rng_state().numpy().tobytes(),
            *(torch.cuda.get_rng_state(d).numpy().tobytes() for d in devices),
            pickle.dumps(np.random.get_state()), pickle.dumps(random.getstate()))


@contextmanager
def _numpy_and_python_rng_kept() -> Iterator[None]:
    """NumPy's and Python's global generators restored afterwards (torch's: ``fork_rng``)."""
    import random

    import numpy as np

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


@contextmanager
def _full_float32() -> Iterator[None]:
    """CUDA's TF32 off (10-bit mantissas, and kernels chosen by batch size), restored afterwards."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


# --------------------------------------------------------------------------- the probes
def probe_defense(defense: Defense, x: torch.Tensor, y: torch.Tensor, *, device: str | torch.device = "cpu",
                  n_passes: int = 4, seed: int = 0, n_classes: int | None = None,
                  timeout: float | None = None) -> ProbeFindings:
    """Run every probe on images ``x`` (labels ``y``; a few, e.g. 8) through ``defense``
    (already on ``device``). Deterministic for a given ``seed``; global RNG state is restored.
    ``n_classes``: logits per image, the dataset's (default 10, CIFAR-10). ``timeout``:
    seconds each probe may take (None: scaled from the first forward pass, see the module)."""
    if timeout is not None and not timeout > 0:
        raise ValueError(f"probe timeout {timeout!r}: must be > 0 seconds")
    if n_passes < 2:
        raise ValueError("n_passes must be >= 2 (randomness is disagreement between passes)")
    if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"probe images: {x.shape[0]} images and {y.shape[0]} labels; need at least one of each")
    t0 = time.perf_counter()
    dev = torch.device(device)
    x, y = x.to(dev).float(), y.to(dev).long()
    n = int(x.shape[0])
    devices = [dev] if dev.type == "cuda" else []
    with _eval_mode(defense), torch.random.fork_rng(devices=devices), _numpy_and_python_rng_kept():
        torch.manual_seed(seed)
        # randomness: n_passes forward passes on the same inputs; the first one's duration sets
        # the other probes' time limit (unless one is given)
        given = timeout is not None
        states = [_rng_states(devices)]  # the global generators' states before the first pass and after each
        with torch.no_grad():
            t_first = time.perf_counter()
            with _limited("randomness", defense, timeout or FIRST_FORWARD_LIMIT, given):
                first = _logits("randomness", defense, x, n_classes).float()
            states.append(_rng_states(devices))
            t_first = time.perf_counter() - t_first
            limit = timeout or max(PROBE_TIME_FLOOR, PROBE_TIME_FACTOR * t_first)
            passes = [first]
            with _limited("randomness", defense, limit, given):
                for _ in range(n_passes - 1):
                    passes.append(_logits("randomness", defense, x, n_classes).float())
                    states.append(_rng_states(devices))
            outs = torch.stack(passes)
        outputs_differ = bool(_differ(outs).any())
        draws_random = all(a != b for a, b in zip(states[1:], states[2:]))  # each pass after the first moved them
        boundary_differ: bool | None = None
        if not outputs_differ:  # identical outputs: passes at points on decision boundaries, where votes split

            def one_pass(h: torch.Tensor) -> torch.Tensor:  # the limit holds for each pass here
                with _limited("randomness", defense, limit, given):
                    return _logits("randomness", defense, h, n_classes, finite=False).float()

            with torch.no_grad():
                xb = _boundary_points(one_pass, x, outs[0].argmax(1))
                at = torch.stack([one_pass(xb) for _ in range(n_passes)])
            finite_rows = torch.isfinite(at).all(2).all(0)  # NaN off the pixel grid is not randomness
            boundary_differ = bool((_differ(at.nan_to_num()) & finite_rows).any()) if finite_rows.any() else None
        randomised = outputs_differ or bool(boundary_differ) or draws_random
        flips = (outs.argmax(2) != outs[0:1].argmax(2)).any(0)
        # batch dependence: each image alone against the same image in the batch (a deterministic defense)
        batch_dependent: bool | None = None
        batch_changed, batch_flips = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
        if not randomised and n > 1:
            def batch_pass(h: torch.Tensor) -> torch.Tensor:  # the limit holds for each pass
                with _limited("batch dependence", defense, limit, given):
                    return _logits("batch dependence", defense, h, n_classes).float()

            with torch.no_grad(), _full_float32():  # TF32 on a GPU would differ by batch size by itself
                together = batch_pass(x)
                alone = torch.cat([batch_pass(x[i:i + 1]) for i in range(n)])
            spread = (alone - together).abs().amax(1)
            batch_changed = (spread > BATCH_REL_TOL * together.abs().amax(1).clamp_min(1.0)).cpu()
            batch_flips = (alone.argmax(1) != together.argmax(1)).cpu()
            batch_dependent = bool(batch_changed.any())
        # gradient through the exact defense (its own forward: preprocess + classifier)
        with _limited("gradient", defense, limit, given):
            grad, detail, ce_zero = _call("gradient", defense, lambda: gradient_status(defense, x, y))
        # in place: the forward itself (Defense.__call__ passes a copy) on a copy of the images
        given_images = x.clone()
        with torch.no_grad(), _limited("input mutation", defense, limit, given):
            _call("input mutation", defense, lambda: defense.forward(given_images))
        mutates_input = not torch.equal(given_images, x)
        # the preprocess alone
        pre: bool | None = None
        if defense.preprocess is not None:
            pre_module: nn.Module = defense.preprocess
            gen = torch.Generator().manual_seed(seed + 1)

            def projected(h: torch.Tensor) -> torch.Tensor:  # a random projection: no cancellation to zero
                return (h * torch.randn(h.shape, generator=gen).to(h.device, h.dtype)).flatten(1).sum(1)

            with _limited("preprocess gradient", defense, limit, given):
                g, broken = _call("preprocess gradient", defense, lambda: input_gradient(pre_module, x, projected))
            pre = broken is None and g is not None and not bool(bad_gradients(g)["nonfinite"].any()) \
                and int(bad_gradients(g)["zero"].sum()) < max(1, MAJORITY * n)
    # probabilities: every pass's rows non-negative and summing to 1 (a softmax inside the classifier)
    prob_rows = torch.stack([probability_rows(o) for o in outs]).all(0).cpu()
    prob_frac = float(prob_rows.float().mean())
    probabilities = prob_frac >= MAJORITY
    # saturation: one-hot softmax (in float64: the gap is below float32's resolution near 1), or a CE
    # gradient that underflowed where the margin's did not; outputs that are probabilities are read as such
    out0 = outs[0].double()
    logp = torch.log(out0.clamp_min(0) / out0.clamp_min(0).sum(1, keepdim=True).clamp_min(1e-300)) if probabilities \
        else torch.log_softmax(out0, 1)
    one_hot = (1 - logp.max(1).values.exp()) <= SATURATION_GAP
    sat = one_hot.cpu()
    if grad == "ok" and ce_zero is not None:
        sat = sat | ce_zero
    sat_frac = float(sat.float().mean())
    return ProbeFindings(n_images=n, randomised=randomised, randomised_declared=bool(defense.capabilities.randomised),
                         prediction_flip_frac=float(flips.float().mean()), gradient=grad, gradient_detail=detail,
                         preprocess_differentiable=pre, saturated=sat_frac >= MAJORITY, saturated_frac=sat_frac,
                         seconds=time.perf_counter() - t0, n_passes=n_passes, probabilities=probabilities,
                         probabilities_frac=prob_frac, outputs_differ=outputs_differ, draws_random=draws_random,
                         boundary_differ=boundary_differ, batch_dependent=batch_dependent,
                         batch_changed_frac=float(batch_changed.float().mean()),
                         batch_flip_frac=float(batch_flips.float().mean()), mutates_input=mutates_input)
