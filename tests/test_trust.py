"""Issue 34: labels that collide or escape, budgets that cannot attack, checks that cannot fail,
a caller's model changed, a YAML alias bomb, booleans read as numbers, and the one-line errors.

Each test is the issue's repro on tiny inputs (a linear toy "defense" with a bias towards one
class, the first 8 CIFAR-10 test images, a 1-2 step PGD) and fails without its fix. The last
test fuzzes the suite loader and ``--set`` with hypothesis (docs/trust-and-safety.md lists it all).
"""

from __future__ import annotations

import json
import math
import os
import time

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import nn
from typer.testing import CliRunner

from robust_bench_sc.api import benchmark
from robust_bench_sc.cli import app
from robust_bench_sc.config import load_suite, parse_set
from robust_bench_sc.errors import RunError
from robust_bench_sc.plan import plan_jobs
from robust_bench_sc.records import load_samples
from robust_bench_sc.runner import run_suite
from robust_bench_sc.storage import RunDir, check_meta, label_clashes, safe_name
from robust_bench_sc.yamlio import MAX_EXPANDED_NODES, ConfigError, load_yaml

torch.set_num_threads(1)

PLUGIN = '''
import torch
from torch import nn
from robust_bench_sc import Defense


class Toy(nn.Module):
    """A fixed random linear map plus a bias of 3 towards class ``bias``."""

    def __init__(self, seed, bias, dtype, meta, fail=False):
        super().__init__()
        self.fail = fail
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(10, 3 * 32 * 32, generator=g) * 0.05)
        self.bias, self.dtype, self.meta = bias, dtype, meta

    def forward(self, x):
        if self.fail:
            raise ValueError("my classifier broke")
        out = x.flatten(1) @ self.w.t() + 3 * nn.functional.one_hot(torch.tensor(self.bias), 10).float()
        if self.meta:
            return torch.empty(out.shape, device="meta")
        return out.to(getattr(torch, self.dtype))


def make(seed=0, bias=6, dtype="float32", meta=False, fail=False):
    return Defense(name="toy", classifier=Toy(seed, bias, dtype, meta, fail))


def quits():
    import sys
    sys.exit(3)
'''


def pgd(name="pgd", step="eps/4", eps="8/255", steps=2):
    return (f'{{attack: pgd, name: "{name}", norm: linf, epsilon: {eps}, steps: {steps}, step_size: "{step}", '
            'restarts: 1}')


@pytest.fixture()
def toy(tmp_path):
    p = tmp_path / "plug" / "toy.py"
    p.parent.mkdir()
    p.write_text(PLUGIN)
    return f'"{p}:make"'


def _suite(tmp_path, defenses, threats, extra="", name="suite"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"name: {name}\nseed: 0\ndata: {{n_images: 8, chunk_size: 8}}\ndefenses: {defenses}\n"
                 f"threat_models: {threats}\n{extra}")
    return p


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_error(res, *needles):
    """Exit code 2, no traceback, one line saying what is wrong."""
    out = res.output
    assert res.exit_code == 2, out
    assert "Traceback" not in out and out.count("error:") == 1, out
    assert "\n" not in out[out.index("error:"):].strip(), out  # the error is one line, the last
    for n in needles:
        assert n in out, (n, out)
    return out


# -- 1. labels that map to one folder ----------------------------------------------------

