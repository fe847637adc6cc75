"""Issue 17 (one step of redesign): command plug-ins through an entry point, the core never
importing a plug-in, no import circle among robust_bench_sc modules, one owner of the run
folder's layout, statistics in a module of their own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from robust_bench_sc import cli
from robust_bench_sc.cli import app
from robust_bench_sc.paths import REPO_ROOT
from robust_bench_sc.registry import Registry

PKG = REPO_ROOT / "robust_bench_sc"

HELLO = '''
import typer


def hello(who: str = typer.Option("world", "--who", help="whom to greet")):
    """Say hello (a test command plug-in)."""
    print(f"hello {who}")


def explode():
    """Raise from plug-in code."""
    raise ValueError("the plug-in broke")
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """The installed command plug-ins plus test ones: two that work, three broken ones, a clash."""
    (tmp_path / "scbench_test_cmds.py").write_text(HELLO)
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh = Registry(cli.COMMANDS.kind, cli.COMMANDS_GROUP, accepts=cli.COMMANDS._accepts,
                     expected=cli.COMMANDS.expected)  # the installed ones come from the entry points
    for name, target in [("hello", "scbench_test_cmds:hello"), ("explode", "scbench_test_cmds:explode"),
                         ("gone", "scbench_no_such_module_xyz:cmd"), ("notfunc", "robust_bench_sc.cli:COMMANDS_GROUP"),
                         ("noattr", "scbench_test_cmds:missing"), ("run", "scbench_test_cmds:hello"),
                         ("figures", "scbench_test_cmds:hello")]:  # the last clashes with an installed plug-in
        fresh.register(name, target)
    monkeypatch.setattr(cli, "COMMANDS", fresh)
    return fresh


def test_sparse_coding_commands_are_registered_by_entry_point():
    names = {name: cli.COMMANDS.target(name) for name in cli.COMMANDS.names()}
    assert names == {"learn-dictionary": "defenses.sparse_coding.commands:learn_dictionary",
                     "figures": "defenses.sparse_coding.commands:figures"}
    # the console script installed beside this interpreter (the venv's), whatever is on PATH
    script = Path(sys.executable).with_name("scbench")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "learn-dictionary" in out.stdout and "figures" in out.stdout and "Plug-in commands" in out.stdout
    assert out.stderr == ""  # no plug-in warning for the bundled ones


def test_plugin_commands_run_and_a_broken_one_breaks_nothing_else(plugins):
    runner = CliRunner()
    r = runner.invoke(app, ["hello", "--who", "tests"])
    assert (r.exit_code, r.stdout.strip()) == (0, "hello tests")
    # --help lists the good ones and warns about each broken one by name and target; still exit 0
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for name in ("hello", "explode", "figures", "learn-dictionary", "run"):
        assert name in r.stdout
    for name in ("gone", "notfunc", "noattr"):
        assert name not in r.stdout
    assert "command plug-in 'gone' (scbench_no_such_module_xyz:cmd) did not load: ModuleNotFoundError" in r.stderr
    assert ("command plug-in 'notfunc' (robust_bench_sc.cli:COMMANDS_GROUP) did not load: RegistryError: command "
            "plug-in 'notfunc' is a str, expected a command function") in r.stderr
    assert "command plug-in 'noattr' (scbench_test_cmds:missing) did not load: AttributeError" in r.stderr
    assert "command plug-in 'run' (scbench_test_cmds:hello) has the name of a built-in command; ignored" in r.stderr
    assert ("command plug-in 'figures' (defenses.sparse_coding.commands:figures) is registered twice; "
            "scbench_test_cmds:hello is used") in r.stderr
    # a built-in command is untouched by the broken plug-ins (they are not even imported)
    r = runner.invoke(app, ["threat-models"])
    assert r.exit_code == 0 and "linf_pgd_ce" in r.stdout and "did not load" not in r.stderr
    # naming a broken plug-in is one error line, exit 2
    r = runner.invoke(app, ["gone"])
    assert r.exit_code == 2 and r.stderr.count("error:") == 1 and r.stderr.count("did not load") == 1
    assert "command plug-in 'gone' (scbench_no_such_module_xyz:cmd) did not load: ModuleNotFoundError" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    # a misspelt plug-in command gets a suggestion, as a built-in one does
    r = runner.invoke(app, ["helo"])
    assert r.exit_code == 2 and "No such command 'helo'. Did you mean 'hello'?" in r.output
    # an exception inside plug-in code is wrapped like a built-in command's
    r = runner.invoke(app, ["explode"])
    assert r.exit_code == 2
    assert "plug-in code raised ValueError: the plug-in broke" in r.stderr and "scbench_test_cmds.py" in r.stderr


def test_plugin_commands_load_lazily():
    """Running a built-in command imports no plug-in; ``--help`` imports the command modules only."""
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom robust_bench_sc.cli import app\n"
            "r = CliRunner().invoke(app, ['threat-models'])\nassert r.exit_code == 0, r.output\n"
            "print(sorted(m for m in sys.modules if m.startswith('defenses')))\n"
            "CliRunner().invoke(app, ['--help'])\n"
            "print(sorted(m for m in sys.modules if m.startswith('defenses')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.strip().splitlines()
    assert before == "[]"
    assert after == "['defenses', 'defenses.sparse_coding', 'defenses.sparse_coding.commands']"


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def test_core_never_imports_a_plugin():
    bad = [f"{p.relative_to(REPO_ROOT)}:{line}: {mod}" for p in sorted(PKG.rglob("*.py"))
           for line, mod in _imports(p) if mod == "defenses" or mod.startswith("defenses.")]
    assert bad == []


# -- the run folder has one owner -------------------------------------------------------------

TOY = '''
import torch
from torch import nn
from robust_bench_sc import Defense


def make():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(3 * 32 * 32, 10)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(10, 3 * 32 * 32, generator=g) * 0.05)
        lin.bias.zero_()
    return Defense(name="toy", classifier=nn.Sequential(nn.Flatten(), lin), description="linear toy")
'''

TOY_SUITE = """name: layout
seed: 0
data: {{n_images: 4, chunk_size: 2}}
defenses:
  - ref: "{plugin}:make"
    name: toy
