"""ℓ∞ PGD throughput: native engine vs torchattacks, foolbox and ART.

Same ResNet-32 (madry_pgd_at), same images, same settings (ε 8/255, step ε/8, random
start, one restart) in one run; reported as image·steps per second. A second part runs
the native engine at Nr restarts on a few images and reports the share of the
n·Nr·Ns image·steps it actually computed thanks to per-sample early stop.

    python benchmarks/bench_pgd.py --n-images 32 --steps 10 --out /tmp/bench_pgd.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--backends", default="native,torchattacks,foolbox,art")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per backend (best is kept)")
    ap.add_argument("--nr", type=int, default=100, help="restarts for the early-stop part (0: skip)")
    ap.add_argument("--nr-images", type=int, default=8)
    ap.add_argument("--nr-steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, required=True, help="JSON output path")
    args = ap.parse_args(argv)

    from robust_bench_sc.attacks.base import AttackContext, get_attack
    from robust_bench_sc.config import validate_threat_model
    from robust_bench_sc.data import load_test
    from robust_bench_sc.plugins import build_defense

    if args.threads:
        torch.set_num_threads(args.threads)
    defense = build_defense("madry_pgd_at")
    split = load_test(max(args.n_images, args.nr_images))
    # correctly classified images only (what the engine attacks)
    with torch.no_grad():
        ok = (defense(split.x).argmax(1) == split.y).nonzero().squeeze(1)
    x, y = split.x[ok], split.y[ok]
    xb, yb = x[: args.n_images], y[: args.n_images]
    ctx = AttackContext(defense=defense, device=torch.device("cpu"), seed=0)

    rows = []
    for backend in [b for b in args.backends.split(",") if b]:
        tm = validate_threat_model({"attack": "pgd", "norm": "linf", "epsilon": "8/255", "steps": args.steps,
                                    "step_size": "epsilon/8", "restarts": 1, "backend": backend}, "bench")
        attack = get_attack(tm)
        best = float("inf")
        for _ in range(args.repeats):
            ctx.seed_everything()
            t0 = time.perf_counter()
            out = attack.run(ctx, xb, yb)
            best = min(best, time.perf_counter() - t0)
        with torch.no_grad():
            acc = float((defense(out.x_adv).argmax(1) == yb).float().mean())
        rows.append({"backend": backend, "images": int(xb.shape[0]), "steps": args.steps, "seconds": best,
                     "image_steps_per_s": xb.shape[0] * args.steps / best, "robust_acc": acc})
    native = next((r for r in rows if r["backend"] == "native"), None)
    for r in rows:
        r["vs_native"] = r["image_steps_per_s"] / native["image_steps_per_s"] if native else None

    early = None
    if args.nr > 0:
        xs, ys = x[: args.nr_images], y[: args.nr_images]
        tm = validate_threat_model({"attack": "pgd", "norm": "linf", "epsilon": "8/255", "steps": args.nr_steps,
                                    "step_size": "epsilon/8", "restarts": args.nr, "backend": "native"}, "bench")
        ctx.seed_everything()
        t0 = time.perf_counter()
        out = get_attack(tm).run(ctx, xs, ys)
        secs = time.perf_counter() - t0
        computed = int(out.info["image_steps"].sum())
        full = xs.shape[0] * args.nr * args.nr_steps
        early = {"images": int(xs.shape[0]), "restarts": args.nr, "steps": args.nr_steps, "seconds": secs,
                 "image_steps_computed": computed, "image_steps_full": full, "share_computed": computed / full,
                 "fooled": int(out.claimed.sum())}

    result = {"benchmark": "linf PGD eps=8/255 step eps/8, madry_pgd_at ResNet-32, CPU",
              "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
              "throughput": rows, "early_stop": early}
    print(f"{'backend':<14}{'images':>7}{'steps':>6}{'seconds':>9}{'img·steps/s':>13}{'vs native':>11}{'robust acc':>12}")
    for r in rows:
        vs = f"{r['vs_native']:.2f}" if r["vs_native"] is not None else "-"
        print(f"{r['backend']:<14}{r['images']:>7}{r['steps']:>6}{r['seconds']:>9.2f}{r['image_steps_per_s']:>13.1f}{vs:>11}{r['robust_acc']:>12.2f}")
    if early:
        print(f"native early stop at Nr={early['restarts']}, Ns={early['steps']}, {early['images']} images: "
              f"{early['image_steps_computed']}/{early['image_steps_full']} image·steps computed "
              f"({100 * early['share_computed']:.1f} %), {early['fooled']} fooled, {early['seconds']:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
