"""Write the run directory `REPORTS/<plan>/<run-id>/` from a run record.

Under pytest-xdist each worker writes its part to `REPORTS/<plan>/.parts/<run>/`; the
controller merges the parts of its own run into one run (one report for the whole plan).
Parts left behind by a run that was killed are never merged into a later one: they are
removed once they are an hour old.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ..checklist.items import ITEMS, ORDER
from ..checklist.outcome import UNFINISHED, complete, headline
from ..pg.connect import redact
from ..plugin.sites import reports_dir
from .record import stamped

OUTCOME = pytest.StashKey[dict[str, Any]]()
STALE_AFTER_S = 3600


def _result_dict(r: Any) -> dict[str, Any]:
    return {"id": r.id, "table": r.table, "status": r.status, "reason": r.reason,
            "started": r.started, "duration_s": r.duration_s,
            "text": ITEMS[r.id].text, "section": ITEMS[r.id].section,
            "evidence": r.evidence, "statements": r.statements}


def record_to_dict(record: Any) -> dict[str, Any]:
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
        "steps": [_result_dict(r) for r in record.results],
        "expected": [list(e) for e in record.expected],
        "interrupted": record.interrupted,
        "tables": tables,
        "contacts": [c.__dict__ for c in plan.contacts] if plan else [],
    }


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
    uid = getattr(config.option, "testrunuid", None) or getattr(config, "_tablemig_run_uid", None)
    if uid is None:
        uid = os.urandom(4).hex()
        config._tablemig_run_uid = uid  # type: ignore[attr-defined]
    return str(uid)


def write_run(config: pytest.Config, record: Any) -> Path | None:
    data = record_to_dict(record)
    base = reports_dir(config) / data["plan"]
    worker = getattr(config, "workerinput", None)
    if worker is not None:
        parts = base / ".parts" / run_uid(config)[:8]
        parts.mkdir(parents=True, exist_ok=True)
        (parts / f"{worker['workerid']}.json").write_text(_dumps(data))
        return None
    return finish_run(base, [data], config, interrupted=record.interrupted)


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One run from the workers' parts: steps in checklist order, tables united."""
    first = dict(parts[0])
    steps = [s for p in parts for s in p["steps"]]
    steps.sort(key=lambda s: (ORDER.index(s["id"]), s["table"] or ""))
    from ..checklist.criteria import evaluate

    for s in steps:  # success criteria need every worker's results
        if s["status"] == "deferred" and s["id"].startswith("SC-"):
            s["status"], s["reason"] = evaluate(s["id"], steps, first["mode"])
    first["steps"] = steps
    first["expected"] = list({tuple(e): e for p in parts for e in p.get("expected") or []}.values())
    first["interrupted"] = any(p.get("interrupted") for p in parts)
    first["tables"] = {k: v for p in parts for k, v in p["tables"].items()}
    first["started"] = min(p["started"] for p in parts)
    for p in parts[1:]:
        first["facts"] = {**p["facts"], **first["facts"]}
    return first


def finish_run(base: Path, parts: list[dict[str, Any]], config: pytest.Config | None, *,
               interrupted: bool = False) -> Path:
    data = merge(parts)
    now = dt.datetime.now(dt.UTC)
    run_id = f"{now:%Y%m%dT%H%M%SZ}-{data['mode']}-{os.urandom(2).hex()}"
    out = base / run_id
    out.mkdir(parents=True, exist_ok=True)
    data["run_id"] = run_id
    data["finished"] = now.timestamp()
    data["host"] = socket.gethostname()
    data.update(complete(data["steps"], data.pop("expected", []),
                         interrupted=interrupted or bool(data.get("interrupted"))))
    data["headline"] = headline(data)
    data = stamped(data)
    (out / "run.json").write_text(_dumps(data))
    if config is not None:
        config.stash[OUTCOME] = {"status": data["status"], "headline": data["headline"], "dir": str(out)}
    latest = base / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_id)
    try:
        from .model import render_reports

        render_reports(out, data)
    except ImportError:
        pass
    return out


def _dumps(data: Any) -> str:
    # Redact each string, not the JSON text: a value ending in `password=...` would otherwise
    # lose its closing quote to the redaction and leave invalid JSON.
    return json.dumps(_redacted(data), indent=2, default=lambda o: redact(str(o)), sort_keys=False)


def _redacted(v: Any) -> Any:
    if isinstance(v, str):
        return redact(v)
    if isinstance(v, dict):
        return {redact(k) if isinstance(k, str) else k: _redacted(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_redacted(x) for x in v]
    return v


def settle_exit_status(session: pytest.Session) -> None:
    """An interrupted or incomplete run never exits with status 0."""
    outcome = session.config.stash.get(OUTCOME, None)
    if outcome and outcome["status"] in UNFINISHED and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Controller side under xdist: merge the parts this run's workers wrote into one run."""
    config = session.config
    if getattr(config, "workerinput", None) is not None or not config.pluginmanager.hasplugin("dsession"):
        return
    root = reports_dir(config)
    mine = run_uid(config)[:8]
    for parts_dir in sorted(root.glob("*/.parts/*")):
        if parts_dir.name != mine:
            _remove_if_stale(parts_dir)
            continue
        files = sorted(parts_dir.glob("*.json"))
        parts = [json.loads(p.read_text()) for p in files]
        if parts:
            finish_run(parts_dir.parent.parent, parts, config, interrupted=exitstatus == pytest.ExitCode.INTERRUPTED)
        shutil.rmtree(parts_dir, ignore_errors=True)
    for order_dir in root.glob("*/.order/*"):  # tablemig.plugin.xdist_order's markers
        if order_dir.name.startswith(mine):
            shutil.rmtree(order_dir, ignore_errors=True)
        else:
            _remove_if_stale(order_dir)
    settle_exit_status(session)


def _remove_if_stale(folder: Path) -> None:
    """A folder of another run: left by a killed run once nothing in it changed for an hour."""
    try:
        newest = max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)
    except OSError:
        return
    if time.time() - newest > STALE_AFTER_S:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """The run's verdict and where its report is, at the end of pytest's output."""
    outcome = config.stash.get(OUTCOME, None)
    if not outcome:
        return
    bad = outcome["status"] != "passed"
    terminalreporter.write_sep("=", f"tablemig: {outcome['headline']}", red=bad, green=not bad, bold=True)
    terminalreporter.write_line(f"tablemig: report {outcome['dir']}/report.html")
