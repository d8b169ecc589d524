"""What the swap carries from the original table to the new live table, and what rollback
gives back: views, materialized views, incoming foreign keys, sequences (serial and
identity), grants (table and column level), index and constraint names, RLS, comment,
user triggers, extended statistics and the truncate guard.

Every test builds the demo schema (`public.orders`, `order_items`, `recent_orders`) plus
the extra objects of `_decorate` in its own database, migrates it with `run("swapped")`
and inspects the catalog and the behaviour of the new `public.orders`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from db_helpers import drop_owned
from psycopg import sql
from state_helpers import reached, stored

from tablemig.config.spec import TableSpec
from tablemig.lifecycle.driver import Migration
from tablemig.sandbox.demo_data import create_demo_data

ROWS = 20_000
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
COLUMNS = ("id", "customer_id", "status", "amount", "created_date", "updated_at", "note")


@dataclass
class Roles:
    reporting: str
    writer: str
    auditor: str
    support: str

    @property
    def all(self) -> list[str]:
        return [self.reporting, self.writer, self.auditor, self.support]


@pytest.fixture
def roles(fresh_db: Any, active: psycopg.Connection[Any]) -> Iterator[Roles]:
    """Roles are cluster-wide: unique names per test, dropped again afterwards."""
    tag = uuid.uuid4().hex[:8]
    r = Roles(f"reporting_{tag}", f"app_writer_{tag}", f"auditor_{tag}", f"support_{tag}")
    for name in r.all:
        active.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
    try:
        yield r
    finally:
        drop_owned(fresh_db.connect, sql.SQL(", ").join(map(sql.Identifier, r.all)))
        for name in r.all:
            active.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _decorate(conn: psycopg.Connection[Any], r: Roles) -> None:
    """Everything the swap has to carry over, on top of the demo schema."""
    ids = {"reporting": sql.Identifier(r.reporting), "writer": sql.Identifier(r.writer),
           "auditor": sql.Identifier(r.auditor), "support": sql.Identifier(r.support)}
    stmts = [
        "COMMENT ON TABLE public.orders IS 'customer orders: tablemig swap test'",
        "GRANT SELECT ON public.orders TO {reporting}",
        "GRANT INSERT, UPDATE ON public.orders TO {writer}",
        "GRANT SELECT, DELETE ON public.orders TO {auditor} WITH GRANT OPTION",
        "GRANT SELECT (id, status), UPDATE (note) ON public.orders TO {support}",
        "GRANT SELECT ON public.recent_orders TO {reporting}",
        "ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY",
        "CREATE POLICY orders_reporting_read ON public.orders FOR SELECT TO {reporting}"
        " USING (status <> 'cancelled')",
        "CREATE POLICY orders_support_read ON public.orders FOR SELECT TO {support} USING (true)",
        "CREATE POLICY orders_writer_all ON public.orders AS PERMISSIVE FOR ALL TO {writer}"
        " USING (true) WITH CHECK (amount >= 0)",
        "CREATE FUNCTION public.touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS"
        " $$BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END$$",
        "CREATE TRIGGER orders_touch_updated_at BEFORE UPDATE ON public.orders FOR EACH ROW"
        " EXECUTE FUNCTION public.touch_updated_at()",
        "CREATE MATERIALIZED VIEW public.order_status_counts AS"
        " SELECT status, count(*) AS orders FROM public.orders GROUP BY status",
        "CREATE UNIQUE INDEX order_status_counts_status_idx ON public.order_status_counts (status)",
        "GRANT SELECT ON public.order_status_counts TO {reporting}",
        "CREATE STATISTICS public.orders_customer_status_stats (dependencies, ndistinct)"
        " ON customer_id, status FROM public.orders",
        "ANALYZE public.orders",
    ]
    with conn.transaction():
        for s in stmts:
            conn.execute(sql.SQL(s).format(**{k: v for k, v in ids.items() if "{" + k + "}" in s}))


def _spec() -> TableSpec:
    return TableSpec("public.orders", "created_date", retention=0.1, batch_size=2000)


def _mig(db: Any, spec: TableSpec | None = None) -> Migration:
    return Migration(db.dsn, spec or _spec(), progress=lambda p: None, lock_timeout="200ms",
                     swap_max_attempts=20)


# -- catalog readers ----------------------------------------------------------------------
def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row[0]


def _oid(conn: psycopg.Connection[Any], name: str) -> int | None:
    row = conn.execute("SELECT to_regclass(%s)::oid", (name,)).fetchone()
    return row[0] if row else None


def _indexdefs(conn: psycopg.Connection[Any], oid: int) -> dict[str, str]:
    rows = conn.execute("SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i"
                        " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s", (oid,))
    return dict(rows.fetchall())


def _constraints(conn: psycopg.Connection[Any], oid: int) -> dict[str, str]:
    rows = conn.execute("SELECT conname, contype::text FROM pg_constraint WHERE conrelid = %s", (oid,))
    return dict(rows.fetchall())


def _view_refs(conn: psycopg.Connection[Any], view: str) -> set[int]:
    """The tables a (materialized) view reads, by OID, as the catalog records them."""
    rows = conn.execute("""
        SELECT DISTINCT d.refobjid FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
         WHERE d.classid = 'pg_rewrite'::regclass AND r.ev_class = %s::regclass
           AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class""", (view,))
    return {r[0] for r in rows.fetchall()}


def _fk(conn: psycopg.Connection[Any]) -> tuple[int, bool]:
    row = conn.execute("SELECT confrelid::oid, convalidated FROM pg_constraint"
                       " WHERE conname = 'order_items_order_id_fkey'"
                       " AND conrelid = 'public.order_items'::regclass").fetchone()
    assert row is not None
    return row[0], row[1]


def _sequence_owner(conn: psycopg.Connection[Any], seq: str) -> list[tuple[int, str, str]]:
    rows = conn.execute("""
        SELECT d.refobjid::oid, a.attname::text, d.deptype::text FROM pg_depend d
          JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
         WHERE d.classid = 'pg_class'::regclass AND d.objid = %s::regclass
           AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')""", (seq,))
    return list(rows.fetchall())


