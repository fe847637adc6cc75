"""The sparse-coding model kind of the project's one trainer (:mod:`robust_bench_sc.training`).

Joint training of the decoder and the ResNet-32 classifier behind the frozen dictionary:
``scbench train --model sparse_coding -o T=15 ...`` (the default model of ``scbench train``;
``--T 15`` is an alias). The loop, resume and the run-folder files are the core trainer's; this
module declares the model's options (:class:`SparseCodingOptions`) and says how to build,
optimise and save a :class:`SparseCodingNet` (weights-only files: its flat state dict plus ``T``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from defenses.sparse_coding.frontend import SparseCodingFrontend
from robust_bench_sc.models.resnet import ResNet32, load_state_dict_file
from robust_bench_sc.training import DeadModelError, TrainableOptions, TrainConfig, option, output_is_dead

N_ATOMS = 500  # atoms of the shared dictionary (shared/reference): T keeps the top T of them per patch


@dataclass
class SparseCodingOptions(TrainableOptions):
    """``scbench train --model sparse_coding -o NAME=VALUE`` (the aliases ``--T``, ``--dense``,
    ``--warm-start``, ``--classifier-lr-scale``, ``--freeze-classifier`` set the same)."""

    T: int = option(15, "top-T coefficients kept per patch (paper: 1, 2, 5, 10, 15, 20)")
    classifier_lr_scale: float = option(1.0, "classifier peak LR = lr x this (e.g. 0.25 with warm_start)")
    freeze_classifier: bool = option(False, "train the decoder only")
    warm_start: str | None = option(None, "classifier state dict to start from (e.g. "
                                          "shared/reference/resnet32_behind_frontend_T15.pt)", resume="start")
    fast: bool = option(True, "the exact sparse gather for the first transposed convolution (false: dense; "
                              "same numbers, a resumed run may change it)", resume="any")
    decoder_widths: tuple[int, int] = option((300, 100), "decoder channel widths (the paper's; smaller only for tests)")
    units_per_block: int = option(5, "classifier residual units per block (5: ResNet-32; smaller only for tests)")

    def check(self) -> None:
        if not 1 <= self.T <= N_ATOMS:
            raise ValueError(f"T={self.T}: must be a whole number in 1..{N_ATOMS} (the dictionary's {N_ATOMS} atoms; "
                             "paper: 1, 2, 5, 10, 15, 20)")
        if len(self.decoder_widths) != 2 or min(self.decoder_widths) < 1:
            raise ValueError(f"decoder_widths={self.decoder_widths}: two whole numbers >= 1, e.g. 300,100")
        if self.units_per_block < 1:
            raise ValueError(f"units_per_block={self.units_per_block}: must be a whole number >= 1")


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

    options = SparseCodingOptions

    def label(self, opts: SparseCodingOptions) -> str:
        return f"T={opts.T}"

    def build(self, cfg: TrainConfig) -> SparseCodingNet:
        o: SparseCodingOptions = cfg.options
        torch.manual_seed(cfg.seed)
        frontend = SparseCodingFrontend(T=o.T, fast=o.fast, widths=tuple(o.decoder_widths))
        classifier = ResNet32(units_per_block=o.units_per_block)
        if o.warm_start:
            state = load_state_dict_file(o.warm_start)
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
        if o.freeze_classifier:
            for p in classifier.parameters():
                p.requires_grad_(False)
        return net

    def param_groups(self, net: SparseCodingNet, cfg: TrainConfig) -> list[dict]:
        o: SparseCodingOptions = cfg.options
        groups = [{"params": list(net.frontend.decoder.parameters()), "lr": cfg.peak_lr}]
        if not o.freeze_classifier:
            groups.append({"params": list(net.classifier.parameters()), "lr": cfg.peak_lr * o.classifier_lr_scale})
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