threat_models:
  - clean
  - attack: pgd
    name: linf_1
    norm: linf
    epsilon: 8/255
    steps: 1
"""

RUN_FOLDER_NAMES = {"run.json", "records", "samples.csv", "summary.csv", "summary.md", ".scbench.lock",
                    "progress.json", "diagnostics"}


def test_run_dir_names_the_layout_and_round_trips(tmp_path):
    from robust_bench_sc.storage import DamagedFileError, RunDir

    rd = RunDir(tmp_path / "r")
    assert {RunDir.META, RunDir.RECORDS, RunDir.SAMPLES, RunDir.SUMMARY_CSV, RunDir.SUMMARY_MD, RunDir.LOCK,
            RunDir.PROGRESS, RunDir.DIAGNOSTICS} == RUN_FOLDER_NAMES
    assert rd.chunk("sparse coding/T15", "linf pgd", 7) == tmp_path / "r/records/sparse_coding_T15/linf_pgd/chunk_00007.json"
    assert rd.read_meta() is None and not rd.is_run()
    rd.write_meta({"suite": "s", "status": "running"})
    assert rd.is_run() and rd.read_meta() == {"suite": "s", "status": "running"}
    rd.write_chunk("a", "b", 0, {"records": [{"index": 0}]})
    assert rd.read_chunk("a", "b", 0) == {"records": [{"index": 0}]}
    rd.write_summary("x\n1\n", "| x |\n")
    assert rd.read_summary_md() == "| x |\n" and rd.summary_csv_path.read_text() == "x\n1\n"
    rd.meta_path.write_text('{"suite": ')
    with pytest.raises(DamagedFileError, match="run.json: damaged or truncated JSON"):
        rd.read_meta()
    with rd.lock():
        assert rd.lock_path.exists()
    assert not rd.lock_path.exists() and not rd.locked_by_live_process()


def test_run_meta_and_chunk_record_are_typed_and_keep_the_files_as_written(tmp_path):
    """Issue 36: run.json and record files read into typed models; a field this version does not
    know still loads (kept in ``raw``), a known one of another type is named; a record file is
    written with its keys in the order the committed ones have."""
    import json

    from robust_bench_sc.storage import ChunkRecord, DamagedFileError, RunDir, RunMeta

    committed = RunDir(REPO_ROOT / "results" / "adaptive_1000")
    meta = committed.read_run_meta()
    raw = json.loads(committed.meta_path.read_text())
    assert meta.raw == raw and meta.suite == raw["suite"] and meta.seed == 0 and meta.status == "complete"
    assert meta.config["data"]["n_images"] == 1000 and meta.image_words == "CIFAR-10 test images"
    assert len(meta.invocations) == len(raw.get("history", [])) + 1
    odd = RunMeta.from_json({"suite": "s", "from_a_later_version": [1, 2]}, "run.json")
    assert odd.suite == "s" and odd.raw["from_a_later_version"] == [1, 2] and odd.profile is None and odd.overrides == []
    with pytest.raises(DamagedFileError, match="field 'seed' should be a whole number"):
        RunMeta.from_json({"seed": "0"}, "run.json")
    rd = RunDir(tmp_path / "r")
    rd.write_meta({"suite": "s", "status": "running", "n_jobs": 2})
    rd.update_meta(status="complete", jobs_computed=2)
    assert list(rd.read_meta()) == ["suite", "status", "n_jobs", "jobs_computed"]
    assert rd.read_run_meta().status == "complete"

    path = next(committed.records_dir.rglob("chunk_*.json"))
    text = path.read_text()
    record = ChunkRecord.from_json(json.loads(text), path)
    assert record.job["defense"] == path.parent.parent.name and len(record.records) == record.job["stop"] - record.job["start"]
    assert list(record.to_json()) == list(json.loads(text))  # the committed files' key order
    rd.write_record(record)
    written = rd.chunk(record.job["defense"], record.job["threat"], record.job["chunk"])
    assert json.loads(written.read_text()) == json.loads(text)
    for bad, why in (([], "no 'records' list"), ({"records": [], "job": 3}, "'job' is not an object"),
                     ({"records": [], "seconds": "1"}, "'seconds' is not a number")):
        with pytest.raises(DamagedFileError, match=why):
            ChunkRecord.from_json(bad, "chunk_00000.json")


def test_a_run_writes_exactly_the_run_dir_layout(tmp_path):
    from robust_bench_sc.config import load_suite
    from robust_bench_sc.runner import run_suite
    from robust_bench_sc.storage import RunDir

    plugin = tmp_path / "toy_layout.py"
    plugin.write_text(TOY)
    suite = tmp_path / "s.yaml"
    suite.write_text(TOY_SUITE.format(plugin=plugin))
    out = run_suite(load_suite(suite), out=tmp_path / "run", show_progress=False)
    rd = RunDir(out.run_dir)
    assert sorted(p.name for p in rd.path.iterdir()) == sorted(RunDir.FILES + (RunDir.RECORDS,))
    chunks = sorted(str(p.relative_to(rd.path)) for p in rd.records_dir.rglob("*.json"))
    assert chunks == [str(rd.chunk("toy", t, c).relative_to(rd.path)) for t in ("clean", "linf_1") for c in (0, 1)]
    assert rd.read_meta()["status"] == "complete"
    assert [r["index"] for r in rd.read_chunk("toy", "linf_1", 1)["records"]] == [2, 3]


def _string_constants(path: Path) -> list[tuple[int, str]]:
    return [(n.lineno, n.value) for n in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)]


@pytest.mark.parametrize("module", ["runner.py", "records.py", "tables.py", "preflight.py", "run_status.py",
                                    "regression.py", "cli.py", "reports.py", "binarization.py",
                                    "diagnostics/suite.py"])
def test_run_folder_file_names_are_not_retyped(module):
    """Only storage.RunDir spells the run folder's file names (messages may mention them)."""
    hits = [f"{module}:{line}: {value!r}" for line, value in _string_constants(PKG / module)
            if value in RUN_FOLDER_NAMES - {"records"}  # also the key of a record file's samples
            or value.startswith(("chunk_", "records/"))]
    assert hits == []


