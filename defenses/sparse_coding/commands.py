"""The sparse-coding plug-in's own ``scbench`` commands: ``learn-dictionary`` and ``figures``.

Registered in pyproject.toml under the entry-point group ``robust_bench_sc.commands`` (one entry
per command, its name the command's name); the core CLI loads this module only when one of
these commands runs or ``scbench --help`` lists them. Each function is written as a typer
command; the core wraps it (one-line errors, ``--debug``). Heavy imports stay inside the
functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console()


def learn_dictionary(
    out: Path = typer.Option(..., "--out", help="output .npz (key atoms, (L, 48), unit-norm rows)"),
    n_iter: Optional[int] = typer.Option(None, "--n-iter", help="mini-batch updates (default: the reference's 1000)"),
    n_patches: int = typer.Option(200_000, "--n-patches", help="training patches sampled"),
    seed: int = typer.Option(0, "--seed"),
):
    """Learn a patch dictionary with MiniBatchDictionaryLearning (reference parameters); the shipped defense uses the reference dictionary."""
    from defenses.sparse_coding.dictionary import learn_dictionary as learn

    console.print(f"wrote {learn(out, n_iter=n_iter, n_patches=n_patches, seed=seed, log=console.print)}")


def figures(out: Path = typer.Option(..., "--out", help="folder for the PNGs")):
    """Paper Fig. 1a (coefficient histograms) and Fig. 3 (activation and its smooth backward approximations)."""
    from defenses.sparse_coding.figures import make_figures

    for p in make_figures(out):
        console.print(f"wrote {p}")
