"""Checklist order across pytest-xdist workers.

With `pytest PLAN -n K --dist loadgroup` the plan-wide steps run on one worker and each
table's steps on another. A step must still not start before the steps it follows in the
checklist: a table's EX-2.1 waits for the plan's backups (PRE-2.x) and EX-1.1. Workers
announce each finished step with a small file in a directory shared by the run; a step
whose prerequisite failed or was blocked is itself blocked by it.

Only per-table steps wait, and only for plan-wide steps: the plan-wide group never waits, so
it always finishes, and a table group that xdist queues behind it on the same worker finds
its prerequisites done. (Plan-wide steps waiting for tables could deadlock: xdist assigns a
table group to a worker only when that worker is nearly idle.) The price: under -n, the
post-migration plan-wide steps (EX-5.x, POST-x) may run before every table has swapped;
their evidence says what they saw, and the success criteria are evaluated at the merge.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from ..checklist.items import ITEMS, ORDER
from .options import reports_dir

WAIT_LIMIT_S = 24 * 3600
BAD = ("failed", "blocked")


def _dir(config: pytest.Config, plan: str) -> Path | None:
    worker = getattr(config, "workerinput", None)
    if worker is None:
        return None  # one process: pytest already runs the steps in checklist order
    d = reports_dir(config) / plan / ".order" / str(worker["testrunuid"])[:12]
    d.mkdir(parents=True, exist_ok=True)
    return d


def _key(item_id: str, table: str | None) -> str:
    return f"{item_id}__{(table or 'plan').replace('/', '_')}.json"


def mark_done(config: pytest.Config, plan: str, item_id: str, table: str | None, status: str) -> None:
    d = _dir(config, plan)
    if d is not None:
        tmp = d / (_key(item_id, table) + ".tmp")
        tmp.write_text(json.dumps({"id": item_id, "table": table, "status": status}))
        tmp.replace(d / _key(item_id, table))


def prerequisites(item_id: str, table: str | None, tables: list[str]) -> list[tuple[str, str | None]]:
    """Steps that precede `item_id` in the checklist and that it depends on."""
    out: list[tuple[str, str | None]] = []
    for earlier in ORDER[:ORDER.index(item_id)]:
        if earlier.startswith("SC-") or earlier in ("NOTES", "CONTACTS"):
            continue
        if not ITEMS[earlier].per_table:
            out.append((earlier, None))
        elif table is not None:
            out.append((earlier, table))
    return out


def wait_for_prerequisites(config: pytest.Config, plan: str, item_id: str, table: str | None,
                           tables: list[str]) -> str | None:
    """Wait until every prerequisite is done; returns the id of one that failed or was
    blocked (this step is then blocked by it), else None."""
    d = _dir(config, plan)
    if d is None:
        return None
    deadline = time.monotonic() + WAIT_LIMIT_S
    blocker: str | None = None
    for pid, ptable in prerequisites(item_id, table, tables):
        path = d / _key(pid, ptable)
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{item_id} waited {WAIT_LIMIT_S} s for {pid} {ptable or ''}")
            time.sleep(0.1)
        done: dict[str, Any] = json.loads(path.read_text())
        if done["status"] in BAD and blocker is None and (ptable is None or ptable == table):
            blocker = pid if done["status"] == "failed" else done.get("reason_blocker", pid)
    return blocker
