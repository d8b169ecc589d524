"""A parent table with two children, and concurrent writers with twin tables as ground truth.

`orders` (dated) is referenced by `items` (ON DELETE CASCADE) and `notes` (ON DELETE SET
NULL), neither of which has a date of its own; both reference orders of every age. Each
writer transaction applies one operation to the real tables and the same statement to the
twins (`orders_twin`, `items_twin`, `notes_twin`, with the same foreign keys), in one
transaction: a statement the real tables refuse (a reference to a missing or, after the
swap, archived order) rolls both back. The twins are therefore the tables had there been no
migration.

Before the swap the writers insert orders of any date, move dates across the cutoff both
ways, delete orders (cascading to items, nulling notes), and insert, re-point, change and
delete items and notes. Once `swapping` is set they keep to what leaves the rule of the
policy keep checkable afterwards: orders dated from the cutoff on, no reference removed
from an old order (an old order still live stays referenced).
"""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from twin import WriterThreads

from tablemig.pg.connect import connect

BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
CUTOFF = BASE + dt.timedelta(days=300)

# items reference every fifth order, of every age; notes every seventh
SCHEMA = """
CREATE TABLE {o} (id bigint PRIMARY KEY, d timestamptz NOT NULL, v integer NOT NULL);
CREATE TABLE {i} (id bigint PRIMARY KEY, order_id bigint NOT NULL REFERENCES {o} ON DELETE CASCADE,
                  qty integer NOT NULL);
{notes}
CREATE INDEX ON {i} (order_id);
CREATE INDEX ON {n} (order_id);
INSERT INTO {o} SELECT g, %(base)s::timestamptz + (g * 365.0 / %(rows)s) * interval '1 day', g %% 100
  FROM generate_series(1, %(rows)s) g;
INSERT INTO {i} SELECT g, g, g %% 9 + 1 FROM generate_series(5, %(rows)s, 5) g;
INSERT INTO {n} SELECT g, g, 'note ' || g FROM generate_series(7, %(rows)s, 7) g;
"""


NOTES = "CREATE TABLE {n} (id bigint PRIMARY KEY, order_id bigint REFERENCES {o} ON DELETE SET NULL, body text);"
# notes partitioned by month (the partition key is part of the primary key)
PARTITIONED_NOTES = """
CREATE TABLE {n} (id bigint NOT NULL, order_id bigint REFERENCES {o} ON DELETE SET NULL, body text,
                  at date NOT NULL DEFAULT date '2024-06-15', PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE {n}_2024 PARTITION OF {n} FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY RANGE (at);
"""


# parts reference items (a grandchild of orders): two per item
PARTS = """
CREATE TABLE {p} (id bigint PRIMARY KEY, item_id bigint NOT NULL REFERENCES {i} ON DELETE CASCADE, n integer NOT NULL);
CREATE INDEX ON {p} (item_id);
INSERT INTO {p} SELECT i.id * 2 + k, i.id, k FROM {i} i, generate_series(0, 1) k;
"""


def create_family(conn: psycopg.Connection[Any], rows: int, *, partitioned: bool = False,
                  parts: bool = False) -> None:
    """The three tables and their twins, `rows` orders over 365 days (~18 % from CUTOFF on).
    `partitioned`: notes is partitioned by month (PostgreSQL 18 re-points a partitioned
    table's foreign key NOT VALID; before it, the plan refuses). `parts`: a table `parts`
    referencing items (two per item)."""
    for suffix in ("", "_twin"):
        schema = SCHEMA.replace("{notes}", NOTES)
        if partitioned:
            months = "".join(
                f"CREATE TABLE {{n}}_m{m:02d} PARTITION OF {{n}}_2024 FOR VALUES FROM ('2024-{m:02d}-01') TO "
                f"('{'2025-01-01' if m == 12 else f'2024-{m + 1:02d}-01'}');\n" for m in range(1, 13))
            schema = SCHEMA.replace("{notes}", PARTITIONED_NOTES + months)
            schema = schema.replace("'note ' || g FROM", "'note ' || g, date '2024-01-01' + g %% 365 FROM")
        if parts:
            schema += PARTS
        text = schema.format(o=f"orders{suffix}", i=f"items{suffix}", n=f"notes{suffix}", p=f"parts{suffix}")
        for stmt in filter(str.strip, text.split(";")):
            conn.execute(stmt, {"base": BASE, "rows": rows} if "%(" in stmt else None)
    conn.execute("CREATE INDEX ON orders (d)")
    conn.execute("ANALYZE orders; ANALYZE items; ANALYZE notes")


def differences(conn: psycopg.Connection[Any], left: str, right: str, where: str = "true") -> int:
    """Rows of `left` not in `right` plus the reverse (every column; `where` filters `right`)."""
    row = conn.execute(f"SELECT (SELECT count(*) FROM (SELECT * FROM {left} EXCEPT ALL"
                       f" SELECT * FROM {right} WHERE {where}) a),"
                       f" (SELECT count(*) FROM (SELECT * FROM {right} WHERE {where} EXCEPT ALL"
                       f" SELECT * FROM {left}) b)").fetchone()
    assert row is not None
    return int(row[0]) + int(row[1])


BEFORE = ("insert_order", "move_order", "delete_order", "insert_item", "repoint_item", "change_item",
          "delete_item", "insert_note", "repoint_note", "delete_note")
PART_OPS = ("insert_part", "repoint_part", "delete_part")  # with `parts`, before and after the swap
# with `partitioned` notes, before and after the swap: a note moved to another month (a row
# moving between partitions: a DELETE and an INSERT for the row triggers), or to 2025 or 2026,
# which have a partition only once a test adds one (refused before: no partition for it)
NOTE_OPS = ("move_note",)
AFTER = ("insert_order", "move_order", "delete_order", "insert_item", "change_item", "insert_note")


