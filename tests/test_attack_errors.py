"""Issue 33 item 3: no attack can abort a run. A backend that raises (pyautoattack's "element 0
of tensors does not require grad" on a defense whose logits are detached) is recorded per job
with its message; the other columns and the worst case go on, and the table says which column
is missing and why."""

from __future__ import annotations

import math

from robust_bench_sc.config import load_suite
from robust_bench_sc.reports import render
from robust_bench_sc.runner import run_suite
from robust_bench_sc.storage import RunDir

SUITE = """name: errors
seed: 0
data: {{n_images: 4, chunk_size: 4}}
defenses:
  - ref: defenses.archetypes:detached_logits   # logits detached: no input gradient
    name: detached
threat_models:
  - clean
  - attack: pgd
    name: pgd
    norm: linf
    epsilon: 8/255
    steps: 2
  - attack: autoattack
    name: apgd
    norm: linf
    epsilon: 8/255
    version: custom
    attacks_to_run: [apgd-ce]
    apgd_iterations: 2
    apgd_restarts: 1
  - attack: random_search
    name: rs
    epsilon: 8/255
    n_queries: 10
  - attack: worst_case
    name: cascade
    attacks:
      - {{attack: autoattack, norm: linf, epsilon: 8/255, version: custom, attacks_to_run: [apgd-ce],
          apgd_iterations: 2, apgd_restarts: 1}}
      - {{attack: random_search, epsilon: 8/255, n_queries: 10}}
worst_case_over: [pgd, apgd, rs]
"""


def test_a_raising_backend_is_recorded_and_the_run_goes_on(tmp_path):
    (tmp_path / "s.yaml").write_text(SUITE.format())
    # probes off: the backend itself is called and raises
    out = run_suite(load_suite(tmp_path / "s.yaml"), out=tmp_path / "run", show_progress=False, probes=False)
    rd = RunDir(out.run_dir)
    assert rd.read_meta()["status"] == "complete"
    recs = rd.read_chunk("detached", "apgd", 0)["records"]
    attacked = [r for r in recs if r["attacked"]]
    assert attacked and all("attack_error" in r["flags"].split(";") for r in attacked)
    assert all(r["attack_error"].startswith("autoattack (autoattack) raised RuntimeError: element 0 of tensors "
                                            "does not require grad") for r in attacked)
    rows = {r["threat_model"]: r for r in out.summary.to_dict("records")}
    assert math.isnan(rows["apgd"]["robust_accuracy"]) and "does not require grad" in rows["apgd"]["error"]
    clean = rows["clean"]["clean_accuracy"]
    assert clean > 0 and rows["pgd"]["robust_accuracy"] == clean  # detached: PGD cannot move (the probe says so)
    assert not math.isnan(rows["rs"]["robust_accuracy"]) and rows["rs"]["error"] == ""
    # the worst case over pgd/apgd/rs goes on (over pgd and rs); the in-engine cascade too, naming its failed member
    assert rows["worst case"]["robust_accuracy"] == rows["rs"]["robust_accuracy"]
    assert rows["cascade"]["error"].startswith("worst case without ")
    assert not math.isnan(rows["cascade"]["robust_accuracy"])
    md = render([out.run_dir], "md")
    assert "detached × apgd: column missing: autoattack (autoattack) raised RuntimeError" in md
