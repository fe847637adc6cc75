"""One resumable trainer for every model the project trains (``scbench train --model NAME``).

A model kind is a :class:`Trainable` registered in :data:`TRAINABLES`: the core registers
``resnet32`` (a plain ResNet-32, the ``natural`` baseline); plug-ins add theirs through the
entry-point group ``robust_bench_sc.trainables`` (the sparse-coding plug-in adds
``sparse_coding``), so this module never imports a plug-in.

Resumable: ``last.pt`` holds model, optimizer, scheduler, RNG states (as tensors, so it loads
with ``weights_only=True``), the global step and the position inside the epoch's data order.
The data order and the augmentation of every step are functions of (seed, epoch, step), so a
resumed run sees exactly the batches an uninterrupted run would have seen.

Files in the run folder: ``last.pt`` (full resumable checkpoint), ``best.pt`` /
``latest_weights.pt`` (weights only, the format the model's plug-in loads), ``log.csv`` (one
row per evaluation), ``log.json`` (the same rows plus the config), ``train.out`` (if redirected).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robust_bench_sc.registry import Registry, did_you_mean


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must act on (the message says which)."""


class DeadModelError(TrainingError):
    """The model's output stopped depending on the input (e.g. every ReLU is off)."""


class TrainableOptions:
    """Base of a trainable's own options: subclass it as a dataclass whose fields (declared
    with :func:`option`) are the model's settings, with defaults and help. ``scbench train``
    sets them with ``-o NAME=VALUE``; they are saved flat beside the trainer's fields in
    ``last.pt`` and ``log.json``, so an option may not share a name with a field of
    :class:`TrainConfig`. Override :meth:`check` to refuse bad values (one line)."""

    def check(self) -> None:
        """Raise ValueError (one line, e.g. ``T=0: must be ...``) for a bad value."""


RESUME_RULES = ("same", "any", "start")


def option(default: Any, help: str, resume: str = "same") -> Any:
    """A field of a :class:`TrainableOptions` dataclass. ``resume``: ``same`` (part of the
    schedule or the model: a resumed run must ask for the same value), ``any`` (does not
    change the numbers: a resumed run may change it) or ``start`` (only read when a run
    starts: a resumed run keeps the saved value)."""
    if resume not in RESUME_RULES:
        raise ValueError(f"option resume={resume!r}; allowed: {', '.join(RESUME_RULES)}")
    if isinstance(default, (list, dict, set)):
        raise TypeError("an option's default must be immutable (a tuple, not a list)")
    return field(default=default, metadata={"help": help, "resume": resume})


@dataclass
class TrainConfig:
    """The trainer's settings; ``options`` are the model's own (its :class:`TrainableOptions`
    instance; a dict or None is turned into one by :func:`resolve_options`)."""

    model: str  # a name in TRAINABLES: resnet32 (core), sparse_coding (plug-in), ...
    options: Any = None  # the trainable's TrainableOptions (dict / None: filled in by resolve_options)
    epochs: float = 70.0  # may be fractional (a reduced CPU schedule)
    batch_size: int = 64
    peak_lr: float = 0.02  # paper: 0.02 for T >= 5, 0.05 for T = 1, 2 and for the natural ResNet-32
    warmup_frac: float = 0.5  # one-cycle triangle: linear up over this fraction, then linear down to 0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    init_from: str | None = None  # full weights (a T{T}.pt / best.pt) to start a new run from
    seed: int = 0
    ckpt_every: int = 100  # steps (plus one at every epoch end)
    eval_every: int | None = None  # steps; default = ckpt_every
    n_train: int | None = None  # first N training images (None: all 50,000 minus validation)
    n_val: int = 1000  # held out from the END of the training set, used to pick best.pt
    n_test: int = 1000  # first N test images, reported only
    device: str = "cpu"
    threads: int | None = None
    max_steps: int | None = None  # stop (checkpointed) after this global step; schedule unchanged
    progress: bool = True

    @property
    def label(self) -> str:
        """How progress lines name the run (the trainable's ``label``, else the model name)."""
        trainable = TRAINABLES.get(self.model)
        labeller = getattr(trainable, "label", None)
        return labeller(self.options) if callable(labeller) and isinstance(self.options, TrainableOptions) else self.model


