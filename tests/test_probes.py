"""Probes (issue 33): randomness, gradient availability, preprocess differentiability and
saturation, measured on the reference Madry model and small archetypes built around it, on
the first real CIFAR-10 test images."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import torch
from torch import nn

from robust_bench_sc.defense import Capabilities, Defense
from robust_bench_sc.probes import ProbeError, ProbeFindings, probe_defense

N = 8


@pytest.fixture(scope="module")
def images(test_split):
    return test_split.x[:N], test_split.y[:N]


class Noise(nn.Module):
    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma

    def forward(self, x):
        return (x + self.sigma * torch.randn_like(x)).clamp(0, 1)


class Detached(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).detach()


class NumpyRoundTrip(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.from_numpy(np.ascontiguousarray(x.detach().cpu().numpy())))


class Quantise(nn.Module):
    """JPEG-like: pixel values rounded to a coarse grid (gradient zero almost everywhere)."""

    def forward(self, x):
        return torch.round(x * 8) / 8


class Scaled(nn.Module):
    def __init__(self, inner: nn.Module, k: float):
        super().__init__()
        self.inner, self.k = inner, k

    def forward(self, x):
        return self.inner(x) * self.k


class Raises(nn.Module):
    def forward(self, x):
        raise ValueError("out of memory in my own code")


def wrap(madry, name, classifier=None, preprocess=None, randomised=False):
    return Defense(name=name, classifier=classifier or madry.classifier, preprocess=preprocess,
                   capabilities=Capabilities(randomised=randomised))


def test_reference_model_is_ok_deterministic_unsaturated(madry, images):
    f = probe_defense(madry, *images)
    assert (f.n_images, f.randomised, f.randomised_declared, f.prediction_flip_frac) == (N, False, False, 0.0)
    assert f.gradient == "ok" and f.gradient_detail.startswith("0/8 all-zero, 0/8 non-finite")
    assert f.preprocess_differentiable is None
    assert not f.saturated and f.saturated_frac < 0.5
    assert 0 < f.seconds < 30
    lines = f.summary_lines()
    assert len(lines) == 4 and lines[0].startswith("deterministic: 4 passes") and "no EOT" in lines[0]
    assert json.loads(json.dumps(f.to_dict())) == f.to_dict()
    assert ProbeFindings.from_dict(f.to_dict()).gradient == "ok"
    assert f.batch_dependent is False and f.batch_changed_frac == f.batch_flip_frac == 0.0
    # probing changes no global random state
    torch.manual_seed(5)
    a = torch.rand(3)
    torch.manual_seed(5)
    probe_defense(madry, *images)
    assert torch.equal(torch.rand(3), a)


def test_noise_wrapped_model_is_randomised_though_not_declared(madry, images):
    f = probe_defense(wrap(madry, "noisy", preprocess=Noise(0.05)), *images)
    assert f.randomised and not f.randomised_declared and f.undeclared_randomness and f.treat_as_randomised
    assert f.gradient == "ok" and f.preprocess_differentiable is True
    line = f.summary_lines()[0]
    assert line.startswith("randomised (not declared): ") and "over 4 passes" in line
    assert line.endswith("treated as randomised, EOT on")
    # declared: no warning wording, still EOT
    g = probe_defense(wrap(madry, "noisy", preprocess=Noise(0.05), randomised=True), *images)
    assert g.randomised and not g.undeclared_randomness and g.summary_lines()[0].startswith("randomised (declared)")
    assert f.batch_dependent is None  # its passes differ anyway: not measured
    # same seed, same findings
    assert probe_defense(wrap(madry, "noisy", preprocess=Noise(0.05)), *images).prediction_flip_frac \
        == f.prediction_flip_frac


class Votes(nn.Module):
    """Majority vote over noisy copies (vote counts out): on these images the votes agree on
    every pass, so only the random numbers drawn show the randomness. ``reseed``: the forward
    seeds the generator itself (deterministic)."""

    def __init__(self, inner: nn.Module, reseed: bool = False, numpy_noise: bool = False,
                 own_generator: bool = False):
        super().__init__()
        self.inner, self.reseed, self.numpy_noise = inner, reseed, numpy_noise
        self.gen = torch.Generator().manual_seed(0) if own_generator else None

    def forward(self, x):
        if self.reseed:
            torch.manual_seed(1234)
        noise = torch.from_numpy(np.random.randn(4, *x.shape).astype(np.float32)) if self.numpy_noise \
            else torch.randn(4, *x.shape, generator=self.gen)
        logits = torch.stack([self.inner((x + 0.01 * e).clamp(0, 1)) for e in noise])
        return nn.functional.one_hot(logits.argmax(2), 10).sum(0).float()


@pytest.mark.parametrize("numpy_noise", [False, True])
def test_randomness_the_outputs_hide_is_found_by_the_random_numbers_drawn(madry, images, numpy_noise):
    f = probe_defense(wrap(madry, "votes", classifier=Votes(madry.classifier, numpy_noise=numpy_noise)), *images)
    assert not f.outputs_differ and f.draws_random and f.randomised and f.undeclared_randomness
    assert f.prediction_flip_frac == 0.0 and f.gradient == "missing"
    assert "drew random numbers" in f.summary_lines()[0] and f.summary_lines()[0].endswith("EOT on")
    assert f.boundary_differ  # next to a decision boundary the votes split
    # the generators are restored: probing changes no global random state, NumPy's and Python's included
    np.random.seed(3)
    a = np.random.rand(2)
    np.random.seed(3)
    probe_defense(wrap(madry, "votes", classifier=Votes(madry.classifier, numpy_noise=numpy_noise)), *images)
    assert np.array_equal(np.random.rand(2), a)
    # a forward that seeds the generator itself is deterministic
    g = probe_defense(wrap(madry, "seeded", classifier=Votes(madry.classifier, reseed=True)), *images)
    assert not g.randomised and not g.draws_random and g.boundary_differ is False
    # a generator of its own (no global one advances): the passes next to a decision boundary find it
    h = probe_defense(wrap(madry, "own", classifier=Votes(madry.classifier, own_generator=True)), *images)
    assert not h.outputs_differ and not h.draws_random and h.boundary_differ and h.randomised
    assert "at points next to a decision boundary gave different outputs" in h.summary_lines()[0]
    # deterministic defenses: nothing at the boundary either
    assert probe_defense(madry, *images).boundary_differ is False


@pytest.mark.parametrize("broken", [Detached, NumpyRoundTrip])
def test_a_broken_graph_is_missing(madry, images, broken):
    f = probe_defense(wrap(madry, "broken", classifier=broken(madry.classifier)), *images)
    assert f.gradient == "missing" and "does not require grad" in f.gradient_detail
    assert not f.randomised and f.preprocess_differentiable is None
    assert "gradient missing" in f.summary_lines()[1]


class NumpyWithoutDetach(nn.Module):
    """``x.numpy()`` on the input itself: runs on plain images, raises on one that requires grad."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.from_numpy(np.round(x.cpu().numpy() * 15) / 15).float())


