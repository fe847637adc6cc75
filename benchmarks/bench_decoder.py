"""The sparse-coding defense (T=15) against a plain ResNet-32, in one process on the same images.

Prints the minimum over interleaved repetitions (fairer on a shared, noisy CPU) of
  * ResNet-32 forward, and forward + input gradient (the unit an attack step costs),
  * sparse_coding_T15 exact forward, and the BPDA ``smooth_top_u`` forward + backward (input
    gradient), each also as a multiple of the ResNet-32 number; the BPDA step two ways: what the
    engine runs (``AttackModel``: the stand-in declares ``exact_forward``, so it runs alone, one
    frontend forward + backward) and the generic ``bpda_apply`` path (exact forward, then the
    stand-in's forward and backward), checked to give the same logits and input gradient,
  * the exact forward piece by piece: encoder, top-T + ternary, first transposed conv (sparse
    path, and the dense ConvTranspose2d for reference), second, third, classifier,
  * with ``--train``: one joint training step (decoder + classifier weight gradients, SGD),
  * with ``--variants``: the same forward / BPDA step under channels_last and ``torch.compile``.
Checks that the sparse and the dense first layer agree (logits, input gradients).

    python benchmarks/bench_decoder.py --threads 1 --n 100 --reps 3 [--clock cpu] [--train] [--variants]

The classifier of the shipped T15 checkpoint is the ResNet-32 measured (same architecture as
the baselines; its cost does not depend on its weights). ``--random-weights`` runs without the
shipped checkpoint (same sizes).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCK["wall"]


def _timed(fns: dict, reps: int) -> dict[str, float]:
    """min seconds per function (``_clock``); the functions are interleaved within each repetition."""
    for fn in fns.values():  # warm-up
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = _clock()
            fn()
            best[k] = min(best[k], _clock() - t)
    return best


def build(T: int = 15, random_weights: bool = False):
    from defenses.sparse_coding import build_net, weights_path
    from defenses.sparse_coding.frontend import SparseCodingFrontend
    from defenses.sparse_coding.train import SparseCodingNet
    from robust_bench_sc.models.resnet import ResNet32

    if not random_weights and weights_path(T).is_file():
        return build_net(T).eval(), str(weights_path(T))
    torch.manual_seed(0)
    return SparseCodingNet(SparseCodingFrontend(T=T), ResNet32()).eval(), "random init"


def measure(n: int = 100, reps: int = 3, T: int = 15, train: bool = False, variants: bool = False,
            random_weights: bool = False, log=print) -> dict:
    from defenses.sparse_coding.frontend import make_stand_ins, scatter_dense, ternary, top_t_indices
    from robust_bench_sc.data import load_test
    from robust_bench_sc.defense import AttackModel, Capabilities, Defense, bpda_apply

    net, weights = build(T, random_weights)
    for p in net.parameters():
        p.requires_grad_(False)
    fe, cls = net.frontend, net.classifier
    dec = fe.decoder
    stand = make_stand_ins(fe)["smooth_top_u"]
    d = load_test(n)
    x, y = d.x, d.y

    def resnet_fwd():
        with torch.no_grad():
            return cls(x)

    def resnet_step():
        xr = x.clone().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(cls(xr), y), xr)[0]

    def t15_fwd(model=net):
        with torch.no_grad():
            return model(x)

    def t15_bpda(exact=fe, stand_in=stand, classifier=cls, xx=x):
        """The generic BPDA path: exact forward + stand-in forward + backward."""
        xr = xx.clone().requires_grad_(True)
        logits = classifier(bpda_apply(xr, exact, stand_in))
        return torch.autograd.grad(F.cross_entropy(logits, y), xr)[0]

    engine = AttackModel(Defense(f"sparse_coding_T{T}", cls, preprocess=fe, bpda={"smooth_top_u": stand},
                                 capabilities=Capabilities(differentiable=False)), bpda="smooth_top_u")
    if not getattr(stand, "exact_forward", False):
        raise RuntimeError("the smooth_top_u stand-in does not declare exact_forward")

    def t15_bpda_engine():
        """What attacks run (AttackModel): the exact-forward stand-in alone, one forward + backward."""
        xr = x.clone().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(engine(xr), y), xr)[0]

    # the pieces of the exact forward, each on its real input
    with torch.no_grad():
        c = fe.encode(x)
        idx, val = fe.sparse_code(x)
        z = scatter_dense(idx, val, fe.atoms.shape[0])
        h1 = F.relu(dec.first_sparse(idx, val))
        h2 = F.relu(dec.deconv2(h1))
        h3 = dec._tail(dec.first_sparse(idx, val))

    def top_t_ternary():
        with torch.no_grad():
            i = top_t_indices(c, fe.T)
            return ternary(c.gather(1, i), fe.l1.expand_as(c).gather(1, i), fe.beta, fe.epsilon)

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    main = {
        "resnet_forward": resnet_fwd,
        "resnet_forward+input_grad": resnet_step,
        "t15_exact_forward": t15_fwd,
        "t15_bpda_smooth_top_u_step": t15_bpda_engine,
        "t15_bpda_step_via_bpda_apply": t15_bpda,
    }
    pieces = {
        "encoder": no_grad(lambda: fe.encode(x)),
        "top_t+ternary": top_t_ternary,
        "deconv1_sparse": no_grad(lambda: dec.first_sparse(idx, val)),
        "deconv1_dense": no_grad(lambda: dec.first_dense(z)),
        "deconv2": no_grad(lambda: dec.deconv2(h1)),
        "deconv3": no_grad(lambda: dec.deconv3(h2)),
        "classifier": no_grad(lambda: cls(h3)),
    }
    res = {"n_images": n, "T": T, "threads": torch.get_num_threads(), "reps": reps, "weights": weights,
           "torch": torch.__version__}
    clock = "cpu" if _clock is CLOCK["cpu"] else "wall"
    res["clock"] = clock
    log(f"sparse_coding_T{T} ({weights}) vs its ResNet-32, {n} images in one batch, "
        f"{torch.get_num_threads()} thread(s), min of {reps} interleaved reps, {clock} seconds")
    t = _timed({**main, **pieces}, reps)
    rf, rs = t["resnet_forward"], t["resnet_forward+input_grad"]
    res["seconds"] = {k: round(v, 4) for k, v in t.items()}
    res["t15_forward_over_resnet_forward"] = round(t["t15_exact_forward"] / rf, 2)
    res["t15_bpda_over_resnet_step"] = round(t["t15_bpda_smooth_top_u_step"] / rs, 2)
    res["t15_bpda_apply_over_resnet_step"] = round(t["t15_bpda_step_via_bpda_apply"] / rs, 2)
    res["bpda_apply_over_engine_step"] = round(t["t15_bpda_step_via_bpda_apply"] / t["t15_bpda_smooth_top_u_step"], 2)
    for k in main:
        base = rs if "grad" in k or "bpda" in k else rf
        log(f"  {k:32s} {t[k]:8.3f} s  {t[k] / base:6.2f}x ResNet-32 {'step' if base is rs else 'forward'}")
    log(f"  BPDA step: bpda_apply / engine (exact_forward stand-in alone) = {res['bpda_apply_over_engine_step']:.2f}")
    with torch.no_grad():
        ref_logits = net(x)
    xr = x.clone().requires_grad_(True)
    eng_logits = engine(xr)
    res["engine_path"] = {"logits_bitwise_equal_exact": bool(torch.equal(eng_logits.detach(), ref_logits)),
                          "input_grad_bitwise_equal_bpda_apply": bool(torch.equal(t15_bpda_engine(), t15_bpda()))}
    log(f"  engine path vs exact / bpda_apply: {json.dumps(res['engine_path'])}")
    log("  exact forward by piece:")
    for k in pieces:
        log(f"    {k:30s} {t[k]:8.3f} s  {t[k] / rf:6.2f}x ResNet-32 forward")

    # agreement of the sparse first layer with the dense ConvTranspose2d
    a_out, a_grad = t15_fwd(), t15_bpda()
    fe.fast = False
    b_out, b_grad = t15_fwd(), t15_bpda()
    fe.fast = True
    res["agreement"] = {"logits_max_abs_diff": float((a_out - b_out).abs().max()),
                        "same_predictions": bool(torch.equal(a_out.argmax(1), b_out.argmax(1))),
                        "input_grad_max_abs_diff": float((a_grad - b_grad).abs().max()),
                        "input_grad_max_abs": float(b_grad.abs().max())}
    log(f"  sparse vs dense first layer: {json.dumps(res['agreement'])}")

    if train:
        res["train_step"] = _train_step(net, x, y, reps, log)
    if variants:
        res["variants"] = _variants(net, stand, x, t15_fwd, t15_bpda, reps, log)
    return res


def _train_step(net, x, y, reps, log) -> dict:
    """One joint SGD step (decoder + classifier weight gradients): sparse vs dense first layer."""
    for p in net.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.0)  # lr 0: weights stay put between reps

    def step():
        net.train()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        net.eval()
        return loss.detach()

    def on(fast):
        def run():
            net.frontend.fast = fast
            return step()
        return run

    t = _timed({"sparse": on(True), "dense": on(False)}, reps)
    net.frontend.fast = True
    for p in net.parameters():
        p.requires_grad_(False)
    log(f"  training step: sparse {t['sparse']:.3f} s, dense {t['dense']:.3f} s, dense/sparse {t['dense'] / t['sparse']:.2f}")
    return {k: round(v, 4) for k, v in t.items()}


def _variants(net, stand, x, t15_fwd, t15_bpda, reps, log) -> dict:
    """channels_last (model and images) and torch.compile (frontend, stand-in, classifier), on vs off."""
    import copy

    cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    from defenses.sparse_coding.frontend import make_stand_ins

    cl_stand = make_stand_ins(cl.frontend)["smooth_top_u"]
    xcl = x.contiguous(memory_format=torch.channels_last)
    fns = {"forward_eager": t15_fwd, "bpda_eager": t15_bpda,
           "forward_channels_last": lambda: _nograd(lambda: cl(xcl)),
           "bpda_channels_last": lambda: t15_bpda(cl.frontend, cl_stand, cl.classifier, xcl)}
    out = {}
    t0 = time.perf_counter()
    try:
        c_fe, c_cls, c_stand = torch.compile(net.frontend), torch.compile(net.classifier), torch.compile(stand)
        fns["forward_compiled"] = lambda: _nograd(lambda: c_cls(c_fe(x)))
        fns["bpda_compiled"] = lambda: t15_bpda(c_fe, c_stand, c_cls)
        fns["forward_compiled"](), fns["bpda_compiled"]()
        out["compile_s"] = round(time.perf_counter() - t0, 1)
    except Exception as e:  # noqa: BLE001 - report, do not hide, a compiler failure
        out["compile_error"] = f"{type(e).__name__}: {e}"[:300]
        fns.pop("forward_compiled", None), fns.pop("bpda_compiled", None)
    ref_f, ref_g = t15_fwd(), t15_bpda()
    for k in [k for k in fns if not k.endswith("eager")]:
        v = fns[k]()
        ref = ref_f if k.startswith("forward") else ref_g
        out[f"{k}_max_abs_diff"] = float((v - ref).abs().max())
        if k.startswith("forward"):
            out[f"{k}_same_predictions"] = bool(torch.equal(v.argmax(1), ref.argmax(1)))
    t = _timed(fns, reps)
    out["seconds"] = {k: round(v, 4) for k, v in t.items()}
    for k in t:
        base = t["forward_eager"] if k.startswith("forward") else t["bpda_eager"]
        log(f"  {k:24s} {t[k]:8.3f} s  eager/this {base / t[k]:5.2f}")
    log(f"  variants: {json.dumps({k: v for k, v in out.items() if k != 'seconds'})}")
    return out


def _nograd(fn):
    with torch.no_grad():
        return fn()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="first N test images, one batch (default 100)")
    ap.add_argument("--T", type=int, default=15)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--train", action="store_true", help="also time one joint training step, sparse vs dense")
    ap.add_argument("--variants", action="store_true", help="also time channels_last and torch.compile")
    ap.add_argument("--random-weights", action="store_true", help="do not load the shipped checkpoint")
    ap.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                    help="wall: perf_counter; cpu: process CPU time (with --threads 1 on a machine "
                         "shared with other jobs, time spent waiting for a core is not counted)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.n < 1 or args.reps < 1:
        ap.error("--n and --reps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    global _clock
    _clock = CLOCK[args.clock]
    res = measure(args.n, args.reps, args.T, args.train, args.variants, args.random_weights)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
