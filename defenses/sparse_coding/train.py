"""The sparse-coding model kind of the project's one trainer (:mod:`robust_bench_sc.training`).

Joint training of the decoder and the ResNet-32 classifier behind the frozen dictionary:
``scbench train --model sparse_coding --T 15 ...`` (the default model). The loop, resume and
the run-folder files are the core trainer's; this module says how to build, optimise and save a
:class:`SparseCodingNet` (weights-only files: its flat state dict plus ``T``).
"""

from __future__ import annotations

import torch
from torch import nn

from defenses.sparse_coding.frontend import SparseCodingFrontend
from robust_bench_sc.models.resnet import ResNet32, load_state_dict_file
from robust_bench_sc.training import DeadModelError, TrainConfig, output_is_dead


class DeadDecoderError(DeadModelError):
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


class SparseCodingTrainable:
    """The ``sparse_coding`` model kind of :mod:`robust_bench_sc.training` (entry point
    ``robust_bench_sc.trainables``): frontend + ResNet-32, dictionary frozen, decoder and
    classifier in separate parameter groups."""

    def build(self, cfg: TrainConfig) -> SparseCodingNet:
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
            state = load_state_dict_file(cfg.init_from)
            if "frontend.decoder.deconv1.weight" not in state:
                raise ValueError(f"--init-from {cfg.init_from}: not a sparse-coding weights file "
                                 f"(a state dict of SparseCodingNet)")
            # T selects how many atoms are kept; it is not a weight. Weights of another T are a
            # warm start (issue "Models trained here": T in {1, 2, 5, 10, 20} start from T15.pt).
            state = {k: v for k, v in state.items() if k != "T"}
            try:
                load_weights(net, state)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0]
                raise ValueError(f"--init-from {cfg.init_from}: does not fit this model ({first})") from None
        if cfg.freeze_classifier:
            for p in classifier.parameters():
                p.requires_grad_(False)
        return net

    def param_groups(self, net: SparseCodingNet, cfg: TrainConfig) -> list[dict]:
        groups = [{"params": list(net.frontend.decoder.parameters()), "lr": cfg.peak_lr}]
        if not cfg.freeze_classifier:
            groups.append({"params": list(net.classifier.parameters()), "lr": cfg.peak_lr * cfg.classifier_lr_scale})
        return groups

    def logits(self, net: SparseCodingNet, x: torch.Tensor, step: int) -> torch.Tensor:
        fe_out = net.frontend(x)
        if step % 20 == 0 and decoder_is_dead(fe_out):
            raise DeadDecoderError("decoder output is constant over the batch (all ReLUs off?)")
        return net.classifier(fe_out)

    def weights_state(self, net: SparseCodingNet, cfg: TrainConfig) -> dict[str, torch.Tensor]:
        return weights_state(net)


TRAINABLE = SparseCodingTrainable()


def decoder_is_dead(out: torch.Tensor) -> bool:
    """Constant output over the batch (e.g. all ReLUs off): per-pixel std ~ 0 everywhere."""
    return output_is_dead(out)