def test_labels_sharing_a_records_folder_are_refused_naming_both(tmp_path, toy):
    # was: x_y's row showed x/y's numbers (its job never computed); the threat model t_1 showed t/1's
    cases = [(f'[{{ref: {toy}, name: "x/y"}}, {{ref: {toy}, name: x_y, params: {{bias: 8}}}}]', f"[{pgd()}]",
              ("defense names 'x/y' and 'x_y'", "'x_y'")),
             (f'[{{ref: {toy}, name: "☃"}}, {{ref: {toy}, name: "★", params: {{bias: 8}}}}]', "[clean]",
              ("defense names '☃' and '★'", "'unnamed'")),
             (f"[{{ref: {toy}}}]", f'[{pgd("t/1")}, {{attack: none, name: t_1}}]', ("threat model names 't/1' and 't_1'",))]
    for i, (defenses, threats, needles) in enumerate(cases):
        suite = _suite(tmp_path, defenses, threats, name=f"s{i}")
        with pytest.raises(ConfigError, match="would share the records folder"):
            load_suite(suite)
        _one_error(_cli("run", suite, "--out", tmp_path / f"out{i}", "--quiet"), *needles)
        assert not (tmp_path / f"out{i}").exists()
    # the API refuses them too
    with pytest.raises(ConfigError, match="threat model names 'a/b' and 'a_b'"):
        benchmark(nn.Flatten(), [{"attack": "none", "name": "a/b"}, {"attack": "none", "name": "a_b"}], n_images=2,
                  out=tmp_path / "api", quiet=True)
    # distinct labels keep distinct folders, and the mapping is the identity on plain names
    assert label_clashes(["natural", "madry_pgd_at", "linf_pgd_ce", "x.y", "x-y"]) == []
    assert [safe_name(n) for n in ("natural", "linf_8/255", "..", ".", "☃", "a..b")] == \
        ["natural", "linf_8_255", "unnamed", "unnamed", "unnamed", "a..b"]


def test_tables_never_show_a_record_under_another_jobs_row(tmp_path, toy):
    """A record copied under another job's name (what two colliding labels did) is refused
    when the tables are built, not only when records are reused."""
    suite = load_suite(_suite(tmp_path, f"[{{ref: {toy}, name: a}}, {{ref: {toy}, name: b, params: {{bias: 8}}}}]",
                              "[clean]"))
    out = run_suite(suite, out=tmp_path / "r", show_progress=False)
    jobs = plan_jobs(suite)
    s = pd.read_csv(out.run_dir / "summary.csv").set_index("defense")
    assert (s.loc["a", "clean_accuracy"], s.loc["b", "clean_accuracy"]) == (37.5, 0.0)
    layout = RunDir(out.run_dir)
    layout.chunk("b", "clean", 0).write_bytes(layout.chunk("a", "clean", 0).read_bytes())
    with pytest.raises(RunError, match="a record of another job .* never shown under this job's row"):
        load_samples(out.run_dir, jobs, suite)


def test_a_plugin_without_name_is_labelled_by_its_defense_name(tmp_path, toy):
    """Issue 36: ``{ref: file.py:make}`` with no ``name:`` is the row ``toy`` (its
    ``Defense(name="toy")``) in the tables, its records folder and run.json, as if the suite
    said ``name: toy``; a registry name keeps the name given."""
    suite = _suite(tmp_path, f"[{{ref: {toy}}}, madry_pgd_at]", "[clean]", name="own")
    out = run_suite(load_suite(suite), out=tmp_path / "run", show_progress=False, probes=False)
    assert list(out.summary["defense"]) == ["toy", "madry_pgd_at"]
    assert sorted(p.name for p in (out.run_dir / "records").iterdir()) == ["madry_pgd_at", "toy"]
    meta = RunDir(out.run_dir).read_meta()
    assert [d["name"] for d in meta["config"]["defenses"]] == ["toy", ""]
    assert "| toy | " in RunDir(out.run_dir).read_summary_md()
    # the same command resumes: the label is the same, every job is recorded
    again = run_suite(load_suite(suite), out=tmp_path / "run", show_progress=False, probes=False)
    assert (again.computed_chunks, again.resumed_chunks) == (0, 2)
    res = _cli("validate", suite)
    assert res.exit_code == 0 and "toy (" in res.output and ":make (" not in res.output, res.output
    # an explicit name wins; a registry name is never built to be named (sparse_coding builds as sparse_coding_T15)
    from robust_bench_sc.plugins import name_defenses

    s = name_defenses(load_suite(_suite(tmp_path, f"[{{ref: {toy}, name: mine}}, {{ref: sparse_coding, params: {{T: 15}}}}]",
                                        "[clean]", name="kept")))
    assert [d.label for d in s.defenses] == ["mine", "sparse_coding"]


