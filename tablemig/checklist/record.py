"""What a plan run records: one result per step, the tables' shared state, the run as a whole.

`run_dict` turns a record into the plain data that `run.json` and the reports are made of.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..config.plan import Attestation, PlanConfig, TableConfig
from ..lifecycle.driver import Migration
from ..lifecycle.executor import Recorder
from .items import ITEMS
from .outcome import RUNNING


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
    # in a dry run: each statement's check against the catalog (tablemig.checklist.statements)
    statement_checks: list[dict[str, Any]] = field(default_factory=list)


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
    # what the statements checked so far would create (tablemig.checklist.statements)
    created_objects: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)


def result_dict(r: StepResult) -> dict[str, Any]:
    """One step's result as `run.json` holds it (with its item's text and section)."""
    return {"id": r.id, "table": r.table, "status": r.status, "reason": r.reason,
            "started": r.started, "duration_s": r.duration_s,
            "text": ITEMS[r.id].text, "section": ITEMS[r.id].section,
            "evidence": r.evidence, "statements": r.statements,
            **({"statement_checks": r.statement_checks} if r.statement_checks else {})}


def run_dict(record: RunRecord) -> dict[str, Any]:
    """The run as plain data: what one process saw (an xdist worker's part, or the whole run)."""
    plan = record.plan
    tables = {}
    for name, run in record.tables.items():
        facts = dict(run.facts)
        m = run.migration
        if m is not None:
            facts.setdefault("timings", dict(m.timings))
            facts.setdefault("pacing", m.pacer.summary())
        tables[name] = facts
    return {
        "plan": plan.name if plan else record.module,
        "module": record.module,
        "mode": "execute" if record.execute else "dry-run",
        "started": record.started,
        "facts": record.facts,
        "steps": [result_dict(r) for r in record.results],
        "expected": [list(e) for e in record.expected],
        "interrupted": record.interrupted,
        "tables": tables,
        "contacts": [c.__dict__ for c in plan.contacts] if plan else [],
    }
