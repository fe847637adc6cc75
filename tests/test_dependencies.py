"""Every third-party module the code imports is a declared dependency (the fresh-install issue).

Walks the imports (ast) of the package, the bundled plug-ins, the tools, benchmarks and tests.
A top-level module must be the standard library's, the project's own, or provided by a
distribution declared in pyproject.toml (dependencies or an extra) or in
requirements/no-deps.txt. Imports inside functions count too: a lazy import still fails on a
user's machine when it runs.
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("robust_bench_sc", "defenses", "tools", "benchmarks", "tests")


def _normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _requirement_name(req: str) -> str:
    return _normalise(re.split(r"[\s<>=!~;\[(]", req.strip(), maxsplit=1)[0])


def declared_distributions(root: Path = ROOT) -> set[str]:
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    no_deps = root / "requirements" / "no-deps.txt"
    reqs += [ln for ln in no_deps.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return {_requirement_name(r) for r in reqs}


def top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _is_own(module: str, importer: Path, root: Path) -> bool:
    """The project's packages, and sibling modules of the importing file (tests' helpers,
    benchmarks' shared code): a folder or a .py file of that name beside it or at the root."""
    for folder in (importer.parent, root):
        if (folder / f"{module}.py").exists() or (folder / module / "__init__.py").exists() \
                or (folder / module).is_dir():
            return True
    return False


def undeclared_imports(root: Path = ROOT, folders: tuple[str, ...] = SCANNED) -> list[str]:
    """`file: module (distribution)` for every import that is not stdlib, ours, or declared."""
    declared = declared_distributions(root)
    providers = metadata.packages_distributions()
    problems = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            for module in sorted(top_level_imports(path)):
                if module in sys.stdlib_module_names or module == "__future__" or _is_own(module, path, root):
                    continue
                dists = {_normalise(d) for d in providers.get(module, [])}
                if not dists & declared:
                    shown = ", ".join(sorted(dists)) or "not installed"
                    problems.append(f"{path.relative_to(root)}: {module} ({shown})")
    return problems


def test_every_imported_third_party_module_is_declared():
    problems = undeclared_imports()
    assert not problems, "imported but not declared in pyproject.toml or requirements/no-deps.txt:\n" + "\n".join(problems)


def test_the_check_catches_an_undeclared_import(tmp_path):
    """The checker itself: an import of a distribution the project does not declare (and of one
    that is not installed at all) is reported; stdlib, own and declared ones are not."""
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "no-deps.txt").write_text("# none\n")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["numpy>=2", "PyYAML>=6"]\n'
        '[project.optional-dependencies]\ntest = ["pytest>=8"]\n')
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("")
    (pkg / "mod.py").write_text(
        "import os, json\nimport numpy as np\nimport yaml\nfrom pkg import helper\nimport helper\n"
        "def lazy():\n    import click\n    import pytest\n    from no_such_module_anywhere import x\n")
    problems = undeclared_imports(tmp_path, ("pkg",))
    assert [p.split(": ")[1].split(" ")[0] for p in problems] == ["click", "no_such_module_anywhere"]
    assert problems[1].endswith("(not installed)")


@pytest.mark.parametrize("module", ["click", "typer", "yaml", "torch", "torchattacks"])
def test_modules_the_cli_needs_resolve_to_declared_distributions(module):
    declared = declared_distributions()
    dists = {_normalise(d) for d in metadata.packages_distributions().get(module, [])}
    assert dists & declared, f"{module} is provided by {dists or 'nothing installed'}, declared: {sorted(declared)}"