# Trainer fields that define the schedule: a resumed run must have the same ones (with the
# options declared resume="same").
SCHEDULE_FIELDS = ("model", "epochs", "batch_size", "peak_lr", "warmup_frac", "seed", "n_train", "n_val", "momentum",
                   "weight_decay")
# Trainer fields a resumed run may change (they do not change the numbers); with the options declared resume="any".
RUNTIME_FIELDS = ("device", "threads", "max_steps", "progress", "ckpt_every", "eval_every", "n_test")
# init_from (like options declared resume="start") is read when a run starts; a resumed run keeps the saved one.
CORE_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name != "options")
# The model of checkpoints and log.json files written before --model existed (all sparse-coding runs).
LEGACY_MODEL = "sparse_coding"


@runtime_checkable
class Trainable(Protocol):
    """What the trainer needs from a model kind. ``options`` is its :class:`TrainableOptions`
    dataclass; the methods read ``cfg.options`` (an instance of it)."""

    options: type

    def build(self, cfg: TrainConfig) -> nn.Module:
        """The model to train, initialised (warm start / init_from applied)."""

    def param_groups(self, net: nn.Module, cfg: TrainConfig) -> list[dict]:
        """Optimizer parameter groups, each with its peak ``lr``."""

    def logits(self, net: nn.Module, x: torch.Tensor, step: int) -> torch.Tensor:
        """Training forward pass; may raise :class:`DeadModelError` (checked every few steps)."""

    def weights_state(self, net: nn.Module, cfg: TrainConfig) -> dict[str, torch.Tensor]:
        """The weights-only file written as best.pt / latest_weights.pt."""


def _options_class_ok(trainable: Any) -> bool:
    opts = getattr(trainable, "options", None)
    return (isinstance(trainable, Trainable) and isinstance(opts, type) and issubclass(opts, TrainableOptions)
            and is_dataclass(opts) and not {f.name for f in fields(opts)} & {f.name for f in fields(TrainConfig)})


TRAINABLES: Registry[Trainable] = Registry(
    "trainable model", "robust_bench_sc.trainables", accepts=_options_class_ok,
    expected="a robust_bench_sc.training.Trainable (build, param_groups, logits, weights_state, and options: a "
             "TrainableOptions dataclass whose names are not the trainer's own)")


def option_fields(trainable: Trainable) -> dict[str, Any]:
    """name → dataclass field of the trainable's options."""
    return {f.name: f for f in fields(trainable.options)}


def option_names(trainable: Trainable) -> str:
    return ", ".join(option_fields(trainable)) or "none"


def _from_json(value: Any) -> Any:
    """A value as read back from JSON / a checkpoint, as it was saved (lists → tuples)."""
    return tuple(value) if isinstance(value, list) else value


def resolve_options(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``options`` an instance of its trainable's options class (a dict is checked
    against the declared names: one line listing them), checked by the options' ``check``."""
    trainable = TRAINABLES.get(cfg.model)
    opts = cfg.options
    if opts is None or isinstance(opts, dict):
        given = dict(opts or {})
        unknown = sorted(set(given) - set(option_fields(trainable)))
        if unknown:
            raise ValueError(f"model {cfg.model}: unknown option(s) {', '.join(unknown)}"
                             f"{did_you_mean(unknown[0], option_fields(trainable))}; "
                             f"its options: {option_names(trainable)}")
        opts = trainable.options(**{k: _from_json(v) for k, v in given.items()})
    elif not isinstance(opts, trainable.options):
        raise ValueError(f"model {cfg.model}: options are a {type(opts).__name__}, expected "
                         f"{trainable.options.__name__} (or a dict of its fields)")
    opts.check()
    return replace(cfg, options=opts)