# -- no import circle -------------------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _ours(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(import_time_only: bool) -> dict[str, dict[str, int]]:
    """module -> {module of ours it imports: line}. ``import_time_only``: the imports that run
    when the module is imported (not those inside functions). Imports under ``if TYPE_CHECKING:``
    count as import-time ones (issue 36): an annotation that needs a module above is a circle too."""
    graph: dict[str, dict[str, int]] = {}
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        edges: dict[str, int] = {}

        def visit(node, in_function):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                in_function = True
            if not (import_time_only and in_function):
                targets = []
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                        base = ".".join(up + ([node.module] if node.module else []))
                    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
                for t in targets:
                    target = _ours(t)
                    if target and target != mod:
                        edges.setdefault(target, node.lineno)
            for child in ast.iter_child_nodes(node):
                visit(child, in_function)

        visit(tree, False)
        graph[mod] = edges
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# Imports inside a function that still close a circle, each with the step of issue 17 that removes it
# (none left: the diagnostics package's suite hook removed diagnostics <-> binarization).
KNOWN_BACK_EDGES: dict[tuple[str, str], str] = {}


def test_type_checking_imports_are_edges():
    """``if TYPE_CHECKING:`` imports count (issue 36: config <-> summary hid behind one; now summary reads config only)."""
    tc = [(mod, node.lineno) for mod, path in MODULES.items()
          for node in ast.walk(ast.parse(path.read_text(), str(path)))
          if isinstance(node, ast.If) and _is_type_checking(node)
          and any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(node))]
    assert tc, "no TYPE_CHECKING block left to check"
    graph = import_graph(import_time_only=True)
    assert "robust_bench_sc.report_model" in graph["robust_bench_sc.plots"]  # plots.py: if TYPE_CHECKING
    assert "robust_bench_sc.summary" not in import_graph(import_time_only=False)["robust_bench_sc.config"]