def test_a_forward_that_raises_only_when_the_input_requires_grad_has_no_gradient(madry, images):
    """Not a defense that cannot run (that is one error line naming the probe): its gradient is
    missing, and the gradient-free and transfer attacks carry the audit."""
    f = probe_defense(wrap(madry, "numpy", classifier=NumpyWithoutDetach(madry.classifier)), *images)
    assert f.gradient == "missing" and "the forward raised on an input that requires grad (RuntimeError" in \
        f.gradient_detail
    assert not f.randomised and "gradient missing" in f.summary_lines()[1]


def test_saturated_logits(madry, images):
    f = probe_defense(wrap(madry, "saturated", classifier=Scaled(madry.classifier, 1e4)), *images)
    assert f.saturated and f.saturated_frac == 1.0
    assert f.gradient == "ok"  # the margin's gradient is there; CE's underflows (that is the saturation)
    assert "margin (DLR/CW) loss leads" in f.summary_lines()[3]


def test_outputs_that_are_probabilities_are_found_and_read_as_such(madry, images):
    """A softmax inside the classifier: the probe says so, and its saturation reads the
    outputs themselves as the probabilities (a second softmax of them is never one-hot)."""
    softmax = wrap(madry, "softmax", classifier=nn.Sequential(madry.classifier, nn.Softmax(1)))
    f = probe_defense(softmax, *images)
    assert f.probabilities and f.probabilities_frac == 1.0 and f.gradient == "ok"
    assert not f.saturated  # Madry's softmax is not one-hot on these images
    assert any(line.startswith("outputs are probabilities, not logits: on 8/8 images") for line in f.summary_lines())
    assert ProbeFindings.from_dict(f.to_dict()).probabilities
    # a saturated softmax at the output: one-hot probabilities, found saturated (softmax of them is not)
    g = probe_defense(wrap(madry, "sat-softmax", classifier=nn.Sequential(Scaled(madry.classifier, 1e4),
                                                                          nn.Softmax(1))), *images)
    assert g.probabilities and g.saturated and g.saturated_frac == 1.0
    # logits are not probabilities, nor are non-negative scores that do not sum to 1 (vote counts)
    assert not probe_defense(madry, *images).probabilities
    votes = nn.Sequential(madry.classifier, nn.Softmax(1), Scaled(nn.Identity(), 8.0))
    assert probe_defense(wrap(madry, "votes", classifier=votes), *images).probabilities_frac == 0.0
    # the diagnostics' indicator applies the same rule (probes.probability_rows)
    from robust_bench_sc.diagnostics import DiagnosticsConfig, diagnose

    rep = diagnose(softmax, DiagnosticsConfig(n_images=4, steps=1), only=["probability_outputs"])
    assert rep.status_of("probability_outputs") == "fail"


