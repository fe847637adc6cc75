"""EOT stopping rule of the AutoAttack backend on randomised defenses: robust accuracy of
APGD-CE / APGD-DLR with pyautoattack's own answers (the latest iterate whose EOT-mean logits
misclassify) against the project's rule (an iterate counts only when every one of its EOT
draws is fooled; :class:`robust_bench_sc.attacks.autoattack.AllDrawsFooled`), and the native
PGD (same rule) for reference, on the randomised archetypes of defenses/archetypes/.

Each answer is re-checked on ``--recheck`` fresh draws (the engine's rule): "worst case" counts
an image robust only if every draw classifies it correctly, "expectation" is the mean share of
correct draws (``robust_frac``). docs/audit.md quotes the numbers.

    python benchmarks/bench_eot_rule.py --n-images 20 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARCHETYPES = ("random_resize_pad", "random_resize_pad_undeclared", "gaussian_noise")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archetypes", nargs="+", default=list(ARCHETYPES))
    ap.add_argument("--n-images", type=int, default=20)
    ap.add_argument("--iterations", type=int, default=20, help="APGD iterations / PGD steps (the audit's quick budget)")
    ap.add_argument("--eot", type=int, default=5)
    ap.add_argument("--recheck", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from dataclasses import replace

    import torch

    from robust_bench_sc.attacks.autoattack import AutoAttackRunner
    from robust_bench_sc.attacks.base import AttackContext
    from robust_bench_sc.config import validate_threat_model
    from robust_bench_sc.data import load_test
    from robust_bench_sc.evaluate import evaluate_threat, predict
    from robust_bench_sc.plugins import build_defense

    torch.set_num_threads(args.threads)
    split = load_test(args.n_images)
    eps = 8 / 255
    apgd = {w: {"attack": "autoattack", "name": w, "norm": "linf", "epsilon": eps, "version": "custom",
                "attacks_to_run": [w], "apgd_iterations": args.iterations, "apgd_restarts": 1, "eot": args.eot,
                "recheck": args.recheck} for w in ("apgd-ce", "apgd-dlr")}
    pgd = {"attack": "pgd", "name": "pgd-ce", "norm": "linf", "epsilon": eps, "steps": args.iterations,
           "restarts": 1, "step_size": "epsilon/4", "loss": "ce", "eot": args.eot, "recheck": args.recheck}
    print(f"{args.n_images} images, ε 8/255, {args.iterations} iterations, EOT {args.eot}, re-check {args.recheck} "
          f"draws, {args.threads} thread(s)")
    print("| archetype | attack | rule | worst case % | expectation % | seconds |")
    print("|---|---|---|---|---|---|")
    for name in args.archetypes:
        d = build_defense(f"defenses.archetypes:{name}")
        d.capabilities = replace(d.capabilities, randomised=True)  # as the probes treat the undeclared one
        torch.manual_seed(0)
        clean = predict(d, split.x, 100, torch.device("cpu"))
        cases = [("apgd-ce", apgd["apgd-ce"], False), ("apgd-ce", apgd["apgd-ce"], True),
                 ("apgd-dlr", apgd["apgd-dlr"], False), ("apgd-dlr", apgd["apgd-dlr"], True),
                 ("pgd-ce (native)", pgd, True)]
        for label, spec, rule in cases:
            tm = validate_threat_model(dict(spec), "bench", default_name=spec["name"])
            AutoAttackRunner.all_draws_rule = rule
            ctx = AttackContext(d, torch.device("cpu"), seed=0)
            t0 = time.perf_counter()
            recs = evaluate_threat(d, tm, split.x, split.y, split.idx, ctx, clean)
            secs = time.perf_counter() - t0
            worst = 100.0 * sum(bool(r["robust"]) for r in recs) / len(recs)
            expect = 100.0 * sum(float(r.get("robust_frac", r["robust"])) for r in recs) / len(recs)
            which = "all draws fooled" if rule else "pyautoattack's own (EOT-mean logits)"
            print(f"| {name} | {label} | {which} | {worst:.1f} | {expect:.1f} | {secs:.0f} |", flush=True)
    AutoAttackRunner.all_draws_rule = True


if __name__ == "__main__":
    main()
