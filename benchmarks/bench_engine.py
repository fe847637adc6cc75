"""Engine speed in one run on the same images: PGD backends, the T15 frontend, compile / channels_last.

(a) ℓ∞ PGD on madry_pgd_at (ε 8/255, step ε/8, random start, one restart) at each Ns of
    ``--steps`` on the first N test images passed whole, as a user passes them: wall time to
    the answer and robust accuracy (clean-correct and still correct at the returned point,
    which must lie in the ε-ball) for the native engine (compacting: an image leaves the
    batch at its first adversarial iterate), the native engine without compaction (every
    image to the last step; same answers), torchattacks, foolbox and ART through
    robust_bench_sc.attacks.toolkits (every toolkit parameter explicit), with the
    image·steps each native variant computed and each backend's time as a multiple of the
    native one.
(b) sparse_coding_T15 exact forward and BPDA ``smooth_top_u`` forward + backward as
    multiples of the ResNet-32 forward / step (benchmarks/bench_decoder.py ``measure``).
(c) the ResNet-32 step (forward + input gradient, the unit of a PGD step) eager, under
    channels_last, under ``torch.compile`` and both, with the gradient's agreement.

Times are the minimum over interleaved repetitions (on a shared CPU, a ratio within one
run is what can be trusted).

    python benchmarks/bench_engine.py --threads 1                 # N 256, Ns 10 and 40, 3 reps
    python benchmarks/bench_engine.py --threads 1 --quick         # N 64, 1 rep, (b)/(c) on 32 images
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder import _timed, measure  # noqa: E402  (H1's frontend benchmark, reused)

EPS = 8 / 255
BACKENDS = ("native", "native_uncompacted", "torchattacks", "foolbox", "art")


def _threat(backend: str, steps: int):
    from robust_bench_sc.config import validate_threat_model

    return validate_threat_model({"attack": "pgd", "norm": "linf", "epsilon": "8/255", "steps": steps,
                                  "step_size": "epsilon/8", "random_start": True, "restarts": 1, "loss": "ce",
                                  "backend": "native" if backend.startswith("native") else backend}, "bench_engine")


def _attack(backend: str, steps: int):
    from robust_bench_sc.attacks.base import get_attack
    from robust_bench_sc.attacks.pgd import NativePGD

    t = _threat(backend, steps)
    return NativePGD(t, compact=False) if backend == "native_uncompacted" else get_attack(t)


def pgd_backends(defense, x, y, steps_list, backends, reps, log=print) -> list[dict]:
    """(a): one row per (Ns, backend); every backend gets all of ``x`` in one call."""
    from robust_bench_sc.attacks.base import AttackContext

    ctx = AttackContext(defense=defense, device=torch.device("cpu"), seed=0)
    with torch.no_grad():
        clean_ok = defense(x).argmax(1) == y
    rows = []
    for steps in steps_list:
        attacks = {b: _attack(b, steps) for b in backends}
        for b in backends:  # warm-up (lazy imports, first-call set-up), not timed
            _attack(b, 1).run(ctx, x[:2], y[:2])
        best = {b: float("inf") for b in backends}
        outs = {}
        for _ in range(reps):  # interleaved: each repetition runs every backend once
            for b, atk in attacks.items():
                ctx.seed_everything()
                t0 = time.perf_counter()
                out = atk.run(ctx, x, y)
                best[b] = min(best[b], time.perf_counter() - t0)
                outs[b] = out
        for b in backends:
            out = outs[b]
            within = (out.x_adv - x).flatten(1).abs().max(1).values <= EPS * (1 + 1e-4) + 1e-5
            in_box = (out.x_adv.min() >= -1e-5) and (out.x_adv.max() <= 1 + 1e-5)
            with torch.no_grad():
                adv_ok = defense(torch.where(within.view(-1, 1, 1, 1), out.x_adv, x)).argmax(1) == y
            row = {"steps": steps, "backend": b, "images": int(x.shape[0]), "seconds": round(best[b], 3),
                   "robust_accuracy": round(100.0 * float((clean_ok & adv_ok).float().mean()), 2),
                   "clean_accuracy": round(100.0 * float(clean_ok.float().mean()), 2),
                   "outside_budget": int((~within).sum()), "in_box": bool(in_box)}
            if b.startswith("native"):
                row["image_steps"] = int(out.info["image_steps"].sum())
            rows.append(row)
        nat = next(r for r in rows if r["steps"] == steps and r["backend"] == "native")
        for r in rows:
            if r["steps"] == steps:
                r["seconds_over_native"] = round(r["seconds"] / nat["seconds"], 2)
                r["robust_minus_native"] = round(r["robust_accuracy"] - nat["robust_accuracy"], 2)
        full = x.shape[0] * steps
        log(f"(a) ℓ∞ PGD Ns {steps}, Nr 1, first {x.shape[0]} test images in one call "
            f"(clean accuracy {nat['clean_accuracy']:.2f} %; n·Ns = {full} image·steps)")
        log(f"    {'backend':<20}{'seconds':>9}{'× native':>10}{'robust %':>10}{'Δ vs native':>13}{'image·steps':>13}")
        for r in (r for r in rows if r["steps"] == steps):
            log(f"    {r['backend']:<20}{r['seconds']:>9.2f}{r['seconds_over_native']:>10.2f}{r['robust_accuracy']:>10.2f}"
                f"{r['robust_minus_native']:>+13.2f}{r.get('image_steps', ''):>13}"
                + (f"   {r['outside_budget']} outside ε!" if r["outside_budget"] or not r["in_box"] else ""))
    return rows


def resnet_variants(classifier, x, y, reps, compile_: bool = True, log=print) -> dict:
    """(c): the ResNet-32 step (forward + input gradient) eager / channels_last / compile."""
    import copy

    def step_of(model, memory_format=torch.contiguous_format):
        xx = x.contiguous(memory_format=memory_format)

        def step():
            xr = xx.clone(memory_format=memory_format).requires_grad_(True)
            return torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)[0]
        return step

    cl = copy.deepcopy(classifier).to(memory_format=torch.channels_last)
    fns = {"eager": step_of(classifier), "channels_last": step_of(cl, torch.channels_last)}
    out: dict = {}
    if compile_:
        t0 = time.perf_counter()
        try:
            fns["compile"] = step_of(torch.compile(classifier))
            fns["compile+channels_last"] = step_of(torch.compile(cl), torch.channels_last)
            fns["compile"](), fns["compile+channels_last"]()
            out["compile_seconds"] = round(time.perf_counter() - t0, 1)
        except Exception as e:  # noqa: BLE001 - report a compiler failure, do not hide it
            out["compile_error"] = f"{type(e).__name__}: {e}"[:300]
            fns.pop("compile", None), fns.pop("compile+channels_last", None)
    ref = fns["eager"]()
    for k, fn in fns.items():
        g = fn()
        out[f"{k}_max_abs_diff"] = float((g - ref).abs().max())
        out[f"{k}_sign_agreement"] = float((g.sign() == ref.sign()).float().mean())
    t = _timed(fns, reps)
    out["seconds"] = {k: round(v, 4) for k, v in t.items()}
    log(f"(c) ResNet-32 step (forward + input gradient), {x.shape[0]} images"
        + (f", compile took {out['compile_seconds']} s" if "compile_seconds" in out else "")
        + (f", compile failed: {out['compile_error']}" if "compile_error" in out else ""))
    for k in t:
        log(f"    {k:<24}{t[k]:8.3f} s   eager/this {t['eager'] / t[k]:5.2f}   "
            f"gradient sign agreement {out[f'{k}_sign_agreement']:.5f}")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=None, help="first N test images for (a) (default 256; --quick 64)")
    ap.add_argument("--steps", default="10,40", help="Ns values for (a), comma separated (default 10,40)")
    ap.add_argument("--backends", default=",".join(BACKENDS), help=f"subset of {','.join(BACKENDS)}")
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions, min kept (default 3; --quick 1)")
    ap.add_argument("--n-frontend", type=int, default=None,
                    help="first N test images for (b) and (c) (default min(N, 100); --quick 32)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile in (c)")
    ap.add_argument("--skip", default="", help="parts to skip, e.g. b,c")
    ap.add_argument("--quick", action="store_true", help="N 64, 1 repetition, (b)/(c) on 32 images")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    n = args.n_images or (64 if args.quick else 256)
    reps = args.reps or (1 if args.quick else 3)
    nf = args.n_frontend or (32 if args.quick else min(n, 100))
    try:
        steps_list = [int(s) for s in args.steps.split(",") if s]
    except ValueError:
        ap.error(f"--steps: comma-separated integers, got {args.steps!r}")
    backends = [b for b in args.backends.split(",") if b]
    bad = [b for b in backends if b not in BACKENDS]
    if bad or "native" not in backends:
        ap.error(f"--backends: {', '.join(bad) or 'native missing'}; allowed: {', '.join(BACKENDS)} (native required)")
    if n < 1 or nf < 1 or reps < 1 or not steps_list or min(steps_list) < 1:
        ap.error("--n-images, --n-frontend, --reps and every --steps value must be >= 1")
    skip = {s for s in args.skip.split(",") if s}
    if skip - {"a", "b", "c"}:
        ap.error(f"--skip: parts a, b, c; got {args.skip!r}")
    if args.threads:
        torch.set_num_threads(args.threads)

    from robust_bench_sc.data import load_test
    from robust_bench_sc.plugins import build_defense

    defense = build_defense("madry_pgd_at")
    split = load_test(max(n, nf))
    res = {"machine": f"{platform.machine()} {platform.processor() or ''} {platform.node()}".strip(),
           "cpu_count": __import__("os").cpu_count(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "reps": reps, "n_images": n, "n_frontend": nf,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "argv": sys.argv[1:] if argv is None else argv}
    print(f"bench_engine: torch {torch.__version__}, {torch.get_num_threads()} thread(s), min of {reps} "
          f"interleaved repetition(s), {res['date']}")
    t0 = time.perf_counter()
    if "a" not in skip:
        res["pgd"] = pgd_backends(defense, split.x[:n], split.y[:n], steps_list, backends, reps)
    if "b" not in skip:
        print(f"(b) frontend vs ResNet-32 (benchmarks/bench_decoder.py), first {nf} test images")
        res["frontend"] = measure(nf, reps, T=15, log=lambda s: print("    " + s))
    if "c" not in skip:
        res["resnet_variants"] = resnet_variants(defense.classifier, split.x[:nf], split.y[:nf], reps,
                                                 compile_=not args.no_compile)
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"total {res['wall_seconds']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
