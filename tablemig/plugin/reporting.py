"""The run's reports at the end of the session, and its verdict in pytest's output and exit
status.

* One process: the run is written to `REPORTS/<plan>/<run-id>/` (`tablemig.report.writer`).
* pytest-xdist: each worker writes its part to `REPORTS/<plan>/.parts/<run>/`; the controller
  merges the parts of its own run into one run. Parts left behind by a run that was killed
  are never merged into a later one: they are removed once they are an hour old, as are the
  ordering markers of `tablemig.plugin.xdist_order`.
* An interrupted or incomplete run never exits with status 0.
* A rehearsal (`--rehearse`) is marked as one once written (`tablemig.report.rehearsal`), and
  its duration estimated at production size is printed at the end.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from ..checklist.outcome import UNFINISHED, close_unfinished
from ..checklist.record import RunRecord, run_dict
from ..report.rehearsal import estimate_lines, mark_run
from ..report.writer import Finished, dumps, finish_run
from .options import REHEARSAL_MARK, executes_on_sandbox, rehearsing, reports_dir
from .run import RECORD, run_uid

OUTCOME = pytest.StashKey[Finished]()
_ESTIMATE = pytest.StashKey[list[str]]()
STALE_AFTER_S = 3600


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
    if getattr(config, "workerinput", None) is None and config.pluginmanager.hasplugin("dsession"):
        _merge_parts(config, interrupted=interrupted)
    else:
        record = config.stash.get(RECORD, None)
        if record is None or record.plan is None or config.option.collectonly:
            return
        record.interrupted = interrupted
        close_unfinished(record.results, interrupted=record.interrupted)
        _write(config, record)
    if rehearsing(config):
        _mark_rehearsal(config)
    settle_exit_status(session)


def _mark_rehearsal(config: pytest.Config) -> None:
    outcome = config.stash.get(OUTCOME, None)
    if outcome is None:
        return
    out, run = mark_run(outcome.dir, REHEARSAL_MARK)
    config.stash[OUTCOME] = Finished(outcome.status, run["headline"], out)
    config.stash[_ESTIMATE] = estimate_lines(run)


def _write(config: pytest.Config, record: RunRecord) -> None:
    data = run_dict(record)
    base = reports_dir(config) / data["plan"]
    worker = getattr(config, "workerinput", None)
    if worker is not None:
        parts = base / ".parts" / run_uid(config)[:8]
        parts.mkdir(parents=True, exist_ok=True)
        (parts / f"{worker['workerid']}.json").write_text(dumps(data))
        return
    config.stash[OUTCOME] = finish_run(base, [data], interrupted=record.interrupted)


def _merge_parts(config: pytest.Config, *, interrupted: bool) -> None:
    """Controller side under xdist: merge the parts this run's workers wrote into one run."""
    root = reports_dir(config)
    mine = run_uid(config)[:8]
    for parts_dir in sorted(root.glob("*/.parts/*")):
        if parts_dir.name != mine:
            _remove_if_stale(parts_dir)
            continue
        files = sorted(parts_dir.glob("*.json"))
        parts = [json.loads(p.read_text()) for p in files]
        if parts:
            config.stash[OUTCOME] = finish_run(parts_dir.parent.parent, parts, interrupted=interrupted)
        shutil.rmtree(parts_dir, ignore_errors=True)
    for order_dir in root.glob("*/.order/*"):
        if order_dir.name.startswith(mine):
            shutil.rmtree(order_dir, ignore_errors=True)
        else:
            _remove_if_stale(order_dir)


def _remove_if_stale(folder: Path) -> None:
    """A folder of another run: left by a killed run once nothing in it changed for an hour."""
    try:
        newest = max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)
    except OSError:
        return
    if time.time() - newest > STALE_AFTER_S:
        shutil.rmtree(folder, ignore_errors=True)


def settle_exit_status(session: pytest.Session) -> None:
    """An interrupted or incomplete run never exits with status 0."""
    outcome = session.config.stash.get(OUTCOME, None)
    if outcome and outcome.status in UNFINISHED and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """The run's verdict and where its report is, at the end of pytest's output."""
    outcome = config.stash.get(OUTCOME, None)
    if not outcome:
        return
    bad = outcome.status != "passed"
    terminalreporter.write_sep("=", f"tablemig: {outcome.headline}", red=bad, green=not bad, bold=True)
    for line in outcome.lines:
        terminalreporter.write_line(f"tablemig: {line}")
    if executes_on_sandbox(config):
        terminalreporter.write_line("tablemig: EXECUTED ON AN EMBEDDED SANDBOX (throwaway servers with demo data): "
                                    "no database of yours was changed", yellow=True, bold=True)
    terminalreporter.write_line(f"tablemig: report {outcome.dir}/report.html")
    lines = config.stash.get(_ESTIMATE, None)
    if lines:
        terminalreporter.write_sep("-", "tablemig rehearsal: duration estimated at production size")
        for line in lines:
            terminalreporter.write_line(line)
