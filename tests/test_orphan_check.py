"""The orphan check of the swap step (tablemig.lifecycle.families), repeated under the swap's lock.

Deterministic: a session holds a lock on the table, so the swap's attempts to lock it wait
and retry; once one is seen waiting (after the check without lock), a write that leaves a
row without the row it references is committed, and the holder lets go. The swap then gets
its lock, finds the orphan and rolls back: nothing changed, the foreign key still valid,
the error names the row and says how to go on; removing the orphan and rerunning swaps.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import psycopg
import pytest
from site_helpers import waiting_for_the_swap
from snapshots import snapshot

from tablemig.config.spec import TableSpec
from tablemig.errors import TablemigError
from tablemig.lifecycle.driver import Migration

SETUP = """
CREATE TABLE t (id bigint PRIMARY KEY, d date NOT NULL, parent_id bigint REFERENCES t (id));
INSERT INTO t SELECT g, date '2024-01-01' + (g - 1), NULL FROM generate_series(1, 200) g;
CREATE TABLE c (id bigint PRIMARY KEY, t_id bigint NOT NULL REFERENCES t (id));
CREATE INDEX c_t_id ON c (t_id);
INSERT INTO c SELECT g, g FROM generate_series(160, 200) g;
"""
# the cutoff keeps t.id >= 153; each write below leaves a row referencing an archived one
WRITES = {
    "child_row": ("INSERT INTO c VALUES (1000, 5)", "DELETE FROM c WHERE id = 1000", "public.c.c_t_id_fkey: (5)"),
    "parent_dated_back": ("UPDATE t SET d = date '2024-01-02' WHERE id = 170",
                          "UPDATE t SET d = date '2024-06-18' WHERE id = 170", "public.c.c_t_id_fkey: (170)"),
    "self_reference": ("INSERT INTO t VALUES (1000, date '2024-12-01', 5)", "DELETE FROM t WHERE id = 1000",
                       "public.t.t_parent_id_fkey: (5)"),
}


def tablemig(*args: str, wait: bool = True) -> Any:
    cmd = [sys.executable, "-m", "tablemig.cli.main", *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def _spec(db: Any) -> list[str]:
    return ["--dsn", db.dsn, "--table", "public.t", "--date-column", "d", "--cutoff", "2024-06-01"]


def _catalog(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """The catalog snapshot, but for the audit log's sequence (the failure is logged)."""
    return [r for r in snapshot(conn)["catalog"] if "migration_log_log_id_seq" not in str(r[1])]


def _fk_state(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT conrelid::regclass::text, conname, confrelid::regclass::text, convalidated"
                        " FROM pg_constraint WHERE contype = 'f' ORDER BY 1, 2").fetchall()


@pytest.mark.parametrize("kind", list(WRITES))
def test_an_orphan_written_while_the_swap_waits_rolls_the_swap_back(fresh_db: Any, kind: str) -> None:
    write, undo, named = WRITES[kind]
    with fresh_db.connect() as conn:
        conn.execute(SETUP)
    done = tablemig("migrate", "--execute", *_spec(fresh_db), "--until", "verified")
    assert done.returncode == 0, done.stderr
    with fresh_db.connect() as conn, fresh_db.connect() as holder:
        # attempts enough to outlast the test's own steps whatever the machine's load
        conn.execute("UPDATE table_migration.migration_config SET config_value = '40'"
                     " WHERE config_key = 'swap_max_attempts'")
        before, fks = _catalog(conn), _fk_state(conn)
        holder.execute("BEGIN")
        holder.execute("SELECT count(*) FROM t")  # ACCESS SHARE until COMMIT: the swap waits
        swap = tablemig("migrate", "--execute", *_spec(fresh_db), wait=False)
        try:
            waiting_for_the_swap(conn, 'public.t')
            conn.execute(write)  # between two attempts (it waits at most one lock_timeout)
            holder.execute("COMMIT")
            _, err = swap.communicate(timeout=300)
        finally:
            if swap.poll() is None:
                swap.kill()
        assert swap.returncode == 2, err
        assert "written while the swap waited for its lock" in err and named in err, err
        assert "tablemig: fix:" in err and "tablemig rollback" in err and "rerun" in err, err
        assert _catalog(conn) == before  # the swap rolled back; the arming was undone
        assert _fk_state(conn) == fks  # every foreign key as it was: valid, on the original
        row = conn.execute("SELECT state, last_error FROM table_migration.migration_state").fetchone()
        assert row is not None and row[0] == "verified" and row[1].startswith("swap: "), row
        conn.execute(undo)
    done = tablemig("migrate", "--execute", *_spec(fresh_db))
    assert done.returncode == 0, done.stderr
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT state, last_error FROM table_migration.migration_state").fetchone() == (
            "swapped", None)
        fks = _fk_state(conn)
        assert [(c, n, p, v) for c, n, p, v in fks if c in ("c", "t")] == [
            ("c", "c_t_id_fkey", "t", True), ("t", "t_parent_id_fkey", "t", True)], fks
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO c VALUES (1001, 5)")  # 5 is archived now


def test_an_orphan_found_before_the_lock_refuses_the_swap(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        conn.execute(SETUP)
    assert tablemig("migrate", "--execute", *_spec(fresh_db), "--until", "verified").returncode == 0
    with fresh_db.connect() as conn, Migration(fresh_db.dsn, TableSpec("public.t", "d", cutoff="2024-06-01")) as mig:
        assert not mig.plan().blockers
        conn.execute("INSERT INTO c VALUES (1000, 7)")  # after the plan's check, before the swap step
        before, fks = _catalog(conn), _fk_state(conn)
        with pytest.raises(TablemigError) as err:
            mig.swap()
        assert "found before the swap" in err.value.problem and "public.c.c_t_id_fkey: (7)" in err.value.problem
        assert "tablemig rollback" in err.value.fix
        assert _catalog(conn) == before and _fk_state(conn) == fks
        assert conn.execute("SELECT state FROM table_migration.migration_state").fetchone() == ("verified",)
    # rollback from here removes the capture (and nothing of the orphan check is left)
    assert "new table dropped" in tablemig("rollback", "--execute", "--dsn", fresh_db.dsn, "--table", "public.t").stdout
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tablemig%'").fetchone() == (0,)


def test_a_referencing_table_with_a_trigger_named_like_the_orphan_checks_is_refused(fresh_db: Any) -> None:
    """The swap step arms its orphan check with a trigger named tablemig_family on each
    referencing table (CREATE OR REPLACE): a user trigger of that name there would be
    replaced, then dropped. The plan refuses before anything changes."""
    with fresh_db.connect() as conn:
        conn.execute(SETUP)
        conn.execute("CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;"
                     " CREATE TRIGGER tablemig_family AFTER INSERT ON c FOR EACH ROW EXECUTE FUNCTION noop()")
    spec = TableSpec("public.t", "d", cutoff="2024-06-01")
    with Migration(fresh_db.dsn, spec, progress=lambda p: None) as mig:
        blockers = mig.plan().blockers
    assert any("trigger tablemig_family on public.c" in b and "rename it" in b for b in blockers), blockers
