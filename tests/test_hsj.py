"""HopSkipJump's starting point (``init_pool``) on real test images with the Madry PGD-AT
ResNet-32: a closest other-label pool start fools every correctly classified image, the start
handed to the toolkit is the brute-force nearest other-label pool image, and ``init_pool: noise``
reproduces the records of the code before init_pool existed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robust_bench_sc.attacks.base import AttackContext
from robust_bench_sc.config import load_threat_model_file, validate_threat_model
from robust_bench_sc.data import load_train
from robust_bench_sc.evaluate import evaluate_threat
from robust_bench_sc.paths import REPO_ROOT
from robust_bench_sc.yamlio import ConfigError

TINY = {"attack": "hsj", "max_iter": 2, "max_eval": 100, "init_eval": 10}
POOL_SIZE = 2000


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def six(test_split):
    return test_split.take(range(6))


def evaluate(defense, raw, split):
    tm = validate_threat_model(raw, "test")
    ctx = AttackContext(defense=defense, device=torch.device("cpu"), seed=0)
    return evaluate_threat(defense, tm, split.x, split.y, split.idx, ctx)


class _SeededRandomState(np.random.RandomState):
    """ART draws its noise starts from ``np.random.RandomState()`` (OS entropy, not the
    job's seed): pin unseeded instances so a noise run can be compared record for record."""

    def __init__(self, seed=None):
        super().__init__(12345 if seed is None else seed)


def _spy_starts(monkeypatch, backend):
    """Record the starting points each toolkit call receives (None: the toolkit's own search)."""
    seen: list = []
    if backend == "art":
        from art.attacks.evasion import HopSkipJump

        real = HopSkipJump.generate

        def generate(self, x, y=None, **kw):
            seen.append(None if kw.get("x_adv_init") is None else np.array(kw["x_adv_init"]))
            return real(self, x, y, **kw)

        monkeypatch.setattr(HopSkipJump, "generate", generate)
    else:
        import foolbox as fb

        real_fb = fb.attacks.HopSkipJumpAttack.run

        def run(self, model, inputs, criterion, *, early_stop=None, starting_points=None, **kw):
            seen.append(None if starting_points is None else starting_points.detach().cpu().numpy())
            return real_fb(self, model, inputs, criterion, early_stop=early_stop, starting_points=starting_points,
                           **kw)

        monkeypatch.setattr(fb.attacks.HopSkipJumpAttack, "run", run)
    return seen


def test_schema_init_pool():
    hsj = load_threat_model_file(REPO_ROOT / "attack_suites/hsj.yaml")
    assert hsj.init_pool == "noise" and hsj.init_pool_size is None
    assert "init_pool" not in hsj.model_dump(exclude_defaults=True), "noise must not enter spec hashes"
    pool = load_threat_model_file(REPO_ROOT / "attack_suites/hsj_pool.yaml")
    assert pool.init_pool == "train"
    assert {k: v for k, v in pool.model_dump().items() if k not in ("name", "description", "init_pool")} == \
        {k: v for k, v in hsj.model_dump().items() if k not in ("name", "description", "init_pool")}
    assert validate_threat_model({**TINY, "init_pool": "test", "init_pool_size": 10}, "t").init_pool_size == 10
    with pytest.raises(ConfigError, match=r"init_pool_size needs init_pool: train or test"):
        validate_threat_model({**TINY, "init_pool_size": 10}, "t")
    with pytest.raises(ConfigError, match=r"init_pool: Input should be 'noise', 'train' or 'test'"):
        validate_threat_model({**TINY, "init_pool": "val"}, "t")
    with pytest.raises(ConfigError, match=r"init_pool_size"):
        validate_threat_model({**TINY, "init_pool": "train", "init_pool_size": 0}, "t")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["art", "foolbox"])
def test_pool_start_fools_every_correct_image(madry, six, monkeypatch, backend):
    seen = _spy_starts(monkeypatch, backend)
    recs = evaluate(madry, {**TINY, "backend": backend, "init_pool": "train", "init_pool_size": POOL_SIZE}, six)
    correct = [r for r in recs if r["clean_correct"]]
    assert len(correct) >= 5
    assert all(r["fooled"] and r["start_found"] == 1.0 for r in correct), [(r["index"], r["flags"]) for r in recs]
    assert not any("unchanged" in r["flags"] for r in recs)
    assert all(r["claimed"] == r["fooled"] for r in recs), "the engine's re-check must agree with the claim"

    # brute force: the nearest pool image the defense labels otherwise, per image
    pool = load_train().x[:POOL_SIZE]
    with torch.no_grad():
        pool_pred = torch.cat([madry(pool[s : s + 500]).argmax(1) for s in range(0, POOL_SIZE, 500)])
    assert len(seen) == 1 and seen[0] is not None and seen[0].shape == tuple(six.x.shape)
    starts = torch.from_numpy(seen[0])
    for i, r in enumerate(recs):
        d = (pool - six.x[i]).flatten(1).norm(dim=1).double()
        d[pool_pred == six.y[i]] = math.inf
        j = int(d.argmin())
        assert torch.equal(starts[i], pool[j]), f"image {i}: start is not pool image {j}"
        assert r["start_l2"] == pytest.approx(float(d[j]), rel=1e-5)
        # HSJ only moves from the start towards the image: it ends no farther than it started
        assert r["l2"] <= r["start_l2"] * (1 + 1e-5)
    assert min(r["start_l2"] - r["l2"] for r in correct) > 0, "HSJ must improve on its start"


# Records of ``init_pool``-less code (git HEAD before init_pool, run from `git archive HEAD`) on the
# first 6 test images, seed 0, RandomState pinned as above, max_iter 2, max_eval 100, init_eval 10,
# init_size 20: (fooled, flags, l2). Both backends' noise searches miss images 4 and 5.
HEAD_NOISE = {
    "art": [(True, "", 5.722187629555895), (True, "", 12.839708330578793), (True, "", 10.818418835467956),
            (True, "", 8.41869352148108), (False, "unchanged", 0.0), (False, "unchanged", 0.0)],
    "foolbox": [(True, "", 3.8760816547267263), (True, "", 9.669549399722465), (True, "", 8.214609075065601),
                (True, "", 7.696292249210915), (False, "unchanged", 0.0), (False, "unchanged", 0.0)],
}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["art", "foolbox"])
def test_noise_start_reproduces_previous_records(madry, six, monkeypatch, backend):
    monkeypatch.setattr(np.random, "RandomState", _SeededRandomState)
    seen = _spy_starts(monkeypatch, backend)
    recs = evaluate(madry, {**TINY, "backend": backend, "init_size": 20}, six)
    if backend == "art":
        assert seen == [None], "noise must leave the start to ART"
        assert all("start_found" not in r for r in recs)
    got = [(r["fooled"], r["flags"], r["l2"]) for r in recs]
    for (f, fl, l2), (ef, efl, el2) in zip(got, HEAD_NOISE[backend], strict=True):
        assert (f, fl) == (ef, efl)
        assert l2 == pytest.approx(el2, rel=1e-5, abs=1e-7)
    assert all(r["claimed"] == r["fooled"] for r in recs)
