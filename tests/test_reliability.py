"""Issue 18: a broken defense, a shared run folder or a damaged record never yields a
plausible number; every mistake a user can make gets one message (exit code 2).

A tiny linear "defense" plug-in (fixed weights, no checkpoint) on 4 images keeps the file fast.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from robust_bench_sc.cli import app
from robust_bench_sc.config import load_suite
from robust_bench_sc.errors import RunError
from robust_bench_sc.executor import LocalExecutor
from robust_bench_sc.paths import REPO_ROOT
from robust_bench_sc.plan import job_spec_hash, plan_jobs
from robust_bench_sc.run_status import run_status
from robust_bench_sc.runner import run_suite
from robust_bench_sc.storage import LOCK_NAME, RunLock, atomic_write_json, read_json
from robust_bench_sc.yamlio import ConfigError

torch.set_num_threads(1)

PLUGIN = '''
import time

import torch
from torch import nn
from robust_bench_sc import Defense


class Toy(nn.Module):
    def __init__(self, mode, width):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(width, 3 * 32 * 32, generator=g) * 0.05)
        self.mode = mode

    def forward(self, x):
        out = x.flatten(1) @ self.w.t()
        if self.mode == "nan":
            return out * float("nan")
        if self.mode == "rank":
            return out[:, :, None]
        if self.mode == "nan_eval" and not torch.is_grad_enabled():  # fine under attack, NaN when re-checked
            off_grid = ((x * 255 - (x * 255).round()).abs() > 1e-3).flatten(1).any(1)
            return torch.where(off_grid[:, None], torch.full_like(out, float("nan")), out)
        if self.mode == "raise":
            raise ValueError("my classifier broke")
        if self.mode == "slow":  # a long job to interrupt
            time.sleep(1.0)
        return out


def make(mode="ok", width=10):
    return Defense(name="toy", classifier=Toy(mode, width), description="linear toy")


def make_with_preprocess():
    return Defense(name="pre", classifier=Toy("ok", 10), preprocess=nn.Identity())
'''

SUITE = """name: rel
seed: 0
data: {{n_images: 4, chunk_size: 2}}
defenses:
  - ref: "{plugin}:make"
    name: toy
    params: {params}
threat_models:
  - clean
  - attack: pgd
    name: linf_1
    norm: linf
    epsilon: 8/255
    steps: {steps}