def parse_option(trainable: Trainable, model: str, text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` (``-o T=15``) → (name, value in the option's type); one-line errors."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    known = option_fields(trainable)
    if not sep or not name:
        raise ValueError(f"-o {text!r}: expected NAME=VALUE; options of model {model}: {option_names(trainable)}")
    if name not in known:
        raise ValueError(f"-o {name}: not an option of model {model}{did_you_mean(name, known)}; "
                         f"its options: {option_names(trainable)}")
    default = known[name].default
    raw = raw.strip()
    try:
        if raw.lower() in ("none", "null") and (default is None or "None" in str(known[name].type)):
            return name, None
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("expected true or false")
            return name, raw.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return name, int(raw)
        if isinstance(default, float):
            return name, float(raw)
        if isinstance(default, tuple):
            return name, tuple(type(default[0])(v) for v in raw.split(",")) if default else tuple(raw.split(","))
        return name, raw
    except ValueError as exc:
        raise ValueError(f"-o {name}={raw}: {exc} (default {default!r})") from None


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as saved in last.pt and log.json: the trainer's fields and the model's options,
    flat (the layout every run folder has had, so old files read as new ones)."""
    out = {k: getattr(cfg, k) for k in CORE_FIELDS}
    if isinstance(cfg.options, TrainableOptions):
        out.update(asdict(cfg.options))  # type: ignore[call-overload]  # a dataclass (checked at registration)
    elif cfg.options is not None:
        out.update(dict(cfg.options))
    return out


def output_is_dead(out: torch.Tensor) -> bool:
    """Constant output over the batch (e.g. all ReLUs off): per-element std ~ 0 everywhere."""
    return bool(out.detach().float().std(dim=0).max() < 1e-6)


@dataclass
class ResNet32Options(TrainableOptions):
    units_per_block: int = option(5, "residual units per block (5: ResNet-32; smaller only for tests)")

    def check(self) -> None:
        if self.units_per_block < 1:
            raise ValueError(f"units_per_block={self.units_per_block}: must be a whole number >= 1")


class ResNet32Trainable:
    """A plain ResNet-32 (:mod:`robust_bench_sc.models.resnet`), natural training.

    Trained in channels_last memory format: 2.5x faster per step on this project's CPU
    (0.85 s vs 2.10 s per batch of 128, one thread, the other core busy, same process). The
    saved weights are contiguous, so the files are the ordinary ResNet-32 state dict.
    """

    options = ResNet32Options

    def build(self, cfg: TrainConfig) -> nn.Module:
        from robust_bench_sc.models.resnet import ResNet32, load_state_dict_file

        torch.manual_seed(cfg.seed)
        net = ResNet32(units_per_block=cfg.options.units_per_block)
        if cfg.init_from:
            state = {k.removeprefix("module."): v for k, v in load_state_dict_file(cfg.init_from).items()}
            for key in ("mean", "std"):
                state.setdefault(key, net.state_dict()[key])
            missing, unexpected = net.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(f"--init-from {cfg.init_from}: not a ResNet-32 state dict "
                                 f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        # torch's stubs omit Module.to(memory_format=...), which nn.Module.to accepts at run time
        return net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def param_groups(self, net: nn.Module, cfg: TrainConfig) -> list[dict]:
        return [{"params": list(net.parameters()), "lr": cfg.peak_lr}]

    def logits(self, net: nn.Module, x: torch.Tensor, step: int) -> torch.Tensor:
        return net(x.contiguous(memory_format=torch.channels_last))

    def weights_state(self, net: nn.Module, cfg: TrainConfig) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}


TRAINABLES.register("resnet32", ResNet32Trainable())


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


# ----------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict:
    """RNG states as tensors and plain Python values, so ``last.pt`` loads with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": random.getstate()}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(s["python"])


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """A resumable checkpoint, loaded with ``weights_only=True`` (a crafted file cannot run code)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot resume from {path}: not a checkpoint of this trainer, or written by an "
                         f"older version that stored RNG states as numpy objects ({type(exc).__name__}); "
                         f"start a new --out (or --no-resume)") from None
    if not isinstance(ck, dict) or not {"model", "optimizer", "scheduler", "step", "config", "rng"} <= set(ck):
        raise ValueError(f"cannot resume from {path}: it is not a checkpoint of `scbench train`")
    return ck


def _resume_rule(f: Any) -> str:
    return f.metadata.get("resume", "same")


def config_from_saved(flat: dict[str, Any]) -> TrainConfig:
    """A config as saved in ``last.pt`` or ``log.json`` (flat: the trainer's fields and the model's
    options, as every version wrote it) → a :class:`TrainConfig`. Files from before ``--model``
    are sparse-coding runs; keys the model does not declare (old files hold every model's
    fields, e.g. ``T`` of a resnet32 run) are ignored."""
    raw = {k: _from_json(v) for k, v in flat.items() if k in CORE_FIELDS}
    raw.setdefault("model", LEGACY_MODEL)
    trainable = TRAINABLES.get(raw["model"])
    opts = {k: _from_json(v) for k, v in flat.items() if k in option_fields(trainable)}
    return TrainConfig(**raw, options=trainable.options(**opts))


def saved_config(ck: dict, path: Path, asked: TrainConfig) -> TrainConfig:
    """The config stored in a checkpoint; refuses a resume folder of other settings (names the
    file): the trainer's schedule fields and the options declared ``resume="same"`` must match."""
    asked = resolve_options(asked)
    flat = dict(ck["config"])
    flat.setdefault("model", LEGACY_MODEL)
    diff = [f"{k}={_from_json(flat[k])!r} (asked {getattr(asked, k)!r})"
            for k in SCHEDULE_FIELDS if k in flat and _from_json(flat[k]) != getattr(asked, k)]
    if flat["model"] == asked.model:
        saved = config_from_saved(flat)
        opt_fields = option_fields(TRAINABLES.get(asked.model))
        diff += [f"{k}={getattr(saved.options, k)!r} (asked {getattr(asked.options, k)!r})"
                 for k, f in opt_fields.items()
                 if _resume_rule(f) == "same" and getattr(saved.options, k) != getattr(asked.options, k)]
    if diff:
        raise ValueError(f"{path} belongs to a run with other settings: {', '.join(diff)}; "
                         f"resume with the same settings, or choose another --out")
    for k in RUNTIME_FIELDS:
        setattr(saved, k, getattr(asked, k))
    for k, f in opt_fields.items():
        if _resume_rule(f) == "any":
            setattr(saved.options, k, getattr(asked.options, k))
    return saved


@torch.no_grad()
def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 250, device: str = "cpu") -> float:
    """Accuracy of ``net`` (in eval mode, restored afterwards) on ``x``, ``y`` (CPU tensors)."""
    from robust_bench_sc.predictions import predicted

    was = net.training
    net.eval()
    correct = int((predicted(net, x, batch, torch.device(device)) == y).sum())
    net.train(was)
    return correct / max(1, len(y))


Split = tuple[torch.Tensor, torch.Tensor]  # a data split: images, labels


def _default_data(cfg: TrainConfig) -> tuple[Split, Split, Split | None]:
    from robust_bench_sc.data import load_test, load_train

    tr = load_train()
    n_all = len(tr)
    if not 0 <= cfg.n_val < n_all:
        raise ValueError(f"--n-val must be in 0..{n_all - 1}, got {cfg.n_val}")
    xv, yv = tr.x[n_all - cfg.n_val:], tr.y[n_all - cfg.n_val:]
    n_tr = n_all - cfg.n_val if cfg.n_train is None else min(cfg.n_train, n_all - cfg.n_val)
    test = load_test(cfg.n_test) if cfg.n_test else None
    return (tr.x[:n_tr], tr.y[:n_tr]), (xv, yv), ((test.x, test.y) if test is not None else None)


# ----------------------------------------------------------------------------- the loop
PROGRESS_LINE_SECONDS = 60.0


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_line(label: str, step: int, total: int, step_start: int, elapsed: float, loss: float,
                  lr: float) -> str:
    """One line of training progress for a log file: step, %, speed and time left."""
    done = max(1, step - step_start)
    per_step = elapsed / done
    left = per_step * (total - step)
    return (f"train {label}: step {step}/{total} ({100.0 * step / total:.1f} %), loss {loss:.3f}, lr {lr:.4g}, "
            f"{per_step:.2f} s/step, {left / 60:.0f} min left")


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = True,
          train_data: tuple[torch.Tensor, torch.Tensor] | None = None,
          val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
          test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
          log: Callable[[str], None] = print) -> dict:
    """Train (or resume) into ``out_dir``; returns the final log row.

    ``train_data``/``val_data``/``test_data`` default to the CIFAR-10 shards (tests pass tiny tensors).
    """
    trainable: Trainable = TRAINABLES.get(cfg.model)
    cfg = resolve_options(cfg)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise ValueError(f"--out {out} is not writable")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    last = out / "last.pt"

    ck = None
    if resume and last.is_file():
        ck = load_checkpoint(last)
        cfg = saved_config(ck, last, cfg)

    if train_data is None or val_data is None:
        d_train, d_val, d_test = _default_data(cfg)
        train_data = train_data or d_train
        val_data = val_data or d_val
        if test_data is None:
            test_data = d_test
    xt, yt = train_data

    net = trainable.build(cfg)
    opt = torch.optim.SGD(trainable.param_groups(net, cfg), lr=cfg.peak_lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
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
        w = trainable.weights_state(net, cfg)
        if row is not None and row.get("val_acc") is not None and row["val_acc"] > best:
            best = row["val_acc"]
            _atomic_save(w, out / "best.pt")
        _atomic_save(w, out / "latest_weights.pt")
        _atomic_save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                      "step": step, "history": history, "best_val": best, "rng": _rng_state(),
                      "config": config_dict(cfg), "steps_per_epoch": steps_per_epoch, "total_steps": total}, last)

    def eval_row(run_loss, run_acc, n_seen, t0):
        row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "lr": opt.param_groups[0]["lr"],
               "train_loss": run_loss / max(1, n_seen), "train_acc": run_acc / max(1, n_seen),
               "val_acc": evaluate(net, *val_data, device=dev) if val_data is not None and len(val_data[1]) else None,
               "test_acc": evaluate(net, *test_data, device=dev) if test_data is not None else None,
               "wall_s": round(time.time() - t0, 1), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        history.append(row)
        tmp = out / "log.csv.tmp"
        with open(tmp, "w", newline="") as f:
            wri = csv.DictWriter(f, fieldnames=list(row))
            wri.writeheader()
            wri.writerows(history)
        os.replace(tmp, out / "log.csv")
        tmp = out / "log.json.tmp"
        tmp.write_text(json.dumps({"config": config_dict(cfg), "rows": history}, indent=1))
        os.replace(tmp, out / "log.json")
        log(f"step {step}/{total} ep {row['epoch']:.3f} lr {row['lr']:.5f} loss {row['train_loss']:.4f} "
            f"train {row['train_acc']:.3f} val {row['val_acc']} test {row['test_acc']}")
        return row

    t0 = time.time()
    step_start = step
    run_loss = run_acc = 0.0
    n_seen = 0
    bar = None
    # a terminal gets a progress bar; a log file (nohup, CI) one plain line a minute instead of
    # a carriage-return bar that grows it by megabytes
    line_every = None if _is_terminal(sys.stderr) else PROGRESS_LINE_SECONDS
    last_line = time.time()
    if cfg.progress and line_every is None:
        try:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=step, desc=f"train {cfg.label}", file=sys.stderr, mininterval=5)
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
        try:
            logits = trainable.logits(net, xb, step)
        except DeadModelError as exc:
            checkpoint()
            raise DeadModelError(f"{exc}; training stopped at step {step}. Lower the learning rate (now "
                                 f"{opt.param_groups[0]['lr']:.4g}) or restart from an earlier checkpoint; "
                                 f"the state at the failure is in {last}") from None
        loss = F.cross_entropy(logits, yb)
        if not torch.isfinite(loss):
            checkpoint()
            raise TrainingError(f"non-finite loss at step {step}; state saved in {last}")
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
        elif cfg.progress and line_every is not None and time.time() - last_line >= line_every:
            last_line = time.time()
            print(progress_line(cfg.label, step, total, step_start, time.time() - t0, float(loss.detach()),
                                opt.param_groups[0]["lr"]), file=sys.stderr, flush=True)
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