def _privileges(conn: psycopg.Connection[Any], table: str, r: Roles) -> dict[tuple[str, str], bool]:
    out = {}
    for role in r.all:
        for priv in PRIVILEGES:
            for p in (priv, f"{priv} WITH GRANT OPTION"):
                out[(role, p)] = _one(conn, "SELECT has_table_privilege(%s, %s, %s)", (role, table, p))
    return out


def _column_privileges(conn: psycopg.Connection[Any], table: str, r: Roles) -> dict[tuple[str, str, str], bool]:
    out = {}
    for role in r.all:
        for col in COLUMNS:
            for priv in ("SELECT", "INSERT", "UPDATE", "REFERENCES"):
                out[(role, col, priv)] = _one(conn, "SELECT has_column_privilege(%s, %s, %s, %s)",
                                              (role, table, col, priv))
    return out


def _column_acl(conn: psycopg.Connection[Any], oid: int) -> set[tuple[str, str, str, bool]]:
    rows = conn.execute("""
        SELECT a.attname::text, pg_get_userbyid(x.grantee)::text, x.privilege_type, x.is_grantable
          FROM pg_attribute a, aclexplode(a.attacl) x
         WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped""", (oid,))
    return set(rows.fetchall())


def _table_acl(conn: psycopg.Connection[Any], oid: int) -> set[tuple[str, str, bool]]:
    rows = conn.execute("""
        SELECT CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee)::text END,
               x.privilege_type, x.is_grantable
          FROM pg_class c, aclexplode(c.relacl) x WHERE c.oid = %s""", (oid,))
    return set(rows.fetchall())


