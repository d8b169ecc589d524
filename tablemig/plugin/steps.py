"""Step semantics for plan modules (a pytest plugin, registered by entry point).

* Every test marked with `@step(ID)` is a checklist item; per-table items are parametrized
  with the plan's tables and grouped per table for `pytest -n K --dist loadgroup`.
* `ctx` gives the step its context: mode, sites, the table's migration, evidence.
* In a dry run a mutating step records what it would do and ends as "dry-run".
* A failed step blocks the later steps of the same table (plan-wide steps: of every
  table); they are reported "blocked by <ID>".
* Outcomes, evidence and statements are collected in `RunRecord` for the reports.
"""

from __future__ import annotations

import datetime as dt
import getpass
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from ..checklist.items import ITEMS, Item
from ..checklist.outcome import RUNNING, close_unfinished
from ..config.plan import Attestation, PlanConfig, TableConfig
from ..errors import InputError
from ..lifecycle.driver import Migration
from ..lifecycle.executor import Executor, Recorder
from ..pg.connect import connect, redact
from ..pg.query_timeout import cursor_class
from .xdist_order import mark_done, wait_for_prerequisites

RECORD = pytest.StashKey["RunRecord"]()


@dataclass
class StepResult:
    id: str
    table: str | None
    # running (until the step ends: a step that never ends is reported interrupted), passed,
    # failed, blocked, dry-run, attested, needs-attestation, not-applicable, warning, deferred
    status: str = RUNNING
    reason: str = ""
    started: float = 0.0
    duration_s: float = 0.0
    evidence: dict[str, Any] = field(default_factory=dict)
    statements: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TableRun:
    """Per-table state shared by the steps of one table (on one worker)."""

    config: TableConfig
    migration: Migration | None = None
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRecord:
    plan: PlanConfig | None = None
    module: str = ""
    execute: bool = False
    started: float = field(default_factory=time.time)
    results: list[StepResult] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)  # table or "*" -> blocking step
    tables: dict[str, TableRun] = field(default_factory=dict)
    attestations: dict[str, Attestation] = field(default_factory=dict)
    recorder: Recorder = field(default_factory=Recorder)
    facts: dict[str, Any] = field(default_factory=dict)
    # the (item id, table) of every selected step: those without a result are "not run"
    expected: list[tuple[str, str | None]] = field(default_factory=list)
    interrupted: bool = False


class NotApplicable(Exception):
    """Raised by a step that does not apply (e.g. replication items on a single site)."""


