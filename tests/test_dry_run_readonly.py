"""I5: a dry run of the plan is read-only: catalog and data identical before and after."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
from snapshots import snapshot as take_snapshot

from tablemig.sandbox.demo_data import create_demo_data

ROOT = Path(__file__).resolve().parent.parent

def snapshot(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    return take_snapshot(conn, ("orders", "order_items"))


def test_I5_dry_run_of_the_plan_changes_nothing(fresh_db: Any, tmp_path: Path) -> None:
    with fresh_db.connect() as conn:
        create_demo_data(conn, 20_000)
        before = snapshot(conn)
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "plans" / "orders_migration.py"), "-q",
           "-p", "no:cacheprovider", "--active-dsn", fresh_db.dsn, "--passive-dsn", fresh_db.passive_dsn,
           "--reports-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with fresh_db.connect() as conn:
        after = snapshot(conn)
    assert after["data"] == before["data"]
    assert after["catalog"] == before["catalog"]
    run = json.loads((tmp_path / "orders_migration" / "latest" / "run.json").read_text())
    assert run["mode"] == "dry-run"
    statuses = {s["id"]: s["status"] for s in run["steps"]}
    assert statuses["EX-1.1"] == "dry-run" and statuses["EX-2.2"] == "dry-run"
    assert statuses["EX-1.3"] == "passed"  # read-only analysis runs in a dry run too
    # a dry run runs the reads its plan needs, and records every change without running it
    assert all(not st["executed"] for s in run["steps"] if s["status"] == "dry-run" for st in s["statements"]
               if st["kind"] == "change")
    # EX-2.1's dry run lists what the capture creates: the new table (bare, its key comes
    # after the load), the change log, the capture function, its trigger, the truncate guard
    ex21 = next(s for s in run["steps"] if s["id"] == "EX-2.1")
    changes = [st["sql"] for st in ex21["statements"] if st["kind"] == "change"]
    assert changes == ex21["evidence"]["sql"]
    created = " ".join(changes)
    for what in ('CREATE TABLE "public"."orders_new"', '"table_migration"."changes_',
                 'FUNCTION "table_migration"."capture_', 'CREATE TRIGGER "tablemig_capture"',
                 '"tablemig_no_truncate"'):
        assert what in created, (what, changes)
    assert "PRIMARY KEY" not in " ".join(c for c in changes if c.startswith('CREATE TABLE "public"."orders_new"'))


def test_mistyped_flag_is_an_error_not_a_silent_dry_run(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "plans" / "orders_migration.py"),
                           "--exec", "-p", "no:cacheprovider"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode != 0
    assert "unrecognized arguments: --exec" in proc.stderr