def _policies(conn: psycopg.Connection[Any], oid: int) -> set[tuple[Any, ...]]:
    rows = conn.execute("""
        SELECT polname::text, polpermissive, polcmd::text, pg_get_expr(polqual, polrelid),
               pg_get_expr(polwithcheck, polrelid),
               ARRAY(SELECT pg_get_userbyid(r)::text FROM unnest(polroles) r ORDER BY 1)
          FROM pg_policy WHERE polrelid = %s""", (oid,))
    return {tuple(tuple(v) if isinstance(v, list) else v for v in row) for row in rows.fetchall()}


def _triggers(conn: psycopg.Connection[Any], oid: int) -> dict[str, str]:
    rows = conn.execute("SELECT tgname::text, tgenabled::text FROM pg_trigger"
                        " WHERE tgrelid = %s AND NOT tgisinternal", (oid,))
    return dict(rows.fetchall())


def _statistics(conn: psycopg.Connection[Any], oid: int) -> dict[str, tuple[list[str], list[str]]]:
    rows = conn.execute("""
        SELECT s.stxname::text, s.stxkind::text[],
               ARRAY(SELECT a.attname::text FROM unnest(s.stxkeys) k
                       JOIN pg_attribute a ON a.attrelid = s.stxrelid AND a.attnum = k ORDER BY 1)
          FROM pg_statistic_ext s WHERE s.stxrelid = %s""", (oid,))
    return {name: (sorted(kinds), cols) for name, kinds, cols in rows.fetchall()}


@dataclass
class Before:
    oid: int
    rows: int
    max_id: int
    indexes: dict[str, str]
    constraints: dict[str, str]
    privileges: dict[tuple[str, str], bool]
    column_privileges: dict[tuple[str, str, str], bool]
    table_acl: set[tuple[str, str, bool]]
    column_acl: set[tuple[str, str, str, bool]]
    policies: set[tuple[Any, ...]]
    comment: str
    statistics: dict[str, tuple[list[str], list[str]]]
    mv_acl: set[tuple[str, str, bool]]


@dataclass
class After:
    before: Before
    live: int
    archive: int
    archive_name: str
    mig: Migration
    warnings: list[str]


def _snapshot(conn: psycopg.Connection[Any], r: Roles) -> Before:
    oid = _oid(conn, "public.orders")
    assert oid is not None
    return Before(oid, _one(conn, "SELECT count(*) FROM public.orders"),
                  _one(conn, "SELECT max(id) FROM public.orders"), _indexdefs(conn, oid),
                  _constraints(conn, oid), _privileges(conn, "public.orders", r),
                  _column_privileges(conn, "public.orders", r), _table_acl(conn, oid),
                  _column_acl(conn, oid), _policies(conn, oid),
                  _one(conn, "SELECT obj_description(%s, 'pg_class')", (oid,)),
                  _statistics(conn, oid), _table_acl(conn, _oid(conn, "public.order_status_counts") or 0))


@pytest.fixture
def migrated(fresh_db: Any, roles: Roles) -> Iterator[After]:
    """The demo schema plus `_decorate`, migrated with run("swapped")."""
    with fresh_db.connect() as conn:
        create_demo_data(conn, ROWS)
        _decorate(conn, roles)
        before = _snapshot(conn, roles)
    with _mig(fresh_db) as mig:
        warnings = mig.plan().warnings
        m = reached(mig.run("swapped"))
        assert m.state == "swapped"
        with fresh_db.connect() as conn:
            live = _oid(conn, "public.orders")
            archive = _oid(conn, f"public.{m.archive.name}")
            assert live is not None and archive is not None
        yield After(before, live, archive, m.archive.name, mig, warnings)


