"""Re-run the command in each ``<!-- BEGIN generated: scbench report … -->`` marker of
README.md and docs/results.md and put its output between the markers (what
tests/test_reports.py checks).

    python tools/update_readme.py          # rewrite README.md and docs/results.md in place
    python tools/update_readme.py --check  # exit 1 and name the stale blocks, write nothing
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from typer.testing import CliRunner

from robust_bench_sc.cli import app
from robust_bench_sc.storage import atomic_write_text

BLOCK = re.compile(r"(<!-- BEGIN generated: (scbench report [^\n]*?) -->\n)(.*?)(<!-- END generated -->)", re.S)
DOCS = ("README.md", "docs/results.md")


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parent.parent
    os.chdir(root)
    stale: list[str] = []
    for doc in DOCS:
        path = root / doc
        text = path.read_text()

        def regenerate(m: re.Match, doc: str = doc) -> str:
            r = CliRunner().invoke(app, ["report", *shlex.split(m.group(2))[2:]])
            if r.exit_code != 0:
                raise SystemExit(f"{doc}: `{m.group(2)}` failed: {r.output.strip()}")
            if r.output != m.group(3):
                stale.append(f"{doc}: {m.group(2)}")
            return m.group(1) + r.output + m.group(4)

        new = BLOCK.sub(regenerate, text)
        if new != text and "--check" not in argv:
            atomic_write_text(path, new)
    for cmd in stale:
        print(f"{'stale' if '--check' in argv else 'updated'}: {cmd}")
    return 1 if stale and "--check" in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