def test_two_defenses_ending_on_one_label_are_one_line(tmp_path, toy):
    """Two defenses whose labels only meet once the plug-ins name themselves would share
    records: refused in one line naming both entries, before anything is written."""
    cases = [(f"[{{ref: {toy}}}, {{ref: {toy}, name: toy, params: {{bias: 8}}}}]", "the label 'toy'"),
             (f"[{{ref: {toy}}}, {{ref: madry_pgd_at, name: toy}}]", "the label 'toy'"),
             (f"[{{ref: {toy}}}, {{ref: madry_pgd_at, name: ' toy'}}]", "the records folder")]
    for i, (defenses, needle) in enumerate(cases):
        suite = _suite(tmp_path, defenses, "[clean]", name=f"clash{i}")
        load_suite(suite)  # the labels differ until the plug-in is built
        out = _one_error(_cli("run", suite, "--out", tmp_path / f"o{i}", "--quiet"), needle, "defenses[0]",
                         "its Defense(name=...)", "defenses[1]", "give one a name: in the suite")
        assert not (tmp_path / f"o{i}").exists(), out
        _one_error(_cli("validate", suite), needle)


# -- 2. nothing is written outside --out -------------------------------------------------

def test_a_dotdot_label_never_writes_outside_out(tmp_path, toy):
    # was: records/../.. put chunk_00000.json in the folder above --out, over a user's file
    home = tmp_path / "home"
    home.mkdir()
    (home / "chunk_00000.json").write_text("the user's file")
    suite = _suite(tmp_path, f'[{{ref: {toy}, name: ".."}}]', '[{attack: none, name: ".."}]')
    res = _cli("run", suite, "--out", home / "out", "--quiet")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in home.iterdir()) == ["chunk_00000.json", "out"]
    assert (home / "chunk_00000.json").read_text() == "the user's file"
    assert (home / "out" / "records" / "unnamed" / "unnamed" / "chunk_00000.json").is_file()
    # a records subfolder that is a symlink to elsewhere is not followed: one line, nothing written there
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    suite2 = _suite(tmp_path, f"[{{ref: {toy}, name: d}}]", "[clean]", name="s2")
    (home / "out2" / "records").mkdir(parents=True)
    (home / "out2" / "run.json").write_text(json.dumps({"suite": "s2"}))
    (home / "out2" / "records" / "d").symlink_to(elsewhere, target_is_directory=True)
    _one_error(_cli("run", suite2, "--out", home / "out2", "--quiet"), "outside the run folder")
    assert list(elsewhere.iterdir()) == []


# -- 3. a PGD step that cannot move ------------------------------------------------------

@pytest.mark.parametrize("step, shown", [("0", "got 0.0"), ("-0.01", "got -0.01"), ("eps*-1", "-0.0313725")])
def test_pgd_step_size_must_be_positive(tmp_path, toy, step, shown):
    # was: accepted, and natural reported 100 % robust (no step ever moved an image)
    suite = _suite(tmp_path, f"[{{ref: {toy}}}]", f"[{pgd(step=step)}]")
    _one_error(_cli("validate", suite), "threat_models.0.step_size", shown, "must be > 0")
    _one_error(_cli("validate", _suite(tmp_path, f"[{{ref: {toy}}}]", f"[{pgd()}]", name="ok"), "--set",
                    f"step_size={step}"), "step_size", "must be > 0")


# -- 4. benchmark(): in-memory models are told apart -------------------------------------

