"""robust_bench_sc.benchmark(): the one-call Python API (issue 17, deliverable 7).

A tiny real classifier (a ridge-regression readout fitted on the first 50 CIFAR-10 test
images) on the first 8 of them, clean and a short ℓ∞ PGD; the numbers must be those of the
per-sample records and those ``scbench run`` computes for the same settings."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import robust_bench_sc
from robust_bench_sc.api import IN_MEMORY_REF, benchmark
from robust_bench_sc.cli import app
from robust_bench_sc.errors import RunError
from robust_bench_sc.paths import REPO_ROOT
from robust_bench_sc.storage import RunDir
from robust_bench_sc.summary import SUMMARY_COLUMNS
from robust_bench_sc.yamlio import ConfigError

TINY = '''
import torch
from torch import nn

from robust_bench_sc import Defense
from robust_bench_sc.data import load_test


def model(lam=10.0, n=50):
    """Ridge readout fitted on the first n test images: [0, 1] NCHW -> 10 logits."""
    d = load_test(n)
    X = d.x.reshape(n, -1).double()
    Y = torch.nn.functional.one_hot(d.y, 10).double()
    W = X.T @ torch.linalg.solve(X @ X.T + lam * torch.eye(n, dtype=torch.float64), Y)
    lin = nn.Linear(3 * 32 * 32, 10)
    with torch.no_grad():
        lin.weight.copy_(W.T.float())
        lin.bias.zero_()
    return nn.Sequential(nn.Flatten(), lin)


def make():
    return Defense(name="tiny", classifier=model(), description="ridge readout")
'''

# ε = 32/255: this readout keeps every one of the 8 images at 16/255 and loses half at 32/255
PGD = {"use": "linf_pgd_ce", "name": "pgd", "epsilon": "32/255", "steps": 5, "restarts": 1}
SUITE = """name: benchmark
seed: 0
data: {{n_images: 8, chunk_size: 4}}
defenses:
  - ref: "{plugin}:make"
    name: tiny
threat_models:
  - clean
  - use: linf_pgd_ce
    name: pgd
    epsilon: 32/255
    steps: 5
    restarts: 1
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("plugin") / "tiny_api.py"
    path.write_text(TINY)
    from robust_bench_sc.registry import load_reference

    return path, load_reference(f"{path}:model")


def _records(run_dir, defense, threat, chunks):
    rd = RunDir(run_dir)
    return [r for c in range(chunks) for r in rd.read_chunk(defense, threat, c)["records"]]


def test_benchmark_is_the_public_entry_point():
    assert robust_bench_sc.benchmark is benchmark
    assert "benchmark" in robust_bench_sc.__all__ and "benchmark" in dir(robust_bench_sc)


def test_benchmark_numbers_are_the_records_and_the_clis(tiny, tmp_path):
    plugin, model = tiny
    df = benchmark(model(), ["clean", PGD], n_images=8, chunk_size=4, out=tmp_path / "api", name="tiny", quiet=True)
    assert list(df.columns) == SUMMARY_COLUMNS
    assert list(df.threat_model) == ["clean", "pgd"] and set(df.defense) == {"tiny"}
    assert df.attrs == {"run_dir": str((tmp_path / "api").resolve()), "computed_jobs": 4, "reused_jobs": 0}
    # the numbers are those of the per-sample records
    for threat in ("clean", "pgd"):
        recs = _records(tmp_path / "api", "tiny", threat, 2)
        assert [r["index"] for r in recs] == list(range(8))
        row = df[df.threat_model == threat].iloc[0]
        assert row.n_images == 8
        assert row.clean_accuracy == pytest.approx(100 * sum(r["clean_correct"] for r in recs) / 8)
        assert row.robust_accuracy == pytest.approx(100 * sum(r["robust"] for r in recs) / 8)
    pgd = df.set_index("threat_model").loc["pgd"]
    assert pgd.clean_accuracy == 100.0 and pgd.robust_accuracy == 50.0  # the attack did work, not all of it
    assert pgd.epsilon == pytest.approx(32 / 255) and pgd.norm == "linf" and pgd.attack == "pgd"
    assert pgd.mean_linf == pytest.approx(32 / 255, rel=1e-3)
    # the run folder is a normal run folder: summary.csv is the DataFrame
    text = RunDir(tmp_path / "api").summary_csv_path.read_text()
    assert text == df.to_csv(index=False, float_format="%.4f")
    csv = pd.read_csv(RunDir(tmp_path / "api").summary_csv_path)
    meta = RunDir(tmp_path / "api").read_meta()
    assert meta["config"]["defenses"] == [{"ref": IN_MEMORY_REF, "name": "tiny", "params": {"key": "tiny"}}]
    assert meta["command"][0].startswith("robust_bench_sc.benchmark('tiny'")

    # the CLI on a suite file with the same settings computes the same numbers, sample by sample
    suite = tmp_path / "benchmark.yaml"
    suite.write_text(SUITE.format(plugin=plugin))
    r = CliRunner().invoke(app, ["run", str(suite), "--out", str(tmp_path / "cli"), "--quiet"])
    assert r.exit_code == 0, r.output
    cli_csv = pd.read_csv(RunDir(tmp_path / "cli").summary_csv_path)
    pd.testing.assert_frame_equal(cli_csv.drop(columns=["seconds"]), csv.drop(columns=["seconds"]))
    for threat in ("clean", "pgd"):
        ours, theirs = _records(tmp_path / "api", "tiny", threat, 2), _records(tmp_path / "cli", "tiny", threat, 2)
        keys = ("index", "clean_pred", "adv_pred", "robust", "linf", "l2", "flags")
        assert [[r.get(k) for k in keys] for r in ours] == [[r.get(k) for k in keys] for r in theirs]
    # a Defense object under the same name is the same defense: same fingerprint, same numbers
    from robust_bench_sc.registry import load_reference

    again = benchmark(load_reference(f"{plugin}:make")(), ["clean", PGD], n_images=8, chunk_size=4,
                      out=tmp_path / "api", quiet=True)
    assert again.attrs["computed_jobs"] == 0