def test_circle_finder_finds_circles():
    g = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}, "e": {"e": 1}}
    assert circles(g) == [["a", "b", "c"]]
    full = import_graph(import_time_only=False)
    assert full["robust_bench_sc.runner"]["robust_bench_sc.storage"] > 0  # real edges are seen
    assert "robust_bench_sc.diagnostics" in full["robust_bench_sc.runner"]  # also inside functions
    assert "robust_bench_sc.diagnostics" not in import_graph(import_time_only=True)["robust_bench_sc.runner"]


def test_no_import_circle_among_our_modules():
    assert circles(import_graph(import_time_only=True)) == []
    full = import_graph(import_time_only=False)
    for (a, b), why in KNOWN_BACK_EDGES.items():
        assert b in full[a], f"{a} no longer imports {b}: drop it from KNOWN_BACK_EDGES ({why})"
        del full[a][b]
    assert circles(full) == [], "an import circle (imports inside functions count too)"


def test_the_runner_is_imported_only_from_above_and_its_error_from_a_leaf():
    """Issue 36: runner.py orchestrates; no module it uses reaches back up into it (the Ray
    executor and ``scbench status`` once imported RunError and the record checks from it)."""
    full = import_graph(import_time_only=False)
    assert full["robust_bench_sc.errors"] == {}
    users = sorted(m for m, edges in full.items() if "robust_bench_sc.runner" in edges)
    assert users == ["robust_bench_sc", "robust_bench_sc.api", "robust_bench_sc.audit", "robust_bench_sc.cli"]
    assert "robust_bench_sc.errors" in full["robust_bench_sc.ray_executor"]
    assert "robust_bench_sc.records" in full["robust_bench_sc.run_status"]


