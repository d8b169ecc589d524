"""One plan run: its id (the same in every xdist worker), its record (in the config's stash),
the plan's set-up (`plan_ready`) and each step's context (`ctx`).

A step waits for the steps it follows on other xdist workers (`tablemig.plugin.xdist_order`);
a step after a failed one of the same table (of any table, after a plan-wide step) is
skipped as "blocked by <ID>", except the success criteria, rollback, notes and contacts.
"""

from __future__ import annotations

import getpass
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ..checklist.context import StepContext
from ..checklist.items import ITEMS
from ..checklist.record import RunRecord, StepResult, TableRun
from ..config.plan import ITEM
from ..pg.connect import connect
from .collection import item_id_of, selected_tables, table_of
from .options import cli_attestations
from .plan_module import plan_of
from .xdist_order import wait_for_prerequisites

RECORD = pytest.StashKey[RunRecord]()
RESULT = pytest.StashKey[StepResult]()  # on the item: the result its step writes
_RUN_UID = pytest.StashKey[str]()
NEVER_BLOCKED = ("NOTES", "CONTACTS")
NEVER_BLOCKED_PREFIXES = ("SC-", "RB-")


def record_of(config: pytest.Config) -> RunRecord:
    """The record of this run (made on first use)."""
    if RECORD not in config.stash:
        config.stash[RECORD] = RunRecord(execute=bool(config.getoption("--execute", default=False)))
    return config.stash[RECORD]


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """The controller of a pytest-xdist run picks the run's id itself (xdist hands it to the
    workers), so that it merges the parts of its own run and of no other."""
    if getattr(config, "workerinput", None) is None and getattr(config.option, "testrunuid", "") is None:
        config.option.testrunuid = uuid.uuid4().hex


def run_uid(config: pytest.Config) -> str:
    """The id of this pytest run, the same in every xdist worker."""
    worker = getattr(config, "workerinput", None)
    if worker is not None:
        return str(worker["testrunuid"])
    uid = getattr(config.option, "testrunuid", None)
    if uid:
        return str(uid)
    if _RUN_UID not in config.stash:
        config.stash[_RUN_UID] = os.urandom(4).hex()
    return config.stash[_RUN_UID]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Remember every selected step: a step without a result at the end is reported "not run"
    (and the plan, so that a run interrupted before its first step still reports)."""
    record = record_of(session.config)
    for it in session.items:
        item_id = item_id_of(it)
        if item_id is None:
            continue
        record.expected.append((item_id, table_of(it)))
        module = getattr(it, "module", None)
        if record.plan is None and plan_of(module) is not None:
            record.plan = plan_of(module)
            record.module = getattr(module, "__name__", "")


@pytest.fixture(scope="module")
def plan_ready(request: pytest.FixtureRequest, sandbox: Any, active_dsn: str) -> Iterator[None]:
    """Register the plan of the module; on the embedded sandbox, load the demo data."""
    plan = plan_of(request.module)
    if plan is None:
        raise pytest.UsageError(f"{request.module.__name__} has no PLAN = PlanConfig(...)")
    record = record_of(request.config)
    record.plan = plan
    record.module = request.module.__name__
    record.attestations = {**plan.attestations, **cli_attestations(request.config)}
    record.facts["executed_by"] = getpass.getuser()
    record.facts["run_uid"] = run_uid(request.config)
    try:
        with connect(active_dsn) as conn:
            row = conn.execute("SELECT current_user").fetchone()
            if row:
                record.facts["database_role"] = row[0]
    except Exception:  # noqa: BLE001 - an unreachable site is reported by PRE-1.1a, not here
        pass
    for t in selected_tables(request.config, plan):
        record.tables.setdefault(str(t.spec().qualified), TableRun(t))
    if sandbox is not None and plan.demo_rows and not record.facts.get("demo_loaded"):
        from ..sandbox.demo_data import create_demo_data

        with connect(active_dsn) as conn:
            # xdist workers share the sandbox: one of them creates the demo data
            conn.execute("SELECT pg_advisory_lock(hashtext('tablemig.sandbox.demo_data'))")
            exists = conn.execute("SELECT to_regclass('public.orders') IS NOT NULL").fetchone()
            if not (exists and exists[0]):
                record.facts["demo_data"] = create_demo_data(conn, plan.demo_rows, family=True)
            conn.execute("SELECT pg_advisory_unlock(hashtext('tablemig.sandbox.demo_data'))")
        record.facts["demo_loaded"] = True
    yield
    for run in record.tables.values():  # before the sandbox (a session fixture) stops
        if run.migration is not None:
            run.facts.setdefault("timings", dict(run.migration.timings))
            run.migration.close()
            run.migration = None


@pytest.fixture
def ctx(request: pytest.FixtureRequest, tablemig_table: str | None, active_dsn: str,
        passive_dsn: str | None, plan_ready: None) -> Iterator[StepContext]:
    """The context of one checklist step."""
    item_id = item_id_of(request)
    if item_id is None:
        if getattr(request.function, ITEM, None) is not None:
            raise pytest.UsageError(f"{request.module.__name__} has no PLAN = PlanConfig(...)")
        raise pytest.UsageError(f"{request.node.name} uses ctx but is not a @step")
    item = ITEMS[item_id]
    record = record_of(request.config)
    result = StepResult(item.id, tablemig_table, started=time.time())
    record.results.append(result)
    request.node.stash[RESULT] = result
    blocker = record.blocked.get(tablemig_table or "*") or record.blocked.get("*")
    if record.plan is not None:  # other xdist workers' steps that come first in the checklist
        blocker = blocker or wait_for_prerequisites(request.config, record.plan.name, item.id, tablemig_table,
                                                    list(record.tables))
    if blocker and item.id not in NEVER_BLOCKED and not item.id.startswith(NEVER_BLOCKED_PREFIXES):
        result.status, result.reason = "blocked", f"blocked by {blocker}"
        pytest.skip(f"blocked by {blocker}")
    context = StepContext(request, record, result, item, active_dsn, passive_dsn)
    t0 = time.perf_counter()
    try:
        yield context
    finally:
        result.duration_s = round(time.perf_counter() - t0, 3)
        context.close()
