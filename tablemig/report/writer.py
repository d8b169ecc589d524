"""Write the run directory `REPORTS/<plan>/<run-id>/` from a run's plain data: `run.json`,
then the reports (`tablemig.report.model`); `latest` points at it.

Under pytest-xdist each worker's part of the run is merged into one run here (one report for
the whole plan); the pytest plugin collects the parts (`tablemig.plugin.reporting`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checklist.criteria import evaluate
from ..checklist.items import ORDER
from ..checklist.outcome import complete, headline
from ..pg.connect import redact


@dataclass(frozen=True)
class Finished:
    """A written run: its verdict, its headline and its directory."""

    status: str
    headline: str
    dir: Path


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One run from the workers' parts: steps in checklist order, tables united."""
    first = dict(parts[0])
    steps = [s for p in parts for s in p["steps"]]
    steps.sort(key=lambda s: (ORDER.index(s["id"]), s["table"] or ""))
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


def finish_run(base: Path, parts: list[dict[str, Any]], *, interrupted: bool = False) -> Finished:
    """Write the run made of `parts` (one, or one per xdist worker) under `base`."""
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
    (out / "run.json").write_text(dumps(data))
    latest = base / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_id)
    try:
        from .model import render_reports

        render_reports(out, data)
    except ImportError:
        pass
    return Finished(data["status"], data["headline"], out)


def dumps(data: Any) -> str:
    """JSON of `data` with every string redacted."""
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