"""


@pytest.fixture()
def plugin(tmp_path):
    p = tmp_path / "plug" / "toy_defense.py"
    p.parent.mkdir()
    p.write_text(PLUGIN)
    return p


def _suite(tmp_path, plugin, params="{}", steps=1, name="suite.yaml", body=None):
    p = tmp_path / name
    p.write_text(body or SUITE.format(plugin=plugin, params=params, steps=steps))
    return p


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_error(res, *needles):
    """Exit code 2, no traceback, and the message says what is wrong."""
    out = res.output
    assert res.exit_code == 2, out
    assert "Traceback" not in out, out
    assert out.count("error:") == 1, out
    for n in needles:
        assert n in out, (n, out)
    return out


# -- 1. a broken defense --------------------------------------------------------------------

def test_broken_defense_outputs_are_refused_not_counted(tmp_path, plugin):
    # NaN logits: argmax would be class 0 and label-0 images would count as robust
    res = _cli("run", _suite(tmp_path, plugin, "{mode: nan}"), "--out", tmp_path / "nan", "--quiet")
    _one_error(res, "probe 'randomness' on defense 'toy': non-finite logits (NaN or inf) on 4 of 4 clean images")
    assert not (tmp_path / "nan" / "summary.csv").exists()
    # wrong width (a 1000-class head) and wrong rank
    res = _cli("run", _suite(tmp_path, plugin, "{width: 9}"), "--out", tmp_path / "w", "--quiet")
    _one_error(res, "shape (2, 9) for 2 images", "expected float logits of shape (2, 10)")
    res = _cli("run", _suite(tmp_path, plugin, "{mode: rank}"), "--out", tmp_path / "r", "--quiet")
    _one_error(res, "shape (2, 10, 1)")


def test_non_finite_logits_on_an_attacked_image_are_flagged_and_fooled(tmp_path, plugin):
    body = SUITE.format(plugin=plugin, params="{mode: nan_eval}", steps=2) + "    only_correct: false\n"
    out = run_suite(load_suite(_suite(tmp_path, plugin, body=body)), out=tmp_path / "r", show_progress=False)
    s = pd.read_csv(out.run_dir / "samples.csv")
    pgd = s[(s.threat_model == "linf_1") & s.attacked]
    assert len(pgd) > 0
    assert (pgd["flags"].fillna("").str.contains("non_finite_logits")).all()
    assert len(pgd) == 4 and (pgd.adv_pred == -1).all() and (pgd.fooled_frac == 1.0).all() and not pgd.robust.any()
    clean = s[s.threat_model == "clean"]
    assert (clean.clean_pred >= 0).all() and clean["flags"].isna().all()


# -- 2. ownership of a run folder -----------------------------------------------------------

def test_second_writer_is_refused_and_stale_lock_taken_over(tmp_path, plugin):
    suite = load_suite(_suite(tmp_path, plugin))
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    # a live owner (this very process, as another scbench run would be)
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                  "started_at": "x", "command": ["scbench", "run", "other.yaml"]}))
    with pytest.raises(RunError, match=rf"in use by another scbench run \(pid {os.getpid()} on"):
        run_suite(suite, out=run_dir, show_progress=False)
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # nothing written
    # the owner died (a pid that is not running): its lock is stale and taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": int(dead), "host": socket.gethostname()}))
    out = run_suite(suite, out=run_dir, show_progress=False)
    assert out.computed_chunks == 4 and not (run_dir / LOCK_NAME).exists()
    # a lock from another host cannot be checked: refused, naming the file to delete
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere.example"}))
    with pytest.raises(RunError, match="another host"):
        run_suite(suite, out=run_dir, show_progress=False)


def test_two_processes_on_one_out_one_wins(tmp_path, plugin):
    """Two real processes with different settings on one --out: exactly one writes, the
    other exits 2 naming the owner; run.json and the records agree."""
    a = _suite(tmp_path, plugin, steps=1, name="a.yaml")
    b = _suite(tmp_path, plugin, steps=3, name="b.yaml")
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "robust_bench_sc.cli", "run", "--out", str(out), "--quiet", "--threads", "1"]
    procs = [subprocess.Popen([*cmd, str(s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in (a, b)]
    res = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert sorted(r[0] for r in res) == [0, 2], res
    loser = next(r for r in res if r[0] == 2)
    # overlapping: the lock refuses it; one after the other: the other configuration is refused
    assert "in use by another scbench run" in loser[2] or "different suite configuration" in loser[2], loser
    assert loser[2].count("error:") == 1 and "Traceback" not in loser[2]
    meta = read_json(out / "run.json")
    winner = load_suite(a if meta["config"]["threat_models"][1]["steps"] == 1 else b)
    assert meta["suite_hash"] == winner.content_hash()
    recorded = {read_json(r)["spec_hash"] for r in (out / "records").rglob("chunk_*.json")}
    assert recorded == {job_spec_hash(winner, j) for j in plan_jobs(winner)}  # run.json and records agree
    assert not (out / LOCK_NAME).exists()


_RACE = """
import sys, time
from robust_bench_sc.storage import LockError, RunLock
start = float(sys.argv[2])
while time.time() < start:
    pass
try:
    RunLock(sys.argv[1]).acquire()
    print("won")
    time.sleep(1.0)  # hold it while the others look
except LockError as exc:
    print("lost:", exc)
