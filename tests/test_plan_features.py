"""Plans: new-plan for an awkward table, attestations and blocking, two tables under -n 2,
backups that only cleanup removes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tablemig.cli.newplan import render_plan
from tablemig.config.plan import TableConfig
from tablemig.sandbox.demo_data import create_demo_data


def _pytest(plan: Path, db: Any, tmp: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    cmd = [sys.executable, "-m", "pytest", str(plan), "-q", "-p", "no:cacheprovider", "--active-dsn", db.dsn,
           "--passive-dsn", db.passive_dsn, "--reports-dir", str(tmp / "reports"), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp)
    runs = sorted((tmp / "reports").glob("*/latest/run.json"))
    return proc, json.loads(runs[-1].read_text()) if runs else {}


def _statuses(run: dict[str, Any]) -> dict[str, str]:
    return {f"{s['id']}{' ' + s['table'] if s['table'] else ''}": s["status"] for s in run["steps"]}


def _tablemig(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "tablemig.cli.main", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_new_plan_for_a_quoted_mixed_case_identity_table_executes(fresh_db: Any, tmp_path: Path) -> None:
    with fresh_db.connect() as conn:
        conn.execute('CREATE SCHEMA "Sales"')
        conn.execute('CREATE TABLE "Sales"."Invoice" ("InvoiceId" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,'
                     ' "Booked On" date NOT NULL, amount numeric(10,2) NOT NULL, memo text)')
        conn.execute('INSERT INTO "Sales"."Invoice" ("Booked On", amount, memo) SELECT date \'2024-01-01\''
                     " + (g % 700), g % 1000, 'inv ' || g FROM generate_series(1, 30000) g")
        conn.execute('CREATE INDEX "Invoice booked" ON "Sales"."Invoice" ("Booked On")')
    plan = tmp_path / "invoice_plan.py"
    out = _tablemig("new-plan", "--table", '"Sales"."Invoice"', "--date-column", "Booked On", "--cutoff",
                    "2025-09-01", "--batch-size", "2000", "--max-replication-lag", "30s", "--output", str(plan))
    assert "50 checklist steps" in out
    proc, run = _pytest(plan, fresh_db, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert run["mode"] == "dry-run"
    proc, run = _pytest(plan, fresh_db, tmp_path, "--execute")
    assert proc.returncode == 0, proc.stdout[-3000:]
    st = _statuses(run)
    assert st['EX-2.2 "Sales"."Invoice"'] == "passed" and st['EX-4.1 "Sales"."Invoice"'] == "passed"
    assert [s["id"] for s in run["steps"]][:3] == ["PRE-1.1a", "PRE-1.1b", "PRE-1.1c"]
    with fresh_db.connect() as conn:
        live = conn.execute('SELECT count(*), min("Booked On") FROM "Sales"."Invoice"').fetchone()
        assert live[1].isoformat() >= "2025-09-01"
        archive = conn.execute("SELECT archive_name FROM table_migration.migration_state").fetchone()[0]
        total = conn.execute(f'SELECT count(*) FROM "Sales"."{archive}"').fetchone()[0]
        assert total == 30000 and 0 < live[0] < total
        new_id = conn.execute('INSERT INTO "Sales"."Invoice" ("Booked On", amount) VALUES (current_date, 1)'
                              ' RETURNING "InvoiceId"').fetchone()[0]
        assert new_id > 30000


def test_attestations_and_blocking(fresh_db: Any, tmp_path: Path) -> None:
    with fresh_db.connect() as conn:
        create_demo_data(conn, 5000)
    plan = tmp_path / "att_plan.py"
    plan.write_text(render_plan(name="att_plan", path=str(plan),
                                tables=[TableConfig("public.orders", "created_date", retention=0.1)]))
    proc, run = _pytest(plan, fresh_db, tmp_path, "--attest", "PRE-3.1=alice")
    assert proc.returncode == 0
    st = {s["id"]: s for s in run["steps"]}
    assert st["PRE-3.1"]["status"] == "attested" and st["PRE-3.1"]["evidence"]["attested_by"] == "alice"
    assert st["PRE-3.2"]["status"] == "needs-attestation"  # no notifier and nobody confirmed
    proc, run = _pytest(plan, fresh_db, tmp_path, "--execute", "--require-attestations",
                        "--attest", "PRE-3.1=alice", "--attest", "PRE-3.2=bob")
    assert proc.returncode != 0
    st = _statuses(run)
    assert st["PRE-1.3c public.orders"] == "failed"  # application dependencies: nobody attested
    blocked = {s["id"]: s["reason"] for s in run["steps"] if s["status"] == "blocked"}
    assert blocked.get("EX-2.1") == "blocked by PRE-1.3c" and blocked.get("EX-4.1") == "blocked by PRE-1.3c"
    with fresh_db.connect() as conn:  # nothing of the migration happened
        assert conn.execute("SELECT to_regclass('public.orders_new')").fetchone() == (None,)
    bad = subprocess.run([sys.executable, "-m", "pytest", str(plan), "--attest", "nonsense", "-p", "no:cacheprovider",
                          "--active-dsn", fresh_db.dsn], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bad.returncode != 0 and "expected ID=NAME" in bad.stderr


def test_two_tables_in_parallel_and_backups_removed_by_cleanup_only(fresh_db: Any, tmp_path: Path) -> None:
    with fresh_db.connect() as conn:
        create_demo_data(conn, 20000, schema="shop_a")
        create_demo_data(conn, 30000, schema="shop_b")
    plan = tmp_path / "two_tables.py"
    plan.write_text(render_plan(name="two_tables", path=str(plan), tables=[
        TableConfig("shop_a.orders", "created_date", retention=0.1, batch_size=1000),
        TableConfig("shop_b.orders", "created_date", retention=0.2, batch_size=1000)]))
    proc, run = _pytest(plan, fresh_db, tmp_path, "--execute", "-n", "2", "--dist", "loadgroup")
    assert proc.returncode == 0, proc.stdout[-3000:]
    st = _statuses(run)
    for t in ("shop_a.orders", "shop_b.orders"):
        assert st[f"EX-2.2 {t}"] == "passed" and st[f"EX-4.1 {t}"] == "passed" and st[f"EX-3.2 {t}"] == "passed"
    assert st["SC-5"] == "passed"  # evaluated over both workers' results at the merge
    assert set(run["tables"]) == {"shop_a.orders", "shop_b.orders"}
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM shop_a.orders").fetchone() == (2000,)
        assert conn.execute("SELECT count(*) FROM shop_b.orders").fetchone() == (6000,)
        dumps = [r[0] for r in conn.execute("SELECT DISTINCT details->>'file' FROM table_migration.migration_log"
                                            " WHERE operation = 'backup'").fetchall()]
    # per table: its dump and its (hard-linked) dump of the database's schema
    assert len(dumps) == 4 and all(Path(d).exists() for d in dumps)
    for t in ("shop_a.orders", "shop_b.orders"):
        _tablemig("prune", "--execute", "--dsn", fresh_db.dsn, "--table", t)
    assert all(Path(d).exists() for d in dumps), "prune must not touch the backup"
    _tablemig("cleanup", "--dsn", fresh_db.dsn, "--table", "shop_a.orders", "--approved-by", "CAB-9")
    assert [Path(d).exists() for d in sorted(dumps)] == [False, False, True, True]
