"""How pytest's outcome of a step's test becomes the step's status.

* a failure fails the step and blocks the later steps of its table (a plan-wide step's:
  of every table); a failure in set-up fails it without blocking;
* `NotApplicable` is reported skipped, with its reason ("not-applicable");
* a step that ends without deciding otherwise has passed (or, skipped, does not apply);
* pytest's outcome and status word follow the step's status, so that pytest's terminal, its
  `--junitxml` and the run's junit.xml and report.html give one set of counts: a step that
  is not applicable, blocked, awaiting attestation or deferred is reported skipped (as in the
  run's junit.xml); each status other than passed and failed is its own category in the
  terminal ("3 warning, 5 needs attestation"); every test case carries its status as the
  property `tablemig_status`;
* SIGTERM (a CI job cancelled, a service stopped) ends the run like Ctrl-C: the step that was
  running is reported interrupted, and the reports are written.

The statements a step ran (or, in a dry run, would run) are attached to its result; in a dry
run each is checked against the catalog (`tablemig.checklist.statements`), and one that names
a missing object fails the step.
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
from ..checklist.statements import check_statements, missing_message, verdict_dicts
from ..pg.connect import redact
from ..pg.statement_check import MISSING
from ..report.junit import SKIPPED
from .run import RESULT, record_of
from .xdist_order import mark_done

STATUS_PROPERTY = "tablemig_status"
# pytest's category (the summary line's word), letter and verbose word of each status that is
# neither passed nor failed
TERMINAL = {
    "warning": ("warning", "W", "WARNING"),
    "needs-attestation": ("needs attestation", "A", "NEEDS ATTESTATION"),
    "attested": ("attested", "a", "ATTESTED"),
    "not-applicable": ("not applicable", "n", "NOT APPLICABLE"),
    "blocked": ("blocked", "b", "BLOCKED"),
    "dry-run": ("dry run", "d", "DRY RUN"),
    "deferred": ("deferred", "D", "DEFERRED"),
}


def pytest_configure(config: pytest.Config) -> None:
    _terminate_as_interrupt()


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> tuple[str, str, str] | None:
    """A step's status as pytest's status (the teardown's report carries it too: not counted)."""
    if report.when not in ("setup", "call"):
        return None
    status = dict(report.user_properties).get(STATUS_PROPERTY)
    return TERMINAL.get(str(status)) if status is not None and not report.failed else None


def _tell(item: pytest.Item, report: pytest.TestReport, status: str, reason: str) -> None:
    """Give pytest the step's status: its outcome, and the property junit files carry."""
    if status in SKIPPED and report.passed:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), 0, f"{status.replace('-', ' ')}: {reason}")
    prop = (STATUS_PROPERTY, status)
    report.user_properties.append(prop)
    item.user_properties.append(prop)  # pytest's --junitxml takes the properties of the last report


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
    if call.when == "call":
        result.statements = [
            {"site": s.site, "sql": s.text, "kind": s.kind, "executed": s.executed, "duration_ms": s.duration_ms,
             "rows": s.rows, "error": s.error, **({"sent_with": s.batch} if s.batch else {})}
            for s in record.recorder.for_step(f"{result.id}|{result.table or ''}")]
        if not record.execute and result.statements and result.status != "failed":
            _check_statements(item, report, result)
    if record.plan is not None:
        mark_done(item.config, record.plan.name, result.id, result.table, result.status)
    if call.when == "call" or not report.passed:
        _tell(item, report, result.status, result.reason)
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


def _check_statements(item: pytest.Item, report: pytest.TestReport, result: StepResult) -> None:
    """A dry run's statements checked against the catalog: a missing object fails the step."""
    dsn = item.funcargs.get("active_dsn") if hasattr(item, "funcargs") else None
    if not isinstance(dsn, str):
        return
    record = record_of(item.config)
    verdicts = check_statements(dsn, [(result.id, s["sql"]) for s in result.statements if s["site"] == "active"],
                                record.created_objects)
    result.statement_checks = verdict_dicts(verdicts, result.table)
    if any(v.status == MISSING for v in verdicts):
        result.status, result.reason = "failed", redact(missing_message(verdicts))
        report.outcome = "failed"
        report.longrepr = result.reason
        record.blocked.setdefault(result.table or "*", result.id)
