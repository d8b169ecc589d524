"""I5: a dry run of the plan is read-only: catalog and data identical before and after."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from tablemig.demo_data import create_demo_data

ROOT = Path(__file__).resolve().parent.parent

CATALOG = """
SELECT 'class', n.nspname || '.' || c.relname || ':' || c.relkind::text || ':' || coalesce(c.relacl::text, '')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
UNION ALL SELECT 'attr', attrelid::regclass || '.' || attname || ':' || atttypid::regtype
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND attnum > 0
UNION ALL SELECT 'proc', p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL SELECT 'trigger', tgrelid::regclass || '.' || tgname || ':' || tgenabled::text FROM pg_trigger
UNION ALL SELECT 'constraint', conrelid::regclass || '.' || conname || ':' || convalidated FROM pg_constraint
 WHERE connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
UNION ALL SELECT 'namespace', nspname FROM pg_namespace
UNION ALL SELECT 'view', schemaname || '.' || viewname || ':' || md5(definition) FROM pg_views
 WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
UNION ALL SELECT 'sequence', schemaname || '.' || sequencename || ':' || coalesce(last_value, 0) FROM pg_sequences
ORDER BY 1, 2
"""


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    catalog = conn.execute(CATALOG).fetchall()
    data = {t: conn.execute(f"SELECT count(*), md5(string_agg(x::text, ',' ORDER BY x::text)) FROM {t} x").fetchone()
            for t in ("orders", "order_items")}
    return {"catalog": catalog, "data": data}


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
    assert all(not st["executed"] for s in run["steps"] if s["status"] == "dry-run" for st in s["statements"])


def test_mistyped_flag_is_an_error_not_a_silent_dry_run(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "plans" / "orders_migration.py"),
                           "--exec", "-p", "no:cacheprovider"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode != 0
    assert "unrecognized arguments: --exec" in proc.stderr
