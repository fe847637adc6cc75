"""Moved: ℓ∞ PGD backends are part (a) of benchmarks/bench_engine.py (one command, one run).

This forwards the old options to it, PGD part only:

    python benchmarks/bench_pgd.py --n-images 64 --steps 10 --backends native,torchattacks --threads 1 --repeats 2
    == python benchmarks/bench_engine.py --n-images 64 --steps 10 --backends native,torchattacks --threads 1 --reps 2 --skip b,c
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import main as bench_engine  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=32)
    ap.add_argument("--steps", default="10")
    ap.add_argument("--backends", default="native,torchattacks,foolbox,art")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="JSON output path")
    ap.add_argument("--nr", type=int, default=0, help="only 0 (the old early-stop part is gone)")
    a, rest = ap.parse_known_args()
    if a.nr:
        rest.append(f"--nr {a.nr}")
    if rest:
        ap.error(f"options of the old script no longer exist: {' '.join(rest)} (the early-stop part is gone; "
                 "native rows now report the image·steps computed)")
    argv = ["--n-images", str(a.n_images), "--steps", str(a.steps), "--backends", a.backends,
            "--reps", str(a.repeats), "--skip", "b,c"] + (["--threads", str(a.threads)] if a.threads else []) \
        + (["--json", a.out] if a.out else [])
    bench_engine(argv)