class StepContext:
    def __init__(self, request: pytest.FixtureRequest, record: RunRecord, result: StepResult,
                 item: Item, active_dsn: str, passive_dsn: str | None) -> None:
        self.request, self.record, self.result, self.item = request, record, result, item
        self.active_dsn, self.passive_dsn = active_dsn, passive_dsn
        self.execute: bool = record.execute
        self._conns: list[psycopg.Connection[Any]] = []

    # -- sites ----------------------------------------------------------------------------
    @property
    def plan(self) -> PlanConfig:
        assert self.record.plan is not None
        return self.record.plan

    @property
    def table(self) -> TableRun:
        assert self.result.table is not None, f"{self.item.id} is not a per-table step"
        return self.record.tables[self.result.table]

    def connect(self, site: str = "active") -> psycopg.Connection[Any]:
        dsn = self.active_dsn if site == "active" else self.passive_dsn
        if dsn is None:
            if not self.plan.allow_single_site:
                raise AssertionError("this plan requires a passive site (allow_single_site=False): give --passive-dsn")
            raise NotApplicable("no passive site is configured (single-site run)")
        try:
            # the step's checks run under the plan's validation_timeout (tablemig.pg.query_timeout)
            timeout = self.plan.validation_timeout
            conn = connect(dsn, settings={"statement_timeout": timeout},
                           cursor_factory=cursor_class(self._label, timeout))
        except InputError as exc:
            if site == "passive" and self.plan.allow_passive_down:
                raise NotApplicable(f"the passive site is unreachable and the plan allows running without it "
                                    f"(allow_passive_down): {exc.problem}") from None
            raise
        self._conns.append(conn)
        return conn

    @property
    def _label(self) -> str:
        """`EX-4.1 (Step 4.1: Data integrity validation) for public.orders`: for messages."""
        what = re.split(r" \(|;", self.item.text)[0]
        return f"{self.item.id} ({what})" + (f" for {self.result.table}" if self.result.table else "")

    def executor(self, site: str = "active") -> Executor:
        self.record.recorder.step = self._step_key
        return Executor(self.connect(site), mode="execute" if self.execute else "plan", recorder=self.record.recorder,
                        site=site)

    @property
    def _step_key(self) -> str:
        return f"{self.item.id}|{self.result.table or ''}"

    def migration(self) -> Migration:
        m = self.migration_for(self.table.config)
        self.record.recorder.step = self._step_key
        return m

    # -- outcomes -------------------------------------------------------------------------
    def evidence(self, **kv: Any) -> None:
        self.result.evidence.update(kv)

    def dry_run(self, would: str, **evidence: Any) -> None:
        """End a mutating step in a dry run: record what it would do."""
        self.result.status = "dry-run"
        self.result.reason = would
        self.evidence(**evidence)

    def defer(self, why: str) -> None:
        self.result.status, self.result.reason = "deferred", why

    def not_applicable(self, why: str) -> None:
        raise NotApplicable(why)

    def warn(self, why: str) -> None:
        """The step passes its checks but something is unknown or doubtful: never a pass."""
        if self.result.status in (RUNNING, "passed", "warning"):
            self.result.status = "warning"
        self.result.reason = "; ".join(x for x in (self.result.reason, why) if x)

    def table_facts_all(self, **kv: Any) -> None:
        for run in self.record.tables.values():
            run.facts.update(kv)

    def migration_for(self, config: TableConfig) -> Migration:
        """The migration of another table of the plan (for plan-wide steps)."""
        key = str(config.spec().qualified)
        run = self.record.tables[key]
        if run.migration is None:
            subscribers = [self.passive_dsn] if self.passive_is_logical() else []
            run.migration = Migration(self.active_dsn, config.spec(), recorder=self.record.recorder,
                                      plan_name=self.plan.name, throttle=self._throttle(run),
                                      subscribers=[d for d in subscribers if d],
                                      fixed=self.plan.fixed())
        return run.migration

    def passive_is_logical(self) -> bool:
        """The passive site is a logical subscriber (writable, with a subscription); cached."""
        if "passive_logical" not in self.record.facts:
            from ..lifecycle.logical import is_logical_subscriber

            try:
                self.record.facts["passive_logical"] = bool(
                    self.passive_dsn and is_logical_subscriber(self.passive_dsn))
            except InputError:  # unreachable: the pre-checks report it
                return False
        return bool(self.record.facts["passive_logical"])

    def _throttle(self, run: TableRun) -> Any:
        if self.passive_dsn is None:
            return None
        from ..pg.replication import LagLimit, LagThrottle

        if "throttle" not in run.facts:
            run.facts["throttle"] = LagThrottle(self.active_dsn, LagLimit.parse(self.plan.max_replication_lag))
        return run.facts["throttle"]

    def attest(self) -> Attestation | None:
        """The attestation of this (human) item, or None (reported as needing one)."""
        a = self.record.attestations.get(self.item.id)
        if a:
            self.result.status = "attested"
            self.evidence(attested_by=a.by, attested_at=a.at, attestation_note=a.note)
            return a
        self.result.status = "needs-attestation"
        self.result.reason = (f"not attested: record who confirmed it (plan attestations or "
                              f"--attest {self.item.id}=NAME)")
        required = self.plan.require_attestations or self.request.config.getoption(
            "--require-attestations")
        if required and self.execute:
            pytest.fail(f"{self.item.id} requires an attestation: --attest {self.item.id}=NAME")
        return None

    def close(self) -> None:
        for c in self._conns:
            c.close()


def _plan_of(module: Any) -> PlanConfig | None:
    plan = getattr(module, "PLAN", None)
    return plan if isinstance(plan, PlanConfig) else None