# -- tests --------------------------------------------------------------------------------
def test_the_live_table_is_a_new_table_and_the_archive_keeps_every_row(fresh_db: Any, migrated: After) -> None:
    b = migrated.before
    assert migrated.archive == b.oid and migrated.live != b.oid
    with fresh_db.connect() as conn:
        assert _one(conn, f"SELECT count(*) FROM public.{migrated.archive_name}") == b.rows == ROWS
        live_rows = _one(conn, "SELECT count(*) FROM public.orders")
        cutoff = stored(migrated.mig).cutoff.text
        assert live_rows == _one(conn, f"SELECT count(*) FROM public.{migrated.archive_name}"
                                       " WHERE created_date >= %s::timestamptz", (cutoff,))
        assert 0 < live_rows < ROWS
        assert _oid(conn, "public.orders_new") is None


def test_view_reads_the_live_table(fresh_db: Any, migrated: After) -> None:
    with fresh_db.connect() as conn:
        assert _view_refs(conn, "public.recent_orders") == {migrated.live}
        assert migrated.archive_name not in _one(conn, "SELECT pg_get_viewdef('public.recent_orders'::regclass)")
        # a row only the archive has (a recent date, so the view's filter would keep it)
        conn.execute(f"INSERT INTO public.{migrated.archive_name} (id, customer_id, status, amount,"
                     " created_date) VALUES (-1, 1, 'new', 1, now())")
        seen = _one(conn, "SELECT count(*) FROM public.recent_orders")
        expected = _one(conn, "SELECT count(*) FROM ONLY public.orders"
                              " WHERE created_date >= now() - interval '30 days'")
        assert seen == expected > 0
        assert _one(conn, "SELECT count(*) FROM public.recent_orders WHERE id = -1") == 0
        assert _one(conn, "SELECT count(*) FROM public.recent_orders r"
                          " WHERE NOT EXISTS (SELECT 1 FROM public.orders o WHERE o.id = r.id)") == 0


def test_incoming_foreign_key_points_at_the_live_table_validated_and_enforced(
        fresh_db: Any, migrated: After) -> None:
    with fresh_db.connect() as conn:
        confrelid, validated = _fk(conn)
        assert confrelid == migrated.live
        assert validated is True
        rec = stored(migrated.mig).swap_record
        assert rec.fk_validated == ["public.order_items.order_items_order_id_fkey"]
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO public.order_items (order_id, sku, quantity) VALUES (-42, 'x', 1)")
        # an order that exists only in the archive is not a valid parent any more
        old_id = _one(conn, f"SELECT min(id) FROM public.{migrated.archive_name}")
        assert _one(conn, "SELECT count(*) FROM public.orders WHERE id = %s", (old_id,)) == 0
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO public.order_items (order_id, sku, quantity) VALUES (%s, 'x', 1)",
                         (old_id,))
        parent = _one(conn, "SELECT order_id FROM public.order_items GROUP BY order_id"
                            " HAVING count(*) > 1 ORDER BY order_id LIMIT 1")
        conn.execute("DELETE FROM public.orders WHERE id = %s", (parent,))
        assert _one(conn, "SELECT count(*) FROM public.order_items WHERE order_id = %s", (parent,)) == 0
        # the mirror trigger deleted the archive's copy as well
        assert _one(conn, f"SELECT count(*) FROM public.{migrated.archive_name} WHERE id = %s", (parent,)) == 0


def test_serial_sequence_continues_and_is_owned_by_the_live_table(fresh_db: Any, migrated: After) -> None:
    with fresh_db.connect() as conn:
        assert _one(conn, "SELECT pg_get_serial_sequence('public.orders', 'id')") == "public.orders_id_seq"
        assert _sequence_owner(conn, "public.orders_id_seq") == [(migrated.live, "id", "a")]
        assert _one(conn, f"SELECT pg_get_serial_sequence('public.{migrated.archive_name}', 'id')") is None
        top = _one(conn, f"SELECT greatest((SELECT max(id) FROM public.orders),"
                         f" (SELECT max(id) FROM public.{migrated.archive_name}))")
        assert top == migrated.before.max_id
        new_id = _one(conn, "INSERT INTO public.orders (customer_id, status, amount, created_date)"
                            " VALUES (7, 'new', 9.99, now()) RETURNING id")
        assert new_id > top
        assert _one(conn, f"SELECT count(*) FROM public.{migrated.archive_name} WHERE id = %s", (new_id,)) == 1
        # dropping the archive later does not take the sequence with it
        with conn.transaction(force_rollback=True):
            conn.execute(f"DROP TABLE public.{migrated.archive_name}")
            assert _oid(conn, "public.orders_id_seq") is not None
            assert _one(conn, "SELECT nextval('public.orders_id_seq')") > new_id


