"""What `run.json` says about itself: the version of its layout, the tool that wrote it, the
verdict in words, and ISO 8601 times next to the epoch seconds the reports compute with."""

from __future__ import annotations

import datetime as dt
from typing import Any

from .. import version
from ..checklist.outcome import verdict
from ..checklist.wording import num

# 2: schema_version, tool, verdict, started_at / finished_at (ISO 8601, UTC) on the run and
# started_at on each step; 1 (no schema_version field): the layout before
RUN_SCHEMA_VERSION = 2


def iso(ts: Any) -> str | None:
    """Epoch seconds as an ISO 8601 UTC timestamp (milliseconds), None when unknown."""
    f = num(ts)
    if f is None:
        return None
    return dt.datetime.fromtimestamp(f, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stamped(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (a finished run) with its layout version and tool first, its verdict and its
    ISO 8601 times."""
    steps = [{**s, "started_at": iso(s.get("started"))} if isinstance(s, dict) else s
             for s in data.get("steps") or []]
    return {"schema_version": RUN_SCHEMA_VERSION, "tool": {"name": "tablemig", "version": version()},
            **data, "steps": steps, "verdict": verdict(data),
            "started_at": iso(data.get("started")), "finished_at": iso(data.get("finished"))}
