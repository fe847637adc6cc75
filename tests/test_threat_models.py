"""Typed nested threat models (issue 17, item 1): a transfer's ``craft`` and a worst case's
``attacks`` are threat models, validated with their parent, serialised as written (the spec
hashes of committed records stay the same); each schema declares its backends once; the
transfer attack is a backend whose source the runner's context builds."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from robust_bench_sc import threat_models as tms
from robust_bench_sc.attacks.base import ATTACKS, AttackContext, attack_class, get_attack
from robust_bench_sc.attacks.pgd import NativePGD
from robust_bench_sc.attacks.transfer import TransferAttack
from robust_bench_sc.config import load_suite, validate_threat_model
from robust_bench_sc.evaluate import evaluate_threat, predict
from robust_bench_sc.paths import REPO_ROOT
from robust_bench_sc.plan import job_spec_hash, legacy_spec_hash, plan_jobs
from robust_bench_sc.plugins import build_defense
from robust_bench_sc.registry import RegistryError
from robust_bench_sc.storage import RunDir
from robust_bench_sc.threat_models import PGDThreat, SquareThreat, TransferThreat, WorstCaseThreat

DEV = torch.device("cpu")
ADAPTIVE = REPO_ROOT / "results" / "adaptive_first50"

# spec hashes of the three transfer jobs of sparse_coding_T15 as committed (records with a spec_hash)
COMMITTED_T15_TRANSFER = {"transfer_from_madry": "3bf10fef9027800a", "transfer_from_trades": "9035492734b43f28",
                          "transfer_from_bpda_surrogate": "68cc1ed535384857"}


@pytest.fixture(scope="module")
def first50():
    return load_suite(REPO_ROOT / "suites" / "adaptive.yaml", profile="first50")


def test_committed_transfer_spec_hashes_unchanged(first50):
    latest = json.loads((ADAPTIVE / "run.json").read_text())
    # the run grew with other profiles later (first50_square_5000): check the first50 invocation
    meta = [inv for inv in [*latest.get("history", []), latest] if inv.get("profile") == "first50"][-1]
    assert first50.content_hash() == meta["suite_hash"] == "29ddd5879aab85b4"  # resolved() as before
    rd = RunDir(ADAPTIVE)
    seen = 0
    for j in plan_jobs(first50):
        if not j.threat.startswith("transfer_"):
            continue
        blob = rd.read_chunk(j.defense, j.threat, j.chunk)
        recorded = blob.get("spec_hash") or legacy_spec_hash(meta["config"], blob["job"])
        assert recorded is not None and job_spec_hash(first50, j) == recorded, j.key
        if j.defense == "sparse_coding_T15":
            assert recorded == COMMITTED_T15_TRANSFER[j.threat]
        seen += 1
    assert seen == 9  # 3 defenses x 3 transfer threat models, one chunk of 50 images each
    # the stored configuration round-trips: the craft is stored as written (8/255 as text)
    tr = first50.threat("transfer_from_bpda_surrogate")
    stored = next(t for t in meta["config"]["threat_models"] if t["name"] == tr.name)
    assert tr.model_dump() == stored and stored["craft"]["epsilon"] == "8/255"
    again = TransferThreat.model_validate(stored)
    assert again == tr and again.craft.bpda == "smooth_top_u" and again.craft.keep_adversarial_iterate is False


def test_growing_the_committed_run_reuses_every_job(first50, tmp_path):
    from robust_bench_sc.records import reconcile_records

    run = tmp_path / "adaptive_first50"
    shutil.copytree(ADAPTIVE, run, ignore=shutil.ignore_patterns("diagnostics", "samples.csv"))
    old = RunDir(run).read_run_meta()
    jobs = plan_jobs(first50)
    done, fps = reconcile_records(first50, run, jobs, old, fingerprints=old.defense_fingerprints)
    assert done == jobs and len(jobs) == 18
    assert fps == old.defense_fingerprints


WC_SUITE = """\
name: wc
defenses: [madry_pgd_at]
threat_models:
  - name: wc
    attack: worst_case
    bpda: auto
    eot: 2
    attacks:
      - {attack: pgd, norm: linf, epsilon: 8/255, steps: 10, step_size: epsilon/4}
      - {attack: square, norm: linf, epsilon: 8/255, n_queries: 100}
      - {attack: transfer, source: trades, craft: {attack: pgd, norm: linf, epsilon: 8/255, steps: 5}}
  - name: tr
    attack: transfer
    source: {ref: trades, name: tr_src}
    source_bpda: identity
    batch_size: 50
    craft: {attack: pgd, norm: l2, epsilon: "0.5", steps: 7, restarts: 2, keep_adversarial_iterate: true}
