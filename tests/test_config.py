"""Suite and threat-model validation: errors name the file, the line and allowed values."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from robust_bench_sc.cli import app
from robust_bench_sc.config import load_suite
from robust_bench_sc.paths import REPO_ROOT
from robust_bench_sc.threat_models import PGDThreat, parse_number, resolve_relative
from robust_bench_sc.yamlio import ConfigError


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip())
    return p


GOOD = """
name: t
data: {n_images: 20, chunk_size: 10}
defenses: [madry_pgd_at]
threat_models:
  - clean
  - name: linf
    attack: pgd
    norm: linf
    epsilon: 8/255
    steps: 3
"""


def test_good_suite_resolves(tmp_path):
    s = load_suite(write(tmp_path, GOOD))
    assert [t.name for t in s.threat_models] == ["clean", "linf"]
    pgd = s.threat("linf")
    assert isinstance(pgd, PGDThreat)
    assert pgd.epsilon == pytest.approx(8 / 255)
    assert pgd.step == pytest.approx(1 / 255)  # default epsilon/8
    assert s.resolved()["threat_models"][1]["steps"] == 3


@pytest.mark.parametrize(
    "text,pattern",
    [
        # typo in a top-level key
        (GOOD.replace("threat_models:", "threat_model:"), r"suite\.yaml, line 4: unknown key 'threat_model' \(did you mean 'threat_models'"),
        # unknown attack kind
        (GOOD.replace("attack: pgd", "attack: pdg"), r"line 7: .*attack: unknown value 'pdg' \(did you mean 'pgd'\?\); allowed values: autoattack, boundary"),
        # bad norm value
        (GOOD.replace("norm: linf", "norm: l3"), r"line 8: threat_models\.1\.norm: Input should be 'linf', 'l2' or 'l1'"),
        # misspelt field in a threat model
        (GOOD.replace("steps: 3", "stepz: 3"), r"line 10: threat_models\.1\.stepz: unknown key \(did you mean 'steps'.*allowed keys: attack, backend"),
        # epsilon that is not a number
        (GOOD.replace("8/255", "eight"), r"line 9: threat_models\.1\.epsilon: .*fraction like '8/255'"),
        # unknown threat-model file name
        (GOOD.replace("  - clean", "  - clen"), r"unknown threat model 'clen' \(did you mean 'clean'\?\)"),
        # n_images out of range
        (GOOD.replace("n_images: 20", "n_images: 0"), r"line 2: data\.n_images: Input should be greater than or equal to 1"),
        # YAML syntax error
        (GOOD.replace("defenses: [madry_pgd_at]", "defenses: [madry_pgd_at"), r"YAML syntax error at line"),
        # backend not available for this attack
        (GOOD.replace("steps: 3", "steps: 3\n    backend: magic"), r"backend 'magic' is not available for attack 'pgd'; allowed: native, torchattacks, foolbox, art"),
    ],
)
def test_malformed_suites_name_file_line_and_allowed_values(tmp_path, text, pattern):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern) as exc:
        load_suite(p)
    assert str(p) in str(exc.value)


def test_error_in_threat_model_file_names_that_file(tmp_path):
    (tmp_path / "attack_suites").mkdir()
    tm = write(tmp_path / "attack_suites", "attack: pgd\nnorm: linf\nepsilon: 8/255\nrestart: 3\n", "mine.yaml")
    (tmp_path / "suites").mkdir()
    p = write(tmp_path / "suites", "name: x\ndefenses: [trades]\nthreat_models: [mine]\n")
    with pytest.raises(ConfigError, match=rf"{tm}, line 4: restart: unknown key \(did you mean 'restarts'"):
        load_suite(p)


def test_set_overrides_and_profiles(tmp_path):
    text = GOOD + "profiles:\n  quick: {n_images: 10, set: {steps: 1}}\n"
    p = write(tmp_path, text)
    s = load_suite(p, overrides=["linf.restarts=4"], profile="quick")
    assert s.data.n_images == 10 and s.threat("linf").steps == 1 and s.threat("linf").restarts == 4
    assert s.content_hash() != load_suite(p).content_hash()
    with pytest.raises(ConfigError, match="no threat model named 'lnf'.*did you mean 'linf'"):
        load_suite(p, overrides=["lnf.steps=2"])
    with pytest.raises(ConfigError, match="no threat model of .* has a field 'stepz'"):
        load_suite(p, overrides=["stepz=2"])
    with pytest.raises(ConfigError, match="no profile 'quik'.*did you mean 'quick'"):
        load_suite(p, profile="quik")


def test_numbers_and_relative_steps():
    assert parse_number("8/255") == pytest.approx(8 / 255)
    assert parse_number(0.6) == 0.6
    assert resolve_relative("epsilon/8", 0.6) == pytest.approx(0.075)
    assert resolve_relative("eps*0.5", 2.0) == pytest.approx(1.0)
    assert resolve_relative("0.5/255", 1.0) == pytest.approx(0.5 / 255)


def test_validate_command_reports_errors_without_traceback(tmp_path):
    p = write(tmp_path, GOOD.replace("attack: pgd", "attack: pdg"))
    res = CliRunner().invoke(app, ["validate", str(p)])
    assert res.exit_code == 2
    assert "did you mean 'pgd'" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["validate", str(write(tmp_path, GOOD, "ok.yaml"))])
    assert res.exit_code == 0, res.output
    assert "ok" in res.output


def test_every_bundled_suite_and_threat_model_validates():
    for p in sorted((REPO_ROOT / "suites").glob("*.yaml")):
        load_suite(p)
    res = CliRunner().invoke(app, ["threat-models"])
    assert res.exit_code == 0, res.output


def test_profile_runs_a_subset_and_max_images_limits_one_column(tmp_path):
    from robust_bench_sc.plan import plan_jobs

    text = GOOD.replace("defenses: [madry_pgd_at]", "defenses: [madry_pgd_at, trades]") + textwrap.dedent("""
        profiles:
          one:
            defenses: [trades]
            threat_models: [linf]
            set: {linf.max_images: 15}
          typo:
            defenses: [trade]
        """)
    path = write(tmp_path, text)
    full = load_suite(path)
    assert len(plan_jobs(full)) == 2 * 2 * 2  # 2 defenses × 2 threat models × 2 chunks of 10
    sub = load_suite(path, profile="one")
    assert [d.label for d in sub.defenses] == ["trades"] and [t.name for t in sub.threat_models] == ["linf"]
    jobs = plan_jobs(sub)
    assert [(j.start, j.stop) for j in jobs] == [(0, 10), (10, 15)]
    # a subset keeps each job's seed: the same chunk gives the same numbers as in the full suite
    same = [j for j in plan_jobs(full) if j.defense == "trades" and j.threat == "linf"]
    assert [j.seed for j in jobs] == [j.seed for j in same]
    assert sub.content_hash() != full.content_hash()
    with pytest.raises(ConfigError, match=r"profile 'typo': defenses trade not in the suite \(did you mean 'trades'"):
        load_suite(path, profile="typo")


def test_profile_extends_another(tmp_path):
    """`extends` starts from the named profile (followed through a chain): `set` and
    `defense_threat_models` merge key by key, the rest is replaced; the result is the profile
    written out in full (same hash, same jobs). An unknown name or a cycle names its line."""
    from robust_bench_sc.plan import plan_jobs

    base = GOOD.replace("defenses: [madry_pgd_at]", "defenses: [madry_pgd_at, trades]")
    text = base + textwrap.dedent("""
        profiles:
          small: {n_images: 10, set: {linf.steps: 2, linf.restarts: 2}, defense_threat_models: {trades: [clean]}}
          more:
            extends: small
            set: {linf.restarts: 3}
            defense_threat_models: {madry_pgd_at: [linf]}
          most: {extends: more, n_images: 20}
          written_out:
            n_images: 20
            set: {linf.steps: 2, linf.restarts: 3}
            defense_threat_models: {trades: [clean], madry_pgd_at: [linf]}
        """)
    path = write(tmp_path, text)
    more, most, full = (load_suite(path, profile=p) for p in ("more", "most", "written_out"))
    assert (more.data.n_images, more.threat("linf").steps, more.threat("linf").restarts) == (10, 2, 3)
    assert dict(more.profiles["more"].defense_threat_models) == {"trades": ["clean"], "madry_pgd_at": ["linf"]}
    assert most.data.n_images == 20 and most.profiles["most"].set == {"linf.steps": 2, "linf.restarts": 3}
    assert [(j.defense, j.threat, j.chunk) for j in plan_jobs(most)] == \
        [("madry_pgd_at", "linf", 0), ("madry_pgd_at", "linf", 1), ("trades", "clean", 0), ("trades", "clean", 1)]
    assert [j.key for j in plan_jobs(most)] == [j.key for j in plan_jobs(full)]
    assert most.threat("linf") == full.threat("linf") and most.data == full.data
    assert load_suite(path).profiles["most"].extends is None  # resolved on load

    bad = base + "profiles:\n  a: {n_images: 5}\n  b:\n    extends: aa\n"
    with pytest.raises(ConfigError, match=r"suite\.yaml, line 14: profile 'b': extends 'aa': no such profile "
                                          r"\(did you mean 'a'\?\); profiles: a, b"):
        load_suite(write(tmp_path, bad), profile="a")
    loop = base + "profiles:\n  a: {extends: c}\n  b: {extends: a}\n  c:\n    extends: b\n"
    with pytest.raises(ConfigError, match=r"line 1[345]: profile '.': extends is circular \(a → c → b → a\)"):
        load_suite(write(tmp_path, loop))


# -- nested threat models (transfer craft, worst_case attacks) are validated on load -----------

NESTED = """
name: t
data: {n_images: 4, chunk_size: 4}
defenses: [madry_pgd_at]
threat_models:
  - name: tr
    attack: transfer
    source: trades
    craft:
      attack: pgd
      norm: linf
      epsilon: 8/255
      steps: 1
  - name: wc
    attack: worst_case
    attacks:
      - {attack: pgd, norm: linf, epsilon: 8/255, steps: 1}
      - attack: square
        norm: linf
        epsilon: 8/255
        n_queries: 5