def _selected_tables(config: pytest.Config, plan: PlanConfig) -> list[TableConfig]:
    wanted = config.getoption("--table", default=[])
    if not wanted:
        return list(plan.tables)
    from ..pg.names import QualifiedName

    keys = {QualifiedName.parse(w) for w in wanted}
    chosen = [t for t in plan.tables if t.spec().qualified in keys]
    missing = keys - {t.spec().qualified for t in chosen}
    if missing:
        raise pytest.UsageError(f"--table {', '.join(map(str, missing))} is not in plan {plan.name}")
    return chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("tablemig_step")
    plan = _plan_of(metafunc.module)
    if marker is None or plan is None:
        return
    item = ITEMS[marker.args[0]]
    if item.per_table:
        names = [str(t.spec().qualified) for t in _selected_tables(metafunc.config, plan)]
        metafunc.parametrize("tablemig_table", names, ids=names)


@pytest.hookimpl(tryfirst=True)  # before xdist turns xdist_group markers into scheduling groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for it in items:
        marker = it.get_closest_marker("tablemig_step")
        if marker is None:
            continue
        table = getattr(it, "callspec", None) and it.callspec.params.get("tablemig_table")  # type: ignore[attr-defined]
        it.add_marker(pytest.mark.xdist_group(name=str(table or "plan")))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Remember every selected step: a step without a result at the end is reported "not run"
    (and the plan, so that a run interrupted before its first step still reports)."""
    record = _record(session.config)
    for it in session.items:
        marker = it.get_closest_marker("tablemig_step")
        if marker is None:
            continue
        table = getattr(it, "callspec", None) and it.callspec.params.get("tablemig_table")  # type: ignore[attr-defined]
        record.expected.append((str(marker.args[0]), str(table) if table else None))
        module = getattr(it, "module", None)
        if record.plan is None and _plan_of(module) is not None:
            record.plan = _plan_of(module)
            record.module = getattr(module, "__name__", "")


def pytest_configure(config: pytest.Config) -> None:
    _cli_attestations(config)  # a malformed --attest is a usage error before anything runs
    _terminate_as_interrupt()


def _terminate_as_interrupt() -> None:
    """SIGTERM (a CI job cancelled, a service stopped) ends the run like Ctrl-C: the step that
    was running is reported interrupted, and the reports are written."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

        signal.signal(signal.SIGTERM, interrupt)


@pytest.fixture
def tablemig_table() -> str | None:
    """The table a per-table step runs for (parametrized by the plugin)."""
    return None


def _record(config: pytest.Config) -> RunRecord:
    if RECORD not in config.stash:
        config.stash[RECORD] = RunRecord(execute=bool(config.getoption("--execute", default=False)))
    return config.stash[RECORD]


def _cli_attestations(config: pytest.Config) -> dict[str, Attestation]:
    out = {}
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for raw in config.getoption("--attest", default=[]) or []:
        item, sep, who = raw.partition("=")
        if not sep or not who.strip() or item not in ITEMS:
            raise pytest.UsageError(f"--attest {raw!r}: expected ID=NAME with a checklist id "
                                    "(e.g. --attest PRE-3.2=alice)")
        out[item] = Attestation(who.strip(), now, "given on the command line")
    return out


@pytest.fixture
def ctx(request: pytest.FixtureRequest, tablemig_table: str | None, active_dsn: str,
        passive_dsn: str | None, plan_ready: None) -> Iterator[StepContext]:
    """The context of one checklist step."""
    marker = request.node.get_closest_marker("tablemig_step")
    if marker is None:
        raise pytest.UsageError(f"{request.node.name} uses ctx but is not a @step")
    item = ITEMS[marker.args[0]]
    record = _record(request.config)
    result = StepResult(item.id, tablemig_table, started=time.time())
    record.results.append(result)
    request.node.stash[_RESULT] = result
    blocker = record.blocked.get(tablemig_table or "*") or record.blocked.get("*")
    if record.plan is not None:  # other xdist workers' steps that come first in the checklist
        blocker = blocker or wait_for_prerequisites(request.config, record.plan.name, item.id, tablemig_table,
                                                    list(record.tables))
    if blocker and item.id not in ("NOTES", "CONTACTS") and not item.id.startswith(("SC-", "RB-")):
        result.status, result.reason = "blocked", f"blocked by {blocker}"
        pytest.skip(f"blocked by {blocker}")
    context = StepContext(request, record, result, item, active_dsn, passive_dsn)
    t0 = time.perf_counter()
    try:
        yield context
    finally:
        result.duration_s = round(time.perf_counter() - t0, 3)
        context.close()


