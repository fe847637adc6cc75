"""The one trainer (`scbench train`): resnet32 mode, resume, bad input, safe loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from robust_bench_sc.cli import app
from robust_bench_sc.data import load_test
from robust_bench_sc.models.resnet import ResNet32, load_resnet32
from robust_bench_sc.training import TRAINABLES, TrainConfig, train

QUIET = dict(log=lambda s: None)


def _cfg(**kw) -> TrainConfig:
    base = dict(model="resnet32", epochs=2, batch_size=8, peak_lr=0.05, warmup_frac=0.3, ckpt_every=3,
                eval_every=100, n_test=0, units_per_block=1, progress=False, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_registry_lists_both_model_kinds():
    assert {"resnet32", "sparse_coding"} <= set(TRAINABLES.names())


def test_resnet32_training_fits_and_saves_a_loadable_state_dict(tmp_path, tiny_data):
    tr, va = tiny_data
    train(_cfg(epochs=6, eval_every=4, peak_lr=0.1), tmp_path / "run", train_data=tr, val_data=va, **QUIET)
    rows = json.loads((tmp_path / "run" / "log.json").read_text())["rows"]
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]  # 2.33 -> 1.68 measured
    w = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    net = ResNet32(units_per_block=1)
    net.load_state_dict(w)  # the ordinary ResNet-32 state dict (contiguous, with mean/std)
    assert all(v.is_contiguous() for v in w.values())


def test_full_size_resnet32_weights_load_as_a_baseline(tmp_path, tiny_data):
    tr, va = tiny_data
    train(_cfg(units_per_block=5, epochs=1, max_steps=1), tmp_path / "r", train_data=tr, val_data=va, **QUIET)
    model = load_resnet32(tmp_path / "r" / "latest_weights.pt")  # what the `natural` plug-in loads
    assert model(tr[0][:2]).shape == (2, 10)


def test_resnet32_resume_after_interrupt_is_exact(tmp_path, tiny_data):
    tr, va = tiny_data
    train(_cfg(), tmp_path / "a", train_data=tr, val_data=va, **QUIET)  # 2 epochs x 4 steps
    train(_cfg(max_steps=3), tmp_path / "b", train_data=tr, val_data=va, **QUIET)  # "killed" after step 3
    train(_cfg(), tmp_path / "b", train_data=tr, val_data=va, **QUIET)
    a = torch.load(tmp_path / "a" / "latest_weights.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "latest_weights.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_checkpoint_loads_with_weights_only(tmp_path, tiny_data):
    tr, va = tiny_data
    train(_cfg(max_steps=3), tmp_path / "r", train_data=tr, val_data=va, **QUIET)
    ck = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert ck["step"] == 3 and ck["config"]["model"] == "resnet32"


def test_resume_with_other_settings_is_refused_naming_the_file(tmp_path, tiny_data):
    tr, va = tiny_data
    train(_cfg(max_steps=3), tmp_path / "r", train_data=tr, val_data=va, **QUIET)
    with pytest.raises(ValueError, match=r"last\.pt belongs to a run with other settings: peak_lr=0\.05 \(asked 0\.02\)"):
        train(_cfg(peak_lr=0.02), tmp_path / "r", train_data=tr, val_data=va, **QUIET)
    with pytest.raises(ValueError, match=r"model='resnet32' \(asked 'sparse_coding'\)"):
        train(_cfg(model="sparse_coding", T=5, decoder_widths=(16, 8)), tmp_path / "r", train_data=tr,
              val_data=va, **QUIET)


class _Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path(__import__('os').environ['BOOM']).write_text('ran')",))


def test_crafted_resume_checkpoint_cannot_run_code(tmp_path, tiny_data, monkeypatch):
    tr, va = tiny_data
    flag = tmp_path / "flag"
    monkeypatch.setenv("BOOM", str(flag))
    run = tmp_path / "r"
    run.mkdir()
    torch.save({"model": _Boom()}, run / "last.pt")
    with pytest.raises(ValueError, match=r"cannot resume from .*last\.pt"):
        train(_cfg(), run, train_data=tr, val_data=va, **QUIET)
    assert not flag.exists()


def test_init_from_another_architecture_names_the_file(tmp_path, tiny_data):
    tr, va = tiny_data
    resnet_file = tmp_path / "resnet.pt"
    torch.save(ResNet32(units_per_block=1).state_dict(), resnet_file)
    sc = dict(model="sparse_coding", T=5, decoder_widths=(16, 8))
    with pytest.raises(ValueError, match=r"--init-from .*resnet\.pt: not a sparse-coding weights file"):
        train(_cfg(init_from=str(resnet_file), **sc), tmp_path / "a", train_data=tr, val_data=va, **QUIET)
    train(_cfg(max_steps=1, **sc), tmp_path / "sc", train_data=tr, val_data=va, **QUIET)
    with pytest.raises(ValueError, match=r"--init-from .*best\.pt: not a ResNet-32 state dict"):
        train(_cfg(init_from=str(tmp_path / "sc" / "best.pt")), tmp_path / "b", train_data=tr, val_data=va, **QUIET)


def test_sparse_coding_warm_start_from_another_T(tmp_path, tiny_data):
    """T is a selection parameter, not a weight: T=2 starts from T=5 weights, all of them."""
    tr, va = tiny_data
    sc = dict(model="sparse_coding", decoder_widths=(16, 8))
    train(_cfg(T=5, max_steps=2, **sc), tmp_path / "t5", train_data=tr, val_data=va, **QUIET)
    src = torch.load(tmp_path / "t5" / "best.pt", weights_only=True)
    from defenses.sparse_coding.train import TRAINABLE

    net = TRAINABLE.build(_cfg(T=2, init_from=str(tmp_path / "t5" / "best.pt"), **sc))
    assert net.frontend.T == 2
    got = net.state_dict()
    for k, v in src.items():
        if k != "T":
            assert torch.equal(got[k], v), k


def test_cli_missing_shard_is_one_line_naming_the_file(tmp_path, monkeypatch):
    with np.load(load_test.__globals__["data_dir"]() / "test_first1000.npz") as f:
        np.savez(tmp_path / "test_first1000.npz", **{k: f[k] for k in f.files})
    monkeypatch.setenv("SCBENCH_DATA", str(tmp_path))
    res = CliRunner().invoke(app, ["train", "--model", "resnet32", "--out", str(tmp_path / "run"), "--threads", "1"])
    assert res.exit_code == 2
    msg = res.output.strip()
    assert "train_0.npz" in msg and str(tmp_path) in msg
    assert "Traceback" not in msg


@pytest.mark.parametrize("args, needle", [
    (["--model", "resnet64"], "--model resnet64: unknown; allowed: resnet32, sparse_coding"),
    (["--device", "tpu"], "--device tpu: allowed values are cpu, cuda"),
    (["--threads", "-1"], "--threads -1: must be a whole number >= 1"),
    (["--epochs", "0"], "--epochs 0.0: must be > 0"),
])
def test_cli_bad_options_are_one_line(tmp_path, args, needle):
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), *args])
    assert res.exit_code == 2
    assert needle in " ".join(res.output.split())
    assert not (tmp_path / "r").exists()


def test_evaluate_is_the_accuracy_in_eval_mode_over_uneven_batches():
    from robust_bench_sc.training import evaluate

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4), torch.nn.Dropout(0.9), torch.nn.Linear(4, 3))
    x = torch.randn(11, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    net.eval()
    with torch.no_grad():
        pred = net(x).argmax(1)
    y = pred.clone()
    y[[0, 4, 10]] = (y[[0, 4, 10]] + 1) % 3  # 8 of 11 right
    net.train()
    assert evaluate(net, x, y, batch=4) == pytest.approx(8 / 11)  # batches of 4, 4, 3; no dropout
    assert net.training  # the mode it came in with
    assert evaluate(net, x[:0], y[:0]) == 0.0


def test_progress_to_a_log_file_is_plain_lines(tmp_path, tiny_data, capsys, monkeypatch):
    """stderr redirected to a file (nohup): one plain line per interval with step, speed and time
    left, no carriage-return bar (the committed train.out of run_natural grew to 1.4 MB)."""
    import robust_bench_sc.training as training

    monkeypatch.setattr(training, "PROGRESS_LINE_SECONDS", 0.0)
    tr, va = tiny_data
    train(_cfg(progress=True), tmp_path / "p", train_data=tr, val_data=va, **QUIET)  # 2 epochs x 4 steps
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("train resnet32: step ")]
    assert [ln.split()[3] for ln in lines] == [f"{k}/8" for k in range(1, 9)]
    assert lines[-1].endswith("0 min left") and "s/step" in lines[-1]