class FamilyWriters(WriterThreads):
    """Writer threads on the family (see the module docstring)."""

    def __init__(self, dsn: str, rows: int, *, threads: int = 3, seed: int = 5, parts: bool = False,
                 partitioned: bool = False) -> None:
        self.dsn, self.rows = dsn, rows
        self.parts = (PART_OPS if parts else ()) + (NOTE_OPS if partitioned else ())
        self.ops: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self._next = rows * 10
        super().__init__(threads, seed)

    def begin_swap(self, timeout_s: float = 20.0) -> None:
        super().begin_swap(timeout_s)

    def _id(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def _run(self, seed: int, index: int) -> None:
        rnd = random.Random(seed)
        with connect(self.dsn, application_name="family-writer") as conn:
            while not self.stop.is_set():
                after = self._choosing(index)
                op = rnd.choice((AFTER if after else BEFORE) + self.parts)
                try:
                    with conn.transaction():
                        ops = (self._part(conn, op, rnd) if op in PART_OPS + NOTE_OPS
                               else self._statements(conn, op, rnd, after))
                        for sql, params in ops:
                            # after the swap a row may be archived: absent from the real
                            # table, present in the twin; a statement that reached no row
                            # is not applied to the twin
                            if conn.execute(sql.format(o="orders", i="items", n="notes", p="parts"),
                                            params).rowcount:
                                conn.execute(sql.format(o="orders_twin", i="items_twin", n="notes_twin",
                                                        p="parts_twin"), params)
                    self._count(self.ops, op)
                except (psycopg.errors.ForeignKeyViolation, psycopg.errors.UniqueViolation,
                        psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable,
                        psycopg.errors.CheckViolation, psycopg.errors.SerializationFailure) as exc:
                    self._count(self.refused, type(exc).__name__)
                time.sleep(0.001)

    def _date(self, rnd: random.Random, recent: bool) -> dt.datetime:
        days = rnd.uniform(300.5, 400) if recent else rnd.uniform(0, 400)
        return BASE + dt.timedelta(days=days)

    def _child(self, conn: psycopg.Connection[Any], table: str, rnd: random.Random) -> int:
        """A row of a child table, locked (so the twin's statement reaches the same row)."""
        row = conn.execute(f"SELECT id FROM {table} WHERE id >= %s ORDER BY id LIMIT 1 FOR UPDATE",
                           (rnd.randint(1, self.rows),)).fetchone()
        return int(row[0]) if row else 0

    def _part(self, conn: psycopg.Connection[Any], op: str, rnd: random.Random) -> list[tuple[str, tuple[Any, ...]]]:
        if op == "move_note":
            return [("UPDATE {n} SET at = %s WHERE id = %s",
                     (dt.date(2024, 1, 1) + dt.timedelta(days=rnd.randint(0, 900)), self._child(conn, "notes", rnd)))]
        if op == "insert_part":  # a live item of any age
            return [("INSERT INTO {p} VALUES (%s, %s, %s)", (self._id(), self._child(conn, "items", rnd), 7))]
        if op == "repoint_part":
            return [("UPDATE {p} SET item_id = %s WHERE id = %s",
                     (self._child(conn, "items", rnd), self._child(conn, "parts", rnd)))]
        assert op == "delete_part", op
        return [("DELETE FROM {p} WHERE id = %s", (self._child(conn, "parts", rnd),))]

    def _statements(self, conn: psycopg.Connection[Any], op: str, rnd: random.Random,
                    after: bool) -> list[tuple[str, tuple[Any, ...]]]:
        some = rnd.randint(1, self.rows)
        if op == "insert_order":
            return [("INSERT INTO {o} VALUES (%s, %s, %s)", (self._id(), self._date(rnd, after), rnd.randint(0, 99)))]
        if op == "move_order":  # across the cutoff both ways before the swap; recent after it
            return [("UPDATE {o} SET d = %s, v = v + 1 WHERE id = %s", (self._date(rnd, after), some))]
        if op == "delete_order":
            return [("DELETE FROM {o} WHERE id = %s", (some,))]
        if op == "insert_item":  # an order of any age: after the swap an archived one is refused
            return [("INSERT INTO {i} VALUES (%s, %s, %s)", (self._id(), some, rnd.randint(1, 9)))]
        if op == "repoint_item":
            return [("UPDATE {i} SET order_id = %s WHERE id = %s", (some, self._child(conn, "items", rnd)))]
        if op == "change_item":
            return [("UPDATE {i} SET qty = qty + 1 WHERE id = %s", (self._child(conn, "items", rnd),))]
        if op == "delete_item":
            return [("DELETE FROM {i} WHERE id = %s", (self._child(conn, "items", rnd),))]
        if op == "insert_note":
            return [("INSERT INTO {n} VALUES (%s, %s, 'new')", (self._id(), some))]
        if op == "repoint_note":
            return [("UPDATE {n} SET order_id = %s WHERE id = %s", (some, self._child(conn, "notes", rnd)))]
        assert op == "delete_note", op
        return [("DELETE FROM {n} WHERE id = %s", (self._child(conn, "notes", rnd),))]


def new_family_plan(dsn: str, out: Path, children: str) -> subprocess.CompletedProcess[str]:
    """`tablemig new-plan --dsn` for the family's orders, every child given `children`."""
    return subprocess.run([sys.executable, "-m", "tablemig.cli.main", "new-plan", "--dsn", dsn, "--table",
                           "public.orders", "--date-column", "d", "--cutoff", CUTOFF.isoformat(),
                           "--children", children, "--output", str(out)],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