_RESULT = pytest.StashKey[StepResult]()


@pytest.fixture(scope="module")
def plan_ready(request: pytest.FixtureRequest, sandbox: Any, active_dsn: str) -> Iterator[None]:
    """Register the plan of the module; on the embedded sandbox, load the demo data."""
    plan = _plan_of(request.module)
    if plan is None:
        raise pytest.UsageError(f"{request.module.__name__} has no PLAN = PlanConfig(...)")
    record = _record(request.config)
    record.plan = plan
    record.module = request.module.__name__
    record.attestations = {**plan.attestations, **_cli_attestations(request.config)}
    record.facts["executed_by"] = getpass.getuser()
    from ..report.writer import run_uid

    record.facts["run_uid"] = run_uid(request.config)
    try:
        with connect(active_dsn) as conn:
            row = conn.execute("SELECT current_user").fetchone()
            if row:
                record.facts["database_role"] = row[0]
    except Exception:  # noqa: BLE001 - an unreachable site is reported by PRE-1.1a, not here
        pass
    for t in _selected_tables(request.config, plan):
        record.tables.setdefault(str(t.spec().qualified), TableRun(t))
    if sandbox is not None and plan.demo_rows and not record.facts.get("demo_loaded"):
        from ..sandbox.demo_data import create_demo_data

        with connect(active_dsn) as conn:
            # xdist workers share the sandbox: one of them creates the demo data
            conn.execute("SELECT pg_advisory_lock(hashtext('tablemig.sandbox.demo_data'))")
            exists = conn.execute("SELECT to_regclass('public.orders') IS NOT NULL").fetchone()
            if not (exists and exists[0]):
                record.facts["demo_data"] = create_demo_data(conn, plan.demo_rows)
            conn.execute("SELECT pg_advisory_unlock(hashtext('tablemig.sandbox.demo_data'))")
        record.facts["demo_loaded"] = True
    yield
    for run in record.tables.values():  # before the sandbox (a session fixture) stops
        if run.migration is not None:
            run.facts.setdefault("timings", dict(run.migration.timings))
            run.migration.close()
            run.migration = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    result = item.stash.get(_RESULT, None)
    if result is None or call.when == "teardown":
        return report
    record = _record(item.config)
    if call.when == "setup":
        if report.passed:
            return report
        if report.failed:
            result.status, result.reason = "failed", redact(str(call.excinfo.value) if call.excinfo else "")
    elif call.excinfo is not None and call.excinfo.errisinstance(NotApplicable):
        result.status, result.reason = "not-applicable", str(call.excinfo.value)
        report.outcome = "skipped"
        report.longrepr = (str(item.path), 0, f"not applicable: {call.excinfo.value}")
    elif report.failed:
        result.status = "failed"
        result.reason = redact(str(call.excinfo.value) if call.excinfo else "failed")
        record.blocked.setdefault(result.table or "*", result.id)
    elif result.status == RUNNING:  # the step ended without deciding otherwise
        if report.skipped:
            result.status = "not-applicable"
            result.reason = result.reason or redact(str(call.excinfo.value) if call.excinfo else "skipped")
        else:
            result.status = "passed"
    if record.plan is not None:
        mark_done(item.config, record.plan.name, result.id, result.table, result.status)
    if call.when == "call":
        result.statements = [
            {"site": s.site, "sql": s.sql, "executed": s.executed, "duration_ms": s.duration_ms,
             "rows": s.rows, "error": s.error, **({"sent_with": s.batch} if s.batch else {})}
            for s in record.recorder.for_step(f"{result.id}|{result.table or ''}")]
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    record = session.config.stash.get(RECORD, None)
    if record is None or record.plan is None or session.config.option.collectonly:
        return
    from ..report.writer import settle_exit_status, write_run

    record.interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
    close_unfinished(record.results, interrupted=record.interrupted)
    write_run(session.config, record)
    settle_exit_status(session)