def test_stats_imports_nothing_of_ours():
    assert import_graph(import_time_only=False)["robust_bench_sc.stats"] == {}
    from robust_bench_sc.stats import mcnemar_exact, mean_interval, two_proportion, wilson_interval

    lo, hi = wilson_interval(45, 50)  # p = 0.9, n = 50: 78.6 .. 95.7 (Wilson 1927, z = 1.96)
    assert (round(lo, 2), round(hi, 2)) == (78.64, 95.65)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 100.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024) and mcnemar_exact(4, 4) == 1.0
    assert two_proportion(60, 100, 40, 100) == pytest.approx(0.004678, abs=1e-5)
    lo, hi = mean_interval([1.0, 2.0, 3.0])  # mean 2, s = 1, t(0.975, 2) = 4.3027
    assert (round(lo, 4), round(hi, 4)) == (round(2 - 4.302653 / 3 ** 0.5, 4), round(2 + 4.302653 / 3 ** 0.5, 4))
    # two norms far apart (results/table4_zoo_reduced, trades: n = 2): the t-interval reaches below 0,
    # a norm's mean cannot; cut at the bound, the upper end unchanged
    lo, hi = mean_interval([0.5, 5.84])
    assert lo < 0 and mean_interval([0.5, 5.84], lower_bound=0.0) == (0.0, hi)


def test_every_module_imports_alone():
    """Each module imported first (none of ours loaded before it): an import circle that
    depends on import order shows here."""
    code = ("import importlib, sys, traceback\n"
            f"mods = {sorted(MODULES)!r}\nbad = []\n"
            "for m in mods:\n"
            "    for k in [k for k in sys.modules if k == 'robust_bench_sc' or k.startswith('robust_bench_sc.')]:\n"
            "        del sys.modules[k]\n"
            "    try:\n        importlib.import_module(m)\n"
            "    except Exception as exc:\n        bad.append(f'{m}: {type(exc).__name__}: {exc}')\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- one formatter of validation errors ------------------------------------------------------

BAD_SUITE = """name: t
data: {n_images: 20, chunk_size: 10, shuffle: true}
defenses:
  - ref: madry_pgd_at
    nmae: x
threat_models:
  - name: linf
    attack: pgd
    norm: linf
    epsilon: 8/255
    steps: 3
"""


def test_suite_and_threat_model_errors_share_one_format(tmp_path):
    from robust_bench_sc.config import load_suite
    from robust_bench_sc.yamlio import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_SUITE)
    good = tmp_path / "good.yaml"
    good.write_text(BAD_SUITE.replace(", shuffle: true", "").replace("    nmae: x\n", ""))

    def message(path, **kw):
        with pytest.raises(ConfigError) as exc:
            load_suite(path, **kw)
        return str(exc.value).splitlines()

    assert message(bad, n_images=0) == [
        "--n-images 0: data.n_images: Input should be greater than or equal to 1",
        f"{bad}, line 2: data.shuffle: unknown key; allowed keys: chunk_size, data_dir, dataset, n_images, root, split",
        f"{bad}, line 5: defenses.0.nmae: unknown key (did you mean 'name'?); allowed keys: base_dir, max_images, name, params, ref, "
        "threat_models"]
    assert message(good, overrides=["steps=0"]) == ["--set steps=0: steps: Input should be greater than or equal to 1"]
    assert message(good, overrides=["linf.norm=l3"]) == [
        "--set linf.norm=l3: norm: Input should be 'linf', 'l2' or 'l1' (got 'l3')"]
    good.write_text(good.read_text().replace("norm: linf", "norm: l3"))
    assert message(good) == [f"{good}, line 8: threat_models.0.norm: Input should be 'linf', 'l2' or 'l1' (got 'l3')"]
    assert (PKG / "config.py").read_text().count(".errors()") == 1, "pydantic errors are formatted in one place"


# -- start-up: the package and the command line import torch only when a command needs it -----