"""


@pytest.mark.parametrize("old, new, where, message", [
    ("      steps: 1\n  - name: wc", "      stepz: 1\n  - name: wc", "line 12",
     "threat_models.0.craft.stepz: unknown key (did you mean 'steps'"),
    ("      epsilon: 8/255\n      steps: 1", "      epsilon: -8/255\n      steps: 1", "line 11",
     "threat_models.0.craft.epsilon: Input should be greater than 0"),
    ("        epsilon: 8/255\n        n_queries", "        epsilon: 8/0\n        n_queries", "line 19",
     "threat_models.1.attacks.1.epsilon: Value error, '8/0' divides by zero"),
    ("      - {attack: pgd, norm: linf, epsilon: 8/255, steps: 1}",
     "      - {attack: worst_case, attacks: [{attack: pgd, norm: linf, epsilon: 8/255}]}", "line 16",
     "threat_models.1.attacks.0.attack: 'worst_case' cannot be nested in worst_case.attacks (list its attacks in "
     "this one); allowed values: autoattack, boundary, cw, hsj, pgd,"),
    ("      attack: pgd\n", "      attack: square\n", "line 9",
     "threat_models.0.craft.attack: 'square' cannot be nested in transfer.craft (craft is a white-box attack on "
     "the source; a gradient-free one belongs on the defense itself); allowed values: autoattack, cw, pgd"),
    ("      - {attack: pgd, norm: linf, epsilon: 8/255, steps: 1}", "      - {attack: pgdd}", "line 16",
     "threat_models.1.attacks.0.attack: unknown value 'pgdd' (did you mean 'pgd'?); allowed values: autoattack"),
])
def test_bad_nested_attack_is_one_line_from_validate_and_run(tmp_path, old, new, where, message):
    assert NESTED.count(old) == 1
    p = write(tmp_path, NESTED.replace(old, new))
    with pytest.raises(ConfigError) as exc:
        load_suite(p)
    assert str(exc.value).splitlines() == [str(exc.value)] and str(exc.value).startswith(f"{p}, {where}: {message}")
    out = tmp_path / "run"
    for args in (["validate", str(p)], ["run", str(p), "--out", str(out), "--quiet", "--threads", "1"]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output and res.output.count("error:") == 1, res.output
        assert f"{p}, {where}: {message}" in res.output, res.output
    assert not out.exists()  # refused before anything was computed or written


def test_good_nested_suite_validates_and_keeps_its_written_form(tmp_path):
    s = load_suite(write(tmp_path, NESTED))
    assert s.threat("tr").craft.keep_adversarial_iterate is False and s.threat("wc").attacks[1].name == "wc[1]"
    assert s.resolved()["threat_models"][0]["craft"] == {"attack": "pgd", "norm": "linf", "epsilon": "8/255",
                                                         "steps": 1}


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "suites").glob("*.yaml")), ids=lambda p: p.stem)
def test_suite_rebuilt_from_its_resolved_config_plans_the_same_jobs(path):
    """run.json keeps `resolved()`; `suite_from_resolved` (scbench status) rebuilds the suite from
    it with the same content hash and job plan, for every shipped suite and profile."""
    from robust_bench_sc.config import suite_from_resolved
    from robust_bench_sc.plan import job_spec_hash, plan_jobs

    base = load_suite(path)
    for profile in [None, *base.profiles]:
        suite = load_suite(path, profile=profile)
        again = suite_from_resolved(json.loads(json.dumps(suite.resolved(), default=str)), "run.json")
        assert again.content_hash() == suite.content_hash(), (path.name, profile)
        assert [job_spec_hash(again, j) for j in plan_jobs(again)] == [job_spec_hash(suite, j) for j in plan_jobs(suite)]
    with pytest.raises(ConfigError, match="run.json: no resolved suite configuration"):
        suite_from_resolved({"name": "x"}, "run.json")


def test_one_threat_model_resolution_for_suites_api_and_diagnose(tmp_path):
    """Issue 36: ``use:`` and names are resolved by one function (config.resolve_threat_entry);
    a suite, ``benchmark()`` and ``diagnose --active`` get the same threat model from the same entry."""
    from robust_bench_sc.api import _threat_model
    from robust_bench_sc.binarization import resolve_threat

    suite = load_suite(write(tmp_path, """
        name: t
        data: {n_images: 20, chunk_size: 10}
        defenses: [madry_pgd_at]
        threat_models:
          - {use: linf_pgd_ce, steps: 20}
          - linf_pgd_cw
        """))
    by_suite = {t.name: t.model_dump() for t in suite.threat_models}
    assert by_suite["linf_pgd_ce"]["steps"] == 20 and by_suite["linf_pgd_ce"]["restarts"] == 100
    assert _threat_model({"use": "linf_pgd_ce", "steps": 20}, 0).model_dump() == by_suite["linf_pgd_ce"]
    assert resolve_threat("linf_pgd_ce", ["steps=20"]).model_dump() == by_suite["linf_pgd_ce"]
    assert _threat_model("linf_pgd_cw", 1).model_dump() == by_suite["linf_pgd_cw"]
    assert resolve_threat(str(REPO_ROOT / "attack_suites" / "linf_pgd_cw.yaml")).model_dump() == by_suite["linf_pgd_cw"]
    # bad input: a use: of a file that is not a mapping, an unknown use:, each one line with file and line
    (tmp_path / "attack_suites").mkdir()
    (tmp_path / "attack_suites" / "listy.yaml").write_text("- attack: pgd\n")
    (tmp_path / "suites").mkdir()
    bad = write(tmp_path / "suites", """
        name: t
        data: {n_images: 20, chunk_size: 10}
        defenses: [madry_pgd_at]
        threat_models:
          - clean
          - {use: listy, steps: 2}
        """)
    with pytest.raises(ConfigError) as exc:
        load_suite(bad)
    msg = str(exc.value)
    assert "suite.yaml, line 6: threat_models[1]:" in msg and "listy.yaml: a threat model must be a mapping" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match=r"line 6: threat_models\[1\]: unknown threat model 'lnf_pgd_ce' "
                                          r"\(did you mean 'linf_pgd_ce'"):
        load_suite(write(tmp_path / "suites", bad.read_text().replace("listy", "lnf_pgd_ce")))