def test_batch_statistics_make_a_defense_batch_dependent(images):
    """Prediction-time BatchNorm (the archetype): each image alone gets other logits than in the
    batch of 8 — on the first 100 test images 82 are right in batches of 100, 10 one at a time."""
    from robust_bench_sc.plugins import build_defense

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # off while the probe compares
    try:
        f = probe_defense(build_defense("defenses.archetypes:test_time_batchnorm"), *images)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # and restored
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    assert (f.randomised, f.gradient, f.batch_dependent, f.batch_changed_frac) == (False, "ok", True, 1.0)
    assert f.batch_flip_frac >= 0.5, f.batch_flip_frac
    k = round(f.batch_flip_frac * N)
    assert f.summary_lines()[-1].startswith(f"batch-dependent: 8/8 probe images' logits changed when run alone "
                                            f"instead of in a batch of 8 ({k}/8 changed prediction)")
    assert ProbeFindings.from_dict(json.loads(json.dumps(f.to_dict()))).batch_dependent is True


class InPlace(nn.Module):
    """A naive author's normalisation, in place on the input: maps [0, 1] to [-1, 1] and back."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        x.mul_(2).sub_(1)
        return self.inner((x + 1) / 2)


def test_a_forward_that_works_in_place_is_the_function_it_computes(madry, images):
    """Before every forward got a copy, this defense read as randomised (each pass changed the
    images of the next: 7/8 predictions changed) with no gradient (in place on a leaf that
    requires grad), and its audit said gradient masking; it is Madry's network."""
    x, y = images
    kept = x.clone()
    d = wrap(madry, "in_place", classifier=InPlace(madry.classifier))
    f = probe_defense(d, x, y)
    assert torch.equal(x, kept)  # the caller's images are untouched
    assert (f.randomised, f.gradient, f.batch_dependent, f.mutates_input) == (False, "ok", False, True)
    assert f.summary_lines()[-1].startswith("the forward modifies its input in place")
    with torch.no_grad():
        assert torch.allclose(d(x), madry(x), atol=1e-5) and torch.equal(x, kept)
        eot = d.attack_model(eot=3)(x)  # each EOT pass its own copy
        assert torch.allclose(eot, madry(x), atol=1e-5) and torch.equal(x, kept)
    xr = x.clone().requires_grad_(True)
    g, = torch.autograd.grad(d.attack_model()(xr).sum(), xr)
    g_ref, = torch.autograd.grad(madry.attack_model()(xr).sum(), xr)
    assert torch.allclose(g, g_ref, atol=1e-5)
    assert probe_defense(madry, x, y).mutates_input is False
    # a preprocess that quantises in place, attacked through BPDA: the saved input is the attack's
    class InPlaceQuantise(nn.Module):
        def forward(self, h):
            return h.mul_(8).round_().div_(8)

    q = wrap(madry, "q", preprocess=InPlaceQuantise())
    xr = x.clone().requires_grad_(True)
    g, = torch.autograd.grad(q.attack_model(bpda="identity")(xr).sum(), xr)
    h = (x * 8).round() / 8
    hr = h.clone().requires_grad_(True)
    g_ref, = torch.autograd.grad(madry.attack_model()(hr).sum(), hr)  # identity backward: madry's gradient at h
    assert torch.allclose(g, g_ref, atol=1e-5) and torch.equal(xr.detach(), kept)


