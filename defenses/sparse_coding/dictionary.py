"""Learning the patch dictionary (paper Section 3.1) with scikit-learn's MiniBatchDictionaryLearning.

The reference dictionary (shared/reference/cifar10_dictionary_p4_s2_L500.npz) was learned with the
parameters in ``cifar10_dictionary_p4_s2_L500.params.json`` on an old scikit-learn whose ``n_iter``
counted mini-batch iterations (1000 iterations of 5 patches). scikit-learn >= 1.4 has no ``n_iter``
(its ``max_iter`` counts passes over the data), so here ``n_iter`` mini-batch updates are made with
``partial_fit`` on batches of ``batch_size`` patches drawn at random, which is what the old
``n_iter`` meant.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from robust_bench_sc.paths import reference_dir

PARAMS_FILE = "cifar10_dictionary_p4_s2_L500.params.json"


def reference_params() -> dict:
    return json.loads((reference_dir() / PARAMS_FILE).read_text())


def extract_patches(x_nhwc: np.ndarray, patch: int = 4, stride: int = 2) -> np.ndarray:
    """All patch x patch x 3 patches with the given stride, flattened in (h, w, c) order: (N*m*m, p*p*3)."""
    n, h, w, c = x_nhwc.shape
    m = (h - patch) // stride + 1
    out = np.empty((n, m, m, patch, patch, c), dtype=np.float32)
    for i in range(m):
        for j in range(m):
            out[:, i, j] = x_nhwc[:, i * stride:i * stride + patch, j * stride:j * stride + patch, :]
    return out.reshape(n * m * m, patch * patch * c)


def learn_dictionary(out: str | Path, n_iter: int | None = None, n_patches: int = 200_000, seed: int = 0,
                     n_components: int | None = None, log=print) -> Path:
    """Learn a dictionary from CIFAR-10 training patches; write ``out`` (.npz, key ``atoms`` (L, 48), unit-norm rows)."""
    from sklearn.decomposition import MiniBatchDictionaryLearning

    from robust_bench_sc.data import load_train

    params = reference_params()
    n_iter = int(n_iter if n_iter is not None else params["n_iter"])
    n_components = int(n_components or params["n_components"])
    rng = np.random.default_rng(seed)
    tr = load_train()
    x = tr.x.permute(0, 2, 3, 1).numpy()  # NHWC in [0, 1]
    pick = rng.choice(len(x), size=min(len(x), max(1, n_patches // 225 + 1)), replace=False)
    patches = extract_patches(x[pick])
    patches = patches[rng.permutation(len(patches))[:n_patches]]
    model = MiniBatchDictionaryLearning(
        n_components=n_components, alpha=params["alpha"], batch_size=params["batch_size"],
        fit_algorithm=params["fit_algorithm"], transform_algorithm=params["transform_algorithm"],
        transform_n_nonzero_coefs=params["transform_n_nonzero_coefs"], transform_alpha=params["transform_alpha"],
        positive_code=params["positive_code"], positive_dict=params["positive_dict"],
        split_sign=params["split_sign"], transform_max_iter=params["transform_max_iter"],
        shuffle=params["shuffle"], random_state=seed)
    bs = int(params["batch_size"])
    # the first batch must hold at least n_components samples only for dict init: init from random patches
    init = patches[rng.choice(len(patches), size=n_components, replace=False)].copy()
    init /= np.linalg.norm(init, axis=1, keepdims=True) + 1e-12
    model.set_params(dict_init=init)
    for it in range(n_iter):
        batch = patches[rng.integers(0, len(patches), size=bs)]
        model.partial_fit(batch)
        if log and (it + 1) % max(1, n_iter // 10) == 0:
            log(f"dictionary learning: {it + 1}/{n_iter} mini-batches")
    atoms = model.components_.astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True) + 1e-12  # unit l2 norm (the constraint set C)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, atoms=atoms)
    meta = dict(params, n_iter=n_iter, n_components=n_components, n_patches=int(len(patches)), seed=seed,
                note="n_iter mini-batch partial_fit updates (old scikit-learn n_iter semantics)")
    out.with_suffix(".params.json").write_text(json.dumps(meta, indent=1))
    return out
