"""Write the run directory `REPORTS/<plan>/<run-id>/` from a run record.

Under pytest-xdist each worker writes its part to `REPORTS/<plan>/.parts/<run>/`; the
controller merges the parts into one run (one report for the whole plan).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from .checklist import ITEMS, ORDER
from .db import redact
from .plugin import reports_dir


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
        "tables": tables,
        "contacts": [c.__dict__ for c in plan.contacts] if plan else [],
    }


def _run_id(config: pytest.Config) -> str:
    worker = getattr(config, "workerinput", None)
    uid = worker["testrunuid"] if worker else getattr(config, "_tablemig_run_uid", None)
    if uid is None:
        uid = os.urandom(4).hex()
        config._tablemig_run_uid = uid  # type: ignore[attr-defined]
    return uid[:8]


def write_run(config: pytest.Config, record: Any) -> Path | None:
    data = record_to_dict(record)
    base = reports_dir(config) / data["plan"]
    worker = getattr(config, "workerinput", None)
    if worker is not None:
        parts = base / ".parts" / worker["testrunuid"][:8]
        parts.mkdir(parents=True, exist_ok=True)
        (parts / f"{worker['workerid']}.json").write_text(_dumps(data))
        return None
    return finish_run(base, [data], config)


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One run from the workers' parts: steps in checklist order, tables united."""
    first = dict(parts[0])
    steps = [s for p in parts for s in p["steps"]]
    steps.sort(key=lambda s: (ORDER.index(s["id"]), s["table"] or ""))
    from .criteria import evaluate

    for s in steps:  # success criteria need every worker's results
        if s["status"] == "deferred" and s["id"].startswith("SC-"):
            s["status"], s["reason"] = evaluate(s["id"], steps, first["mode"])
    first["steps"] = steps
    first["tables"] = {k: v for p in parts for k, v in p["tables"].items()}
    first["started"] = min(p["started"] for p in parts)
    for p in parts[1:]:
        first["facts"] = {**p["facts"], **first["facts"]}
    return first


def finish_run(base: Path, parts: list[dict[str, Any]], config: pytest.Config | None) -> Path:
    data = merge(parts)
    now = dt.datetime.now(dt.UTC)
    run_id = f"{now:%Y%m%dT%H%M%SZ}-{data['mode']}-{os.urandom(2).hex()}"
    out = base / run_id
    out.mkdir(parents=True, exist_ok=True)
    data["run_id"] = run_id
    data["finished"] = now.timestamp()
    data["host"] = socket.gethostname()
    statuses = [s["status"] for s in data["steps"]]
    data["status"] = "failed" if "failed" in statuses else "passed"
    (out / "run.json").write_text(_dumps(data))
    latest = base / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_id)
    try:
        from .report import render_reports

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


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Controller side under xdist: merge the parts the workers wrote into one run."""
    config = session.config
    if getattr(config, "workerinput", None) is not None or not config.pluginmanager.hasplugin("dsession"):
        return
    root = reports_dir(config)
    for parts_dir in sorted(root.glob("*/.parts/*")):
        files = sorted(parts_dir.glob("*.json"))
        parts = [json.loads(p.read_text()) for p in files]
        if parts:
            finish_run(parts_dir.parent.parent, parts, config)
        for p in files:
            p.unlink()
        parts_dir.rmdir()
