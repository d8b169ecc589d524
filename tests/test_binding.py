"""How each class of dependent is bound to a table (`tablemig.pg.binding`), one real-server
case per class: by OID (follows the rename to the archive unless the swap rebuilds it) or by
name (resolved when it runs: sees the new table)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import FreshDb
from tablemig.pg.binding import NAME, OID, bindings
from tablemig.pg.names import QualifiedName

ROOT = Path(__file__).resolve().parent.parent
TABLE = """
CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, owner text, created_date date NOT NULL);
CREATE TABLE audit (id serial PRIMARY KEY, note text);
CREATE TABLE customers (id bigint PRIMARY KEY);
"""

CASES = [
    ("view", "CREATE VIEW recent AS SELECT id FROM orders", "public.recent", OID),
    ("materialized view", "CREATE MATERIALIZED VIEW totals AS SELECT count(*) FROM orders", "public.totals", OID),
    ("rule", "CREATE RULE no_delete AS ON DELETE TO orders DO INSTEAD NOTHING", "no_delete on public.orders", OID),
    ("rule elsewhere", "CREATE RULE copy_audit AS ON INSERT TO audit DO ALSO"
                       " INSERT INTO orders (created_date) VALUES (current_date)", "copy_audit on public.audit", OID),
    ("function (BEGIN ATOMIC)", "CREATE FUNCTION order_count() RETURNS bigint LANGUAGE sql"
                                " BEGIN ATOMIC SELECT count(*) FROM orders; END", "order_count()", OID),
    ("procedure (BEGIN ATOMIC)", "CREATE PROCEDURE purge() LANGUAGE sql"
                                 " BEGIN ATOMIC DELETE FROM orders WHERE created_date < '2000-01-01'; END",
     "purge()", OID),
    ("SQL function", "CREATE FUNCTION newest() RETURNS date LANGUAGE sql AS 'SELECT max(created_date) FROM orders'",
     "newest()", NAME),
    ("PL/pgSQL function", "CREATE FUNCTION touch() RETURNS void LANGUAGE plpgsql AS"
                          " $$ BEGIN UPDATE orders SET owner = owner WHERE false; END $$", "touch()", NAME),
    ("trigger", "CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;"
                " CREATE TRIGGER keep_it BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION keep()",
     "keep_it", OID),
    ("policy", "CREATE POLICY own ON orders USING (owner = current_user)", "own", OID),
    ("policy elsewhere", "CREATE POLICY seen ON audit USING (EXISTS (SELECT FROM orders o WHERE o.id = audit.id))",
     "seen on public.audit", OID),
    ("publication", "CREATE PUBLICATION orders_pub FOR TABLE orders", "orders_pub", OID),
    ("foreign key in", "CREATE TABLE items (order_id bigint REFERENCES orders)", "items_order_id_fkey on public.items",
     OID),
    ("foreign key out", "ALTER TABLE orders ADD COLUMN customer_id bigint REFERENCES customers",
     "orders_customer_id_fkey", OID),
    ("owned sequence", "CREATE SEQUENCE order_numbers OWNED BY orders.id", "public.order_numbers", OID),
    ("identity sequence", "", "public.orders_id_seq", OID),
]


@pytest.mark.parametrize("kind, ddl, name, bound_by", CASES, ids=[c[0] for c in CASES])
def test_each_class_of_dependent_is_bound_as_it_is(fresh_db: FreshDb, kind: str, ddl: str, name: str,
                                                   bound_by: str) -> None:
    with fresh_db.connect() as conn:
        conn.execute(TABLE)
        before = {(b.kind, b.name) for b in bindings(conn, QualifiedName("public", "orders"))}
        if ddl:
            conn.execute(ddl)
        found = [b for b in bindings(conn, QualifiedName("public", "orders")) if (b.kind, b.name) not in before]
        if not ddl:
            found = [b for b in bindings(conn, QualifiedName("public", "orders")) if b.kind == kind]
    assert [(b.kind, b.name, b.bound_by) for b in found] == [(kind, name, bound_by)], [b.as_dict() for b in found]
    assert found[0].swap


def test_an_unrelated_object_is_not_listed(fresh_db: FreshDb) -> None:
    with fresh_db.connect() as conn:
        conn.execute(TABLE)
        conn.execute("CREATE VIEW other AS SELECT id FROM audit;"
                     " CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT count(*)::int FROM audit'")
        names = {b.name for b in bindings(conn, QualifiedName("public", "orders"))}
    assert names == {"public.orders_id_seq"}


def test_the_dry_run_lists_the_bindings_of_the_demo_table(tmp_path: Path) -> None:
    """PRE-1.3d's evidence: the demo table's view, incoming foreign key and sequence, each
    bound by OID, with what the swap does with it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TABLEMIG_ACTIVE", "TABLEMIG_PASSIVE"))}
    proc = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "plans" / "orders_migration.py"),
                           "-p", "no:cacheprovider", "-k", "pre_1_3", "--reports-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    run = json.loads((tmp_path / "r" / "orders_migration" / "latest" / "run.json").read_text())
    step = next(s for s in run["steps"] if s["id"] == "PRE-1.3d")
    found = {(b["kind"], b["name"], b["bound_by"]) for b in step["evidence"]["bindings"]}
    assert {("view", "public.recent_orders", OID),
            ("foreign key in", "order_items_order_id_fkey on public.order_items", OID),
            ("owned sequence", "public.orders_id_seq", OID)} <= found, found
    assert all(b["swap"] for b in step["evidence"]["bindings"])