class _Always(nn.Module):
    """A parameter-free classifier that always answers class ``k``."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        return nn.functional.one_hot(torch.full((len(x),), self.k), 10).float() + 0 * x.sum((1, 2, 3))[:, None]


class _AlwaysThree(_Always):
    def __init__(self):
        super().__init__(3)


def test_benchmark_never_reuses_another_in_memory_models_records(tmp_path):
    # was: the second model (same name, no weights) computed 0 jobs and showed the first's 12.5 %
    first = benchmark(_Always(0), ["clean"], n_images=8, out=tmp_path / "r", name="m", quiet=True)
    assert first.clean_accuracy[0] == 12.5  # label 0 is 1 of the first 8
    again = benchmark(_Always(0), ["clean"], n_images=8, out=tmp_path / "r", name="m", quiet=True)
    assert again.attrs["computed_jobs"] == 0  # the same code and outputs: resumed
    for other in (_Always(3), _AlwaysThree()):  # other outputs; other code with the same outputs
        with pytest.raises(RunError, match=r"defense 'm' loads other weights than its records .* \(fingerprint"):
            benchmark(other, ["clean"], n_images=8, out=tmp_path / "r", name="m", quiet=True)
    fresh = benchmark(_AlwaysThree(), ["clean"], n_images=8, out=tmp_path / "r3", name="m", quiet=True)
    assert fresh.clean_accuracy[0] == 12.5 and fresh.attrs["computed_jobs"] == 1  # label 3: 1 of 8


# -- 5. scbench check options ------------------------------------------------------------

@pytest.mark.parametrize("option, value", [("--tolerance", "nan"), ("--tolerance", "-5"), ("--alpha", "7"),
                                           ("--alpha", "0"), ("--norm-tolerance", "inf")])
def test_check_refuses_a_tolerance_or_alpha_that_cannot_fail(tmp_path, option, value):
    # was: --tolerance nan passed a 50-point drop with exit 0 (every comparison with nan is false)
    _one_error(_cli("check", tmp_path, "--baseline", tmp_path / "b.json", option, value), option, "must be a finite")


# -- 6. benchmark() leaves the caller's model as it found it -----------------------------

def test_benchmark_restores_mode_and_requires_grad(tmp_path):
    # was: left in eval mode with requires_grad False everywhere: later training updated nothing
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10), nn.Dropout(0.1))
    model.train()
    model[2].eval()
    model[1].bias.requires_grad_(False)
    benchmark(model, ["clean", {"attack": "pgd", "name": "p", "norm": "linf", "epsilon": "1/255", "steps": 1,
                                "restarts": 1}], n_images=4, out=tmp_path / "r", quiet=True)
    assert [m.training for m in model.modules()] == [True, True, True, False]
    assert [p.requires_grad for p in model.parameters()] == [True, False]


# -- 8. YAML alias bombs -----------------------------------------------------------------

def test_a_yaml_alias_bomb_is_refused_before_it_is_built(tmp_path, toy):
    # was: 9 levels of 10 aliases grew past 3 GB, then MemoryError (or a full machine)
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + \
        [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    p = tmp_path / "bomb.yaml"
    p.write_text(f"name: bomb\ndefenses:\n  - ref: {toy}\n    params:\n" + "".join(f"      {x}\n" for x in levels)
                 + "threat_models: [clean]\n")
    t0 = time.perf_counter()
    _one_error(_cli("validate", p), "bomb.yaml", f"expand to more than {MAX_EXPANDED_NODES} values")
    assert time.perf_counter() - t0 < 5
    (tmp_path / "loop.yaml").write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="line 1: a YAML alias refers to the value that contains it"):
        load_yaml(tmp_path / "loop.yaml")
    # a few ordinary aliases are fine
    (tmp_path / "ok.yaml").write_text("a: &a {steps: 2}\nb: *a\nc: [*a, *a]\n")
    assert load_yaml(tmp_path / "ok.yaml")["c"] == [{"steps": 2}, {"steps": 2}]


# -- 9. booleans are not numbers; validate checks every profile --------------------------

def test_a_boolean_is_not_a_count_and_validate_checks_every_profile(tmp_path, toy):
    # was: --set steps=true ran 1 step; a profile's bad set passed validate unless --profile named it
    suite = _suite(tmp_path, f"[{{ref: {toy}}}]", f"[{pgd()}]")
    _one_error(_cli("validate", suite, "--set", "steps=true"), "--set steps=true", "boolean true")
    _one_error(_cli("validate", suite, "--set", "seed=false"), "--set seed=false", "boolean false")
    _one_error(_cli("validate", _suite(tmp_path, f"[{{ref: {toy}, max_images: true}}]", "[clean]", name="b")),
               "max_images", "boolean true")
    profiled = _suite(tmp_path, f"[{{ref: {toy}}}]", f"[{pgd()}]",
                      "profiles:\n  fine: {n_images: 4}\n  quick: {set: {steps: 0}}\n", name="p")
    _one_error(_cli("validate", profiled), "profile 'quick'", "set.steps", "greater than or equal to 1")
    assert _cli("validate", profiled, "--profile", "fine").exit_code == 0  # --profile: that profile only


# -- the one-line errors -----------------------------------------------------------------

def test_float64_and_float16_logits_are_attacked_like_float32(tmp_path, toy):
    # was: internal error at attacks/pgd.py (index_put of Double / Half into a Float tensor)
    robust = {}
    for dtype in ("float32", "float64", "float16"):
        suite = load_suite(_suite(tmp_path, f"[{{ref: {toy}, params: {{dtype: {dtype}}}}}]",
                                  f"[{pgd(eps='1/255')}]", name=dtype))
        out = run_suite(suite, out=tmp_path / dtype, show_progress=False)
        s = pd.read_csv(out.run_dir / "samples.csv")
        robust[dtype] = s.robust.tolist()
    assert robust["float64"] == robust["float32"] and sum(robust["float32"]) == 2  # the bias class (6) at 1/255
    assert len(robust["float16"]) == 8


def test_meta_logits_malformed_set_and_wrong_run_json_fields_are_one_line(tmp_path, toy):
    meta = _suite(tmp_path, f"[{{ref: {toy}, params: {{meta: true}}}}]", "[clean]", name="meta")
    _one_error(_cli("run", meta, "--out", tmp_path / "m", "--quiet"), "logits on device 'meta'")
    suite = _suite(tmp_path, f"[{{ref: {toy}}}]", f"[{pgd()}]")
    for value in ("steps=[1,2", "steps=!!python/name:os.system", "steps={a: 1"):
        _one_error(_cli("validate", suite, "--set", value), f"--set '{value}'", "not valid YAML")
    with pytest.raises(ConfigError, match="--set 'steps=\\[1,2': steps"):
        parse_set(["steps=[1,2"])
    clean = _suite(tmp_path, f"[{{ref: {toy}}}]", "[clean]", name="clean")
    out = tmp_path / "c"
    assert _cli("run", clean, "--out", out, "--quiet").exit_code == 0
    good = json.loads((out / "run.json").read_text())
    for field, value in (("config", "oops"), ("history", "x"), ("n_jobs", True), ("config", {"defenses": [3]})):
        (out / "run.json").write_text(json.dumps({**good, field: value}))
        for cmd in (("run", clean, "--out", out, "--quiet"), ("report", out), ("status", out)):
            _one_error(_cli(*cmd), "run.json: field", "not as scbench wrote it")
    with pytest.raises(ValueError, match="field 'config.threat_models' should be a list"):
        check_meta({"config": {"threat_models": "x"}}, "run.json")


def test_a_run_stopped_on_an_error_says_so_and_a_failed_start_leaves_nothing(tmp_path, toy):
    # was: status 'running' left in run.json, later archived as 'killed' (and shown as killed?)
    bad = _suite(tmp_path, f"[{{ref: {toy}, name: d, params: {{fail: true}}}}]", "[clean]", name="s")
    # --no-probes: the probes would find the broken defense before any job (tested in test_probes)
    res = _cli("run", bad, "--out", tmp_path / "r", "--quiet", "--no-probes")  # message, its frame, --debug
    assert res.exit_code == 2 and "plug-in code raised ValueError: my classifier broke" in res.output, res.output
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["status"] == "failed" and "my classifier broke" in meta["error"]
    assert "stopped on an error" in _cli("status", tmp_path / "r").output
    good = _suite(tmp_path, f"[{{ref: {toy}, name: d}}]", "[clean]", name="s")
    assert _cli("run", good, "--out", tmp_path / "r", "--quiet").exit_code == 0
    assert [h["status"] for h in json.loads((tmp_path / "r" / "run.json").read_text())["history"]] == ["failed"]
    # sys.exit() in a factory: one line naming it, not a silent exit
    quits = toy.replace(":make", ":quits")
    _one_error(_cli("validate", _suite(tmp_path, f"[{{ref: {quits}}}]", "[clean]", name="q")), "called sys.exit(3)")
    # a start that fails before anything is written leaves no empty --out behind
    nodata = _suite(tmp_path, f"[{{ref: {toy}}}]", "[clean]", name="n").read_text().replace(
        "chunk_size: 8}", f"chunk_size: 8, data_dir: {tmp_path / 'no_data'}}}")
    (tmp_path / "n.yaml").write_text(nodata)
    res = _cli("run", tmp_path / "n.yaml", "--out", tmp_path / "fresh", "--quiet")
    assert res.exit_code == 2 and not (tmp_path / "fresh").exists(), res.output


# -- fuzz: suite YAML and --set values ---------------------------------------------------

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=12), st.sampled_from(["8/255", "eps/4", "eps*-1", "1/0", "[1,2", "!!python/x",
                                                            "*a", "&a", "{", "..", "x/y", "☃", "epsilon"]))
_FIELDS = ["steps", "restarts", "epsilon", "step_size", "norm", "seed", "n_images", "chunk_size", "batch_size",
           "max_images", "random_start", "loss", "eot", "pgd.steps", "nope.steps", "", "data.n_images"]


def _fuzz_suite(tmp_path, defense_name, threat, n_images):
    return (f"name: fuzz\ndata: {{n_images: {json.dumps(n_images)}, chunk_size: 4}}\n"
            f"defenses:\n  - {{ref: natural, name: {json.dumps(defense_name)}}}\n"
            f"threat_models:\n  - clean\n  - {json.dumps(threat)}\n")


@settings(max_examples=int(os.environ.get("SCBENCH_FUZZ_EXAMPLES", 50)), deadline=None, derandomize=True,
          phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found, quickly
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(key=st.sampled_from(_FIELDS), value=_SCALARS, name=st.one_of(st.text(max_size=6), _SCALARS),
       field=st.sampled_from(_FIELDS[:13]), raw=_SCALARS, n_images=_SCALARS, junk=st.text(max_size=30))
def test_fuzz_suite_yaml_and_set_give_a_suite_or_one_config_error(tmp_path, key, value, name, field, raw, n_images,
                                                                 junk):
    """Arbitrary values in a suite file and in ``--set``: a validated suite or one ConfigError
    line, never another exception. ``pytest --hypothesis-seed=N -p no:randomly`` with a larger
    ``max_examples`` (env SCBENCH_FUZZ_EXAMPLES) runs longer."""
    threat = {"attack": "pgd", "name": "pgd", "norm": "linf", "epsilon": "8/255", "steps": 2, field: raw}
    p = tmp_path / "fuzz.yaml"
    for text in (_fuzz_suite(tmp_path, name, threat, n_images), junk):
        p.write_text(text)
        for overrides in ([], [f"{key}={value}"], [f"{key}={json.dumps(value)}"]):
            try:
                suite = load_suite(p, overrides=overrides)
            except ConfigError as exc:
                # one line per problem (pydantic may find several), each naming the file or option
                lines = str(exc).splitlines()
                assert lines and all(ln.startswith((str(p), "--set")) for ln in lines), str(exc)
                assert "Traceback" not in str(exc)
                if not overrides:  # the command line says the same, exit 2, one error
                    res = _cli("validate", p)
                    assert res.exit_code == 2 and res.output.count("error:") == 1, res.output
                    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == len(lines)
                continue
            # a valid config: its numbers are finite and positive where they are budgets
            t = suite.threat("pgd")
            assert isinstance(t.steps, int) and not isinstance(t.steps, bool) and t.steps >= 1
            assert math.isfinite(t.epsilon) and t.epsilon > 0 and t.step > 0
            assert 1 <= suite.data.n_images <= 1000
            assert label_clashes([d.label for d in suite.defenses]) == []


def test_report_does_not_overwrite_a_file_it_was_not_told_to_replace(tmp_path):
    """Issue 34, smaller: `report --out` onto an existing file overwrote it silently; now it is
    refused in one line (exit 2) and the file is untouched, unless --force."""
    from typer.testing import CliRunner

    from robust_bench_sc.cli import app
    from robust_bench_sc.paths import REPO_ROOT

    run = REPO_ROOT / "results" / "table1_quick"
    if not (run / "run.json").exists():
        run = next(p.parent for p in sorted((REPO_ROOT / "results").glob("*/run.json")))
    target = tmp_path / "mine.md"
    target.write_text("my notes\n")
    res = CliRunner().invoke(app, ["report", str(run), "--out", str(target)])
    assert res.exit_code == 2 and "the file exists; pass --force" in res.output
    assert target.read_text() == "my notes\n"
    res = CliRunner().invoke(app, ["report", str(run), "--out", str(target), "--force"])
    assert res.exit_code == 0, res.output
    assert target.read_text() != "my notes\n" and "|" in target.read_text()


def test_a_full_disk_is_one_line_and_the_same_command_resumes(tmp_path, toy, monkeypatch):
    """Issue 34: a full disk gave an internal error. Now: one line saying so (exit 2), every job
    recorded before it stays, and the same command resumes once there is space."""
    import errno

    from robust_bench_sc.storage import RunDir

    suite = _suite(tmp_path, f"[{{ref: {toy}}}]", f"[clean, {pgd()}]")
    out = tmp_path / "run"
    real = RunDir.write_chunk
    written: list[str] = []

    def fills_up(self, defense, threat, chunk, blob):
        if written:  # the first job's records fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(threat)
        return real(self, defense, threat, chunk, blob)

    monkeypatch.setattr(RunDir, "write_chunk", fills_up)
    _one_error(_cli("run", suite, "--out", out, "--quiet", "--threads", 1), "no space left on the device",
               "run the same command again to resume")
    monkeypatch.setattr(RunDir, "write_chunk", real)
    assert len(list((out / "records").rglob("chunk_*.json"))) == 1
    res = _cli("run", suite, "--out", out, "--quiet", "--threads", 1)
    assert res.exit_code == 0, res.output
    assert len(list((out / "records").rglob("chunk_*.json"))) == 2


def test_status_at_the_moment_a_run_ends_is_not_killed(tmp_path, toy, monkeypatch):
    """Issue 34, smaller: `status` read run.json ("running"), then found the lock released by a
    run that had just ended, and said "killed?". The run writes how it ended before it releases
    the lock, so status reads run.json again when it finds no live writer."""
    from robust_bench_sc.run_status import run_status
    from robust_bench_sc.storage import RunDir, RunLock

    suite = _suite(tmp_path, f"[{{ref: {toy}}}]", "[clean]")
    out = tmp_path / "run"
    assert _cli("run", suite, "--out", out, "--quiet", "--threads", 1).exit_code == 0
    layout = RunDir(out)
    meta = layout.read_meta()
    assert meta["status"] == "complete"
    layout.write_meta({**meta, "status": "running"})  # as a status call sees it while the run is live

    def run_ends_now(self):  # between status's read of run.json and of the lock, the run ends
        layout.write_meta(meta)
        return None

    monkeypatch.setattr(RunLock, "owner", run_ends_now)
    st = run_status(out)
    assert st.state == "complete" and "killed" not in st.state
    monkeypatch.setattr(RunLock, "owner", lambda self: None)  # a run that really died: still said
    layout.write_meta({**meta, "status": "running"})
    assert "killed?" in run_status(out).state
