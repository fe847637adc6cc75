"""Training-step time of the sparse-coding T15 model (issue "The paper's defense trained toward the
paper's budget"): fp32 against bf16 autocast, contiguous against channels_last, in one process.

    python benchmarks/bench_train_step.py --threads 1 --reps 5 --json runs/bench_train_step.json

Each variant runs ``--reps`` timed steps (after ``--warmup`` untimed ones) on the same batch of
``--batch-size`` augmented training images; variants are interleaved round by round and the
median per variant is reported, so a neighbour's load hits every variant alike. The optimiser is
the trainer's (SGD momentum 0.9, weight decay 5e-4); each variant steps its own copy of the model.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

VARIANTS = ("fp32", "fp32_channels_last", "bf16", "bf16_channels_last")


def build(weights: str):
    from defenses.sparse_coding.train import TRAINABLE
    from robust_bench_sc.training import TrainConfig, resolve_options

    cfg = resolve_options(TrainConfig(model="sparse_coding", options={"T": 15}, init_from=weights))
    return TRAINABLE, cfg, TRAINABLE.build(cfg)


def one_step(trainable, net, opt, x, y, variant: str) -> float:
    if variant.endswith("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    if variant.startswith("bf16"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = trainable.logits(net, x, 1)
            loss = F.cross_entropy(logits.float(), y)
    else:
        logits = trainable.logits(net, x, 1)
        loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--weights", default="defenses/sparse_coding/weights/T15.pt")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from robust_bench_sc.data import load_train
    from robust_bench_sc.training import augment, step_generator

    train = load_train()
    x = augment(train.x[: args.batch_size], step_generator(0, 0))
    y = train.y[: args.batch_size]
    trainable, cfg, base = build(args.weights)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    nets, opts = {}, {}
    for v in variants:
        net = copy.deepcopy(base).train()
        if v.endswith("channels_last"):
            net = net.to(memory_format=torch.channels_last)
        nets[v] = net
        opts[v] = torch.optim.SGD(trainable.param_groups(net, cfg), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.warmup + args.reps):
        for v in variants:
            dt = one_step(trainable, nets[v], opts[v], x, y, v)
            if r >= args.warmup:
                times[v].append(dt)
    med = {v: statistics.median(ts) for v, ts in times.items()}
    ref = med.get("fp32", next(iter(med.values())))
    print(f"torch {torch.__version__}, threads {args.threads}, batch {args.batch_size}, "
          f"{args.reps} timed steps per variant (median), interleaved")
    for v in variants:
        print(f"{v:22s} {med[v]:7.3f} s/step   fp32 / this = {ref / med[v]:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"threads": args.threads, "batch_size": args.batch_size,
                                               "reps": args.reps, "median_s": med, "all_s": times}, indent=1))


if __name__ == "__main__":
    main()