def test_quantisation_gives_zero_gradient(madry, images):
    inside = probe_defense(wrap(madry, "jpeg-inside", classifier=nn.Sequential(Quantise(), madry.classifier)), *images)
    assert inside.gradient == "zero" and inside.gradient_detail.startswith("8/8 all-zero")
    assert inside.preprocess_differentiable is None
    pre = probe_defense(wrap(madry, "jpeg-pre", preprocess=Quantise()), *images)
    assert pre.gradient == "zero" and pre.preprocess_differentiable is False
    assert "preprocess not differentiable" in pre.summary_lines()[2]


def test_a_defense_that_raises_is_one_line_naming_the_probe(madry, images):
    # one line naming the probe, then where the defense's own code raised
    with pytest.raises(ProbeError, match=r"^probe 'randomness' on defense 'bad': the defense raised ValueError: "
                                         r"out of memory in my own code\n  at .*test_probes.py:\d+, in forward: "):
        probe_defense(wrap(madry, "bad", classifier=Raises()), *images)
    with pytest.raises(ProbeError, match=r"^probe 'randomness': defense 'flat' returned .* shape \(8, 3\)"):
        probe_defense(wrap(madry, "flat", classifier=nn.Sequential(nn.Flatten(), nn.Linear(3072, 3))), *images)


def test_diagnose_runs_the_probes_first_and_leaves_the_defense_as_declared(madry):
    from robust_bench_sc.diagnostics import DiagnosticsConfig, diagnose, report_markdown

    noisy = wrap(madry, "noisy", preprocess=Noise(0.05))
    rep = diagnose(noisy, DiagnosticsConfig(n_images=4, steps=1), only=["randomness"])
    assert rep.probes is not None and rep.probes["randomised"] and not rep.probes["randomised_declared"]
    assert rep.status_of("randomness") == "fail" and "treated as randomised here" in rep.indicators[0].evidence
    assert noisy.capabilities.randomised is False  # restored: the caller's defense is left as it was
    md = report_markdown(rep)
    assert "Probes (4 images, before any attack):" in md and "- randomised (not declared)" in md


class Hangs(nn.Module):
    """Answers at first, then hangs: in a sleep (``how="sleep"``) or a Python loop (``"loop"``),
    on every call after ``answers`` calls, or only when gradients are asked for (``"grad"``)."""

    def __init__(self, inner: nn.Module, how: str, answers: int = 0):
        super().__init__()
        self.inner, self.how, self.answers, self.calls = inner, how, answers, 0

    def forward(self, x):
        self.calls += 1
        if self.calls > self.answers and (self.how != "grad" or torch.is_grad_enabled()):
            if self.how == "loop":
                while True:
                    x = x + 0.0
            time.sleep(60)
        return self.inner(x)