"""


def test_racing_processes_see_a_lock_with_its_owner_never_an_empty_one(tmp_path):
    """Eight processes released at one instant race for one lock: one wins, and every loser
    names the live owner. (An O_EXCL create, then a write, left the lock empty for a moment;
    losers then read it as "unreadable" and CI failed on it.) Repeated to catch the window."""
    for rnd in range(3):
        run_dir = tmp_path / f"r{rnd}"
        run_dir.mkdir()
        start = time.time() + 2.0
        procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(run_dir), str(start)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
        outs = [p.communicate(timeout=120) for p in procs]
        lines = [o[0].strip() for o in outs]
        assert all(not o[1] for o in outs), outs
        assert sum(line == "won" for line in lines) == 1, lines
        losers = [line for line in lines if line != "won"]
        assert all("in use by another scbench run" in line for line in losers), losers
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # no temporary file left behind


def test_an_empty_lock_being_written_is_waited_for(tmp_path):
    """The fallback without hard links creates the file, then writes it: a reader waits for the
    owner record instead of calling a lock that is being written unreadable; a lock that stays
    empty is unreadable."""
    import threading
    lock = tmp_path / LOCK_NAME
    lock.write_text("")
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": "x", "command": ["scbench"]}
    writer = threading.Timer(0.2, lambda: lock.write_text(json.dumps(owner)))
    writer.start()
    try:
        assert RunLock(tmp_path)._holder(wait=True) == owner
    finally:
        writer.join()
    lock.write_text("")
    assert RunLock(tmp_path)._holder(wait=True) is None
    assert RunLock(tmp_path).owner() == {"unreadable": True, "alive": None}


def test_out_that_is_not_a_run_folder_is_refused(tmp_path, plugin):
    suite = _suite(tmp_path, plugin)
    mine = tmp_path / "my_notes"
    mine.mkdir()
    (mine / "summary.md").write_text("my own notes")
    _one_error(_cli("run", suite, "--out", mine, "--quiet"), "not a run folder", "summary.md")
    assert (mine / "summary.md").read_text() == "my own notes"
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    _one_error(_cli("run", suite, "--out", a_file, "--quiet"), "is a file, not a folder")
    # an empty folder is fine
    (tmp_path / "empty").mkdir()
    assert _cli("run", suite, "--out", tmp_path / "empty", "--quiet").exit_code == 0


def test_diagnose_default_never_writes_into_committed_reports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    committed = tmp_path / "results" / "diagnostics" / "madry_pgd_at"
    committed.mkdir(parents=True)
    (committed / "diagnostics.json").write_text('{"committed": true}')
    res = _cli("diagnose", "madry_pgd_at", "--n-images", "2", "--steps", "1", "--strong-steps", "1",
               "--sweep-steps", "1", "--unconstrained-steps", "1", "--queries", "2", "--noise-draws", "1",
               "--gradient-free", "none")
    assert res.exit_code == 0, res.output
    assert (committed / "diagnostics.json").read_text() == '{"committed": true}'
    written = list((tmp_path / "results" / "diagnose" / "madry_pgd_at").glob("*/diagnostics.json"))
    assert len(written) == 1 and read_json(written[0])["n_images"] == 2
    _one_error(_cli("diagnose", "madry_pgd_at", "--out", tmp_path), "holds files this command did not write")


# -- 3. damaged records ---------------------------------------------------------------------

def test_truncated_and_partial_records_are_named_and_recomputed(tmp_path, plugin):
    suite = load_suite(_suite(tmp_path, plugin, steps=2))
    ref = run_suite(suite, out=tmp_path / "ref", show_progress=False)
    run = run_suite(suite, out=tmp_path / "r", show_progress=False).run_dir
    recs = sorted((run / "records").rglob("chunk_*.json"))
    assert len(recs) == 4
    text = recs[0].read_text()
    recs[0].write_text(text[: len(text) // 2])          # killed mid-copy
    blob = read_json(recs[1])
    blob["records"] = blob["records"][:1]               # parses, lacks a sample
    atomic_write_json(recs[1], blob)
    blob = read_json(recs[2])
    blob["records"][0]["index"] = 999                   # another image
    atomic_write_json(recs[2], blob)
    res = subprocess.run([sys.executable, "-m", "robust_bench_sc.cli", "run", str(tmp_path / "suite.yaml"),
                          "--out", str(run), "--quiet", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    err = " ".join(res.stderr.split())
    assert f"damaged record {recs[0]}" in err.replace("\n", "") or "damaged or truncated JSON" in err
    assert "holds 1 samples, the job has 2" in err and "is image 999" in err
    assert sorted(p.name for p in run.rglob("*.damaged")) == sorted(p.name + ".damaged" for p in recs[:3])
    pd.testing.assert_frame_equal(pd.read_csv(run / "samples.csv"), pd.read_csv(ref.run_dir / "samples.csv"))


def test_truncated_run_json_is_one_line_naming_it(tmp_path, plugin):
    suite = _suite(tmp_path, plugin)
    run = run_suite(load_suite(suite), out=tmp_path / "r", show_progress=False).run_dir
    meta = (run / "run.json").read_text()
    (run / "run.json").write_text(meta[:100])
    _one_error(_cli("run", suite, "--out", run, "--quiet"), str(run / "run.json"), "damaged or truncated JSON")
    _one_error(_cli("report", run), str(run / "run.json"), "damaged or truncated JSON")
    (run / "run.json").write_text(meta)
    (run / "summary.csv").write_bytes(b"\xff\xfe\x00garbage")
    _one_error(_cli("report", run), str(run / "summary.csv"))


# -- 4. validate checks what run checks ------------------------------------------------------

@pytest.mark.parametrize("change, needles", [
    ("ref: madry_pgd_att", ["unknown defense 'madry_pgd_att'", "did you mean 'madry_pgd_at'"]),
    ("params: {mdoe: ok}", ["does not take params ['mdoe']"]),
    ("bpda: sparse", ["bpda 'sparse'", "has no preprocess"]),
    ("nested", ["suite.yaml, line 18", "threat_models.2.attacks.0.steps"]),
    ("craft", ["suite.yaml, line 20", "threat_models.2.craft.norm"]),
    ("epsilon: .inf", ["suite.yaml, line 13", "expected a finite number"]),
    ("epsilon: 8/0", ["suite.yaml, line 13", "'8/0' divides by zero"]),
    ("step_size: epsilon/0", ["step_size 'epsilon/0' divides by zero"]),
])
def test_validate_catches_what_run_would(tmp_path, plugin, change, needles):
    body = SUITE.format(plugin=plugin, params="{}", steps=1)
    if change.startswith("ref:"):
        body = body.replace(f'ref: "{plugin}:make"', change)
    elif change.startswith("params"):
        body = body.replace("params: {}", change)
    elif change.startswith("bpda"):
        body += "    bpda: sparse\n"
    elif change == "nested":
        body += ("  - attack: worst_case\n    name: wc\n    attacks:\n"
                 "      - {attack: pgd, norm: linf, epsilon: 8/255, steps: 0}\n")
    elif change == "craft":
        body += ("  - attack: transfer\n    name: tr\n    source: madry_pgd_at\n    craft:\n"
                 "      attack: pgd\n      norm: l7\n      epsilon: 8/255\n")
    else:
        body = body.replace("epsilon: 8/255", change)
    suite = _suite(tmp_path, plugin, body=body)
    _one_error(_cli("validate", suite), *needles)
    run_out = tmp_path / "run"
    _one_error(_cli("run", suite, "--out", run_out, "--quiet"), *needles)
    assert not run_out.exists() or not any(run_out.iterdir())  # refused before anything was written


def test_validate_ok_lists_fingerprints(tmp_path, plugin):
    res = _cli("validate", _suite(tmp_path, plugin))
    assert res.exit_code == 0, res.output
    assert "toy (" in res.output and "ok suite hash" in res.output


def test_option_errors_blame_the_option_not_the_suite(tmp_path, plugin):
    suite = _suite(tmp_path, plugin)
    out = _one_error(_cli("validate", suite, "--set", "steps=0"), "--set steps=0: steps")
    assert "suite.yaml, line" not in out
    out = _one_error(_cli("run", suite, "--n-images", "0", "--out", tmp_path / "o"), "--n-images 0: data.n_images")
    assert "suite.yaml" not in out
    _one_error(_cli("validate", suite, "--set", "epsilon=8/0"), "--set epsilon=8/0: epsilon", "divides by zero")


# -- 5. security ----------------------------------------------------------------------------

def test_every_torch_load_is_weights_only():
    """Every torch.load in the package and the bundled defenses passes weights_only=True
    (the training resume in defenses/sparse_coding/train.py is the lead's, tracked apart)."""
    seen = []
    for root in ("robust_bench_sc", "defenses"):
        for path in (REPO_ROOT / root).rglob("*.py"):
            if path.relative_to(REPO_ROOT).as_posix() == "defenses/sparse_coding/train.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                    kw = {k.arg: k.value for k in node.keywords}
                    ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                    seen.append((path.name, node.lineno, ok))
    assert seen and all(ok for *_, ok in seen), seen


# -- 6. permissions -------------------------------------------------------------------------

def test_written_files_honour_the_umask_and_keep_a_baseline_mode(tmp_path, plugin):
    old = os.umask(0o022)
    try:
        run = run_suite(load_suite(_suite(tmp_path, plugin)), out=tmp_path / "r", show_progress=False).run_dir
        for name in ("run.json", "samples.csv", "summary.csv", "summary.md"):
            assert stat.S_IMODE((run / name).stat().st_mode) == 0o644, name
        rec = next((run / "records").rglob("chunk_*.json"))
        assert stat.S_IMODE(rec.stat().st_mode) == 0o644
        os.umask(0o027)
        atomic_write_json(tmp_path / "g.json", {})
        assert stat.S_IMODE((tmp_path / "g.json").stat().st_mode) == 0o640
        base = tmp_path / "base.json"
        assert _cli("check", run, "--baseline", base, "--update").exit_code == 0
        assert stat.S_IMODE(base.stat().st_mode) == 0o640
        base.chmod(0o664)
        blob = read_json(base)
        e = blob["entries"]["toy"]["clean"]
        e["clean_bits"] = "1" + e["clean_bits"][1:] if e["clean_bits"][0] == "0" else "0" + e["clean_bits"][1:]
        e["clean_accuracy"] = 100 * e["clean_bits"].count("1") / 4  # another number: --update rewrites it
        base.write_text(json.dumps(blob))
        res = _cli("check", run, "--baseline", base, "--update")
        assert res.exit_code == 0 and "baseline written" in res.output, res.output
        assert stat.S_IMODE(base.stat().st_mode) == 0o664
    finally:
        os.umask(old)


def test_unwritable_out_fails_before_compute(tmp_path, plugin):
    suite = _suite(tmp_path, plugin)
    # /sys refuses writes even to root
    _one_error(_cli("run", suite, "--out", "/sys/scbench_run", "--quiet"), "/sys/scbench_run: cannot create the folder")
    if os.geteuid() == 0:
        return  # root writes through chmod; the write probe (the lock) is what is tested above
    run = run_suite(load_suite(suite), out=tmp_path / "ro", show_progress=False).run_dir
    run.chmod(0o555)
    try:
        _one_error(_cli("run", suite, "--out", run, "--quiet"), "not writable")
    finally:
        run.chmod(0o755)


# -- 7. one message, exit code 2 -------------------------------------------------------------

def test_cli_errors_are_one_message(tmp_path, plugin):
    suite = _suite(tmp_path, plugin)
    # a plug-in that raises: its own frame and one line
    out = _one_error(_cli("run", _suite(tmp_path, plugin, "{mode: raise}", name="r.yaml"), "--out",
                          tmp_path / "raise", "--quiet"),
                     "probe 'randomness' on defense 'toy': the defense raised ValueError: my classifier broke",
                     f"{plugin}:", 'raise ValueError("my classifier broke")')
    assert len(out[out.index("error:"):].strip().splitlines()) == 2, out  # message naming the probe, its frame
    res = CliRunner().invoke(app, ["--debug", "run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "raise2"), "--quiet"])
    assert res.exit_code == 2 and "Traceback" in res.output
    _one_error(_cli("run", tmp_path / "r.yaml", "--out", tmp_path / "raise3", "--quiet"), "my classifier broke")  # not sticky
    # a suite that is not UTF-8
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(SUITE.format(plugin=plugin, params="{}", steps=1).replace("name: rel", "name: r\xe9l").encode("latin-1"))
    _one_error(_cli("validate", latin), "latin.yaml, line 1: not UTF-8 text (byte 0xe9)")
    # a baseline of the wrong shape, and one with no entries
    run = run_suite(load_suite(suite), out=tmp_path / "ok", show_progress=False).run_dir
    for bad, needle in (([1, 2], "a JSON list"),
                        ({"format": "scbench-baseline/1", "entries": {}}, "no entries"),
                        ({"format": "scbench-baseline/1", "entries": {"toy": {"clean": {"n_images": 4}}}},
                         "entries.toy.clean: missing 'clean_accuracy'")):
        (tmp_path / "b.json").write_text(json.dumps(bad))
        _one_error(_cli("check", run, "--baseline", tmp_path / "b.json"), needle)
    # options
    _one_error(_cli("run", suite, "--device", "tpu"), "--device tpu: allowed values are cpu, cuda")
    _one_error(_cli("run", suite, "--threads", "-1"), "--threads -1: must be a whole number >= 1")
    _one_error(_cli("diagnose", "madry_pgd_at", "--n-images", "0"), "--n-images 0: must be in 1..1000")
    _one_error(_cli("diagnose", "madry_pgd_at", "--n-images", "5000"), "--n-images 5000: must be in 1..1000")
    _one_error(_cli("diagnose", "madry_pgd_at", "--eps", "8/0"), "'8/0' divides by zero")


def test_one_bad_attack_suite_file_does_not_break_threat_models(monkeypatch, tmp_path):
    import robust_bench_sc.config as config

    for p in (REPO_ROOT / "attack_suites").glob("*.yaml"):
        (tmp_path / p.name).write_text(p.read_text())
    (tmp_path / "broken.yaml").write_text("attack: pgd\nnorm: linf\nepsilon: 8/255\nsteps: [\n")
    monkeypatch.setattr(config, "ATTACK_SUITES_DIR", tmp_path)
    res = _cli("threat-models")
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and "broken.yaml" in res.output and "linf_pgd_ce" in res.output


# -- 8. check --------------------------------------------------------------------------------

def test_check_update_refuses_another_suites_baseline(tmp_path, plugin):
    run = run_suite(load_suite(_suite(tmp_path, plugin)), out=tmp_path / "r", show_progress=False).run_dir
    smoke = REPO_ROOT / "results" / "baselines" / "smoke.json"
    copy = tmp_path / "smoke.json"
    copy.write_bytes(smoke.read_bytes())
    _one_error(_cli("check", run, "--baseline", copy, "--update"), "is of suite 'smoke', this run of 'rel'", "--force")
    assert copy.read_bytes() == smoke.read_bytes()
    res = _cli("check", run, "--baseline", copy, "--update", "--force")
    assert res.exit_code == 0 and read_json(copy)["suite"] == "rel"
    assert _cli("check", run, "--baseline", copy).exit_code == 0


def test_run_lock_is_exclusive(tmp_path):
    a = RunLock(tmp_path).acquire()
    with pytest.raises(Exception, match="in use by another scbench run"):
        RunLock(tmp_path).acquire()
    a.release()
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_config_error_for_nested_entry_names_the_line(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: s\ndefenses: [madry_pgd_at]\nthreat_models:\n  - attack: worst_case\n    attacks:\n"
                 "      - {attack: pgd, norm: linf, epsilon: 8/255}\n      - {attack: pgdd}\n")
    with pytest.raises(ConfigError, match=r"s.yaml, line 7: threat_models.0.attacks.1.attack: unknown value 'pgdd'"):
        load_suite(p)


def test_gradient_attack_without_bpda_on_a_non_differentiable_defense_is_warned(tmp_path):
    """`Capabilities.differentiable = False` (the sparse-coding frontend) with a gradient threat
    model and no `bpda`: validate and run say, once per pair, that the number would measure
    gradient masking; `bpda: auto`, a gradient-free attack or a differentiable defense do not."""
    from robust_bench_sc.preflight import preflight

    (tmp_path / "w.yaml").write_text(
        "name: w\ndata: {n_images: 2, chunk_size: 2}\ndefenses: [sparse_coding_T15, madry_pgd_at]\n"
        "threat_models:\n"
        "  - {name: plain, attack: pgd, norm: linf, epsilon: 8/255}\n"
        "  - {name: through, attack: pgd, norm: linf, epsilon: 8/255, bpda: auto}\n"
        "  - {name: sq, attack: square, norm: linf, epsilon: 8/255, n_queries: 10}\n")
    suite = load_suite(tmp_path / "w.yaml")
    said: list[str] = []
    preflight(suite, warn=said.append)
    assert len(said) == 1, said
    assert "'plain'" in said[0] and "'sparse_coding_T15'" in said[0] and "gradient masking" in said[0]
    assert "smooth_top_u" in said[0]                     # names the stand-ins it offers
    preflight(suite)                                     # no listener: nothing to say, nothing raised
    res = _cli("validate", tmp_path / "w.yaml")
    assert res.exit_code == 0 and " ".join(res.output.split()).count("would measure gradient masking") == 1, res.output


# -- an interrupted run says so, and `scbench status` shows what a folder holds ---------------

class _StopAfter(LocalExecutor):
    """The local executor, with Ctrl-C pressed after ``k`` recorded jobs."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def execute(self, suite, jobs, on_result, on_progress=None):
        seen = []

        def stop_after(res):
            on_result(res)
            seen.append(res)
            if len(seen) == self.k:
                raise KeyboardInterrupt

        super().execute(suite, jobs, stop_after, on_progress)


def test_interrupted_run_is_marked_and_status_shows_progress(tmp_path, plugin):
    suite = load_suite(_suite(tmp_path, plugin, steps=2))
    run_dir = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, out=run_dir, executor=_StopAfter(3), show_progress=False)
    meta = read_json(run_dir / "run.json")
    assert meta["status"] == "interrupted" and meta["interrupted_at"] and not (run_dir / LOCK_NAME).exists()
    st = run_status(run_dir)
    assert st.jobs == (3, 4) and st.state.startswith("interrupted at")
    clean, pgd = st.pairs
    recorded = read_json(run_dir / "records" / "toy" / "linf_1" / "chunk_00000.json")["records"]
    assert (clean.recorded, clean.planned, clean.chunks_recorded) == (4, 4, 2)
    assert (pgd.recorded, pgd.planned, pgd.chunks_recorded, pgd.robust) == (2, 4, 1, sum(r["robust"] for r in recorded))
    assert pgd.remaining_seconds == pytest.approx(pgd.seconds)  # one chunk of two to go, at the same rate
    assert meta["executor"] == {"name": "local", "concurrent_jobs": 1} and st.concurrent_jobs == 1
    res = _cli("status", run_dir)
    assert res.exit_code == 0, res.output
    assert "3/4 jobs recorded" in res.output and "interrupted at" in res.output
    assert any(ln.split()[:4] == ["toy", "linf_1", "2/4", "1/2"] for ln in res.output.splitlines()), res.output
    # the report names the command that shows it; the same run command resumes and finishes it
    assert "scbench status" in _cli("report", run_dir).output
    out = run_suite(suite, out=run_dir, show_progress=False)
    assert out.computed_chunks == 1 and run_status(run_dir).state == "complete"
    assert read_json(run_dir / "run.json")["history"][-1]["status"] == "interrupted"


def test_status_turns_job_time_to_go_into_wall_time_with_the_jobs_run_at_once(tmp_path):
    """Two Ray workers finish three 600-s chunks in about 15 min, not 30; eight workers in 10
    (one chunk each); without run.json's ``executor`` the line says what it does not know."""
    from robust_bench_sc.run_status import PairStatus, RunStatus, status_lines
    from robust_bench_sc.storage import RunMeta

    pair = PairStatus("d", "t", planned=400, recorded=100, robust=40, scored=100, seconds=600.0,
                      chunks_planned=4, chunks_recorded=1)

    def line(executor):
        meta = {"suite": "s", "profile": None, **({"executor": executor} if executor is not None else {})}
        st = RunStatus(tmp_path, "running", None, RunMeta.from_json(meta, "run.json"), [pair],
                       subset="first 400 CIFAR-10 test images")
        return [ln for ln in status_lines(st) if ln.startswith("to go")][0], st.concurrent_jobs

    two, n = line({"name": "ray", "concurrent_jobs": 2})
    assert n == 2 and "≈ 30 min of job time" in two and "≈ 15 min of wall time with 2 jobs at once" in two, two
    eight, _ = line({"name": "ray", "concurrent_jobs": 8})
    assert "≈ 10 min of wall time with 3 jobs at once" in eight and "ran 8 at once" in eight, eight
    one, _ = line({"name": "local", "concurrent_jobs": 1})
    assert "wall time" not in one and "one job at a time" in one, one
    for unknown in (None, {"name": "custom", "concurrent_jobs": None}, {"concurrent_jobs": True}):
        text, n = line(unknown)
        assert n is None and "does not say how many" in text, text


def test_status_deducts_the_time_jobs_in_flight_have_run(tmp_path):
    """Three 600-s chunks to go, two of them in flight for 200 s and 900 s: 1800 - 200 - 600
    (a job past its chunk's estimate counts as the estimate, never as negative time to go)."""
    from robust_bench_sc.run_status import PairStatus, RunStatus, status_lines
    from robust_bench_sc.storage import RunMeta

    pair = PairStatus("d", "t", planned=400, recorded=100, robust=40, scored=100, seconds=600.0,
                      chunks_planned=4, chunks_recorded=1, in_flight=((100, 200.0), (100, 900.0)))
    assert pair.remaining_seconds == pytest.approx(1000.0)
    st = RunStatus(tmp_path, "running", None, RunMeta.from_json({"executor": {"name": "ray", "concurrent_jobs": 2}}, "run.json"),
                   [pair])
    line = [ln for ln in status_lines(st) if ln.startswith("to go")][0]
    assert "≈ 17 min of job time" in line and "less the time the jobs in flight have run" in line, line
    idle = PairStatus("d", "t", 400, 100, 40, 100, 600.0, 4, 1)
    assert idle.remaining_seconds == pytest.approx(1800.0)
    assert "in flight" not in [ln for ln in status_lines(RunStatus(tmp_path, "running", None, RunMeta({}), [idle]))
                               if ln.startswith("to go")][0]


def test_status_counts_only_records_the_run_would_reuse(tmp_path, plugin):
    suite = load_suite(_suite(tmp_path, plugin, steps=1))
    run_dir = tmp_path / "r"
    run_suite(suite, out=run_dir, show_progress=False)
    chunk = run_dir / "records" / "toy" / "linf_1" / "chunk_00001.json"
    blob = read_json(chunk)
    atomic_write_json(chunk, {**blob, "spec_hash": "0" * 16})  # another configuration's record
    st = run_status(run_dir)
    assert [(p.threat, p.recorded) for p in st.pairs] == [("clean", 4), ("linf_1", 2)]
    assert st.unusable == [f"{chunk} (other settings or images)"]
    assert "not counted" in _cli("status", run_dir).output
    _one_error(_cli("status", tmp_path), "not a run folder")
    # same settings, but a sample is another image: the runner would set it aside, so status does too
    clean = run_dir / "records" / "toy" / "clean" / "chunk_00000.json"
    blob = read_json(clean)
    atomic_write_json(clean, {**blob, "records": [{**blob["records"][0], "index": 7}, *blob["records"][1:]]})
    st = run_status(run_dir)
    assert [(p.threat, p.recorded) for p in st.pairs] == [("clean", 2), ("linf_1", 2)]
    assert st.unusable[0] == f"{clean} (damaged: sample 0 is image 7 (label {blob['records'][0]['label']}), the job's is 0 " \
                             f"(label {blob['records'][0]['label']}))"
    assert st.unchecked is None


def test_status_without_the_data_says_it_checked_counts_only(tmp_path, plugin, monkeypatch):
    run_dir = tmp_path / "r"
    run_suite(load_suite(_suite(tmp_path, plugin, steps=1)), out=run_dir, show_progress=False)
    monkeypatch.setenv("SCBENCH_DATA", str(tmp_path / "nowhere"))
    st = run_status(run_dir)
    assert [(p.threat, p.recorded) for p in st.pairs] == [("clean", 4), ("linf_1", 4)] and not st.unusable
    assert "test_first1000.npz not found" in st.unchecked
    assert "images and labels of the records not checked" in _cli("status", run_dir).output


def test_sigterm_marks_the_run_interrupted(tmp_path, plugin):
    """A real `scbench run` process stopped with SIGTERM (what `kill` sends): exit 130, run.json
    says interrupted, the lock is gone, the recorded chunks stay."""
    suite = _suite(tmp_path, plugin, params="{mode: slow}")  # each forward pass takes 1 s
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "robust_bench_sc.cli", "run", str(suite), "--out", str(out),
                             "--quiet", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = out / "records" / "toy" / "clean" / "chunk_00000.json"
    for _ in range(1200):
        if first.exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert first.exists(), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    stderr = proc.communicate()[1]
    assert rc == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert read_json(out / "run.json")["status"] == "interrupted" and not (out / LOCK_NAME).exists()
    assert run_status(out).jobs == (1, 4)


def test_start_line_names_the_images_the_jobs_cover(tmp_path, plugin):
    """A threat model capped by max_images is not announced as the suite's n_images."""
    from rich.console import Console

    body = SUITE.format(plugin=plugin, params="{}", steps=1) + "    max_images: 2\n"
    console = Console(record=True, width=200)
    run_suite(load_suite(_suite(tmp_path, plugin, body=body)), out=tmp_path / "r", console=console,
              show_progress=False)
    text = console.export_text()
    assert "(3 jobs, first 2 or 4 CIFAR-10 test images)" in text, text
    assert read_json(tmp_path / "r" / "run.json")["subset"] == "first 2 or 4 CIFAR-10 test images"
    body = SUITE.format(plugin=plugin, params="{}", steps=1).replace("n_images: 4, chunk_size: 2", "n_images: 2, chunk_size: 2")
    body = body.split("  - attack: pgd")[0]
    console = Console(record=True, width=200)
    run_suite(load_suite(_suite(tmp_path, plugin, body=body, name="one.yaml")), out=tmp_path / "one", console=console,
              show_progress=False)
    assert "(1 job, first 2 CIFAR-10 test images)" in console.export_text()


def test_report_tells_a_selection_profile_from_a_reduced_one(tmp_path, plugin):
    """A profile that only picks images or columns is not called reduced; one that cuts a
    budget names what it set. Runs without the recorded ``profile_set`` keep the old note."""
    from robust_bench_sc.report_model import load_report

    body = SUITE.format(plugin=plugin, params="{}", steps=2) + """profiles:
  few:
    n_images: 2
    threat_models: [linf_1]
    set: {linf_1.max_images: 2, chunk_size: 1}
  short:
    set: {steps: 1, linf_1.max_images: 2}
"""
    path = _suite(tmp_path, plugin, body=body)
    few = run_suite(load_suite(path, profile="few"), out=tmp_path / "few", show_progress=False).run_dir
    short = run_suite(load_suite(path, profile="short"), out=tmp_path / "short", show_progress=False).run_dir
    assert read_json(few / "run.json")["profile_set"] == {"linf_1.max_images": 2, "chunk_size": 1}
    notes = load_report([few, short]).notes
    assert "few: profile `few`: a selection of the suite's defenses, threat models or images, at its declared " \
           "settings." in notes, notes
    assert "short: reduced profile `short`: steps=1 (not the suite's declared setting)." in notes, notes
    assert "Profile `few`: a selection of the suite's defenses, threat models or images, at its declared settings" \
        in (few / "summary.md").read_text()
    assert "Reduced profile `short` (steps=1): not the suite's declared setting" in (short / "summary.md").read_text()
    meta = read_json(few / "run.json")
    del meta["profile_set"]
    atomic_write_json(few / "run.json", meta)
    assert "few: reduced profile `few` (not the faithful setting)." in load_report([few]).notes


def test_run_json_counts_the_jobs_each_invocation_computed(tmp_path, plugin):
    """The runs table names the code that computed the numbers, not a later re-run that only
    reused the records and rewrote the tables."""
    from robust_bench_sc.renderers.text import _git as _git_of
    from robust_bench_sc.storage import RunMeta

    def _git(meta):
        return _git_of(RunMeta.from_json(meta, "run.json"))

    suite = load_suite(_suite(tmp_path, plugin, steps=1))
    run_dir = tmp_path / "r"
    run_suite(suite, out=run_dir, show_progress=False)
    run_suite(suite, out=run_dir, show_progress=False)
    meta = read_json(run_dir / "run.json")
    assert [h["jobs_computed"] for h in meta["history"]] == [4] and meta["jobs_computed"] == 0
    first, later = {"commit": "a" * 40, "dirty": True}, {"commit": "b" * 40, "dirty": False}
    meta["history"][0]["git"], meta["git"] = first, later
    assert _git(meta) == "aaaaaaaaaa (dirty)"
    meta["jobs_computed"] = 1  # the later invocation grew the run
    assert _git(meta) == "aaaaaaaaaa (dirty), bbbbbbbbbb"
    del meta["history"][0]["jobs_computed"]  # recorded before the count existed: kept
    meta["jobs_computed"] = 0
    assert _git(meta) == "aaaaaaaaaa (dirty)"


def test_status_scores_only_drawn_images_where_records_draw(tmp_path, plugin):
    """ZOO-style records: drawn images carry selected = 1, the others 0, the misclassified none;
    status counts the drawn ones only, as summary.csv does."""
    run_dir = tmp_path / "r"
    run_suite(load_suite(_suite(tmp_path, plugin, steps=1)), out=run_dir, show_progress=False)
    chunk = run_dir / "records" / "toy" / "clean" / "chunk_00000.json"
    blob = read_json(chunk)
    a, b = blob["records"]
    atomic_write_json(chunk, {**blob, "records": [{**a, "selected": 1.0, "robust": False}, {**b, "selected": None}]})
    pair = next(p for p in run_status(run_dir).pairs if p.threat == "clean")
    assert (pair.recorded, pair.scored, pair.robust) == (4, 3, sum(int(r["robust"]) for r in
                                                                    read_json(chunk.with_name("chunk_00001.json"))["records"]))
