"""The swap's lock discipline: bounded waits, bounded retries, writers never stalled for
longer than `lock_timeout` (plus the short hold of a successful swap), blockers named.

A blocker is another session that read `orders` in a transaction and stays idle in it: it
holds ACCESS SHARE on the table until it ends, which the swap's ACCESS EXCLUSIVE request
has to wait for. While that request waits, every later writer queues behind it, so the
swap may never wait longer than `lock_timeout` per attempt.

How long a writer waits is measured by the server, not by the writer's clock (which would
count every delay of a busy machine): the writer has a `lock_timeout` of its own, and an
insert that waited longer for a lock fails.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from state_helpers import stored

from tablemig.config.spec import TableSpec
from tablemig.errors import LockNotAcquired
from tablemig.lifecycle.driver import Migration
from tablemig.pg.connect import connect
from tablemig.pg.locking import blockers
from tablemig.pg.names import QualifiedName
from tablemig.sandbox.demo_data import create_demo_data

ROWS = 20_000
LOCK_TIMEOUT_S = 0.1
ATTEMPTS = 3
MAX_BACKOFF_S = 5.0
# A writer's own lock_timeout: the swap's lock_timeout, the hold of a successful swap and
# the moments a busy machine takes to wake the swap's session and the writer's.
WRITER_LOCK_TIMEOUT_S = 1.0
ORDERS = QualifiedName("public", "orders")


def _mig(db: Any, **kw: Any) -> Migration:
    spec = TableSpec("public.orders", "created_date", retention=0.1, batch_size=2000)
    settings: dict[str, Any] = {"lock_timeout": "100ms", "swap_max_attempts": ATTEMPTS} | kw
    return Migration(db.dsn, spec, progress=lambda p: None, **settings)


class Session:
    """Another client: autocommit off, runs `query` and stays idle in transaction."""

    def __init__(self, dsn: str, query: str, name: str) -> None:
        self.conn = connect(dsn, autocommit=False, application_name=name)
        self.conn.execute(query)
        self.pid = self.conn.info.backend_pid

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


class Writer:
    """Inserts into orders in a loop, each insert its own transaction, none waiting longer
    than WRITER_LOCK_TIMEOUT_S for a lock (else it fails and is recorded in `errors`)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.samples: list[tuple[float, float]] = []  # (start, seconds)
        self.errors: list[str] = []
        self.ok = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def _run(self) -> None:
        with connect(self.dsn, application_name="latency-writer",
                     settings={"lock_timeout": f"{int(WRITER_LOCK_TIMEOUT_S * 1000)}ms"}) as conn:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    conn.execute("INSERT INTO public.orders (customer_id, status, amount, created_date, note)"
                                 " VALUES (4242, 'new', 1, now(), 'latency-writer')")
                    self.ok += 1
                except psycopg.Error as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                self.samples.append((t0, time.perf_counter() - t0))
                time.sleep(0.003)

    def during(self, start: float, end: float) -> list[float]:
        """Latencies of the inserts that overlapped [start, end]."""
        return [s for t0, s in list(self.samples) if t0 <= end and t0 + s >= start]


@pytest.fixture
def demo(fresh_db: Any) -> Any:
    with fresh_db.connect() as conn:
        create_demo_data(conn, ROWS)
    return fresh_db


@pytest.fixture
def sessions() -> Iterator[list[Session]]:
    opened: list[Session] = []
    yield opened
    for s in opened:
        s.release()


def _names(db: Any) -> tuple[int | None, int | None]:
    with db.connect() as conn:
        row = conn.execute("SELECT to_regclass('public.orders')::oid,"
                           " to_regclass('public.orders_new')::oid").fetchone()
        assert row is not None
        return row[0], row[1]


