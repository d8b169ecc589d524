"""Small tables, one per property a migration must carry over (or refuse), for the fidelity
tests of the command line and of generated plans (tests/test_fidelity.py).

Each case lives in its own schema: the table `t` (40 rows, one a day from 2024-01-02, the
cutoff keeps the 20 newest), an `audit` table for triggers and rules, and what the case is
about. Its `check` writes to the table the way an application relying on that property
would, and asserts the property's effect; it runs on the original, on the live table after
the swap and on the original again after the rollback, and must pass each time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

CUTOFF = "2024-01-21"
LIVE_DATE = "2024-03-01"

BASE = """
CREATE TABLE t (id int NOT NULL, d date NOT NULL, v int NOT NULL, code text NOT NULL);
INSERT INTO t SELECT g, date '2024-01-01' + g, g, 'c' || g FROM generate_series(1, 40) g;
CREATE TABLE audit (tbl text, op text);
CREATE FUNCTION aud() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS
  $$BEGIN INSERT INTO audit VALUES (TG_TABLE_NAME, TG_OP); RETURN NULL; END$$;
CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN RAISE EXCEPTION 'boom on %', TG_TABLE_NAME; END$$;
"""
PK = "ALTER TABLE t ADD CONSTRAINT t_pkey PRIMARY KEY (id);"

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Case:
    name: str
    setup: str
    check: Callable[[Conn], None]
    refused: str | None = None  # text the refusal must contain

    @property
    def schema(self) -> str:
        return f"fid_{self.name}"

    @property
    def table(self) -> str:
        return f"{self.schema}.t"


def use(conn: Conn, case: Case) -> None:
    conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(case.schema)))


def create(conn: Conn, case: Case) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(case.schema)))
    use(conn, case)
    conn.execute(BASE + case.setup)


def _one(conn: Conn, query: sql.SQL | sql.Composed | str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _insert(conn: Conn) -> int:
    """A new live row; returns its id."""
    new = int(_one(conn, "SELECT max(id) + 1 FROM t"))
    conn.execute("INSERT INTO t VALUES (%s, %s, %s, %s)", (new, LIVE_DATE, new, f"c{new}"))
    return new


def _audit(conn: Conn) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in conn.execute("SELECT tbl, op FROM audit ORDER BY 1, 2").fetchall()]


def _comments(conn: Conn) -> dict[str, str | None]:
    return dict(conn.execute("""
        SELECT 'table', obj_description('t'::regclass, 'pg_class')
        UNION ALL SELECT 'column', col_description('t'::regclass, 3)
        UNION ALL SELECT 'index', obj_description('t_code_idx'::regclass, 'pg_class')
        UNION ALL SELECT 'pk', obj_description((SELECT oid FROM pg_constraint WHERE conrelid = 't'::regclass
                                                 AND conname = 't_pkey'), 'pg_constraint')
        UNION ALL SELECT 'check', obj_description((SELECT oid FROM pg_constraint WHERE conrelid = 't'::regclass
                                                    AND conname = 't_v_check'), 'pg_constraint')
        UNION ALL SELECT 'trigger', obj_description((SELECT oid FROM pg_trigger WHERE tgrelid = 't'::regclass
                                                      AND tgname = 'aud'), 'pg_trigger')
        UNION ALL SELECT 'rule', obj_description((SELECT oid FROM pg_rewrite WHERE ev_class = 't'::regclass
                                                   AND rulename = 'touch'), 'pg_rewrite')""").fetchall())


# -- checks: the application's view of each property ------------------------------------------
def deferrable_pk(conn: Conn) -> None:
    assert conn.execute("UPDATE t SET v = v + 1 WHERE id = 30").rowcount == 1  # the mirror's upsert failed here
    top = int(_one(conn, "SELECT max(id) FROM t"))
    # transient duplicates within one statement: only a DEFERRABLE key allows this
    assert conn.execute("UPDATE t SET id = id + 1 WHERE id > %s", (top - 3,)).rowcount == 3
    new = top + 2
    with conn.transaction():
        conn.execute("SET CONSTRAINTS ALL DEFERRED")
        conn.execute("INSERT INTO t VALUES (30, %s, -1, 'dup')", (LIVE_DATE,))  # a duplicate until commit
        conn.execute("UPDATE t SET id = %s WHERE v = -1", (new,))
    assert _one(conn, "SELECT count(*) FROM t WHERE id IN (30, %s)", (new,)) == 2
    conn.execute("UPDATE t SET v = %s WHERE id = %s", (new, new))
    with conn.transaction(force_rollback=True):
        try:
            with conn.transaction():
                conn.execute("SET CONSTRAINTS ALL DEFERRED")
                conn.execute("INSERT INTO t VALUES (30, %s, 0, 'dup')", (LIVE_DATE,))
                conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # checks now: the key still holds
            raise AssertionError("a duplicate key was accepted")
        except psycopg.errors.UniqueViolation:
            pass


def deferrable_unique(conn: Conn) -> None:
    a, b = (str(_one(conn, "SELECT code FROM t WHERE id = %s", (i,))) for i in (30, 31))
    with conn.transaction():  # INITIALLY DEFERRED: a duplicate code until commit
        conn.execute("UPDATE t SET code = %s WHERE id = 30", (b,))
        conn.execute("UPDATE t SET code = %s WHERE id = 31", (a,))
    assert _one(conn, "SELECT code FROM t WHERE id = 30") == b
    with conn.transaction(force_rollback=True):
        conn.execute("UPDATE t SET code = %s WHERE id = 30", (a,))
        try:
            with conn.transaction():
                conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            raise AssertionError("a duplicate code was accepted")
        except psycopg.errors.UniqueViolation:
            pass


def deferrable_unique_key(conn: Conn) -> None:
    assert conn.execute("UPDATE t SET v = v + 1 WHERE id = 30").rowcount == 1
    c31 = str(_one(conn, "SELECT code FROM t WHERE id = 31"))
    with conn.transaction():  # the two rows exchange their keys, one statement at a time
        conn.execute("UPDATE t SET id = 31 WHERE id = 30")
        conn.execute("UPDATE t SET id = 30 WHERE id = 31 AND code = %s", (c31,))
    assert _one(conn, "SELECT code FROM t WHERE id = 30") == c31
    _insert(conn)


def disabled_trigger(conn: Conn) -> None:
    _insert(conn)  # the disabled trigger would raise
    assert conn.execute("UPDATE t SET v = v + 1 WHERE id = 30").rowcount == 1


def _as_replica(conn: Conn, write: Callable[[], None]) -> str | None:
    """Run `write` as a logical-replication apply worker would (session_replication_role
    replica), rolled back; returns the error it raised, if any."""
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL session_replication_role = replica")
        try:
            with conn.transaction():
                write()
        except psycopg.errors.RaiseException as exc:
            return str(exc.diag.message_primary)
    return None


def replica_trigger(conn: Conn) -> None:
    _insert(conn)  # a replica trigger does not fire for the application

    def write() -> None:
        _insert(conn)

    assert _as_replica(conn, write) == "boom on t"


def always_trigger(conn: Conn) -> None:
    conn.execute("DELETE FROM audit")
    _insert(conn)
    assert _audit(conn) == [("t", "INSERT")]  # once: not again on the archive

    def write() -> None:
        _insert(conn)
        assert _audit(conn) == [("t", "INSERT"), ("t", "INSERT")]  # fires for replication too

    assert _as_replica(conn, write) is None
    assert _audit(conn) == [("t", "INSERT")]


def tool_prefix_trigger(conn: Conn) -> None:
    conn.execute("DELETE FROM audit")
    _insert(conn)
    assert _audit(conn) == [("t", "INSERT")]


def reserved_trigger_name(conn: Conn) -> None:
    conn.execute("DELETE FROM audit")
    _insert(conn)
    assert _audit(conn) == [("t", "INSERT")]


def rule_instead_nothing(conn: Conn) -> None:
    assert conn.execute("DELETE FROM t WHERE id = 30").rowcount == 0
    assert _one(conn, "SELECT count(*) FROM t WHERE id = 30") == 1
    assert conn.execute("UPDATE t SET v = v + 1 WHERE id = 30").rowcount == 1


def rule_also(conn: Conn) -> None:
    conn.execute("DELETE FROM audit")
    assert conn.execute("UPDATE t SET v = v + 1 WHERE id = 30").rowcount == 1
    assert _audit(conn) == [("rule", "UPDATE")]  # once: not again on the archive


def publication_filter(conn: Conn) -> None:
    assert conn.execute("UPDATE t SET v = v + 1 WHERE id = 30").rowcount == 1
    row = conn.execute("SELECT attnames, rowfilter FROM pg_publication_tables WHERE pubname = 'fid_filtered'"
                       " AND schemaname = current_schema() AND tablename = 't'").fetchone()
    assert row == (["id", "d", "v"], "((id % 2) = 0)"), row


def _updates_and_deletes(conn: Conn) -> None:
    # a published table needs a replica identity for both
    assert conn.execute("UPDATE t SET v = v + 1 WHERE id = 30").rowcount == 1
    new = _insert(conn)
    assert conn.execute("DELETE FROM t WHERE id = %s", (new,)).rowcount == 1


def replica_identity_nothing(conn: Conn) -> None:
    _insert(conn)  # its publication publishes inserts only
    assert _one(conn, "SELECT relreplident FROM pg_class WHERE oid = 't'::regclass") == "n"


def statistics(conn: Conn) -> None:
    conn.execute("ANALYZE t")
    got = conn.execute("SELECT attname, nullif(attstattarget, -1), attoptions FROM pg_attribute"
                       " WHERE attrelid = 't'::regclass AND attname IN ('v', 'code') ORDER BY 1").fetchall()
    assert got == [("code", None, ["n_distinct=-0.5"]), ("v", 1000, None)], got


def self_reference(conn: Conn) -> None:
    new = _insert(conn)
    conn.execute("UPDATE t SET parent = %s WHERE id = 40", (new,))
    with conn.transaction(force_rollback=True):
        try:
            with conn.transaction():
                conn.execute("UPDATE t SET parent = -5 WHERE id = 40")
            raise AssertionError("a reference to a missing row was accepted")
        except psycopg.errors.ForeignKeyViolation:
            pass
    assert _one(conn, "SELECT obj_description(oid, 'pg_constraint') FROM pg_constraint"
                      " WHERE conrelid = 't'::regclass AND conname = 't_parent_fkey'") == "the parent"


def identity_changed(conn: Conn) -> None:
    """A GENERATED ALWAYS identity value drawn again (an UPDATE may only set it to DEFAULT):
    the archive's copy must follow (the test compares it after the swap)."""
    was = _one(conn, "SELECT n FROM t WHERE id = 30")
    assert _one(conn, "UPDATE t SET n = DEFAULT WHERE id = 30 RETURNING n") != was


