"""Plan modules as pytest items: one test per checklist item, per table where the item is.

* A short-form plan module gets its tests made from the checklist when pytest reaches its
  `PLAN` (`tablemig.plugin.plan_module`): they take PLAN's place in the module's order, and
  are set on the module under their names, where pytest looks a test function up.
* A long-form module's `@step(ID)` functions are marked as those items.
* A problem with the module (an unknown item id, an item replaced twice, both forms in one
  module) is a collection error of that module, naming the problem and the fix.
* Per-table items are parametrized with the plan's tables (`--table` selects some), and
  grouped per table for `pytest -n K --dist loadgroup`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ..checklist.items import ITEMS
from ..config.plan import ITEM, PlanConfig, TableConfig
from ..errors import InputError
from ..pg.names import QualifiedName
from .plan_module import PlanModule, item_tests, plan_of, read_plan_module

STEP_MARK = "tablemig_step"
_PLAN_MODULE = pytest.StashKey[PlanModule | None]()


def item_id_of(node: pytest.Item | pytest.FixtureRequest) -> str | None:
    """The checklist item a test carries out (None for any other test)."""
    item = node.node if isinstance(node, pytest.FixtureRequest) else node
    marker = item.get_closest_marker(STEP_MARK)
    return str(marker.args[0]) if marker is not None else None


def table_of(item: pytest.Item) -> str | None:
    """The table a per-table test runs for."""
    callspec = getattr(item, "callspec", None)
    table = callspec.params.get("tablemig_table") if callspec is not None else None
    return str(table) if table else None


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Module | pytest.Class, name: str,
                              obj: object) -> list[pytest.Item | pytest.Collector] | None:
    if not isinstance(collector, pytest.Module):
        return None
    pm = _plan_module(collector)
    if pm is None:
        return None
    if name == "PLAN" and not pm.long_form:
        return _made_tests(collector, pm)
    item_id = getattr(obj, ITEM, None)
    if pm.long_form and name in pm.steps and isinstance(item_id, str) and callable(obj):
        _mark(obj, item_id)
    return None  # pytest's own collection goes on


def _plan_module(collector: pytest.Module) -> PlanModule | None:
    if _PLAN_MODULE not in collector.stash:
        try:
            collector.stash[_PLAN_MODULE] = read_plan_module(collector.obj)
        except InputError as exc:
            raise collector.CollectError(f"{exc.problem}\n  fix: {exc.fix}") from None
    return collector.stash[_PLAN_MODULE]


def _made_tests(collector: pytest.Module, pm: PlanModule) -> list[pytest.Item | pytest.Collector]:
    out: list[pytest.Item | pytest.Collector] = []
    for test_name, item_id, test in item_tests(pm):
        _mark(test, item_id)
        setattr(collector.obj, test_name, test)
        made = collector.ihook.pytest_pycollect_makeitem(collector=collector, name=test_name, obj=test)
        out.extend(made if isinstance(made, list) else [made] if made is not None else [])
    return out


def _mark(fn: Callable[..., Any], item_id: str) -> None:
    if not any(m.name == STEP_MARK for m in getattr(fn, "pytestmark", [])):
        getattr(pytest.mark, STEP_MARK)(item_id)(fn)


def selected_tables(config: pytest.Config, plan: PlanConfig) -> list[TableConfig]:
    """The plan's tables this run is for (`--table`, else all)."""
    wanted = config.getoption("--table", default=[])
    if not wanted:
        return list(plan.tables)
    keys = {QualifiedName.parse(w) for w in wanted}
    chosen = [t for t in plan.tables if t.spec().qualified in keys]
    missing = keys - {t.spec().qualified for t in chosen}
    if missing:
        raise pytest.UsageError(f"--table {', '.join(map(str, missing))} is not in plan {plan.name}")
    return chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker(STEP_MARK)
    plan = plan_of(metafunc.module)
    if marker is None or plan is None:
        return
    item = ITEMS[marker.args[0]]
    if item.per_table:
        names = [str(t.spec().qualified) for t in selected_tables(metafunc.config, plan)]
        metafunc.parametrize("tablemig_table", names, ids=names)


@pytest.hookimpl(tryfirst=True)  # before xdist turns xdist_group markers into scheduling groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for it in items:
        if item_id_of(it) is not None:
            it.add_marker(pytest.mark.xdist_group(name=table_of(it) or "plan"))


@pytest.fixture
def tablemig_table() -> str | None:
    """The table a per-table step runs for (parametrized by the plugin)."""
    return None