def test_a_lock_holder_makes_the_swap_give_up_after_bounded_attempts(
        demo: Any, sessions: list[Session]) -> None:
    original, _ = _names(demo)
    blocker = Session(demo.dsn, "SELECT count(*) FROM public.orders", "blocker")
    sessions.append(blocker)
    with _mig(demo) as mig:
        t0 = time.perf_counter()
        with pytest.raises(LockNotAcquired) as err:
            mig.run("swapped")
        elapsed = time.perf_counter() - t0
        swap_seconds = elapsed - sum(mig.timings.values())  # capture..verify are timed, the failed swap not
        m = mig.state()
        assert m is not None
        assert m.state == "verified"
        assert m.swap_attempts == 0 and m.lock_hold_ms is None
    message = str(err.value)
    assert f"pid {blocker.pid}" in message
    assert "holds a lock" in message
    assert "nothing was changed" in message
    assert f"in {ATTEMPTS} attempts" in message and "100ms" in message
    # never unbounded: each attempt waits lock_timeout at most, backoff is capped
    assert ATTEMPTS * LOCK_TIMEOUT_S <= swap_seconds < ATTEMPTS * (LOCK_TIMEOUT_S + MAX_BACKOFF_S)
    assert elapsed < 20 + sum(mig.timings.values())
    assert swap_seconds < 20
    # nothing was changed: the original is still orders, the new table still waits
    live, new = _names(demo)
    assert live == original and new is not None
    with demo.connect() as conn:
        trig = {r[0] for r in conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.orders'::regclass"
                                           " AND NOT tgisinternal").fetchall()}
        assert trig == {"tablemig_capture", "tablemig_no_truncate"}
        log = conn.execute("SELECT count(*) FROM table_migration.migration_log WHERE operation = 'swap'"
                           " AND status <> 'failed'").fetchone()
        assert log is not None and log[0] == 0
        # the failure is stated: in the state row and the audit log
        error = conn.execute("SELECT last_error FROM table_migration.migration_state").fetchone()
        assert error is not None and error[0].startswith("swap: ") and "could not lock" in error[0]
    blocker.release()
    with _mig(demo) as mig:
        result = mig.swap()
        assert result.attempts == 1
        assert stored(mig).state == "swapped"
    assert _names(demo)[0] != original


def test_writers_wait_at_most_lock_timeout_and_the_retry_succeeds(
        demo: Any, sessions: list[Session]) -> None:
    with Writer(demo.dsn) as w, _mig(demo) as mig:
        mig.run("verified")
        original, _ = _names(demo)
        blocker = Session(demo.dsn, "SELECT id, status FROM public.orders WHERE id < 10", "blocker")
        sessions.append(blocker)
        time.sleep(0.2)
        t0 = time.perf_counter()
        with pytest.raises(LockNotAcquired, match=f"pid {blocker.pid}"):
            mig.swap()
        t1 = time.perf_counter()
        assert stored(mig).state == "verified"
        assert _names(demo)[0] == original
        during_failure = w.during(t0, t1)
        assert len(during_failure) >= ATTEMPTS, "the writer made progress while the swap retried"
        assert not w.errors, w.errors  # no insert waited for the retrying swap beyond its own lock_timeout
        assert t1 - t0 < 20

        blocker.release()
        time.sleep(0.2)
        t2 = time.perf_counter()
        result = mig.swap()
        t3 = time.perf_counter()
        time.sleep(0.3)  # the writer goes on against the new table
        m = stored(mig)
        assert m.state == "swapped"
        assert result.attempts >= 1 and m.swap_attempts == result.attempts
        assert [a["outcome"] for a in result.attempt_log][-1] == "ok"
        assert m.lock_hold_ms is not None, "the swap recorded no lock hold time"
        hold_s = float(m.lock_hold_ms) / 1000
        assert float(m.lock_hold_ms) == result.lock_hold_ms
        during_swap = w.during(t2, t3)
        assert during_swap, "the writer ran during the swap"
        assert 0 < hold_s <= t3 - t2
        mig.validate_foreign_keys()
    assert w.errors == []
    with demo.connect() as conn:
        live, archive = conn.execute(
            f"SELECT (SELECT count(*) FROM public.orders WHERE note = 'latency-writer'),"
            f" (SELECT count(*) FROM public.{m.archive.name} WHERE note = 'latency-writer')").fetchone()
    # every insert landed once in the live table, and the archive (mirror) has them all too
    assert live == archive == w.ok > 0


