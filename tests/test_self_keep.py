"""The policy keep for the table itself (a self-reference, tablemig.lifecycle.retain): the live
table holds the rows dated from the cutoff on and every row they reference, transitively
(the ancestors of every live row).

`nodes` is a forest: node g's parent is node g // 3 (older: ids grow with the date), so the
recent nodes' ancestors reach back to the oldest ones. Ground truth is a twin table written in
the same transactions, by writers that insert nodes under any parent, move dates across the
cutoff both ways, re-point parents and delete nodes (ON DELETE SET NULL) before, during and
after the swap.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from typing import Any

import psycopg
import pytest
from db_helpers import scalar
from family_twin import differences
from site_helpers import swap_kept_waiting
from twin import WriterThreads

from tablemig.config.spec import TableSpec
from tablemig.lifecycle.driver import Migration
from tablemig.pg.connect import connect

BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
CUTOFF = BASE + dt.timedelta(days=300)
ROWS = 20_000
KEEP = {"public.nodes": "keep"}

SCHEMA = """
CREATE TABLE {t} (id bigint PRIMARY KEY, d timestamptz NOT NULL, v integer NOT NULL,
                  parent_id bigint REFERENCES {t} ON DELETE SET NULL);
CREATE INDEX ON {t} (parent_id);
INSERT INTO {t} SELECT g, %(base)s::timestamptz + (g * 365.0 / %(rows)s) * interval '1 day', g %% 100,
                       NULLIF(g / 3, 0) FROM generate_series(1, %(rows)s) g;
"""

# the rows of `nodes` that the rule keeps live: the closure of those dated from the cutoff on
CLOSURE = """
WITH RECURSIVE live (id, parent_id) AS (
    SELECT id, parent_id FROM {t} WHERE d >= %(cutoff)s
  UNION
    SELECT a.id, a.parent_id FROM {t} a JOIN live l ON a.id = l.parent_id)
SELECT DISTINCT id FROM live
"""


def create_nodes(conn: psycopg.Connection[Any], rows: int) -> None:
    for t in ("nodes", "nodes_twin"):
        for stmt in filter(str.strip, SCHEMA.format(t=t).split(";")):
            conn.execute(stmt, {"base": BASE, "rows": rows} if "%(" in stmt else None)
    conn.execute("CREATE INDEX ON nodes (d)")
    conn.execute("ANALYZE nodes")


def _spec(**kw: Any) -> TableSpec:
    return TableSpec("public.nodes", "d", cutoff=CUTOFF.isoformat(), batch_size=500, **kw)


class NodeWriters(WriterThreads):
    """Writers of `nodes` and its twin, each operation one transaction on both."""

    OPS = ("insert", "move", "repoint", "delete", "change")

    def __init__(self, dsn: str, rows: int, *, threads: int = 3, seed: int = 11) -> None:
        self.dsn, self.rows = dsn, rows
        self.ops: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self._next = rows * 10
        super().__init__(threads, seed)

    def _id(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def _statement(self, op: str, rnd: random.Random) -> tuple[str, tuple[Any, ...]]:
        some, other = rnd.randint(1, self.rows), rnd.randint(1, self.rows)
        if op == "insert":  # under any node: after the swap an archived one is refused
            return ("INSERT INTO {t} VALUES (%s, %s, 1, %s)",
                    (self._id(), BASE + dt.timedelta(days=rnd.uniform(0, 400)), some))
        if op == "move":  # across the cutoff both ways
            return ("UPDATE {t} SET d = %s, v = v + 1 WHERE id = %s",
                    (BASE + dt.timedelta(days=rnd.uniform(0, 400)), some))
        if op == "repoint":
            return ("UPDATE {t} SET parent_id = %s WHERE id = %s AND %s <> id", (other, some, other))
        if op == "delete":
            return ("DELETE FROM {t} WHERE id = %s", (some,))
        return ("UPDATE {t} SET v = v + 1 WHERE id = %s", (some,))

    def _run(self, seed: int, index: int) -> None:
        rnd = random.Random(seed)
        with connect(self.dsn, application_name="node-writer") as conn:
            while not self.stop.is_set():
                self._choosing(index)
                op = rnd.choice(self.OPS)
                sql, params = self._statement(op, rnd)
                try:
                    with conn.transaction():
                        # a statement that reached no row (archived after the swap) is not applied to the twin
                        if conn.execute(sql.format(t="nodes"), params).rowcount:
                            conn.execute(sql.format(t="nodes_twin"), params)
                    self._count(self.ops, op)
                except (psycopg.errors.ForeignKeyViolation, psycopg.errors.UniqueViolation,
                        psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable) as exc:
                    self._count(self.refused, type(exc).__name__)
                time.sleep(0.001)


def _closed(conn: psycopg.Connection[Any]) -> None:
    """Every live node's parent is live, and the key says so."""
    assert conn.execute("SELECT count(*) FROM nodes n WHERE n.parent_id IS NOT NULL AND NOT EXISTS"
                        " (SELECT 1 FROM nodes p WHERE p.id = n.parent_id)").fetchone() == (0,)
    assert conn.execute("SELECT bool_and(convalidated) FROM pg_constraint WHERE conrelid = 'nodes'::regclass"
                        " AND contype = 'f'").fetchone() == (True,)