"""
# computed by the code before the nested threat models were typed (untyped mappings), commit 7dc5978
WC_PINNED = {"wc/0": "aa6fd4578d7a68e8", "wc/9": "3130ee3c8b635043", "tr/0": "06499aa51b60d678",
             "tr/9": "462f4290c7122115"}


def test_worst_case_and_transfer_spec_hashes_are_those_of_the_untyped_code(tmp_path):
    p = tmp_path / "wc.yaml"
    p.write_text(WC_SUITE)
    s = load_suite(p)
    got = {f"{j.threat}/{j.chunk}": job_spec_hash(s, j) for j in plan_jobs(s)}
    assert {k: got[k] for k in WC_PINNED} == WC_PINNED
    assert s.content_hash() == "e31881e7cc91d0c2"
    wc = s.resolved()["threat_models"][0]
    assert wc["attacks"][0] == {"attack": "pgd", "norm": "linf", "epsilon": "8/255", "steps": 10,
                                "step_size": "epsilon/4"}  # as written: no name, no inherited eot, no rule


def test_nested_entries_are_typed_with_their_parents_defaults(tmp_path):
    p = tmp_path / "wc.yaml"
    p.write_text(WC_SUITE)
    s = load_suite(p)
    wc, tr = s.threat("wc"), s.threat("tr")
    assert isinstance(wc, WorstCaseThreat) and [type(a) for a in wc.attacks] == [PGDThreat, SquareThreat,
                                                                                 TransferThreat]
    pgd, square, transfer = wc.attacks
    assert [a.name for a in wc.attacks] == ["wc[0]", "wc[1]", "wc[2]"]
    assert (pgd.bpda, pgd.eot, pgd.batch_size) == ("auto", 2, 100)  # non-default bpda / eot inherited
    assert pgd.epsilon == pytest.approx(8 / 255) and pgd.step == pytest.approx(2 / 255)
    assert square.rescale_schedule is True  # Square's own rule (100 queries ≠ 5000) applies to a member
    assert transfer.craft.name == "wc[2]/craft" and transfer.craft.keep_adversarial_iterate is False
    assert wc.norm_name == "linf" and wc.epsilon_value == pytest.approx(8 / 255)
    craft = tr.craft
    assert isinstance(craft, PGDThreat) and craft.name == "tr/craft"
    assert (craft.batch_size, craft.bpda, craft.keep_adversarial_iterate) == (50, "identity", True)
    assert tr.source_spec == ("trades", {}, "tr_src") and tr.norm_name == "l2" and tr.epsilon_value == 0.5
    # a worst case whose own settings are the defaults passes none of them on
    plain = WorstCaseThreat(name="w", attacks=[{"attack": "pgd", "norm": "l2", "epsilon": 0.5, "eot": 3}])
    assert (plain.attacks[0].eot, plain.attacks[0].bpda) == (3, None)
    # built in Python from typed members: dumped as the fields it was given
    built = WorstCaseThreat(name="w", attacks=[PGDThreat(norm="linf", epsilon=0.03)])
    assert built.model_dump(exclude_defaults=True)["attacks"] == [{"attack": "pgd", "norm": "linf", "epsilon": 0.03}]
    assert built.attacks[0].name == "w[0]"
    # the composite protocol: the members in order, and where they run
    assert wc.members() == [pgd, square, transfer] and wc.members_run_on == "defense"
    assert tr.members() == [craft] and tr.members_run_on == "source"
    assert pgd.members() == [] and transfer.members() == [transfer.craft]


def test_every_composite_kind_keeps_the_protocol():
    """A kind that nests threat models says where they run; one that runs them on another model
    names it (``source_spec``), as preflight and the engine read it (no kind name anywhere)."""
    composites = {k: c for k, c in tms.THREAT_MODELS.items() if c.nested_fields}
    assert sorted(composites) == ["transfer", "worst_case"]
    for kind, cls in composites.items():
        assert cls.members_run_on in ("defense", "source"), kind
        if cls.members_run_on == "source":
            assert isinstance(getattr(cls, "source_spec", None), property), kind
        else:  # the engine composes the members' records itself
            assert cls.backends == {"native": None}, kind


def test_a_source_mapping_is_checked():
    base = {"attack": "transfer", "craft": {"attack": "pgd", "norm": "linf", "epsilon": 0.03}}
    with pytest.raises(Exception, match="unknown key 'reff'; allowed keys: name, params, ref"):
        validate_threat_model({**base, "source": {"reff": "trades"}}, "t")
    with pytest.raises(Exception, match="needs ref"):
        validate_threat_model({**base, "source": {"name": "x"}}, "t")


# -- backends: one declaration on the schema --------------------------------------------------

def test_each_schema_declares_its_backends_and_the_lookup_reads_them():
    declared = {f"{kind}:{b}": target for kind, cls in tms.THREAT_MODELS.items()
                for b, target in cls.backends.items() if target is not None}
    assert set(ATTACKS.names()) == set(declared)
    assert declared["transfer:native"] == "robust_bench_sc.attacks.transfer:TransferAttack"
    assert declared["pgd:foolbox"] == "robust_bench_sc.attacks.toolkits:FoolboxPGD"
    assert tms.CleanThreat.backends == {"native": None} and WorstCaseThreat.backends == {"native": None}
    t = validate_threat_model({"attack": "pgd", "norm": "linf", "epsilon": 0.03}, "t")
    assert attack_class(t) is NativePGD
    with pytest.raises(Exception, match=r"backend 'foolbox' is not available for attack 'square'; allowed: "
                                        r"autoattack, torchattacks"):
        validate_threat_model({"attack": "square", "norm": "linf", "epsilon": 0.03, "backend": "foolbox"}, "t")
    with pytest.raises(RegistryError, match="the engine evaluates it itself"):
        attack_class(tms.CleanThreat(name="c"))
    # nowhere else spells an attack implementation
    for path in (REPO_ROOT / "robust_bench_sc").rglob("*.py"):
        if path.name != "threat_models.py":
            assert "robust_bench_sc.attacks.pgd:NativePGD" not in path.read_text(), path


def test_a_threat_model_registered_after_the_nested_unions_is_refused():
    class Late(tms.ThreatModel):
        kind = "late"
        backends = {"native": "x:y"}

    with pytest.raises(TypeError, match="registered after the nested unions were built"):
        tms.register_threat_model(Late)
    assert "late" not in tms.THREAT_MODELS


# -- the transfer backend on real images ------------------------------------------------------

@pytest.fixture(scope="module")
def madry_trades():
    return build_defense("madry_pgd_at").eval(), build_defense("trades").eval()


def test_transfer_attack_crafts_on_the_source_built_by_the_context(madry_trades, test_split):
    madry, trades = madry_trades
    torch.set_num_threads(1)
    x, y = test_split.x[:6], test_split.y[:6]
    t = validate_threat_model({"name": "tr", "attack": "transfer", "source": "madry_pgd_at",
                               "craft": {"attack": "pgd", "norm": "linf", "epsilon": "8/255", "steps": 3}}, "t")
    atk = get_attack(t)
    assert isinstance(atk, TransferAttack) and isinstance(atk.craft, NativePGD) and atk.batch_size is None
    built = []

    def builder(ref, params, name):
        built.append((ref, params, name))
        return madry

    ctx = AttackContext(trades, DEV, seed=11, build_defense=builder)
    out = atk.run(ctx, x, y)
    again = atk.run(ctx, x, y)
    assert built == [("madry_pgd_at", {}, "madry_pgd_at")]  # built once, then from the context's cache
    # the same images as PGD (every step: the schema's keep_adversarial_iterate false) on the source
    direct = NativePGD(t.craft).run(AttackContext(madry, DEV, seed=11), x, y)
    assert torch.equal(out.x_adv, direct.x_adv) and torch.equal(again.x_adv, direct.x_adv)
    assert (out.x_adv - x).abs().max() <= 8 / 255 + 1e-6 and (out.x_adv - x).abs().max() > 4 / 255
    assert out.claimed is None and (direct.info["stop_step"] == 3).all()
    src_fooled = (predict(madry, out.x_adv, 100, DEV) != y).float()
    assert torch.equal(out.info["source_fooled"], src_fooled)
    # the engine re-checks the crafted images on the defense under test
    recs = evaluate_threat(trades, t, x, y, test_split.idx[:6], AttackContext(trades, DEV, 11, build_defense=builder))
    adv_pred = predict(trades, direct.x_adv, 100, DEV)
    clean = predict(trades, x, 100, DEV)
    for i, r in enumerate(recs):
        assert r["clean_correct"] == bool(clean[i] == y[i])
        if r["attacked"]:
            assert r["adv_pred"] == int(adv_pred[i]) and r["source_fooled"] == float(src_fooled[i])
            assert r["robust"] == bool(adv_pred[i] == y[i])


def test_transfer_without_a_builder_is_a_clear_error(madry_trades, test_split):
    t = validate_threat_model({"attack": "transfer", "source": "madry_pgd_at",
                               "craft": {"attack": "pgd", "norm": "linf", "epsilon": 0.03, "steps": 1}}, "t")
    with pytest.raises(RuntimeError, match="cannot build the transfer source 'madry_pgd_at': pass build_defense"):
        get_attack(t).run(AttackContext(madry_trades[1], DEV, 0), test_split.x[:2], test_split.y[:2])


def test_worst_case_runs_its_typed_members_through_the_engine(madry_trades, test_split):
    madry, trades = madry_trades
    torch.set_num_threads(1)
    x, y, idx = test_split.x[:8], test_split.y[:8], test_split.idx[:8]
    wc = validate_threat_model({"name": "wc", "attack": "worst_case", "attacks": [
        {"attack": "pgd", "norm": "linf", "epsilon": "2/255", "steps": 2},
        {"attack": "transfer", "source": "trades", "craft": {"attack": "pgd", "norm": "linf", "epsilon": "8/255",
                                                             "steps": 3}}]}, "t")
    ctx = AttackContext(madry, DEV, 5, build_defense=lambda ref, params, name: trades)
    recs = evaluate_threat(madry, wc, x, y, idx, ctx)
    first = evaluate_threat(madry, wc.attacks[0], x, y, idx, AttackContext(madry, DEV, 5))
    alive = [i for i, r in enumerate(first) if r["robust"]]
    second = evaluate_threat(madry, wc.attacks[1], x[alive], y[alive], idx[alive],
                             AttackContext(madry, DEV, 5, build_defense=lambda ref, params, name: trades))
    expect = {i: r["robust"] for i, r in enumerate(first)}
    expect.update({i: r["robust"] for i, r in zip(alive, second)})
    assert [r["robust"] for r in recs] == [expect[i] for i in range(8)]
    fooled_by = {r["fooled_by"] for r in recs}
    assert fooled_by <= {"", "wc[0]", "wc[1]"} and sum(r["clean_correct"] for r in recs) >= 5
    assert all(r["fooled_by"] == "" for r in recs if r["robust"])


def test_a_suite_run_builds_the_transfer_source_through_the_worker(tmp_path):
    """End to end: preflight builds and checks the source, the worker's context builds it for the job."""
    from robust_bench_sc.runner import run_suite

    p = tmp_path / "tr.yaml"
    p.write_text("name: tr\ndata: {n_images: 4, chunk_size: 4}\ndefenses: [trades]\nthreat_models:\n"
                 "  - name: from_madry\n    attack: transfer\n    source: madry_pgd_at\n"
                 "    craft: {attack: pgd, norm: linf, epsilon: 8/255, steps: 2}\n")
    torch.set_num_threads(1)
    out = run_suite(load_suite(p), out=tmp_path / "run", show_progress=False)
    recs = RunDir(out.run_dir).read_chunk("trades", "from_madry", 0)["records"]
    assert len(recs) == 4 and all("source_fooled" in r for r in recs if r["attacked"])
    assert all(r["stop_step"] == 2 for r in recs if r["attacked"])  # every step: the craft's schema default
    assert all(r["robust"] == (r["clean_correct"] and r["adv_pred"] == r["label"]) for r in recs)
    assert all(r["linf"] <= 8 / 255 + 1e-5 for r in recs)