def test_an_old_idle_transaction_is_reported_as_a_blocker(
        demo: Any, sessions: list[Session], active_dsn: str) -> None:
    with _mig(demo, long_transaction_seconds=0.5) as mig:
        mig.run("verified")
        # holds no lock on orders: its transaction is merely old
        idle = Session(demo.dsn, "SELECT 1", "idle-in-transaction")
        sessions.append(idle)
        # an old transaction in another database of the cluster is no business of this swap
        elsewhere = Session(active_dsn, "SELECT 1", "idle-elsewhere")
        sessions.append(elsewhere)
        time.sleep(0.8)
        with demo.connect() as conn:
            seen = {b["pid"]: b for b in blockers(conn, [ORDERS], 0.5)}
            assert idle.pid in seen
            assert elsewhere.pid not in seen
            assert seen[idle.pid]["holds_lock"] is False
            assert seen[idle.pid]["state"] == "idle in transaction"
            assert float(seen[idle.pid]["xact_seconds"]) >= 0.5
            assert idle.pid not in {b["pid"] for b in blockers(conn, [ORDERS], 3600)}
        # ... and together with a session that does hold a lock, the error names both
        holder = Session(demo.dsn, "SELECT count(*) FROM public.orders", "holder")
        sessions.append(holder)
        with pytest.raises(LockNotAcquired) as err:
            mig.swap()
        message = str(err.value)
        assert f"pid {idle.pid} " in message and f"pid {holder.pid} " in message
        assert "old snapshot" in message and "holds a lock" in message
        holder.release()
        # the old transaction does not block the swap; it is reported in the attempt log
        result = mig.swap()
        reported = {b["pid"]: b["holds_lock"] for b in result.attempt_log[-1]["blockers"]}
        assert reported.get(idle.pid) is False
        assert stored(mig).state == "swapped"


def test_lock_hold_time_is_recorded(demo: Any) -> None:
    with _mig(demo) as mig:
        mig.run("swapped")
        result = mig.swap_result
        result_swap_s = mig.timings["swap"]
        assert result is not None
    with demo.connect() as conn:
        row = conn.execute("SELECT lock_hold_ms, swap_attempts, swap_lsn FROM table_migration.migration_state"
                           " WHERE table_name = 'public.orders'").fetchone()
    assert row is not None
    hold_ms, attempts, lsn = row
    # the hold is timed within the swap (how short it is, is measured in bench/)
    assert 0 < float(hold_ms) <= result_swap_s * 1000 + 1  # the step time is rounded to 1 ms
    assert float(hold_ms) == result.lock_hold_ms
    assert attempts == result.attempts == 1
    assert lsn


def test_a_reader_of_a_materialized_view_delays_the_swap_within_bounds(
        demo: Any, sessions: list[Session]) -> None:
    """LOCK TABLE refuses materialized views, so the swap cannot lock one up front: its
    DROP MATERIALIZED VIEW waits under the same lock_timeout, and the reader is named."""
    with demo.connect() as conn:
        conn.execute("CREATE MATERIALIZED VIEW public.order_status_counts AS"
                     " SELECT status, count(*) AS orders FROM public.orders GROUP BY status")
    with Writer(demo.dsn) as w, _mig(demo) as mig:
        mig.run("verified")
        original, _ = _names(demo)
        reader = Session(demo.dsn, "SELECT * FROM public.order_status_counts", "report")
        sessions.append(reader)
        t0 = time.perf_counter()
        with pytest.raises(LockNotAcquired) as err:
            mig.swap()
        t1 = time.perf_counter()
        assert f"pid {reader.pid} " in str(err.value) and "holds a lock" in str(err.value)
        assert t1 - t0 < ATTEMPTS * (LOCK_TIMEOUT_S + MAX_BACKOFF_S)
        assert stored(mig).state == "verified" and _names(demo)[0] == original
        # orders was locked while the DROP waited: writers waited, but not past lock_timeout
        # plus the part of the swap done before the DROP (no insert failed on its own lock_timeout)
        assert w.during(t0, t1) and not w.errors, w.errors
        reader.release()
        mig.swap()
        assert stored(mig).state == "swapped"
    assert w.errors == []
    with demo.connect() as conn:
        # rebuilt over the live table (the writer has added rows since: compare the reference)
        row = conn.execute("""
            SELECT array_agg(DISTINCT d.refobjid::oid), bool_and(v.relispopulated)
              FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
             WHERE v.oid = 'public.order_status_counts'::regclass AND d.refclassid = 'pg_class'::regclass
               AND d.refobjid <> v.oid""").fetchone()
        assert row is not None and row[0] == [_names(demo)[0]] and row[1] is True