def test_every_dependent_reads_and_writes_the_live_table_after_the_swap_and_the_original_after_rollback(
        fresh_db: FreshDb) -> None:
    """A PL/pgSQL function, a SQL function, a SQL-standard-body function and procedure, a
    view, a materialized view, a rule on another table that writes the table, and a policy
    of the table: after the swap each reads (or writes) the live table, after a rollback the
    original again. A SQL-standard-body function whose result is the table's row type cannot
    be rebuilt and is refused by the plan."""
    from tablemig.config.spec import TableSpec
    from tablemig.lifecycle.driver import Migration

    reader = f"reader_{fresh_db.name}"
    with fresh_db.connect() as conn:
        conn.execute("""
            CREATE TABLE t (id bigint PRIMARY KEY, d date NOT NULL, v int NOT NULL DEFAULT 0);
            INSERT INTO t SELECT g, date '2024-01-01' + g, 0 FROM generate_series(1, 300) g;
            CREATE FUNCTION t_plpgsql() RETURNS bigint LANGUAGE plpgsql
                AS 'BEGIN RETURN (SELECT count(*) FROM t); END';
            CREATE FUNCTION t_sql() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM t';
            CREATE FUNCTION t_atomic() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT count(*) FROM t; END;
            CREATE PROCEDURE t_touch(k bigint) LANGUAGE sql BEGIN ATOMIC UPDATE t SET v = v + 1 WHERE id = k; END;
            COMMENT ON FUNCTION t_atomic() IS 'rows of t';
            CREATE VIEW t_view AS SELECT id FROM t;
            CREATE MATERIALIZED VIEW t_mat AS SELECT count(*) AS n FROM t;
            CREATE TABLE inbox (id bigint, d date);
            CREATE RULE inbox_to_t AS ON INSERT TO inbox DO ALSO INSERT INTO t (id, d) VALUES (NEW.id, NEW.d);
            ALTER TABLE t ENABLE ROW LEVEL SECURITY;
            CREATE POLICY t_recent ON t USING (d >= date '2024-03-01');
        """)
        # roles are the cluster's: one of this test's own, dropped at its end
        conn.execute(f"CREATE ROLE {reader}; GRANT SELECT ON t TO {reader}")
        before = conn.execute("SELECT oid, proowner FROM pg_proc WHERE proname = 't_atomic'").fetchone()
        assert before is not None

    def reads(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        conn.execute("REFRESH MATERIALIZED VIEW t_mat")
        out: dict[str, Any] = {}
        for name, query in (("plpgsql", "SELECT t_plpgsql()"), ("sql", "SELECT t_sql()"),
                            ("atomic", "SELECT t_atomic()"), ("view", "SELECT count(*) FROM t_view"),
                            ("matview", "SELECT n FROM t_mat")):
            row = conn.execute(query).fetchone()
            out[name] = row[0] if row else None
        with conn.transaction(force_rollback=True):  # the policy, as a role it applies to
            conn.execute(f"SET LOCAL ROLE {reader}")
            row = conn.execute("SELECT count(*) FROM t").fetchone()
            out["policy"] = row[0] if row else None
        return out

    def rows_of_t(conn: psycopg.Connection[Any]) -> tuple[int, int]:
        total = conn.execute("SELECT count(*), count(*) FILTER (WHERE d >= date '2024-03-01') FROM t").fetchone()
        assert total is not None
        return int(total[0]), int(total[1])

    spec = TableSpec("public.t", "d", cutoff="2024-09-01")
    with Migration(fresh_db.dsn, spec, progress=lambda p: None) as mig:
        assert not mig.plan().blockers
        mig.run("swapped")
        with fresh_db.connect() as conn:
            n, visible = rows_of_t(conn)
            assert n < 300
            assert reads(conn) == {"plpgsql": n, "sql": n, "atomic": n, "view": n, "matview": n, "policy": visible}
            conn.execute("CALL t_touch(300)")  # the procedure writes the live table
            assert conn.execute("SELECT v FROM t WHERE id = 300").fetchone() == (1,)
            conn.execute("INSERT INTO inbox VALUES (1000, date '2025-01-01')")  # through the rule
            assert conn.execute("SELECT count(*) FROM t WHERE id = 1000").fetchone() == (1,)
            assert conn.execute("SELECT oid, proowner FROM pg_proc WHERE proname = 't_atomic'").fetchone() == before
            assert conn.execute("SELECT obj_description(%s, 'pg_proc')", (before[0],)).fetchone() == ("rows of t",)
        assert mig.rollback() == "swapped back"
    with fresh_db.connect() as conn:
        n, visible = rows_of_t(conn)
        assert n == 301  # every row of the original, and the one written through the rule since
        assert reads(conn) == {"plpgsql": n, "sql": n, "atomic": n, "view": n, "matview": n, "policy": visible}
        conn.execute("CALL t_touch(1)")
        assert conn.execute("SELECT v FROM t WHERE id = 1").fetchone() == (1,)
        conn.execute("INSERT INTO inbox VALUES (1001, date '2025-01-01')")
        assert conn.execute("SELECT count(*) FROM t WHERE id = 1001").fetchone() == (1,)
        conn.execute("CREATE FUNCTION t_newest() RETURNS t LANGUAGE sql"
                     " BEGIN ATOMIC SELECT * FROM t ORDER BY id DESC LIMIT 1; END")
    with Migration(fresh_db.dsn, spec, progress=lambda p: None) as mig:
        blockers = mig.plan().blockers
    assert any("t_newest()" in b and "row type" in b for b in blockers), blockers
    assert not any("t_atomic()" in b for b in blockers), blockers
    with fresh_db.connect() as conn:
        conn.execute(f"REVOKE ALL ON t FROM {reader}; DROP ROLE {reader}")


def test_the_queries_that_touch_the_table_from_pg_stat_statements() -> None:
    """PRE-1.3c's hint from pg_stat_statements on a server that preloads it: the recorded
    statements naming the table, with calls and mean time, not those of other tables; on a
    server without it, said so."""
    from backup_helpers import private_cluster

    from tablemig.pg.app_queries import table_queries
    from tablemig.pg.connect import connect

    with private_cluster(shared_preload_libraries="pg_stat_statements") as sb, connect(sb.active_dsn) as conn:
        assert table_queries(conn, QualifiedName("public", "orders"))["available"] is False
        conn.execute("CREATE EXTENSION pg_stat_statements; CREATE TABLE orders (id int, d date);"
                      " CREATE TABLE orders_log (id int); CREATE TABLE other (id int)")
        for i in range(3):
            conn.execute("SELECT count(*) FROM orders WHERE id = %s", (i,))
        conn.execute("INSERT INTO orders VALUES (1, now())")
        conn.execute("SELECT count(*) FROM other")
        conn.execute("SELECT count(*) FROM orders_log")
        found = table_queries(conn, QualifiedName("public", "orders"))
    assert found["available"] is True
    by_text = {q["query"]: q for q in found["queries"]}
    select = next(q for t, q in by_text.items() if t.startswith("SELECT count(*) FROM orders WHERE"))
    assert select["calls"] == 3 and select["mean_ms"] >= 0 and "$1" in select["query"]
    assert any(t.startswith("INSERT INTO orders") for t in by_text)
    assert not any("other" in t or "orders_log" in t for t in by_text), by_text
