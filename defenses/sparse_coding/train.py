"""Joint training of the decoder and the ResNet-32 classifier behind the frozen dictionary.

Resumable: a checkpoint (``last.pt``) holds model, optimizer, scheduler, RNG states, the
global step and the position inside the epoch's data order; the data order and the
augmentation of every step are derived from (seed, epoch, step), so a resumed run sees
exactly the batches an uninterrupted run would have seen.

Files in the run folder: ``last.pt`` (full resumable checkpoint), ``best.pt`` / ``latest_weights.pt``
(weights only: a flat state dict of :class:`SparseCodingNet` plus ``T``), ``log.csv`` (one row per
evaluation), ``log.json`` (the same rows plus the config), ``train.out`` (if redirected).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defenses.sparse_coding.frontend import SparseCodingFrontend
from robust_bench_sc.models.resnet import ResNet32, load_state_dict_file


class DeadDecoderError(RuntimeError):
    """The decoder's output stopped depending on the input (e.g. every ReLU is off)."""


class SparseCodingNet(nn.Module):
    """frontend + classifier as one module (the unit that is trained and saved)."""

    def __init__(self, frontend: SparseCodingFrontend, classifier: nn.Module):
        super().__init__()
        self.frontend = frontend
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.frontend(x))


def weights_state(net: SparseCodingNet) -> dict[str, torch.Tensor]:
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    state["T"] = torch.tensor(net.frontend.T)
    return state


def load_weights(net: SparseCodingNet, state: dict[str, torch.Tensor]) -> SparseCodingNet:
    state = dict(state)
    T = state.pop("T", None)
    if T is not None and int(T) != net.frontend.T:
        raise ValueError(f"weights were trained for T={int(T)}, the model has T={net.frontend.T}")
    net.load_state_dict(state)
    return net


@dataclass
class TrainConfig:
    T: int = 15
    epochs: float = 70.0  # may be fractional (a reduced CPU schedule)
    batch_size: int = 64
    peak_lr: float = 0.02  # paper: 0.02 for T >= 5, 0.05 for T = 1, 2
    classifier_lr_scale: float = 1.0  # classifier peak = peak_lr * scale (e.g. < 1 for a warm start)
    warmup_frac: float = 0.5  # one-cycle triangle: linear up over this fraction, then linear down to 0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warm_start: str | None = None  # classifier state dict to start from
    init_from: str | None = None  # full weights (a T{T}.pt / best.pt) to start from, e.g. to continue training
    freeze_classifier: bool = False
    seed: int = 0
    ckpt_every: int = 100  # steps (plus one at every epoch end)
    eval_every: int | None = None  # steps; default = ckpt_every
    n_train: int | None = None  # first N training images (None: all 50,000 minus validation)
    n_val: int = 1000  # held out from the END of the training set, used to pick best.pt
    n_test: int = 1000  # first N test images, reported only
    device: str = "cpu"
    threads: int | None = None
    fast: bool = True
    max_steps: int | None = None  # stop (checkpointed) after this global step; schedule unchanged
    progress: bool = True
    decoder_widths: tuple[int, int] = (300, 100)  # the paper's; smaller only for tests
    units_per_block: int = 5  # ResNet-32; smaller only for tests


# ----------------------------------------------------------------------------- data
def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, per image."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # (n, h)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # (n, w)
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    bidx = torch.arange(n).view(n, 1, 1)
    out = xp.permute(0, 2, 3, 1)[bidx, rows.view(n, h, 1), cols.view(n, 1, w)]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 7_919_113 + step + 1)


# ----------------------------------------------------------------------------- schedule
def one_cycle(step: int, total: int, warmup_frac: float) -> float:
    """Triangular one-cycle factor in [0, 1]: 0 -> 1 over warmup, 1 -> 0 by ``total``."""
    up = max(1, int(round(total * warmup_frac)))
    if step < up:
        return (step + 1) / up
    return max(0.0, (total - step) / max(1, total - up))