def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_importing_the_package_and_the_cli_does_not_import_torch():
    assert "torch" not in _modules_after("import robust_bench_sc")
    assert "torch" not in _modules_after("import robust_bench_sc.cli")
    # the public names still resolve (PEP 562), and only then is torch imported
    loaded = _modules_after("import robust_bench_sc as rb\nassert rb.Defense.__module__ == 'robust_bench_sc.defense'\n"
                            "assert rb.benchmark.__module__ == 'robust_bench_sc.api'")
    assert {"torch", "robust_bench_sc.api"} <= loaded
    with pytest.raises(AttributeError, match="module 'robust_bench_sc' has no attribute 'nope'"):
        import robust_bench_sc

        robust_bench_sc.nope  # noqa: B018


def test_validate_of_a_bad_suite_fails_before_torch_is_imported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {n_images: 5, shufle: 1}\ndefenses: [madry_pgd_at]\nthreat_models: [clean]\n")
    code = ("from typer.testing import CliRunner\nfrom robust_bench_sc.cli import app\n"
            f"r = CliRunner().invoke(app, ['validate', {str(bad)!r}])\n"
            "assert r.exit_code == 2, r.output\n"
            "assert 'line 2: data.shufle: unknown key' in r.output, r.output")
    loaded = _modules_after(code)
    assert "torch" not in loaded and "robust_bench_sc.config" in loaded


def test_the_engine_imports_neither_config_nor_plugins():
    """evaluate.py runs typed threat models; the runner supplies how transfer sources are built."""
    edges = import_graph(import_time_only=False)["robust_bench_sc.evaluate"]
    assert "robust_bench_sc.attacks.base" in edges  # real edges are seen
    assert not {"robust_bench_sc.config", "robust_bench_sc.plugins"} & set(edges), edges


def test_no_attack_reaches_back_into_the_engine():
    """Issue 36: the composite protocol. Transfer once called back into the engine (attacks →
    evaluate → attacks); the checked prediction and the batch loop sit below both now."""
    full = import_graph(import_time_only=False)
    attacks = {m: edges for m, edges in full.items() if m.startswith("robust_bench_sc.attacks")}
    assert "robust_bench_sc.attacks.transfer" in attacks
    assert [m for m, edges in attacks.items() if "robust_bench_sc.evaluate" in edges] == []
    assert "robust_bench_sc.predictions" in full["robust_bench_sc.attacks.transfer"]
    assert "robust_bench_sc.evaluate" not in full["robust_bench_sc.predictions"]


def test_one_way_to_a_validated_suite():
    """Issue 36: a suite file, ``benchmark()`` (and ``scbench audit`` through it) and a run.json
    all build their suite with ``SuiteConfig.build``, which alone validates the schema and the
    checks across entries (unique names, records folders, defenses' threat_models)."""
    import re

    calls = {}
    for path in (REPO_ROOT / "robust_bench_sc").rglob("*.py"):
        text = path.read_text()
        for pattern in (r"SuiteConfig\.model_validate\(", r"SuiteConfig\.build\(", r"cls\.model_validate\(data\)"):
            if re.search(pattern, text):
                calls.setdefault(pattern, set()).add(path.relative_to(REPO_ROOT).as_posix())
    assert r"SuiteConfig\.model_validate\(" not in calls, calls
    assert calls[r"SuiteConfig\.build\("] == {"robust_bench_sc/api.py", "robust_bench_sc/config.py"}
    from robust_bench_sc.api import build_suite
    from robust_bench_sc.yamlio import ConfigError

    with pytest.raises(ConfigError, match="threat model names must be unique; repeated: clean"):
        build_suite("natural", ["clean", "clean"], n_images=2)


def test_help_does_not_import_torch():
    code = ("from typer.testing import CliRunner\nfrom robust_bench_sc.cli import app\n"
            "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0 and 'figures' in r.output, r.output")
    loaded = _modules_after(code)
    assert "defenses.sparse_coding.commands" in loaded
    assert "torch" not in loaded
