"""How pytest's outcome of a step's test becomes the step's status.

* a failure fails the step and blocks the later steps of its table (a plan-wide step's:
  of every table); a failure in set-up fails it without blocking;
* `NotApplicable` is reported skipped, with its reason ("not-applicable");
* a step that ends without deciding otherwise has passed (or, skipped, does not apply);
* SIGTERM (a CI job cancelled, a service stopped) ends the run like Ctrl-C: the step that was
  running is reported interrupted, and the reports are written.

The statements a step ran (or, in a dry run, would run) are attached to its result.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Generator
from types import FrameType

import pytest

from ..checklist.context import NotApplicable
from ..checklist.outcome import RUNNING
from ..checklist.record import RunRecord, StepResult
from ..pg.connect import redact
from .run import RESULT, record_of
from .xdist_order import mark_done


def pytest_configure(config: pytest.Config) -> None:
    _terminate_as_interrupt()


def _terminate_as_interrupt() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

        signal.signal(signal.SIGTERM, interrupt)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    result = item.stash.get(RESULT, None)
    if result is None or call.when == "teardown":
        return report
    record = record_of(item.config)
    if call.when == "setup":
        if report.passed:
            return report
        if report.failed:
            result.status, result.reason = "failed", redact(str(call.excinfo.value) if call.excinfo else "")
    else:
        _call_outcome(item, call, report, result, record)
    if record.plan is not None:
        mark_done(item.config, record.plan.name, result.id, result.table, result.status)
    if call.when == "call":
        result.statements = [
            {"site": s.site, "sql": s.sql, "kind": s.kind, "executed": s.executed, "duration_ms": s.duration_ms,
             "rows": s.rows, "error": s.error, **({"sent_with": s.batch} if s.batch else {})}
            for s in record.recorder.for_step(f"{result.id}|{result.table or ''}")]
    return report


def _call_outcome(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport,
                  result: StepResult, record: RunRecord) -> None:
    """The step's status from its call: not applicable, failed (blocking the steps after
    it), or passed unless the step decided otherwise."""
    if call.excinfo is not None and call.excinfo.errisinstance(NotApplicable):
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