def cluster_on(conn: Conn) -> None:
    conn.execute("CLUSTER t")  # on the index marked CLUSTER ON: an error without one


def comments(conn: Conn) -> None:
    _insert(conn)
    assert _comments(conn) == {"table": "the table", "column": "the value", "index": "by code",
                               "pk": "the key", "check": "never far below zero", "trigger": "audits",
                               "rule": "a rule"}


def view_comments(conn: Conn) -> None:
    got = conn.execute("SELECT obj_description('recent'::regclass, 'pg_class'),"
                       " obj_description('totals'::regclass, 'pg_class'), col_description('totals'::regclass, 1),"
                       " col_description('recent'::regclass, 2)").fetchone()
    assert got == ("the recent rows", "totals by code", "the code", "the value"), got
    assert _one(conn, "SELECT count(*) FROM recent") > 0


CASES = [
    Case("deferrable_pk", "ALTER TABLE t ADD CONSTRAINT t_pkey PRIMARY KEY (id) DEFERRABLE INITIALLY IMMEDIATE;",
         deferrable_pk),
    Case("deferrable_unique", PK + "ALTER TABLE t ADD CONSTRAINT t_code_key UNIQUE (code)"
                                   " DEFERRABLE INITIALLY DEFERRED;", deferrable_unique),
    # a column named x: the triggers' row matching must not take it for their alias x
    Case("deferrable_unique_key", "ALTER TABLE t ADD CONSTRAINT t_id_key UNIQUE (id) DEFERRABLE INITIALLY DEFERRED;"
                                  " ALTER TABLE t ADD COLUMN x text NOT NULL DEFAULT 'x';", deferrable_unique_key),
    Case("disabled_trigger", PK + "CREATE TRIGGER boom BEFORE INSERT OR UPDATE ON t FOR EACH ROW"
                                  " EXECUTE FUNCTION boom(); ALTER TABLE t DISABLE TRIGGER boom;", disabled_trigger),
    Case("replica_trigger", PK + "CREATE TRIGGER boom BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION boom();"
                                 " ALTER TABLE t ENABLE REPLICA TRIGGER boom;", replica_trigger),
    Case("always_trigger", PK + "CREATE TRIGGER aud AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION aud();"
                                " ALTER TABLE t ENABLE ALWAYS TRIGGER aud;", always_trigger),
    Case("tool_prefix_trigger", PK + "CREATE TRIGGER tablemig_audit AFTER INSERT ON t FOR EACH ROW"
                                     " EXECUTE FUNCTION aud();", tool_prefix_trigger),
    Case("reserved_trigger_name", PK + "CREATE TRIGGER tablemig_capture AFTER INSERT ON t FOR EACH ROW"
                                       " EXECUTE FUNCTION aud();", reserved_trigger_name,
         refused="trigger tablemig_capture on fid_reserved_trigger_name.t has a name tablemig uses"),
    Case("rule_instead_nothing", PK + "CREATE RULE keep AS ON DELETE TO t DO INSTEAD NOTHING;",
         rule_instead_nothing),
    Case("rule_also", PK + "CREATE RULE log_update AS ON UPDATE TO t DO ALSO INSERT INTO audit"
                           " VALUES ('rule', 'UPDATE');", rule_also),
    Case("publication_filter", PK + "CREATE PUBLICATION fid_filtered FOR TABLE t (id, d, v) WHERE (id % 2 = 0);",
         publication_filter),
    Case("replica_identity_index", "CREATE UNIQUE INDEX t_id_idx ON t (id);"
                                   " ALTER TABLE t REPLICA IDENTITY USING INDEX t_id_idx;"
                                   " CREATE PUBLICATION fid_ri_index FOR TABLE t;", _updates_and_deletes),
    Case("replica_identity_full", PK + "ALTER TABLE t REPLICA IDENTITY FULL;"
                                       " CREATE PUBLICATION fid_ri_full FOR TABLE t;", _updates_and_deletes),
    Case("replica_identity_nothing", PK + "ALTER TABLE t REPLICA IDENTITY NOTHING;"
                                          " CREATE PUBLICATION fid_ri_nothing FOR TABLE t WITH (publish = 'insert');",
         replica_identity_nothing),
    Case("statistics", PK + "ALTER TABLE t ALTER COLUMN v SET STATISTICS 1000;"
                            " ALTER TABLE t ALTER COLUMN code SET (n_distinct = -0.5);", statistics),
    # re-created on the live table in the swap, with its comment (the inventory compares it)
    Case("self_reference", PK + "ALTER TABLE t ADD COLUMN parent int REFERENCES t (id);"
                                " UPDATE t SET parent = id - 1 WHERE id > 30;"
                                " COMMENT ON CONSTRAINT t_parent_fkey ON t IS 'the parent';", self_reference),
    Case("identity_changed", PK + "ALTER TABLE t ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY;",
         identity_changed),
    Case("cluster_on", PK + "CREATE INDEX t_d_idx ON t (d); ALTER TABLE t CLUSTER ON t_d_idx;", cluster_on),
    Case("comments", PK + """
        ALTER TABLE t ADD CONSTRAINT t_v_check CHECK (v > -100);
        CREATE INDEX t_code_idx ON t (code);
        CREATE TRIGGER aud AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION aud();
        CREATE RULE touch AS ON UPDATE TO t DO ALSO NOTIFY fid_touched;
        COMMENT ON TABLE t IS 'the table';
        COMMENT ON COLUMN t.v IS 'the value';
        COMMENT ON INDEX t_code_idx IS 'by code';
        COMMENT ON CONSTRAINT t_pkey ON t IS 'the key';
        COMMENT ON CONSTRAINT t_v_check ON t IS 'never far below zero';
        COMMENT ON TRIGGER aud ON t IS 'audits';
        COMMENT ON RULE touch ON t IS 'a rule';""", comments),
    Case("view_comments", PK + """
        CREATE VIEW recent AS SELECT id, v FROM t WHERE v > 0;
        COMMENT ON VIEW recent IS 'the recent rows';
        COMMENT ON COLUMN recent.v IS 'the value';
        CREATE MATERIALIZED VIEW totals AS SELECT code, sum(v) AS total FROM t GROUP BY code;
        COMMENT ON MATERIALIZED VIEW totals IS 'totals by code';
        COMMENT ON COLUMN totals.code IS 'the code';""", view_comments),
]
BY_NAME = {c.name: c for c in CASES}


def mirror_holds(conn: Conn, archive: str) -> int:
    """Live rows the archive does not hold exactly (the mirror trigger keeps it complete)."""
    return int(_one(conn, sql.SQL("SELECT count(*) FROM t WHERE NOT EXISTS"
                                  " (SELECT 1 FROM {} a WHERE a::text = t::text)").format(sql.Identifier(archive))))