def test_allowed_norms_come_from_each_schema():
    assert tms.PGDThreat.allowed_norms() == ("linf", "l2", "l1")
    assert SquareThreat.allowed_norms() == ("linf", "l2")
    assert tms.RandomSearchThreat.allowed_norms() == ("linf",)
    assert tms.HopSkipJumpThreat.allowed_norms() == ("l2",)
    assert TransferThreat.allowed_norms() == () and tms.CleanThreat.allowed_norms() == ()
    from robust_bench_sc.diagnostics.config import NORMS

    assert NORMS == ("linf", "l2")  # diagnose's plain evaluation: the norms its Square check attacks


# -- traits declared once on the schema (issue 36): every list elsewhere is a query of them ------

def test_a_field_name_carries_the_same_roles_in_every_kind():
    """Reports look settings up by name across kinds (a run.json's config): a field marked BUDGET in
    one kind and left unmarked in another would merge columns in one and split them in the other."""
    roles: dict[str, dict[frozenset, list[str]]] = {}
    for kind, cls in tms.THREAT_MODELS.items():
        for name, f in cls.model_fields.items():
            marks = frozenset(m.role for m in f.metadata if isinstance(m, tms.SettingRole))
            roles.setdefault(name, {}).setdefault(marks, []).append(kind)
    mixed = {name: {tuple(sorted(m)): ks for m, ks in by.items()} for name, by in roles.items() if len(by) > 1}
    assert mixed == {}
    # the roles are what reports and the spec hash read (values as before the declarations moved)
    assert tms.fields_with(tms.UNHASHED) == {"description", "max_images"}
    assert {"steps", "n_queries", "max_iter"} <= tms.fields_with(tms.BUDGET)
    assert {"backend", "bpda", "eot", "batch_size"} <= tms.fields_with(tms.EFFORT)
    assert not (tms.fields_with(tms.BUDGET) | tms.fields_with(tms.EFFORT)) & {"epsilon", "norm", "attack", "loss"}


