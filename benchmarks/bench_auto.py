"""Issue 33, engine: PGD-10 on the Madry reference and a random resize + pad wrapper around it
(Xie et al. 2018, written as a naive author ships it, randomised declared or not), with the
probes off (threat models as written: no EOT, no re-check on the undeclared one) and on
(auto: EOT 20, 10 re-check draws, robust accuracy the expectation over them).

    PYTHONPATH=. python benchmarks/bench_auto.py [--n-images 20]

Prints both summaries and the wall time. Measured 2026-12-07 on the 2-core dev machine
(load ≈ 9), first 20 test images, ℓ∞ 8/255, PGD 10 steps of ε/4, one restart:

    defense        probes off   probes on (auto)       job seconds off / on
    madry_pgd_at   45.0 %       45.0 % (no choice)     3.0 / 2.1
    rrp            85.0 %       62.0 % (50 % any-draw) 2.4 / 56.8
    rrp_declared   60.0 %       57.5 % (45 % any-draw) 2.6 / 53.2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

PLUGIN = '''
import torch
import torch.nn.functional as F
from torch import nn

from robust_bench_sc import Capabilities, Defense
from robust_bench_sc.plugins import build_defense


class RandomResizePad(nn.Module):
    def forward(self, x):
        r = int(torch.randint(24, 32, (1,)))
        small = F.interpolate(x, size=(r, r), mode="nearest")
        left, top = (int(v) for v in torch.randint(0, 32 - r + 1, (2,)))
        return F.pad(small, (left, 32 - r - left, top, 32 - r - top))


def undeclared():
    return Defense(name="rrp", classifier=build_defense("madry_pgd_at").classifier, preprocess=RandomResizePad())


def declared():
    return Defense(name="rrp_declared", classifier=build_defense("madry_pgd_at").classifier,
                   preprocess=RandomResizePad(), capabilities=Capabilities(randomised=True))
'''

SUITE = """name: engine_auto
seed: 0
data: {{n_images: {n}, chunk_size: {n}}}
defenses:
  - ref: madry_pgd_at
  - ref: "{plugin}:undeclared"
    name: rrp
  - ref: "{plugin}:declared"
    name: rrp_declared
threat_models:
  - clean
  - attack: pgd
    name: pgd10
    norm: linf
    epsilon: 8/255
    steps: 10
    step_size: epsilon/4
"""


def main() -> None:
    import torch
    from rich.console import Console

    from robust_bench_sc.config import load_suite
    from robust_bench_sc.runner import run_suite

    ap = argparse.ArgumentParser()
    ap.add_argument("--n-images", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        plugin = Path(tmp) / "rrp_defense.py"
        plugin.write_text(PLUGIN)
        (Path(tmp) / "suite.yaml").write_text(SUITE.format(n=args.n_images, plugin=plugin))
        for probes in (False, True):
            t0 = time.perf_counter()
            out = run_suite(load_suite(Path(tmp) / "suite.yaml"), out=Path(tmp) / f"run_{probes}", show_progress=False,
                            probes=probes, console=Console(stderr=True, width=250))
            print(f"probes {'on' if probes else 'off'}: {time.perf_counter() - t0:.1f} s")
            print(out.summary[["defense", "threat_model", "clean_accuracy", "robust_accuracy", "seconds"]].to_string())


if __name__ == "__main__":
    main()
