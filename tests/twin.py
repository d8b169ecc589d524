"""Concurrent writers with a twin table as ground truth.

Each writer transaction applies one operation to the migrated table and then exactly the
same effect (the rows the statement returned) to `<table>_twin`, in the same transaction.
The twin is therefore "the original table, had there been no migration"; after the swap
the archive (kept by the mirror trigger) must equal it, and the live table must equal its
rows with `d >= cutoff`.

Before the swap the writers insert, update recent and old rows, move `d` across the cutoff
both ways, change primary keys and delete rows anywhere (also rows the backfill has not
reached). Once `swapping` is set they keep to what an application does with the live table
after the swap: no history rows and no moves below the cutoff (those rows are not in the
live table any more, by design).

With `identity` the key is `GENERATED ALWAYS AS IDENTITY`: the writers insert without a key
and change keys with `UPDATE ... SET id = DEFAULT` (the twin's key is a plain column that
takes the values the table returned).
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Self

import psycopg

from tablemig.pg.connect import connect

BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
CUTOFF = BASE + dt.timedelta(days=300)  # rows are spread over 365 days, newest ~18 % kept


def create_events(conn: psycopg.Connection[Any], rows: int, table: str = "events", *,
                  deferrable: bool = False, identity: bool = False) -> None:
    """`events` and its twin: ids ascend with d, ~18 % of rows on or after CUTOFF.
    `deferrable`: the primary keys are DEFERRABLE (see Writers' key swaps). `identity`: the
    table's key is GENERATED ALWAYS AS IDENTITY, continuing at rows * 10."""
    key = "PRIMARY KEY DEFERRABLE" if deferrable else "PRIMARY KEY"
    for name in (table, f"{table}_twin"):
        generated = " GENERATED ALWAYS AS IDENTITY" if identity and name == table else ""
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        conn.execute(f"CREATE TABLE {name} (id bigint{generated} {key}, d timestamptz NOT NULL,"
                     " v integer NOT NULL, payload text)")
        conn.execute(f"INSERT INTO {name}{' OVERRIDING SYSTEM VALUE' if generated else ''}"
                     " SELECT g, %s::timestamptz + (g * 365.0 / %s) * interval '1 day',"
                     " g %% 1000, 'row ' || g FROM generate_series(1, %s) g", (BASE, rows, rows))
    if identity:
        conn.execute(f"ALTER TABLE {table} ALTER COLUMN id RESTART WITH {rows * 10}")
    conn.execute(f"CREATE INDEX {table}_d_idx ON {table} (d)")
    conn.execute(f"CREATE SEQUENCE IF NOT EXISTS {table}_ids START {rows * 10}")
    conn.execute(f"ANALYZE {table}")


@dataclass
class WriterStats:
    ops: dict[str, int] = field(default_factory=dict)
    ops_after_swap: dict[str, int] = field(default_factory=dict)  # chosen once `swapping` was set
    errors: dict[str, int] = field(default_factory=dict)
    max_latency_s: float = 0.0
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (start, seconds)


class WriterThreads:
    """Writer threads that switch, on `begin_swap`, to what an application does after the
    swap. A subclass's `_run(seed, index)` calls `_choosing(index)` before choosing each
    operation; it returns whether the operation is one of after the swap."""

    def __init__(self, threads: int, seed: int) -> None:
        self.stop = threading.Event()
        self.swapping = threading.Event()
        self._lock = threading.Lock()
        self._in_swap_mode: set[int] = set()  # writers whose operation was chosen after `swapping`
        self._threads = [threading.Thread(target=self._run, args=(seed + i, i), daemon=True)
                         for i in range(threads)]

    def _run(self, seed: int, index: int) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _choosing(self, index: int) -> bool:
        after_swap = self.swapping.is_set()
        if after_swap:
            with self._lock:
                self._in_swap_mode.add(index)
        return after_swap

    def _count(self, bucket: dict[str, int], key: str) -> None:
        with self._lock:
            bucket[key] = bucket.get(key, 0) + 1

    def begin_swap(self, timeout_s: float = 10.0) -> None:
        """Switch the writers to what an application does after the swap, and return once
        each has finished the operation it chose before (setting `swapping` alone would
        race: an old-row insert chosen just before could land in the live table after
        the swap)."""
        self.swapping.set()
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                alive = {i for i, t in enumerate(self._threads) if t.is_alive()}
                if alive <= self._in_swap_mode:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"writers {sorted(alive - self._in_swap_mode)} did not finish "
                                     f"their operation within {timeout_s} s")
            time.sleep(0.001)