def test_index_and_constraint_names_go_to_the_live_table(fresh_db: Any, migrated: After) -> None:
    b = migrated.before
    with fresh_db.connect() as conn:
        live = _indexdefs(conn, migrated.live)
        archive = _indexdefs(conn, migrated.archive)
        assert set(live) == {"orders_pkey", "orders_customer_id_idx", "orders_created_date_idx"} == set(b.indexes)
        # same name, same table name: the definitions are identical to the originals
        assert live == b.indexes
        assert not set(archive) & set(b.indexes)
        assert len(archive) == len(b.indexes)
        # the archive's are the originals under other names on the archive table
        renamed = {d.replace(f"INDEX {n} ON", "INDEX ? ON")
                   .replace(f"public.{migrated.archive_name} ", "public.orders ") for n, d in archive.items()}
        assert renamed == {d.replace(f"INDEX {n} ON", "INDEX ? ON") for n, d in b.indexes.items()}
        assert _constraints(conn, migrated.live) == {"orders_pkey": "p"} == b.constraints
        arch = _constraints(conn, migrated.archive)
        assert list(arch.values()) == ["p"] and "orders_pkey" not in arch
        # the constraint is backed by the live table's own index
        assert _one(conn, "SELECT conindid::oid = 'public.orders_pkey'::regclass AND conrelid::oid = %s"
                          " FROM pg_constraint WHERE conname = 'orders_pkey'", (migrated.live,))


def test_grants_with_grant_option_are_carried(fresh_db: Any, migrated: After, roles: Roles) -> None:
    b = migrated.before
    with fresh_db.connect() as conn:
        assert _privileges(conn, "public.orders", roles) == b.privileges
        assert _table_acl(conn, migrated.live) == b.table_acl
        assert _one(conn, "SELECT has_table_privilege(%s, 'public.orders', 'SELECT WITH GRANT OPTION')",
                    (roles.auditor,))
        assert _one(conn, "SELECT has_table_privilege(%s, 'public.orders', 'DELETE WITH GRANT OPTION')",
                    (roles.auditor,))
        assert not _one(conn, "SELECT has_table_privilege(%s, 'public.orders', 'SELECT WITH GRANT OPTION')",
                        (roles.reporting,))
        assert _one(conn, "SELECT has_table_privilege(%s, 'public.orders', 'INSERT')", (roles.writer,))
        assert not _one(conn, "SELECT has_table_privilege(%s, 'public.orders', 'DELETE')", (roles.writer,))
        # the view's own grant is untouched by CREATE OR REPLACE VIEW
        assert _one(conn, "SELECT has_table_privilege(%s, 'public.recent_orders', 'SELECT')", (roles.reporting,))


def test_column_grants_are_carried(fresh_db: Any, migrated: After, roles: Roles) -> None:
    b = migrated.before
    assert {(c, p) for c, g, p, _ in b.column_acl if g == roles.support} == {
        ("id", "SELECT"), ("status", "SELECT"), ("note", "UPDATE")}
    with fresh_db.connect() as conn:
        assert _column_acl(conn, migrated.live) == b.column_acl
        assert _column_privileges(conn, "public.orders", roles) == b.column_privileges
        assert _one(conn, "SELECT has_column_privilege(%s, 'public.orders', 'status', 'SELECT')", (roles.support,))
        assert not _one(conn, "SELECT has_column_privilege(%s, 'public.orders', 'amount', 'SELECT')",
                        (roles.support,))
        # and they work: support reads the granted columns of the live table only
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(roles.support)))
            assert _one(conn, "SELECT count(*) FROM (SELECT id, status FROM public.orders) s") > 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(roles.support)))
            conn.execute("SELECT amount FROM public.orders LIMIT 1")


