"""The dry run of a checklist step that migrates lists the statements `--execute` then runs:
the demo plan run dry and then executed on the same database (a dry run changes nothing),
EX-2.2's dry-run evidence against the changes its execution recorded, in the same order,
values aside."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import FreshDb
from tablemig.sandbox.demo_data import create_demo_data

REPO = Path(__file__).resolve().parents[1]

# unpaced, as a dry run is: the write guard's rests (and the drain of the change log after
# one) follow the clock, not the plan
PLAN = (REPO / "plans" / "orders_migration.py").read_text().replace(
    "app_write_share=None,", "app_write_share=0, nice_ratio=0,").replace("demo_rows=100000", "demo_rows=0")

# a catalog read of a table by its OID: after the swap the live table is another relation
INSPECT = re.compile(r"(EXECUTE tablemig_inspect_\w+)\(\d+\)")


def _run(folder: Path, db: FreshDb, *args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "orders_migration.py", "-q", "-p", "no:cacheprovider",
                           "--rootdir", ".", "--active-dsn", db.dsn, "--passive-dsn", str(db.passive_dsn),
                           "--reports-dir", "reports", *args],
                          capture_output=True, text=True, timeout=900, cwd=folder)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    run: dict[str, Any] = json.loads((folder / "reports" / "orders_migration" / "latest" / "run.json").read_text())
    return run


def _step(run: dict[str, Any], item: str) -> dict[str, Any]:
    step: dict[str, Any] = next(s for s in run["steps"] if s["id"] == item)
    return step


# the record shows each statement with its values written in; values the run observes (rows
# copied, positions) differ between the dry run and the execution, the statements may not
LITERAL = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b")


def _text(statement: str) -> str:
    return LITERAL.sub("?", INSPECT.sub(r"\1(oid)", " ".join(statement.split())))


def test_ex_2_2_dry_run_lists_the_statements_the_execution_runs(fresh_db: FreshDb, tmp_path: Path) -> None:
    assert "app_write_share=0, nice_ratio=0," in PLAN and "demo_rows=0" in PLAN
    (tmp_path / "orders_migration.py").write_text(PLAN)
    with fresh_db.connect() as conn:
        create_demo_data(conn, 5000)
    dry = _step(_run(tmp_path, fresh_db), "EX-2.2")
    assert dry["status"] == "dry-run" and dry["evidence"]["reaches"] == "swapped"
    assert not [s for s in dry["statements"] if s["kind"] == "change" and s["executed"]]
    would = [_text(s) for s in dry["evidence"]["sql"]]
    assert would == [_text(s["sql"]) for s in dry["statements"] if s["kind"] == "change"]
    for what in ('INSERT INTO "public"."orders_new"', "PRIMARY KEY USING INDEX", "LOCK TABLE",
                 "RENAME TO", 'DROP TRIGGER IF EXISTS "tablemig_capture"'):
        assert any(what in s for s in would), what
    done = _step(_run(tmp_path, fresh_db, "--execute"), "EX-2.2")
    assert done["status"] == "passed" and done["evidence"]["state"] == "swapped"
    ran = [_text(s["sql"]) for s in done["statements"] if s["kind"] == "change"]
    assert all(s["executed"] for s in done["statements"] if s["kind"] == "change")
    first = next((i for i, (a, b) in enumerate(zip(would, ran, strict=False)) if a != b), None)
    assert first is None and len(would) == len(ran), (
        f"EX-2.2 dry and executed differ at statement {first} of {len(would)}/{len(ran)}: "
        f"{would[first] if first is not None and first < len(would) else None} != "
        f"{ran[first] if first is not None and first < len(ran) else None}")