class Writers(WriterThreads):
    """`deferrable` (the table's key is DEFERRABLE): the writers also exchange the keys of
    two rows in one statement, and insert a row under a taken key that they re-key before
    commit (SET CONSTRAINTS ALL DEFERRED): transient duplicates the migration must mirror.
    `identity` (the key is GENERATED ALWAYS AS IDENTITY, see create_events): keys come from
    the table's identity, on insert and on a key change (SET id = DEFAULT)."""

    def __init__(self, dsn: str, rows: int, *, table: str = "events", threads: int = 3,
                 seed: int = 7, deferrable: bool = False, identity: bool = False) -> None:
        assert not (deferrable and identity), "the deferrable key's operations set keys explicitly"
        self.dsn, self.rows, self.table, self.n = dsn, rows, table, threads
        self.deferrable, self.identity = deferrable, identity
        self.stats = WriterStats()
        super().__init__(threads, seed)

    def _run(self, seed: int, index: int) -> None:
        rnd = random.Random(seed)
        with connect(self.dsn, application_name="twin-writer") as conn:
            while not self.stop.is_set():
                after_swap = self._choosing(index)
                op = self._choose(rnd)
                t0 = time.perf_counter()
                try:
                    with conn.transaction():
                        getattr(self, f"_op_{op}")(conn, rnd)
                    self._count(self.stats.ops, op)
                    if after_swap:
                        self._count(self.stats.ops_after_swap, op)
                except psycopg.errors.LockNotAvailable:
                    self._count(self.stats.errors, "lock_not_available")
                except (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected,
                        psycopg.errors.SerializationFailure) as exc:
                    self._count(self.stats.errors, type(exc).__name__)
                elapsed = time.perf_counter() - t0
                with self._lock:
                    self.stats.latencies.append((t0, elapsed))
                    self.stats.max_latency_s = max(self.stats.max_latency_s, elapsed)
                time.sleep(rnd.random() * 0.002)

    def _choose(self, rnd: random.Random) -> str:
        extra = ["swap_keys", "duplicate_rekeyed"] if self.deferrable else []
        if self.swapping.is_set():
            return rnd.choice(["insert_recent", "update_recent", "delete_recent",
                               "move_up", "pk_recent", *extra])
        return rnd.choice(["insert_recent", "insert_old", "update_recent", "update_old",
                           "move_up", "move_down", "pk_recent", "pk_old", "delete_recent",
                           "delete_old", "delete_any", *extra])

    # -- helpers --------------------------------------------------------------------------
    def _recent_id(self, rnd: random.Random) -> int:
        return rnd.randint(int(self.rows * 300 / 365) + 2, self.rows)

    def _old_id(self, rnd: random.Random) -> int:
        return rnd.randint(1, int(self.rows * 300 / 365) - 2)

    def _mirror(self, conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]],
                old_ids: list[int] | None = None) -> None:
        twin = f"{self.table}_twin"
        for i, row in enumerate(rows):
            old = old_ids[i] if old_ids else row[0]
            conn.execute(f"UPDATE {twin} SET id = %s, d = %s, v = %s, payload = %s WHERE id = %s",
                         (*row, old))

    def _update(self, conn: psycopg.Connection[Any], ident: int, assignment: str,
                params: tuple[Any, ...]) -> None:
        rows = conn.execute(f"UPDATE {self.table} SET {assignment} WHERE id = %s"
                            " RETURNING id, d, v, payload", (*params, ident)).fetchall()
        self._mirror(conn, rows)

    # -- operations -----------------------------------------------------------------------
    def _insert(self, conn: psycopg.Connection[Any], d: dt.datetime, rnd: random.Random) -> None:
        key = "DEFAULT" if self.identity else f"nextval('{self.table}_ids')"
        row = conn.execute(f"INSERT INTO {self.table} VALUES ({key}, %s, %s, %s)"
                           " RETURNING id, d, v, payload",
                           (d, rnd.randint(0, 10**6), f"ins {rnd.random()}")).fetchone()
        conn.execute(f"INSERT INTO {self.table}_twin VALUES (%s, %s, %s, %s)", row)

    def _op_insert_recent(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        self._insert(conn, CUTOFF + dt.timedelta(days=rnd.uniform(1, 60)), rnd)

    def _op_insert_old(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        self._insert(conn, BASE + dt.timedelta(days=rnd.uniform(0, 290)), rnd)

    def _op_update_recent(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        self._update(conn, self._recent_id(rnd), "v = v + 1, payload = %s", (f"u {rnd.random()}",))

    def _op_update_old(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        self._update(conn, self._old_id(rnd), "v = v - 1, payload = %s", (f"o {rnd.random()}",))

    def _op_move_up(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        ident = self._old_id(rnd) if not self.swapping.is_set() else self._recent_id(rnd)
        self._update(conn, ident, "d = %s", (CUTOFF + dt.timedelta(days=rnd.uniform(0, 30)),))

    def _op_move_down(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        self._update(conn, self._recent_id(rnd), "d = %s",
                     (CUTOFF - dt.timedelta(days=rnd.uniform(1, 30)),))

    def _pk(self, conn: psycopg.Connection[Any], ident: int) -> None:
        key = "DEFAULT" if self.identity else f"nextval('{self.table}_ids')"
        rows = conn.execute(f"UPDATE {self.table} SET id = {key} WHERE id = %s"
                            " RETURNING id, d, v, payload", (ident,)).fetchall()
        self._mirror(conn, rows, [ident] * len(rows))

    def _op_pk_recent(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        self._pk(conn, self._recent_id(rnd))

    def _op_pk_old(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        self._pk(conn, self._old_id(rnd))

    def _delete(self, conn: psycopg.Connection[Any], ident: int) -> None:
        rows = conn.execute(f"DELETE FROM {self.table} WHERE id = %s RETURNING id", (ident,)).fetchall()
        for (i,) in rows:
            conn.execute(f"DELETE FROM {self.table}_twin WHERE id = %s", (i,))

    def _op_delete_recent(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        self._delete(conn, self._recent_id(rnd))

    def _op_delete_old(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        self._delete(conn, self._old_id(rnd))

    def _op_delete_any(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        # the newest rows are copied last: deleting them races the backfill
        self._delete(conn, self.rows - rnd.randint(0, self.rows // 20))


    # -- with a DEFERRABLE key -------------------------------------------------------------
    def _op_swap_keys(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        """Two rows exchange their keys in one statement (a duplicate until its end)."""
        pick = self._recent_id if self.swapping.is_set() else (
            lambda r: r.randint(1, self.rows))
        a, b = pick(rnd), pick(rnd)
        swap = "UPDATE {} SET id = CASE id WHEN %s THEN %s ELSE %s END WHERE id IN ({})"
        rows = conn.execute(swap.format(self.table, "%s, %s") + " RETURNING id", (a, b, a, a, b)).fetchall()
        # the twin changes exactly the rows the table changed (after the swap a row may be
        # history, which the live table does not hold)
        moved = [b if new == a else a for (new,) in rows]
        if moved:
            conn.execute(swap.format(f"{self.table}_twin", ", ".join(["%s"] * len(moved))), (a, b, a, *moved))

    def _op_duplicate_rekeyed(self, conn: psycopg.Connection[Any], rnd: random.Random) -> None:
        """A row inserted under a key another row has, and given its own key before commit."""
        taken = self._recent_id(rnd)
        conn.execute("SET CONSTRAINTS ALL DEFERRED")
        marker = f"dup {rnd.random()}"
        row = conn.execute(f"INSERT INTO {self.table} VALUES (%s, %s, %s, %s) RETURNING id, d, v, payload",
                           (taken, CUTOFF + dt.timedelta(days=rnd.uniform(1, 60)), 0, marker)).fetchone()
        conn.execute(f"INSERT INTO {self.table}_twin VALUES (%s, %s, %s, %s)", row)
        new = conn.execute(f"SELECT nextval('{self.table}_ids')").fetchone()
        for name in (self.table, f"{self.table}_twin"):
            conn.execute(f"UPDATE {name} SET id = %s WHERE payload = %s", (new[0] if new else None, marker))


def diff(conn: psycopg.Connection[Any], left: str, right: str, where: str = "true") -> dict[str, int]:
    """Rows that differ between two tables (every column), both filtered by `where`."""
    row = conn.execute(f"""
        SELECT (SELECT count(*) FROM (SELECT * FROM {left} WHERE {where}
                                      EXCEPT ALL SELECT * FROM {right} WHERE {where}) a),
               (SELECT count(*) FROM (SELECT * FROM {right} WHERE {where}
                                      EXCEPT ALL SELECT * FROM {left} WHERE {where}) b),
               (SELECT count(*) FROM {left} WHERE {where}),
               (SELECT count(*) FROM {right} WHERE {where})""").fetchone()
    assert row is not None
    return {"only_left": row[0], "only_right": row[1], "left": row[2], "right": row[3]}