def test_row_level_security_and_policies_are_carried(fresh_db: Any, migrated: After, roles: Roles) -> None:
    b = migrated.before
    with fresh_db.connect() as conn:
        enabled, forced = conn.execute("SELECT relrowsecurity, relforcerowsecurity FROM pg_class"
                                       " WHERE oid = %s", (migrated.live,)).fetchone()
        assert enabled is True and forced is False
        pols = _policies(conn, migrated.live)
        assert pols == b.policies
        assert {p[0] for p in pols} == {"orders_reporting_read", "orders_support_read", "orders_writer_all"}
        read = next(p for p in pols if p[0] == "orders_reporting_read")
        assert read[2] == "r" and read[3] == "(status <> 'cancelled'::text)"
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(roles.reporting)))
            assert _one(conn, "SELECT count(*) FROM public.orders WHERE status = 'cancelled'") == 0
            assert _one(conn, "SELECT count(*) FROM public.orders") > 0
        assert _one(conn, "SELECT count(*) FROM public.orders WHERE status = 'cancelled'") > 0


def test_comment_and_user_trigger_are_carried(fresh_db: Any, migrated: After) -> None:
    with fresh_db.connect() as conn:
        assert _one(conn, "SELECT obj_description(%s, 'pg_class')", (migrated.live,)) == migrated.before.comment
        assert "tablemig" in _one(conn, "SELECT obj_description(%s, 'pg_class')", (migrated.archive,))
        live = _triggers(conn, migrated.live)
        assert live["orders_touch_updated_at"] == "O"
        assert _triggers(conn, migrated.archive) == {"orders_touch_updated_at": "D"}
        assert stored(migrated.mig).swap_record.disabled_triggers == ["orders_touch_updated_at"]
        ident = _one(conn, "SELECT max(id) FROM public.orders")
        new_stamp, fresh = conn.execute(
            "UPDATE public.orders SET note = 'touched', updated_at = '2000-01-01' WHERE id = %s"
            " RETURNING updated_at, updated_at > now() - interval '1 minute'", (ident,)).fetchone()
        assert fresh is True  # the trigger overwrote the value the statement set
        # the mirror copies the row as the trigger left it; the archive's copy of the trigger does not run
        assert _one(conn, f"SELECT updated_at FROM public.{migrated.archive_name} WHERE id = %s",
                    (ident,)) == new_stamp


def test_materialized_view_is_rebuilt_over_the_live_table(fresh_db: Any, migrated: After, roles: Roles) -> None:
    with fresh_db.connect() as conn:
        assert _view_refs(conn, "public.order_status_counts") == {migrated.live}
        assert _one(conn, "SELECT relispopulated FROM pg_class WHERE oid = 'public.order_status_counts'::regclass")
        counts = dict(conn.execute("SELECT status, orders FROM public.order_status_counts").fetchall())
        assert counts == dict(conn.execute("SELECT status, count(*) FROM public.orders GROUP BY status").fetchall())
        assert sum(counts.values()) < ROWS
        mv = _oid(conn, "public.order_status_counts")
        assert mv is not None
        assert set(_indexdefs(conn, mv)) == {"order_status_counts_status_idx"}
        assert _table_acl(conn, mv) == migrated.before.mv_acl
        assert _one(conn, "SELECT has_table_privilege(%s, 'public.order_status_counts', 'SELECT')",
                    (roles.reporting,))
        conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY public.order_status_counts")