def build(cfg: TrainConfig) -> tuple[SparseCodingNet, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, int]:
    torch.manual_seed(cfg.seed)
    frontend = SparseCodingFrontend(T=cfg.T, fast=cfg.fast, widths=tuple(cfg.decoder_widths))
    classifier = ResNet32(units_per_block=cfg.units_per_block)
    if cfg.warm_start:
        state = load_state_dict_file(cfg.warm_start)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        for key in ("mean", "std"):
            state.setdefault(key, classifier.state_dict()[key])
        classifier.load_state_dict(state)
    net = SparseCodingNet(frontend, classifier)
    if cfg.init_from:
        load_weights(net, torch.load(cfg.init_from, map_location="cpu", weights_only=True))
    groups = [{"params": list(frontend.decoder.parameters()), "lr": cfg.peak_lr}]
    if not cfg.freeze_classifier:
        groups.append({"params": list(classifier.parameters()), "lr": cfg.peak_lr * cfg.classifier_lr_scale})
    else:
        for p in classifier.parameters():
            p.requires_grad_(False)
    opt = torch.optim.SGD(groups, lr=cfg.peak_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return net, opt, None, 0  # scheduler built once the data size is known


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 250, device: str = "cpu") -> float:
    was = net.training
    net.eval()
    correct = 0
    for i in range(0, len(y), batch):
        correct += int((net(x[i:i + batch].to(device)).argmax(1).cpu() == y[i:i + batch]).sum())
    net.train(was)
    return correct / max(1, len(y))


