"""What a checklist step is given: its context (`StepContext`), and how it says that it does
not apply (`NotApplicable`).

The context gives the step its mode (dry run or execute), the plan, connections to the
sites (under the plan's `validation_timeout`), the table's migration, and the ways to end:
evidence, dry run, warning, deferred, not applicable, attestation. The pytest plugin makes
one per step (`tablemig.plugin.run`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from ..config.plan import Attestation, PlanConfig, TableConfig
from ..errors import InputError
from ..lifecycle.driver import Migration
from ..lifecycle.executor import Executor
from ..pg.connect import connect
from ..pg.query_timeout import cursor_class
from .items import Item
from .outcome import RUNNING
from .record import RunRecord, StepResult, TableRun

if TYPE_CHECKING:
    from ..pg.replication import LagThrottle


class NotApplicable(Exception):
    """Raised by a step that does not apply (e.g. replication items on a single site)."""


class StepContext:
    """The context of one checklist step (one per step and table)."""

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
        return Executor(self.connect(site), dry_run=not self.execute, recorder=self.record.recorder,
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
                                      nice_ratio=self.plan.nice_ratio,
                                      app_write_share=self.plan.app_write_share)
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

    def _throttle(self, run: TableRun) -> LagThrottle | None:
        if self.passive_dsn is None:
            return None
        from ..pg.replication import LagLimit, LagThrottle

        if "throttle" not in run.facts:
            run.facts["throttle"] = LagThrottle(self.active_dsn, LagLimit.parse(self.plan.max_replication_lag))
        throttle: LagThrottle = run.facts["throttle"]
        return throttle

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
