"""The demo plan run by a role that is not a superuser: the privileges it needs, and what
a missing pg_create_restore_point grant does to PRE-2.2."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from db_helpers import drop_owned
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tablemig.sandbox.demo_data import create_demo_data

ROOT = Path(__file__).resolve().parent.parent


def _as(dsn: str, user: str) -> str:
    params = conninfo_to_dict(dsn)
    params["user"] = user
    return make_conninfo("", **params)


def _run(db: Any, role: str, tmp: Path) -> tuple[int, dict[str, Any], str]:
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "plans" / "orders_migration.py"), "-q", "-p", "no:cacheprovider",
           "--execute", "--active-dsn", _as(db.dsn, role), "--passive-dsn", _as(db.passive_dsn, role),
           "--reports-dir", str(tmp / "reports")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp)
    run = json.loads((tmp / "reports" / "orders_migration" / "latest" / "run.json").read_text())
    return proc.returncode, {s["id"]: s for s in run["steps"]}, proc.stdout


def test_demo_plan_as_a_non_superuser(fresh_db: Any, active: Any, tmp_path: Path) -> None:
    role = f"migrator_{uuid.uuid4().hex[:6]}"
    r = sql.Identifier(role)
    active.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB NOSUPERUSER").format(r))
    active.execute(sql.SQL("GRANT pg_monitor TO {}").format(r))
    active.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(fresh_db.name), r))
    try:
        with fresh_db.connect() as conn:
            create_demo_data(conn, 20_000)
            conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(r))
            for t in ("orders", "order_items"):
                conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(t), r))
            conn.execute(sql.SQL("ALTER VIEW recent_orders OWNER TO {}").format(r))
        # without the restore-point grant PRE-2.2 fails, names the GRANT, and blocks what follows
        rc, steps, out = _run(fresh_db, role, tmp_path)
        assert rc != 0
        assert steps["PRE-2.2"]["status"] == "failed"
        assert "GRANT EXECUTE ON FUNCTION pg_create_restore_point(text)" in steps["PRE-2.2"]["reason"]
        assert steps["EX-2.2"]["status"] == "blocked" and steps["EX-2.2"]["reason"] == "blocked by PRE-2.2"
        with fresh_db.connect() as conn:
            assert conn.execute("SELECT to_regclass('orders_new')").fetchone() == (None,)
        with fresh_db.connect() as conn:  # function privileges are per database
            conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO {}").format(r))
        rc, steps, out = _run(fresh_db, role, tmp_path)
        assert rc == 0, out[-3000:]
        for item in ("PRE-2.1", "PRE-2.3", "EX-1.1", "EX-2.2", "EX-3.2", "EX-4.1", "EX-4.3"):
            assert steps[item]["status"] in ("passed", "warning"), (item, steps[item])
        with fresh_db.connect() as conn:
            owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'orders'").fetchone()
            assert owner == (role,)
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (2000,)
    finally:
        with fresh_db.connect() as conn:
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO postgres").format(r))
        drop_owned(fresh_db.connect, r)
        active.execute(sql.SQL("DROP OWNED BY {}").format(r))
        active.execute(sql.SQL("DROP ROLE {}").format(r))


def test_a_role_that_does_not_own_the_table_gets_a_clear_refusal(fresh_db: Any, active: Any) -> None:
    from tablemig.config.spec import TableSpec
    from tablemig.errors import InputError
    from tablemig.lifecycle.driver import Migration

    role = f"reader_{uuid.uuid4().hex[:6]}"
    r = sql.Identifier(role)
    active.execute(sql.SQL("CREATE ROLE {} LOGIN").format(r))
    try:
        with fresh_db.connect() as conn:
            create_demo_data(conn, 2000)
            conn.execute("CREATE SCHEMA table_migration")  # pre-installed by a DBA, say
            conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA table_migration, public TO {}").format(r))
            conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(r))
            conn.execute("DROP SCHEMA table_migration")
            conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(fresh_db.name), r))
        try:
            with Migration(_as(fresh_db.dsn, role), TableSpec("orders", "created_date", retention=0.1)) as mig:
                mig.run("swapped")
            raise AssertionError("a non-owner must be refused")
        except InputError as exc:
            assert "lacks a privilege" in exc.problem and "not the owner" in exc.problem and "owner" in exc.fix
        with fresh_db.connect() as conn:  # nothing was changed: not even the schema was installed
            assert conn.execute("SELECT to_regclass('orders_new'), to_regnamespace('table_migration')"
                                ).fetchone() == (None, None)
    finally:
        drop_owned(fresh_db.connect, r)
        active.execute(sql.SQL("DROP OWNED BY {}").format(r))
        active.execute(sql.SQL("DROP ROLE {}").format(r))
