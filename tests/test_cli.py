"""The operational CLI end to end on a real database: plan, migrate, status, health,
pause/resume, prune, rollback, cleanup."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

from tablemig.sandbox.demo_data import create_demo_data


def tablemig(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "tablemig.cli.main", *args], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _spec(db: Any) -> list[str]:
    return ["--dsn", db.dsn, "--table", "public.orders", "--date-column", "created_date", "--retention", "0.1"]


def test_plan_migrate_status_prune_cleanup(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        create_demo_data(conn, 20_000)
    plan = json.loads(tablemig("plan", "--json", *_spec(fresh_db)).stdout)
    assert plan["rows_keep"] == 2000 and plan["rows_total"] == 20_000 and plan["blockers"] == []
    assert "public.order_items" in " ".join(plan["dependencies"]["incoming_foreign_keys"])
    done = json.loads(tablemig("migrate", "--execute", "--json", *_spec(fresh_db), "--batch-size", "500").stdout)
    assert done["state"] == "swapped" and done["rows_copied"] == 2000
    status = json.loads(tablemig("status", "--json", "--dsn", fresh_db.dsn).stdout)
    assert [s["state"] for s in status] == ["swapped"]
    health = tablemig("health", "--dsn", fresh_db.dsn, check=False)
    # OK, or an alert of the shared sandbox's standby lagging behind another test's load
    assert health.returncode in (0, 2) and health.stdout.startswith("TABLEMIG ") and "replication_lag" in health.stdout
    pruned = tablemig("prune", "--execute", "--dsn", fresh_db.dsn, "--table", "public.orders").stdout
    assert "2000 rows deleted" in pruned  # the archive's copies of the live rows
    with fresh_db.connect() as conn:
        archive = conn.execute("SELECT archive_name FROM table_migration.migration_state").fetchone()[0]
        assert conn.execute(f"SELECT count(*) FROM {archive}").fetchone() == (18_000,)
    out = tablemig("cleanup", "--dsn", fresh_db.dsn, "--table", "public.orders", "--approved-by", "CAB-7").stdout
    assert "approved by CAB-7" in out
    with fresh_db.connect() as conn:
        log = conn.execute("SELECT details->>'approved_by' FROM table_migration.migration_log"
                           " WHERE operation = 'cleanup'").fetchone()
        assert log == ("CAB-7",)


def test_rollback_command_and_pause(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        create_demo_data(conn, 20_000)
        before = conn.execute("SELECT count(*), sum(id) FROM orders").fetchone()
    tablemig("migrate", "--execute", *_spec(fresh_db), "--until", "capturing")
    tablemig("pause", "--dsn", fresh_db.dsn, "--table", "public.orders")
    result: dict[str, Any] = {}

    def run() -> None:
        result["proc"] = tablemig("migrate", "--execute", *_spec(fresh_db), "--batch-size", "500", check=False)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(3)
    assert t.is_alive(), "a paused migration must wait"
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT rows_copied FROM table_migration.migration_state").fetchone() == (0,)
    tablemig("resume", "--dsn", fresh_db.dsn, "--table", "public.orders")
    t.join(120)
    assert result["proc"].returncode == 0, result["proc"].stderr
    assert "paused" in result["proc"].stderr
    assert "swapped back" in tablemig("rollback", "--execute", "--dsn", fresh_db.dsn, "--table", "public.orders").stdout
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT count(*), sum(id) FROM orders").fetchone() == before


def test_cli_errors_name_the_problem_and_the_fix(fresh_db: Any) -> None:
    proc = tablemig("rollback", "--execute", "--dsn", fresh_db.dsn, "--table", "public.nothing", check=False)
    assert proc.returncode == 2
    assert "was never migrated here" in proc.stderr and "fix:" in proc.stderr
    with fresh_db.connect() as conn:
        create_demo_data(conn, 1000)
    proc = tablemig("plan", "--dsn", fresh_db.dsn, "--table", "public.orders", "--date-column", "status",
                    "--retention", "0.1", check=False)
    assert proc.returncode == 2 and "not a date or timestamp" in proc.stderr
    proc = tablemig("plan", *_spec(fresh_db)[:-1], "1.5", check=False)
    assert proc.returncode == 2 and "out of range" in proc.stderr


def test_status_names_the_phase_and_watches(fresh_db: Any) -> None:
    """The stored state names the step last finished; status says what comes next, and that it
    runs while a tablemig run holds the table (its advisory lock): after the backfill that is the
    index build, never "backfilling". --watch refreshes (JSON Lines with --json)."""
    from tablemig.lifecycle.state import LOCK_CLASS

    with fresh_db.connect() as conn:
        create_demo_data(conn, 5_000)
        oid = conn.execute("SELECT 'public.orders'::regclass::oid::bigint").fetchone()[0]
    tablemig("migrate", "--execute", *_spec(fresh_db), "--until", "backfilling")
    [row] = json.loads(tablemig("status", "--json", "--dsn", fresh_db.dsn).stdout)
    assert row["state"] == "backfilling" and row["running"] is False and row["paused"] is False
    assert row["phase"].startswith("index build next") and row["rows_copied"] == row["rows_to_copy"] == 500
    with fresh_db.connect() as holder:  # what a running `migrate` holds on the table
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, oid & 0x7FFFFFFF))
        text = tablemig("status", "--dsn", fresh_db.dsn).stdout
        assert "index build (running)" in text and "backfill (running)" not in text, text
        watched = tablemig("status", "--dsn", fresh_db.dsn, "--json", "--watch", "0.2", "--count", "3").stdout
    lines = [json.loads(x) for x in watched.splitlines()]
    assert len(lines) == 3 and all(x["tables"][0]["phase"] == "index build (running)" for x in lines)
    assert lines[1]["tables"][0]["rows_per_second"] == 0  # nothing copied between two refreshes
    text = tablemig("status", "--dsn", fresh_db.dsn, "--watch", "0.2", "--count", "2").stdout
    assert text.count("\n-- ") + text.startswith("-- ") == 2 and "index build next" in text, text
    bad = tablemig("status", "--dsn", fresh_db.dsn, "--watch", "0", check=False)
    assert bad.returncode == 2 and "fix: give seconds" in bad.stderr and "Traceback" not in bad.stderr
