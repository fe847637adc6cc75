"""One typed registry for every plug-in kind: what it accepts is checked (one line naming the
kind, the name and what was expected), unknown names get a did-you-mean, entry points load."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from robust_bench_sc import registry as registry_module
from robust_bench_sc.registry import Registry, RegistryError, subclass_of


class Base:
    pass


class Good(Base):
    pass


def test_an_instance_of_the_wrong_class_is_refused_in_one_line():
    r: Registry[Base] = Registry("widget", accepts=Base)
    r.register("good", Good())
    with pytest.raises(RegistryError) as exc:
        r.register("bad", 42)
    assert str(exc.value) == f"widget 'bad' is an int, expected a {__name__}.Base"
    assert "bad" not in r.names()


def test_a_lazy_placeholder_is_checked_when_imported():
    r: Registry[type] = Registry("backend", accepts=subclass_of(Base), expected="a subclass of Base")
    r.register("good", f"{__name__}:Good")
    r.register("wrong", f"{__name__}:test_a_lazy_placeholder_is_checked_when_imported")
    assert r.get("good") is Good
    with pytest.raises(RegistryError, match=r"^backend 'wrong' is a function, expected a subclass of Base$"):
        r.get("wrong")


def test_a_test_needs_words_for_what_it_accepts():
    with pytest.raises(TypeError, match="needs expected="):
        Registry("thing", accepts=callable)


def test_unknown_name_suggests_and_lists():
    r: Registry[Base] = Registry("widget", accepts=Base)
    r.register("madry", Good())
    r.register("trades", Good())
    with pytest.raises(RegistryError) as exc:
        r.get("madri")
    assert str(exc.value) == "unknown widget 'madri' (did you mean 'madry'?); registered: madry, trades"


def test_entry_points_load_lazily_and_are_checked(monkeypatch):
    eps = [EntryPoint("ep_good", f"{__name__}:Good", "test.widgets"),
           EntryPoint("ep_bad", f"{__name__}:Base", "test.widgets")]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [e for e in eps if e.group == group])
    r: Registry[type] = Registry("widget class", "test.widgets", accepts=subclass_of(Good),
                                 expected="a subclass of Good")
    assert r.names() == ["ep_bad", "ep_good"]
    assert r.target("ep_good") == f"{__name__}:Good"
    assert r.get("ep_good") is Good
    with pytest.raises(RegistryError, match=rf"widget class 'ep_bad' is the class {__name__}.Base, expected"):
        r.get("ep_bad")


def test_every_plugin_kind_checks_its_entries():
    from robust_bench_sc.attacks import ATTACKS
    from robust_bench_sc.datasets import DATASETS
    from robust_bench_sc.diagnostics import INDICATORS
    from robust_bench_sc.plugins import DEFENSES
    from robust_bench_sc.renderers import FORMATS
    from robust_bench_sc.training import TRAINABLES

    for reg, expected in ((DEFENSES, "robust_bench_sc.Defense or a factory"),
                          (ATTACKS, "subclass of robust_bench_sc.attacks.Attack"),
                          (DATASETS, "robust_bench_sc.datasets.Dataset"),
                          (INDICATORS, "robust_bench_sc.diagnostics.base.Indicator"),
                          (FORMATS, "robust_bench_sc.renderers.ReportFormat"),
                          (TRAINABLES, "robust_bench_sc.training.Trainable")):
        with pytest.raises(RegistryError, match=rf"^{reg.kind} 'x_wrong' is an int, expected .*{expected}"):
            reg.register("x_wrong", 3)
        assert "x_wrong" not in reg


def test_report_formats_are_a_registry():
    from robust_bench_sc.reports import FORMATS, ReportError, render

    assert FORMATS.names() == ["csv", "html", "latex", "md"]
    with pytest.raises(ReportError, match=r"unknown format 'mdd' \(did you mean 'md'\?\); choose one of csv, html"):
        render([], "mdd")


def test_executors_are_a_registry_and_a_wrong_one_is_one_line(monkeypatch):
    from robust_bench_sc.errors import RunError
    from robust_bench_sc.executor import EXECUTORS, LocalExecutor, make_executor

    assert EXECUTORS.names() == ["local", "ray"] and EXECUTORS.get("local") is LocalExecutor
    assert EXECUTORS.target("ray") == "robust_bench_sc.ray_executor:RayExecutor"  # not imported by naming it
    assert isinstance(make_executor("local", "cpu"), LocalExecutor)
    with pytest.raises(RunError, match=r"unknown executor 'lcoal' \(did you mean 'local'\?\); registered: local, ray"):
        make_executor("lcoal", "cpu")
    with pytest.raises(RegistryError, match="executor 'int' is the class builtins.int, expected a subclass of "
                                            "robust_bench_sc.executor.Executor"):
        EXECUTORS.register("int", int)
