"""Issue 33 item 5: a fingerprint covers code as well as weights. The same name with other code
(a preprocess setting, the factory's source) is refused like other weights, unless accepted
knowingly; committed results (records without a code fingerprint) are not affected."""

from __future__ import annotations

import pytest

from robust_bench_sc.config import load_suite
from robust_bench_sc.errors import RunError
from robust_bench_sc.plugins import build_defense
from robust_bench_sc.runner import run_suite
from robust_bench_sc.storage import RunDir

TOY = '''
import torch
from torch import nn
from robust_bench_sc import Defense


class Shift(nn.Module):
    def __init__(self, amount):
        super().__init__()
        self.amount = amount

    def forward(self, x):
        return (x + self.amount).clamp(0, 1)


def make():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(3 * 32 * 32, 10)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(10, 3 * 32 * 32, generator=g) * 0.05)
        lin.bias.zero_()
    return Defense(name="toy", classifier=nn.Sequential(nn.Flatten(), lin), preprocess=Shift(AMOUNT))
'''

SUITE = """name: code
seed: 0
data: {{n_images: 4, chunk_size: 4}}
defenses:
  - ref: "{plugin}:make"
    name: toy
threat_models:
  - clean
"""


def test_code_fingerprint_sees_settings_and_source_not_weights_alone(tmp_path):
    plugin = tmp_path / "toy_code.py"
    plugin.write_text(TOY.replace("AMOUNT", "0.0"))
    a = build_defense(f"{plugin}:make")
    plugin.write_text(TOY.replace("AMOUNT", "0.0") + "\n# a comment\n")
    b = build_defense(f"{plugin}:make")
    assert a.fingerprint() == b.fingerprint() and a.code_fingerprint() != b.code_fingerprint()
    c = build_defense(f"{plugin}:make")
    c2 = build_defense(f"{plugin}:make")
    assert c.code_fingerprint() == c2.code_fingerprint()
    c2.preprocess.amount = 0.1
    assert c.code_fingerprint() != c2.code_fingerprint() and c.fingerprint() == c2.fingerprint()
    # the bundled reference: stable across builds
    assert build_defense("madry_pgd_at").code_fingerprint() == build_defense("madry_pgd_at").code_fingerprint()


def test_changed_code_under_one_name_is_refused_unless_accepted(tmp_path):
    plugin = tmp_path / "toy_code2.py"
    plugin.write_text(TOY.replace("AMOUNT", "0.0"))
    (tmp_path / "s.yaml").write_text(SUITE.format(plugin=plugin))
    out = run_suite(load_suite(tmp_path / "s.yaml"), out=tmp_path / "run", show_progress=False, probes=False)
    rd = RunDir(out.run_dir)
    recorded = rd.read_chunk("toy", "clean", 0)["code_fingerprint"]
    assert rd.read_meta()["code_fingerprints"] == {"toy": recorded}
    plugin.write_text(TOY.replace("AMOUNT", "0.02"))  # same weights, other code
    with pytest.raises(RunError, match=r"defense 'toy' loads other code than its records .* \(code fingerprint "
                                       rf"{recorded} recorded, [0-9a-f]{{16}} now.*--accept-code-change"):
        run_suite(load_suite(tmp_path / "s.yaml"), out=tmp_path / "run", show_progress=False, probes=False)
    again = run_suite(load_suite(tmp_path / "s.yaml"), out=tmp_path / "run", show_progress=False, probes=False,
                      accept_code_change=True)
    assert again.computed_chunks == 0


def test_an_audit_resumes_over_changed_code_only_when_accepted(tmp_path):
    """A second plug-in added to the factory's file changes the code fingerprint of every factory
    in it: the audit refuses to resume, and resumes with ``accept_code_change`` (scbench audit
    --accept-code-change) without recomputing a record."""
    from dataclasses import replace

    from robust_bench_sc.audit import BUDGETS, audit

    plugin = tmp_path / "toy_code3.py"
    plugin.write_text(TOY.replace("AMOUNT", "0.0"))
    budget = replace(BUDGETS["quick"], apgd_iterations=5, eot=2, recheck=2, square_queries=20, square_eot=2,
                     transfer_steps=5, indicators=False, binarization=False)
    first = audit(f"{plugin}:make", n_images=4, out=tmp_path / "audit", budget=budget)
    records = {p: p.read_bytes() for p in sorted((tmp_path / "audit" / "records").rglob("*.json"))}
    assert records
    plugin.write_text(TOY.replace("AMOUNT", "0.0") + "\n\ndef make_other():\n    return make()\n")
    with pytest.raises(RunError, match=r"loads other code than its records.*--accept-code-change"):
        audit(f"{plugin}:make", n_images=4, out=tmp_path / "audit", budget=budget)
    again = audit(f"{plugin}:make", n_images=4, out=tmp_path / "audit", budget=budget, accept_code_change=True)
    assert again["worst_case"] == first["worst_case"]
    assert {p: p.read_bytes() for p in sorted((tmp_path / "audit" / "records").rglob("*.json"))} == records