def _sigalrm_untouched():
    import signal

    return signal.getsignal(signal.SIGALRM) is signal.SIG_DFL and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.parametrize("how,probe", [("sleep", "randomness"), ("loop", "randomness"), ("grad", "gradient")])
def test_a_probe_that_hangs_is_one_line_naming_the_probe_and_the_limit(madry, images, how, probe):
    import signal

    assert _sigalrm_untouched()
    d = wrap(madry, "slow", classifier=Hangs(madry.classifier, how))
    t0 = time.perf_counter()
    with pytest.raises(ProbeError) as err:
        probe_defense(d, *images, timeout=1.5)  # the passes before a hang fit in it on a busy machine
    assert time.perf_counter() - t0 < 10
    first, *rest = str(err.value).splitlines()
    assert first.startswith(f"probe {probe!r} on defense 'slow': no answer within its time limit of 1.5 s "
                            "(--probe-timeout)"), first
    assert len(rest) == 1 and re.match(r"  stopped at .*test_probes.py:\d+, in forward: "
                                       + ("(while True:|x = x \\+ 0.0)" if how == "loop" else "time.sleep\\(60\\)"), rest[0]), rest
    # the process is as it was: no handler, no timer left behind; the same model probes fine
    assert _sigalrm_untouched()
    assert probe_defense(madry, *images, timeout=30).gradient == "ok"
    # an outer timer (another time limit, a test timeout) keeps running
    signal.signal(signal.SIGALRM, lambda *a: None)
    try:
        signal.setitimer(signal.ITIMER_REAL, 100.0)
        with pytest.raises(ProbeError):
            probe_defense(wrap(madry, "slow", classifier=Hangs(madry.classifier, how)), *images, timeout=0.2)
        assert 90 < signal.getitimer(signal.ITIMER_REAL)[0] < 100
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def test_the_default_limit_scales_with_one_forward_pass(madry, images, monkeypatch):
    import robust_bench_sc.probes as probes

    # an answer for the first pass, then a hang: the limit is FACTOR × the first pass, at least FLOOR
    monkeypatch.setattr(probes, "PROBE_TIME_FLOOR", 0.2)
    monkeypatch.setattr(probes, "PROBE_TIME_FACTOR", 3.0)
    t0 = time.perf_counter()
    with pytest.raises(ProbeError, match=r"^probe 'randomness' on defense 'slow': no answer within its time limit of "
                                         r"[\d.]+ s \(the default: 3 × one forward pass, at least 0.2 s"):
        probe_defense(wrap(madry, "slow", classifier=Hangs(madry.classifier, "sleep", answers=1)), *images)
    assert time.perf_counter() - t0 < 10


class SlowDown(nn.Module):
    """Answers, after sleeping ``seconds`` on every call."""

    def __init__(self, inner: nn.Module, seconds: float):
        super().__init__()
        self.inner, self.seconds = inner, seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return self.inner(x)


def test_a_probe_past_its_limit_in_another_thread_fails_when_it_returns(madry, images):
    """No signal reaches another thread: the probe fails once its call returns past the limit
    (an exception injected asynchronously left the interpreter broken for later calls)."""
    import threading

    out: dict[str, BaseException] = {}

    def probe():
        try:
            probe_defense(wrap(madry, "slow", classifier=SlowDown(madry.classifier, 0.6)), *images, timeout=0.3)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            out["exc"] = exc

    t = threading.Thread(target=probe)
    t.start()
    t.join(30)
    assert not t.is_alive()
    assert isinstance(out.get("exc"), ProbeError) and "time limit of 0.3 s" in str(out["exc"])
    assert _sigalrm_untouched()  # the signal is not used outside the main thread


def test_probe_timeout_must_be_positive(madry, images):
    with pytest.raises(ValueError, match="probe timeout 0: must be > 0 seconds"):
        probe_defense(madry, *images, timeout=0)
