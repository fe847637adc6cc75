"""Dense vs fast (sparse gather) first transposed convolution of the sparse-coding decoder.

Frontend (T=15) + ResNet-32, batch 64, CPU:
  * forward only (exact defense),
  * forward + input gradient through the ``smooth_top_u`` BPDA stand-in (what attacks do),
  * one training step (joint decoder + classifier, SGD).
Prints median seconds over --reps repetitions and the dense/fast ratio; checks the two agree.

    python benchmarks/bench_decoder.py --threads 1 --reps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--T", type=int, default=15)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from defenses.sparse_coding.frontend import SparseCodingFrontend, make_stand_ins
    from defenses.sparse_coding.train import SparseCodingNet
    from robust_bench_sc.data import load_test
    from robust_bench_sc.defense import bpda_apply
    from robust_bench_sc.models.resnet import ResNet32

    torch.manual_seed(0)
    d = load_test(args.batch)
    x, y = d.x, d.y
    net = SparseCodingNet(SparseCodingFrontend(T=args.T), ResNet32())
    stand = make_stand_ins(net.frontend)["smooth_top_u"]
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)

    def fwd():
        with torch.no_grad():
            net.eval()
            return net(x)

    def fwd_grad():
        net.eval()
        xr = x.clone().requires_grad_(True)
        logits = net.classifier(bpda_apply(xr, net.frontend, stand))
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y), xr)
        return g

    def train_step():
        net.train()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach()

    def timeit(fn):
        fn()  # warm-up
        ts = []
        for _ in range(args.reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    # agreement
    net.frontend.fast = True
    a_out, a_grad = fwd(), fwd_grad()
    net.frontend.fast = False
    b_out, b_grad = fwd(), fwd_grad()
    agree = {"logits_max_abs_diff": float((a_out - b_out).abs().max()),
             "input_grad_max_abs_diff": float((a_grad - b_grad).abs().max()),
             "input_grad_max_abs": float(b_grad.abs().max())}

    results = {"batch": args.batch, "T": args.T, "threads": torch.get_num_threads(), "reps": args.reps, **agree}
    for name, fn in (("forward", fwd), ("forward+input_grad (smooth_top_u)", fwd_grad), ("train_step", train_step)):
        row = {}
        for fast in (False, True, False, True):  # interleaved: fairer under a noisy, shared CPU
            net.frontend.fast = fast
            row.setdefault("fast" if fast else "dense", []).append(timeit(fn))
        dense, fast = min(row["dense"]), min(row["fast"])
        results[name] = {"dense_s": round(dense, 3), "fast_s": round(fast, 3), "dense/fast": round(dense / fast, 2)}
        print(f"{name:36s} dense {dense:7.3f} s   fast {fast:7.3f} s   ratio {dense / fast:5.2f}", flush=True)
    print(json.dumps(agree))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