def test_benchmark_resumes_and_grows_without_recomputing(tiny, tmp_path, monkeypatch):
    from robust_bench_sc import worker

    _, model = tiny
    m = model()
    first = benchmark(m, ["clean", PGD], n_images=8, chunk_size=4, out=tmp_path / "r", name="tiny", quiet=True)
    ran = []
    real_run = worker.Worker.run
    monkeypatch.setattr(worker.Worker, "run", lambda self, job, cb=None: ran.append(job.key) or real_run(self, job, cb))
    mtimes = {p: p.stat().st_mtime_ns for p in RunDir(tmp_path / "r").records_dir.rglob("*.json")}
    second = benchmark(m, ["clean", PGD], n_images=8, chunk_size=4, out=tmp_path / "r", name="tiny", quiet=True)
    assert ran == [] and (second.attrs["computed_jobs"], second.attrs["reused_jobs"]) == (0, 4)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # no record rewritten
    pd.testing.assert_frame_equal(first, second)
    # more images: only the new chunks run; the old records keep their numbers
    grown = benchmark(m, ["clean", PGD], n_images=12, chunk_size=4, out=tmp_path / "r", name="tiny", quiet=True)
    assert sorted(ran) == ["tiny/clean/2", "tiny/pgd/2"]
    assert (grown.attrs["computed_jobs"], grown.attrs["reused_jobs"]) == (2, 4)
    assert list(grown.n_images) == [12, 12]
    assert _records(tmp_path / "r", "tiny", "pgd", 2) == [r for r in _records(tmp_path / "r", "tiny", "pgd", 3)[:8]]
    history = RunDir(tmp_path / "r").read_meta()["history"]
    assert len(history) == 2


def test_a_different_model_into_the_same_folder_is_refused(tiny, tmp_path):
    _, model = tiny
    benchmark(model(), ["clean"], n_images=4, out=tmp_path / "r", name="tiny", quiet=True)
    other = model(lam=100.0)  # other weights, same name
    with pytest.raises(RunError, match=r"defense 'tiny' loads other weights than its records in .* \(fingerprint "
                                       r"[0-9a-f]{16} recorded, [0-9a-f]{16} now\)"):
        benchmark(other, ["clean"], n_images=4, out=tmp_path / "r", name="tiny", quiet=True)
    with pytest.raises(RunError, match="holds a run of suite 'benchmark', not 'other'"):
        benchmark(other, ["clean"], n_images=4, out=tmp_path / "r", name="tiny", suite_name="other", quiet=True)