def test_extended_statistics_follow_under_a_generated_name(fresh_db: Any, migrated: After) -> None:
    """LIKE ... INCLUDING STATISTICS copies the object to the new table under a name of
    PostgreSQL's choosing; the original name stays with the archive (the planner warns)."""
    b = migrated.before
    assert b.statistics == {"orders_customer_status_stats": (["d", "f"], ["customer_id", "status"])}
    with fresh_db.connect() as conn:
        live = _statistics(conn, migrated.live)
        assert list(live.values()) == [(["d", "f"], ["customer_id", "status"])]
        assert "orders_customer_status_stats" not in live
        assert _statistics(conn, migrated.archive) == b.statistics
    assert any("extended statistics" in w and "orders_customer_status_stats" in w for w in migrated.warnings)


def test_truncate_guard_until_prune(fresh_db: Any, migrated: After) -> None:
    with fresh_db.connect() as conn:
        names = set(_triggers(conn, migrated.archive))
        assert not {n for n in names if n.startswith("tablemig_")}
        assert {"tablemig_mirror", "tablemig_no_truncate"} <= set(_triggers(conn, migrated.live))
        with pytest.raises(psycopg.errors.ObjectInUse, match="tablemig"):
            conn.execute("TRUNCATE public.orders CASCADE")
        assert _one(conn, "SELECT count(*) FROM public.orders") > 0
    assert migrated.mig.prune() > 0
    with fresh_db.connect() as conn:
        assert not {n for n in _triggers(conn, migrated.live) if n.startswith("tablemig_")}
        conn.execute("TRUNCATE public.orders CASCADE")
        assert _one(conn, "SELECT count(*) FROM public.orders") == 0
        # history stays in the archive
        assert _one(conn, f"SELECT count(*) FROM public.{migrated.archive_name}") > 0


def test_rollback_after_swap_restores_everything_on_the_original(
        fresh_db: Any, migrated: After, roles: Roles) -> None:
    b = migrated.before
    with fresh_db.connect() as conn:
        written = _one(conn, "INSERT INTO public.orders (customer_id, status, amount, created_date)"
                             " VALUES (8, 'paid', 1.5, now()) RETURNING id")
    assert migrated.mig.rollback() == "swapped back"
    assert stored(migrated.mig).state == "rolled_back"
    with fresh_db.connect() as conn:
        assert _oid(conn, "public.orders") == b.oid
        assert _oid(conn, f"public.{migrated.archive_name}") is None
        assert _oid(conn, "public.orders_new") is None
        assert _one(conn, "SELECT count(*) FROM public.orders") == ROWS + 1
        assert _one(conn, "SELECT count(*) FROM public.orders WHERE id = %s", (written,)) == 1
        # view and materialized view read the original again
        assert _view_refs(conn, "public.recent_orders") == {b.oid}
        assert _view_refs(conn, "public.order_status_counts") == {b.oid}
        assert _one(conn, "SELECT sum(orders) FROM public.order_status_counts") == ROWS + 1
        assert set(_indexdefs(conn, _oid(conn, "public.order_status_counts") or 0)) == {
            "order_status_counts_status_idx"}
        # the foreign key points at the original and is validated
        assert _fk(conn) == (b.oid, True)
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO public.order_items (order_id, sku, quantity) VALUES (-42, 'x', 1)")
        # index and constraint names are the originals again
        assert _indexdefs(conn, b.oid) == b.indexes
        assert _constraints(conn, b.oid) == b.constraints
        # the sequence belongs to the original and continues
        assert _sequence_owner(conn, "public.orders_id_seq") == [(b.oid, "id", "a")]
        assert _one(conn, "INSERT INTO public.orders (customer_id, status, amount, created_date)"
                          " VALUES (9, 'new', 2, now()) RETURNING id") > written
        # triggers: the user trigger runs again, tablemig's are gone
        assert _triggers(conn, b.oid) == {"orders_touch_updated_at": "O"}
        # grants, column grants, RLS, comment, statistics
        assert _privileges(conn, "public.orders", roles) == b.privileges
        assert _column_privileges(conn, "public.orders", roles) == b.column_privileges
        assert _column_acl(conn, b.oid) == b.column_acl
        assert _policies(conn, b.oid) == b.policies
        assert _one(conn, "SELECT relrowsecurity FROM pg_class WHERE oid = %s", (b.oid,))
        assert _one(conn, "SELECT obj_description(%s, 'pg_class')", (b.oid,)) == b.comment
        assert _statistics(conn, b.oid) == b.statistics