def decoder_is_dead(out: torch.Tensor) -> bool:
    """Constant output over the batch (e.g. all ReLUs off): per-pixel std ~ 0 everywhere."""
    return bool(out.detach().float().std(dim=0).max() < 1e-6)


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = True,
          train_data: tuple[torch.Tensor, torch.Tensor] | None = None,
          val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
          test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
          log=print) -> dict:
    """Train (or resume) into ``out_dir``; returns the final log row.

    ``train_data``/``val_data``/``test_data`` default to the CIFAR-10 shards (tests pass tiny tensors).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    last = out / "last.pt"

    if resume and last.is_file():
        ck = torch.load(last, map_location="cpu", weights_only=False)  # our own file: config + RNG states
        saved = TrainConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in ck["config"].items()})
        # the schedule-defining fields must match; runtime fields may change
        for k in ("T", "epochs", "batch_size", "peak_lr", "classifier_lr_scale", "warmup_frac", "seed",
                  "n_train", "n_val", "freeze_classifier", "momentum", "weight_decay"):
            if getattr(saved, k) != getattr(cfg, k):
                log(f"resume: keeping the saved {k}={getattr(saved, k)!r} (asked {getattr(cfg, k)!r})")
        for k in ("device", "threads", "max_steps", "progress", "ckpt_every", "eval_every", "n_test", "fast"):
            setattr(saved, k, getattr(cfg, k))
        cfg = saved
    else:
        ck = None

    if train_data is None or val_data is None:
        from robust_bench_sc.data import load_train
        tr = load_train()
        n_all = len(tr)
        n_val = cfg.n_val
        xv, yv = tr.x[n_all - n_val:], tr.y[n_all - n_val:]
        n_tr = n_all - n_val if cfg.n_train is None else min(cfg.n_train, n_all - n_val)
        xt, yt = tr.x[:n_tr], tr.y[:n_tr]
        train_data = train_data or (xt, yt)
        val_data = val_data or (xv, yv)
    if test_data is None and cfg.n_test:
        from robust_bench_sc.data import load_test
        te = load_test(cfg.n_test)
        test_data = (te.x, te.y)
    xt, yt = train_data

    net, opt, _, _ = build(cfg)
    steps_per_epoch = len(yt) // cfg.batch_size  # drop the last partial batch
    if steps_per_epoch < 1:
        raise ValueError(f"{len(yt)} training images < batch size {cfg.batch_size}")
    total = max(1, int(math.ceil(cfg.epochs * steps_per_epoch)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: one_cycle(s, total, cfg.warmup_frac))
    step, history, best = 0, [], -1.0
    if ck is not None:
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        step, history, best = ck["step"], ck["history"], ck["best_val"]
        _set_rng_state(ck["rng"])
        log(f"resumed from {last} at step {step}/{total} (epoch {step // steps_per_epoch}, "
            f"position {step % steps_per_epoch}/{steps_per_epoch})")
    dev = cfg.device
    net.to(dev).train()
    eval_every = cfg.eval_every or cfg.ckpt_every

    def checkpoint(row=None):
        nonlocal best
        w = weights_state(net)
        if row is not None and row.get("val_acc") is not None and row["val_acc"] > best:
            best = row["val_acc"]
            _atomic_save(w, out / "best.pt")
        _atomic_save(w, out / "latest_weights.pt")
        _atomic_save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                      "step": step, "history": history, "best_val": best, "rng": _rng_state(),
                      "config": asdict(cfg), "steps_per_epoch": steps_per_epoch, "total_steps": total}, last)

    def eval_row(run_loss, run_acc, n_seen, t0):
        row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "lr": opt.param_groups[0]["lr"],
               "train_loss": run_loss / max(1, n_seen), "train_acc": run_acc / max(1, n_seen),
               "val_acc": evaluate(net, *val_data, device=dev) if val_data is not None and len(val_data[1]) else None,
               "test_acc": evaluate(net, *test_data, device=dev) if test_data is not None else None,
               "wall_s": round(time.time() - t0, 1), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        history.append(row)
        with open(out / "log.csv", "w", newline="") as f:
            wri = csv.DictWriter(f, fieldnames=list(row))
            wri.writeheader()
            wri.writerows(history)
        (out / "log.json").write_text(json.dumps({"config": asdict(cfg), "rows": history}, indent=1))
        log(f"step {step}/{total} ep {row['epoch']:.3f} lr {row['lr']:.5f} loss {row['train_loss']:.4f} "
            f"train {row['train_acc']:.3f} val {row['val_acc']} test {row['test_acc']}")
        return row

    t0 = time.time()
    step_start = step
    run_loss = run_acc = 0.0
    n_seen = 0
    bar = None
    if cfg.progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=step, desc=f"train T={cfg.T}", file=sys.stderr, mininterval=5)
        except ImportError:
            bar = None
    stop_at = min(total, cfg.max_steps) if cfg.max_steps else total
    row = None
    while step < stop_at:
        epoch, pos = divmod(step, steps_per_epoch)
        order = epoch_order(len(yt), cfg.seed, epoch)
        sel = order[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
        xb = augment(xt[sel], step_generator(cfg.seed, step)).to(dev)
        yb = yt[sel].to(dev)
        fe_out = net.frontend(xb)
        if step % 20 == 0 and decoder_is_dead(fe_out):
            checkpoint()
            raise DeadDecoderError(
                f"decoder output is constant over the batch at step {step} (all ReLUs off?); "
                f"training stopped. Lower the learning rate (now {opt.param_groups[0]['lr']:.4g}) or restart "
                f"from an earlier checkpoint; the state at the failure is in {last}")
        logits = net.classifier(fe_out)
        loss = F.cross_entropy(logits, yb)
        if not torch.isfinite(loss):
            checkpoint()
            raise FloatingPointError(f"non-finite loss at step {step}; state saved in {last}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        run_loss += float(loss.detach()) * len(yb)
        run_acc += float((logits.argmax(1) == yb).sum())
        n_seen += len(yb)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{opt.param_groups[0]['lr']:.4f}")
        if not cfg.progress and step % 10 == 0:
            log(f"  step {step}/{total} loss {float(loss.detach()):.4f} lr {opt.param_groups[0]['lr']:.5f} "
                f"{(time.time() - t0) / max(1, step - step_start):.2f} s/step")
        end_of_epoch = step % steps_per_epoch == 0
        if step % eval_every == 0 or end_of_epoch or step == stop_at:
            row = eval_row(run_loss, run_acc, n_seen, t0)
            run_loss = run_acc = 0.0
            n_seen = 0
            checkpoint(row)
        elif step % cfg.ckpt_every == 0:
            checkpoint()
    if bar is not None:
        bar.close()
    if step >= total:
        log(f"training finished: {total} steps; best val {best:.4f}; weights in {out / 'best.pt'}")
    return row or (history[-1] if history else {})