def test_a_registered_name_gives_the_committed_clean_predictions(tmp_path):
    df = benchmark("madry_pgd_at", ["clean"], n_images=10, out=tmp_path / "m", quiet=True, threads=1)
    ours = _records(tmp_path / "m", "madry_pgd_at", "clean", 1)
    committed = json.loads((REPO_ROOT / "results/clean/records/madry_pgd_at/clean/chunk_00000.json").read_text())
    want = committed["records"][:10]
    assert [r["clean_pred"] for r in ours] == [r["clean_pred"] for r in want]
    assert df.clean_accuracy.iloc[0] == pytest.approx(100 * sum(r["clean_correct"] for r in want) / 10)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_images": 0}, "benchmark(): n_images=0: must be a whole number in >= 1"),
    ({"n_images": -5}, "benchmark(): n_images=-5: must be a whole number in >= 1"),
    ({"n_images": 2.5}, "benchmark(): n_images=2.5: must be a whole number"),
    ({"chunk_size": 0}, "benchmark(): chunk_size=0: must be a whole number in >= 1"),
    ({"threat_models": ["linf_pgd"]}, "benchmark(): threat_models[0]: unknown threat model 'linf_pgd' (did you "
                                      "mean 'linf_pgd_cw', 'linf_pgd_ce'"),
    ({"threat_models": "clean"}, "benchmark(): threat_models: a non-empty list"),
    ({"threat_models": []}, "benchmark(): threat_models: a non-empty list"),
    ({"threat_models": [{"attack": "pgd", "norm": "l3", "epsilon": 0.1}]},
     "benchmark(): threat_models[0]: norm: Input should be 'linf', 'l2' or 'l1' (got 'l3')"),
    ({"threat_models": [{"attack": "pgdd"}]}, "attack: unknown value 'pgdd' (did you mean 'pgd'?)"),
    ({"threat_models": [{"use": "linf_pgd_ce", "stpes": 3}]}, "benchmark(): threat_models[0]: stpes: unknown key "
                                                             "(did you mean 'steps', 'step_size', 'l1_step'?)"),
    ({"threat_models": [42]}, "benchmark(): threat_models[0]: expected a name in attack_suites/, a mapping or a "
                              "ThreatModel, got int"),
    ({"threat_models": ["clean", "clean"]}, "threat model names must be unique; repeated: clean"),
    ({"device": "tpu"}, "benchmark(): device='tpu': allowed values are cpu, cuda, cuda:N"),
    ({"threads": 0}, "benchmark(): threads=0: must be a whole number >= 1"),
    ({"params": {"T": 3}}, "benchmark(): params: only for a registered name or 'module:attr' factory, not for a "
                           "Sequential object"),
    ({"defense": 42}, "benchmark(): defense: expected a robust_bench_sc.Defense, a torch nn.Module, a registered "
                      "defense name or 'module:attr', got int"),
    ({"threat_models": ["clean", PGD], "worst_case_over": ["pgd", "x"]},
     "benchmark(): worst_case_over: unknown threat model 'x'"),
])
def test_bad_input_is_one_line_naming_the_argument(tmp_path, kwargs, message):
    kwargs = {"defense": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10)),
              "threat_models": ["clean"], "n_images": 4, "out": tmp_path / "r", "quiet": True, **kwargs}
    with pytest.raises(ConfigError) as exc:
        benchmark(**kwargs)
    text = str(exc.value)
    assert message in text and "\n" not in text
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_an_unknown_registered_name_is_refused_before_a_run_folder_is_written(tmp_path):
    with pytest.raises(RunError, match=r"defense 'madry_pgd': unknown defense 'madry_pgd' \(did you mean "
                                       r"'madry_pgd_at'"):
        benchmark("madry_pgd", ["clean"], n_images=4, out=tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists()


def test_worst_case_over_adds_the_per_image_worst_case_row(tiny, tmp_path):
    _, model = tiny
    ce, cw = dict(PGD), {**PGD, "name": "pgd_cw", "loss": "cw"}
    df = benchmark(model(), ["clean", ce, cw], n_images=8, chunk_size=4, out=tmp_path / "w", name="tiny", quiet=True,
                   worst_case_over=["pgd", "pgd_cw"])
    rows = df.set_index("threat_model")
    assert list(df.threat_model) == ["clean", "pgd", "pgd_cw", "worst case"]
    robust = {t: [r["robust"] for r in _records(tmp_path / "w", "tiny", t, 2)] for t in ("pgd", "pgd_cw")}
    both = sum(a and b for a, b in zip(robust["pgd"], robust["pgd_cw"]))
    assert rows.loc["worst case", "robust_accuracy"] == pytest.approx(100 * both / 8)
    assert rows.loc["worst case", "robust_accuracy"] <= min(rows.loc["pgd", "robust_accuracy"],
                                                           rows.loc["pgd_cw", "robust_accuracy"])


def test_a_classifier_at_chance_is_warned_about_and_a_working_one_is_not(tiny, tmp_path, capsys):
    """A model handed inputs it does not expect classifies at chance; its robust accuracy is a
    plausible-looking 0 %. The run says so, with the test it used."""
    from torch import nn

    class Constant(nn.Module):  # predicts class 0 whatever the image
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.zeros(x.shape[0], dtype=torch.long), 10).float() + 0 * x.sum()

    plugin, model = tiny
    df = benchmark(Constant(), ["clean"], n_images=20, chunk_size=10, out=tmp_path / "c", name="const")
    n0 = int((robust_bench_sc.data.load_test(20).y == 0).sum())  # the images labelled 0: all it gets right
    assert float(df.clean_accuracy.iloc[0]) == pytest.approx(100 * n0 / 20)
    err = " ".join(capsys.readouterr().err.split())
    assert f"warning: defense 'const': clean accuracy {100 * n0 / 20:.1f}% ({n0}/20) is not above chance (1/10; " \
           "one-sided binomial test p = " in err, err
    assert "check what the defense expects: scbench feeds float images in [0, 1], NCHW, RGB, unnormalised" in err
    benchmark(model(), ["clean"], n_images=20, chunk_size=10, out=tmp_path / "m", name="tiny")
    assert "not above chance" not in capsys.readouterr().err