@pytest.mark.parametrize("rollback_after", ["swap", "prune"])
def test_keep_for_a_self_reference_under_concurrent_writes_then_rollback(fresh_db: Any, rollback_after: str) -> None:
    with fresh_db.connect() as conn:
        create_nodes(conn, ROWS)
    dsn = fresh_db.dsn
    with NodeWriters(dsn, ROWS) as writers, \
            Migration(dsn, _spec(children=KEEP), progress=lambda p: None, throttle=lambda: time.sleep(0.02),
                      lock_timeout="100ms", batch_target_seconds=0.001, swap_max_attempts=40) as mig:
        plan = mig.plan()
        assert not plan.blockers, plan.blockers
        (child,) = plan.children
        assert child.ref.self_ref and child.policy == "keep" and (child.retained or 0) > 0, plan.children
        mig.run("verified")
        result = mig.swap()
        assert result.record["retained"]["retained_rows_copied_before_lock"] > 0, result.record
        assert mig.validate_foreign_keys()
        time.sleep(0.5)  # writes go on against the live table
        if rollback_after == "prune":
            writers.stop.set()
            mig.prune()
    assert all(writers.ops.get(op, 0) > 0 for op in NodeWriters.OPS), writers.ops
    with connect(dsn) as conn:
        archive = conn.execute("SELECT archive_name FROM table_migration.migration_state").fetchone()
        assert archive is not None
        diff = conn.execute("(SELECT 'live', * FROM nodes EXCEPT SELECT 'live', * FROM nodes_twin) UNION ALL"
                            " (SELECT 'twin', * FROM nodes_twin WHERE id IN (SELECT id FROM nodes) EXCEPT"
                            " SELECT 'twin', * FROM nodes) ORDER BY 2, 1").fetchall()
        assert diff == [], diff
        missing = conn.execute("SELECT count(*) FROM nodes_twin t WHERE t.d >= %s AND NOT EXISTS"
                               " (SELECT 1 FROM nodes n WHERE n.id = t.id)", (CUTOFF,)).fetchone()
        assert missing == (0,)
        old_live = conn.execute("SELECT count(*) FROM nodes WHERE d < %s", (CUTOFF,)).fetchone()
        assert old_live is not None and old_live[0] > 0  # the ancestors of the recent nodes
        _closed(conn)
        if rollback_after == "swap":  # the archive is every node, kept by the mirror
            assert differences(conn, archive[0], "nodes_twin") == 0
    with Migration(dsn, _spec(children=KEEP), progress=lambda p: None, lock_timeout="100ms",
                   swap_max_attempts=40) as mig:
        assert mig.rollback() == "swapped back"
    with connect(dsn) as conn:
        assert differences(conn, "nodes", "nodes_twin") == 0  # every node back, nothing lost
        _closed(conn)


def test_keep_for_a_self_reference_is_made_exact_under_the_swaps_lock(fresh_db: Any) -> None:
    """Writes made after the full pass, while the swap waits for its lock: a recent node
    re-pointed to an old node no live node referenced (it and its ancestors come live), the
    only live child of a kept old node re-pointed away (it and the ancestors only it kept
    leave), a kept old node moved from the cutoff on and another before it. Under the lock the
    live table becomes exactly the closure of the nodes dated from the cutoff on."""
    with fresh_db.connect() as conn:
        create_nodes(conn, 3000)
        # a chain of two old nodes kept only by one recent node
        conn.execute("INSERT INTO nodes VALUES (900001, %s, 0, NULL), (900002, %s, 0, 900001), (900003, %s, 0, 900002)",
                     (BASE, BASE, CUTOFF + dt.timedelta(days=1)))
    spec = _spec(children=KEEP)
    with Migration(fresh_db.dsn, spec, progress=lambda p: None) as mig:
        mig.run("verified")
    with fresh_db.connect() as conn:
        first = int(scalar(conn, "SELECT min(id) FROM nodes WHERE d >= %s", (CUTOFF,)))
    with swap_kept_waiting(fresh_db.dsn, spec, "public.nodes", validate=True) as conn:
        # an old leaf (no node references it, it is not kept) gets a recent child
        leaf = first - 1 if (first - 1) * 3 >= first else first - 2
        conn.execute("UPDATE nodes SET parent_id = %s WHERE id = %s", (leaf, first + 5))
        # a recent node's parent is old: re-pointed to the root's first child, its old parent
        # may lose its last live child
        conn.execute("UPDATE nodes SET parent_id = 1 WHERE id = %s", (first + 7,))
        conn.execute("UPDATE nodes SET d = %s WHERE id = 2", (CUTOFF + dt.timedelta(days=3),))
        conn.execute("UPDATE nodes SET d = %s WHERE id = %s", (CUTOFF - dt.timedelta(days=3), first + 9))
        conn.execute("DELETE FROM nodes WHERE id = %s", (first + 11,))
        # node 1000 (old) has one child, 3000 (the newest): re-pointed, 1000 is needed no more
        conn.execute("UPDATE nodes SET parent_id = 1 WHERE id = 3000")
        # the chain's recent node re-pointed: both old nodes leave (the second one is not
        # written: it leaves because the first left)
        conn.execute("UPDATE nodes SET parent_id = 1 WHERE id = 900003")
    with fresh_db.connect() as conn:
        archive = scalar(conn, "SELECT archive_name FROM table_migration.migration_state")
        # the closure computed afresh over the archive (every node, kept by the mirror)
        expected = {int(r[0]) for r in conn.execute(CLOSURE.format(t=archive), {"cutoff": CUTOFF}).fetchall()}
        live = {int(r[0]) for r in conn.execute("SELECT id FROM nodes").fetchall()}
        assert live == expected, (sorted(live - expected)[:10], sorted(expected - live)[:10])
        assert leaf in live and 2 in live and not live & {1000, 900001, 900002}
        _closed(conn)