def test_readers_query_the_schema():
    from robust_bench_sc import binarization, plan, report_model

    assert report_model.MINIMUM_NORM_KINDS == {"cw", "boundary", "hsj", "zoo"}
    assert report_model.MERGEABLE_SETTINGS == tms.fields_with(tms.BUDGET) | tms.fields_with(tms.EFFORT)
    assert plan._LABEL_FIELDS == tms.fields_with(tms.UNHASHED)
    assert set(binarization._BALL_KINDS) == {"pgd", "cw", "square", "autoattack", "random_search"}
    assert set(binarization._BALL_KINDS) | set(binarization._NO_BALL) == set(tms.THREAT_MODELS)
    assert tms.runs_square({"attack": "autoattack", "version": "custom", "attacks_to_run": ["square"]})
    assert not tms.runs_square({"attack": "autoattack", "version": "rand"})
    assert tms.runs_square({"attack": "square"}) and not tms.runs_square({"attack": "pgd"})


def test_kind_traits_as_the_readers_used_to_list_them():
    """What budget.py, cli.py (``threat-models``) and config.py's worst-case check read."""
    assert tms.kinds_where("gradient_based") == ["pgd", "cw", "autoattack"]
    assert tms.kinds_where("query_budget") == ["square", "random_search"]
    assert tms.kinds_where("random_subset") == ["zoo"]
    assert all("n_queries" in tms.THREAT_MODELS[k].model_fields for k in tms.kinds_where("query_budget"))