# -- identity --------------------------------------------------------------------------------
LEDGER_ROWS = 5_000


def test_identity_table_generated_always(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        conn.execute("CREATE TABLE public.ledger (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                     " booked date NOT NULL, amount int)")
        conn.execute("INSERT INTO public.ledger (booked, amount) SELECT DATE '2024-01-01' + (g %% 730), g"
                     " FROM generate_series(1, %s) g", (LEDGER_ROWS,))
        conn.execute("CREATE INDEX ledger_booked_idx ON public.ledger (booked)")
        # ids were handed out beyond the rows that exist: the sequence, not max(id), is the bound
        conn.execute("DELETE FROM public.ledger WHERE id > %s", (LEDGER_ROWS - 10,))
        old_oid = _oid(conn, "public.ledger")
        old_seq = _one(conn, "SELECT pg_get_serial_sequence('public.ledger', 'id')")
    spec = TableSpec("public.ledger", "booked", retention=0.1, batch_size=1000)
    with _mig(fresh_db, spec) as mig:
        m = reached(mig.run("swapped"))
        assert m.state == "swapped"
        archive = m.archive.name
        with fresh_db.connect() as conn:
            live = _oid(conn, "public.ledger")
            assert live != old_oid and _oid(conn, f"public.{archive}") == old_oid
            assert _one(conn, f"SELECT count(*) FROM public.{archive}") == LEDGER_ROWS - 10
            kept = _one(conn, "SELECT count(*) FROM public.ledger")
            assert kept == _one(conn, f"SELECT count(*) FROM public.{archive} WHERE booked >= %s::date",
                                (m.cutoff.text,))
            assert _one(conn, "SELECT attidentity::text FROM pg_attribute"
                              " WHERE attrelid = 'public.ledger'::regclass AND attname = 'id'") == "a"
            seq = _one(conn, "SELECT pg_get_serial_sequence('public.ledger', 'id')")
            # LIKE ... INCLUDING IDENTITY made the live table its own sequence, named after
            # the new table; it continues where the original's stopped
            assert seq == "public.ledger_new_id_seq" != old_seq
            assert _sequence_owner(conn, seq) == [(live, "id", "i")]
            ids = [_one(conn, "INSERT INTO public.ledger (booked, amount) VALUES (current_date, 1) RETURNING id")
                   for _ in range(3)]
            assert min(ids) > LEDGER_ROWS
            assert ids == sorted(ids)
            # mirrored to the archive with OVERRIDING SYSTEM VALUE
            assert _one(conn, f"SELECT count(*) FROM public.{archive} WHERE id = ANY(%s)", (ids,)) == 3
            with pytest.raises(psycopg.errors.GeneratedAlways):
                conn.execute("INSERT INTO public.ledger (id, booked, amount) VALUES (999999, current_date, 1)")
        assert mig.rollback() == "swapped back"
        with fresh_db.connect() as conn:
            assert _oid(conn, "public.ledger") == old_oid
            assert _one(conn, "SELECT count(*) FROM public.ledger WHERE id = ANY(%s)", (ids,)) == 3
            after = _one(conn, "INSERT INTO public.ledger (booked, amount) VALUES (current_date, 2) RETURNING id")
            assert after > max(ids)
