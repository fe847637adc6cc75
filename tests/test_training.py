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
from robust_bench_sc.paths import REPO_ROOT
from robust_bench_sc.training import TRAINABLES, TrainConfig, train

QUIET = dict(log=lambda s: None)


def _cfg(options=None, **kw) -> TrainConfig:
    base = dict(model="resnet32", epochs=2, batch_size=8, peak_lr=0.05, warmup_frac=0.3, ckpt_every=3,
                eval_every=100, n_test=0, progress=False, threads=1)
    base.update(kw)
    return TrainConfig(**base, options={"units_per_block": 1, **(options or {})})


SC = dict(model="sparse_coding")
SC_TINY = {"decoder_widths": (16, 8)}


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
    train(_cfg(options={"units_per_block": 5}, epochs=1, max_steps=1), tmp_path / "r", train_data=tr, val_data=va, **QUIET)
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
        train(_cfg(model="sparse_coding", options={"T": 5, **SC_TINY}), tmp_path / "r", train_data=tr,
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
    sc = dict(model="sparse_coding", options={"T": 5, **SC_TINY})
    with pytest.raises(ValueError, match=r"--init-from .*resnet\.pt: not a sparse-coding weights file"):
        train(_cfg(init_from=str(resnet_file), **sc), tmp_path / "a", train_data=tr, val_data=va, **QUIET)
    train(_cfg(max_steps=1, **sc), tmp_path / "sc", train_data=tr, val_data=va, **QUIET)
    with pytest.raises(ValueError, match=r"--init-from .*best\.pt: not a ResNet-32 state dict"):
        train(_cfg(init_from=str(tmp_path / "sc" / "best.pt")), tmp_path / "b", train_data=tr, val_data=va, **QUIET)


def test_sparse_coding_warm_start_from_another_T(tmp_path, tiny_data):
    """T is a selection parameter, not a weight: T=2 starts from T=5 weights, all of them."""
    tr, va = tiny_data
    train(_cfg(options={"T": 5, **SC_TINY}, max_steps=2, **SC), tmp_path / "t5", train_data=tr, val_data=va, **QUIET)
    src = torch.load(tmp_path / "t5" / "best.pt", weights_only=True)
    from defenses.sparse_coding.train import TRAINABLE
    from robust_bench_sc.training import resolve_options

    net = TRAINABLE.build(resolve_options(_cfg(options={"T": 2, **SC_TINY}, init_from=str(tmp_path / "t5" / "best.pt"),
                                               **SC)))
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


# -- model options: declared per trainable; old flat configs (T, fast, ... beside the trainer's
#    fields) still resume and read

RUN_T15_LONG = "defenses/sparse_coding/weights/run_T15_long"
# the command of the run in progress (its COMMAND.md): re-running it must resume its last.pt
RUN_T15_LONG_ARGS = ["train", "--T", "15", "--out", RUN_T15_LONG, "--init-from", "defenses/sparse_coding/weights/T15.pt",
                     "--epochs", "10", "--lr", "0.005", "--classifier-lr-scale", "1", "--warmup-frac", "0.05",
                     "--eval-every", "400", "--ckpt-every", "100", "--n-val", "1000", "--n-test", "1000",
                     "--threads", "1", "--seed", "4"]


def _old_flat_config(**kw) -> dict:
    """``asdict(TrainConfig)`` as the trainer wrote it before options were the trainable's own
    (keys in that order; decoder_widths a tuple in last.pt, a list in log.json)."""
    old = dict(model="sparse_coding", T=15, epochs=70.0, batch_size=64, peak_lr=0.02, classifier_lr_scale=1.0,
               warmup_frac=0.5, momentum=0.9, weight_decay=5e-4, warm_start=None, init_from=None,
               freeze_classifier=False, seed=0, ckpt_every=100, eval_every=None, n_train=None, n_val=1000,
               n_test=1000, device="cpu", threads=None, fast=True, max_steps=None, progress=True,
               decoder_widths=(300, 100), units_per_block=5)
    assert set(kw) <= set(old)
    old.update(kw)
    return old


def _captured_cli_config(monkeypatch, args) -> TrainConfig:
    import robust_bench_sc.training as training

    seen = {}
    monkeypatch.setattr(training, "train", lambda cfg, out, **kw: seen.setdefault("cfg", cfg) and {})
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return seen["cfg"]


def test_the_running_T15_long_command_resumes_its_old_checkpoint_config(monkeypatch, tmp_path):
    """The exact command of run_T15_long asks for what its last.pt (written by the trainer before
    this change) holds: the committed log.json holds that config, flat, T/fast/... included."""
    from robust_bench_sc.training import config_dict, saved_config

    cfg = _captured_cli_config(monkeypatch, RUN_T15_LONG_ARGS)
    old = json.loads((REPO_ROOT / RUN_T15_LONG / "log.json").read_text())["config"]
    assert old == {**_old_flat_config(epochs=10.0, peak_lr=0.005, warmup_frac=0.05, seed=4, eval_every=400,
                                      init_from="defenses/sparse_coding/weights/T15.pt", threads=1),
                   "decoder_widths": [300, 100]}
    # what the new trainer writes is the old file's config, key for key
    assert config_dict(cfg) == {**old, "decoder_widths": (300, 100)}
    last = tmp_path / "last.pt"
    resumed = saved_config({"config": _old_flat_config(**{k: old[k] for k in old if k != "decoder_widths"})}, last, cfg)
    assert resumed == cfg
    # the options spelt as -o are the same request
    cfg_o = _captured_cli_config(monkeypatch, [a for a in RUN_T15_LONG_ARGS if a not in ("--T", "15")] + ["-o", "T=15"])
    assert cfg_o == cfg
    # and another schedule is refused, naming the option
    args5 = [a if a != "--classifier-lr-scale" else "--option" for a in RUN_T15_LONG_ARGS]
    args5[args5.index("--option") + 1] = "classifier_lr_scale=0.5"
    cfg5 = _captured_cli_config(monkeypatch, args5)
    with pytest.raises(ValueError, match=r"last\.pt belongs to a run with other settings: classifier_lr_scale=1\.0 \(asked 0\.5\)"):
        saved_config({"config": old}, last, cfg5)


def test_an_old_flat_checkpoint_refuses_other_settings_and_lets_runtime_options_change(tmp_path, tiny_data):
    """last.pt written before this change (old flat config: T, fast, decoder_widths, warm_start
    beside the trainer's fields): a changed schedule or option is refused naming it; a runtime
    option (fast) may change."""
    import robust_bench_sc.training as training

    tr, va = tiny_data
    opts = {"T": 5, **SC_TINY}
    train(_cfg(options=opts, **SC), tmp_path / "a", train_data=tr, val_data=va, **QUIET)  # 2 epochs x 4 steps
    train(_cfg(options=opts, max_steps=3, **SC), tmp_path / "b", train_data=tr, val_data=va, **QUIET)
    ck = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert ck["step"] == 3
    ck["config"] = _old_flat_config(T=5, epochs=2, batch_size=8, peak_lr=0.05, warmup_frac=0.3, ckpt_every=3,
                                    eval_every=100, n_test=0, progress=False, threads=1, max_steps=3,
                                    decoder_widths=(16, 8), units_per_block=1)
    torch.save(ck, tmp_path / "b" / "last.pt")
    with pytest.raises(ValueError, match=r"other settings: T=5 \(asked 2\)"):
        train(_cfg(options={**opts, "T": 2}, **SC), tmp_path / "b", train_data=tr, val_data=va, **QUIET)
    with pytest.raises(ValueError, match=r"other settings: warmup_frac=0\.3 \(asked 0\.5\), decoder_widths=\(16, 8\) "
                                         r"\(asked \(32, 8\)\)"):
        train(_cfg(options={**opts, "decoder_widths": (32, 8)}, warmup_frac=0.5, **SC), tmp_path / "b",
              train_data=tr, val_data=va, **QUIET)
    lines: list[str] = []
    train(_cfg(options={**opts, "fast": False}, **SC), tmp_path / "b", train_data=tr, val_data=va, log=lines.append)
    assert lines[0].startswith(f"resumed from {tmp_path / 'b' / 'last.pt'} at step 3/8")
    a = torch.load(tmp_path / "a" / "latest_weights.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "latest_weights.pt", weights_only=True)
    assert a.keys() == b.keys() and int(b["T"]) == 5
    # fast=False (dense) computes the same numbers to rounding, not bitwise: 2.6e-5 apart after
    # 5 steps at lr 0.05 measured (bitwise with the same fast: the next test)
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-4
    saved = json.loads((tmp_path / "b" / "log.json").read_text())["config"]
    assert saved["T"] == 5 and saved["fast"] is False and saved["decoder_widths"] == [16, 8]
    assert training.config_from_saved(saved).options.decoder_widths == (16, 8)


def test_an_old_flat_config_resumes_bitwise(tmp_path, tiny_data):
    """The same run resumed from a last.pt whose config is the old flat one (here from before
    --model too) ends with exactly the weights of an uninterrupted run."""
    tr, va = tiny_data
    opts = {"T": 5, **SC_TINY}
    train(_cfg(options=opts, **SC), tmp_path / "a", train_data=tr, val_data=va, **QUIET)
    train(_cfg(options=opts, max_steps=3, **SC), tmp_path / "b", train_data=tr, val_data=va, **QUIET)
    ck = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    old = _old_flat_config(T=5, epochs=2, batch_size=8, peak_lr=0.05, warmup_frac=0.3, ckpt_every=3, eval_every=100,
                           n_test=0, progress=False, threads=1, max_steps=3, decoder_widths=(16, 8), units_per_block=1)
    del old["model"]  # from before --model: a sparse-coding run
    ck["config"] = old
    torch.save(ck, tmp_path / "b" / "last.pt")
    train(_cfg(options=opts, **SC), tmp_path / "b", train_data=tr, val_data=va, **QUIET)
    a = torch.load(tmp_path / "a" / "latest_weights.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "latest_weights.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_committed_run_logs_read_as_configs():
    from robust_bench_sc.training import config_dict, config_from_saved

    logs = sorted((REPO_ROOT / "defenses").glob("**/run_*/log.json"))
    assert len(logs) >= 10
    for log in logs:
        flat = json.loads(log.read_text())["config"]
        cfg = config_from_saved(flat)
        assert cfg.model == flat.get("model", "sparse_coding"), log
        written = config_dict(cfg)
        # every setting the file holds for its model reads back the same
        assert {k: v for k, v in json.loads(json.dumps(written)).items() if k in flat} == \
            {k: v for k, v in flat.items() if k in written}, log
        if cfg.model == "sparse_coding":
            assert cfg.options.T == flat["T"] and cfg.label == f"T={flat['T']}"


def test_cli_options_are_validated_in_one_line(tmp_path):
    cases = [(["-o", "Tx=5"], "-o Tx: not an option of model sparse_coding (did you mean 'T'?); its options: T, "
                              "classifier_lr_scale, freeze_classifier, warm_start, fast, decoder_widths, units_per_block"),
             (["-o", "T"], "-o 'T': expected NAME=VALUE"),
             (["-o", "T=five"], "-o T=five: invalid literal for int() with base 10: 'five' (default 15)"),
             (["--T", "0"], "--T 0: must be a whole number in 1..500"),
             (["-o", "T=501"], "-o T=501: must be a whole number in 1..500"),
             (["--model", "resnet32", "--T", "5"], "--T: not an option of model resnet32; its options: units_per_block"),
             (["--model", "resnet32", "--warm-start", "x.pt"], "--warm-start: not an option of model resnet32"),
             (["--T", "5", "-o", "T=6"], "--T and -o T=... disagree; give one of them"),
             (["-o", "fast=maybe"], "-o fast=maybe: expected true or false (default True)")]
    for args, needle in cases:
        res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), *args])
        assert res.exit_code == 2, args
        assert needle in " ".join(res.output.split()), (args, res.output)
        assert "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_cli_aliases_and_options_give_the_same_config(monkeypatch, tmp_path):
    base = ["train", "--out", str(tmp_path / "r")]
    a = _captured_cli_config(monkeypatch, [*base, "--T", "5", "--dense", "--freeze-classifier", "--warm-start", "w.pt",
                                           "--classifier-lr-scale", "0.25"])
    b = _captured_cli_config(monkeypatch, [*base, "-o", "T=5", "-o", "fast=false", "--option", "freeze_classifier=true",
                                           "-o", "warm_start=w.pt", "-o", "classifier_lr_scale=0.25"])
    assert a == b and (a.options.T, a.options.fast, a.options.freeze_classifier) == (5, False, True)
    c = _captured_cli_config(monkeypatch, [*base, "--model", "resnet32", "-o", "units_per_block=2"])
    assert c.options.units_per_block == 2 and c.label == "resnet32"
    d = _captured_cli_config(monkeypatch, [*base, "-o", "decoder_widths=32,8"])
    assert d.options.decoder_widths == (32, 8)
