"""Active/passive: lag throttling, standby consistency, failover rehearsal, single site.

Tests that pause replay use a private sandbox: pausing the shared standby would stall
every other test waiting for replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from site_helpers import pause_replay
from state_helpers import stored
from twin import CUTOFF, create_events

from tablemig.config.spec import TableSpec
from tablemig.errors import InputError
from tablemig.lifecycle.driver import Migration
from tablemig.pg.connect import connect
from tablemig.pg.names import QualifiedName
from tablemig.pg.reconcile import Reconciler, Side
from tablemig.pg.replication import LagLimit, LagThrottle, base_backups, standbys_within, wait_for_replay
from tablemig.sandbox.cluster import Sandbox, start_sandbox, stop_sandbox
from tablemig.sandbox.demo_data import create_demo_data
from tablemig.sandbox.failover import rehearse

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def private_sandbox() -> Iterator[Sandbox]:
    root = Path("/tmp") / f"tablemig-repl-{uuid.uuid4().hex[:8]}"
    sb = start_sandbox(root)
    try:
        yield sb
    finally:
        stop_sandbox(root)


@pytest.mark.parametrize(("text", "kind", "value"), [
    ("16MB", "bytes", 16 * 1024**2), ("1 GB", "bytes", 1024**3), ("512kB", "bytes", 512 * 1024),
    ("30s", "seconds", 30), ("5min", "seconds", 300), ("250ms", "seconds", 0.25), ("2 hours", "seconds", 7200)])
def test_max_replication_lag_is_a_size_or_a_duration(text: str, kind: str, value: float) -> None:
    lim = LagLimit.parse(text)
    assert (lim.kind, lim.value) == (kind, value)


def test_bad_lag_limit_is_refused() -> None:
    with pytest.raises(InputError, match="neither a size nor a duration"):
        LagLimit.parse("fast")


def test_backfill_pauses_on_lag_and_resumes_when_replay_resumes(private_sandbox: Sandbox) -> None:
    sb = private_sandbox
    with connect(sb.active_dsn) as conn:
        create_events(conn, 150_000, table="lagged")
    limit = LagLimit.parse("256kB")
    throttle = LagThrottle(sb.active_dsn, limit, poll_s=0.1)
    spec = TableSpec("public.lagged", "d", cutoff=CUTOFF.isoformat(), batch_size=1000)
    errors: list[BaseException] = []
    with connect(sb.passive_dsn) as standby, Migration(sb.active_dsn, spec, throttle=throttle,
                                                       progress=lambda p: None, batch_target_seconds=10) as mig:
        with connect(sb.active_dsn) as a:
            wait_for_replay(a, standby)  # the test data itself must not count as lag
        standby.execute("SELECT pg_wal_replay_pause()")

        def run() -> None:
            try:
                mig.run("backfilling")
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 60
        while not any(s["paused"] for s in throttle.samples) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any(s["paused"] for s in throttle.samples), ("the backfill never paused on lag", errors,
                                                            throttle.samples[-3:])
        copied_while_paused = stored(mig).rows_copied
        time.sleep(2)
        assert stored(mig).rows_copied == copied_while_paused, "batches ran while replay was paused"
        assert worker.is_alive()
        standby.execute("SELECT pg_wal_replay_resume()")
        worker.join(120)
        assert not errors, errors
        assert stored(mig).state == "backfilling" and stored(mig).rows_copied > copied_while_paused
        batch_wal = max(s["wal_bytes"] or 0 for s in mig.backfill_samples)
    peak = max(s["lag_bytes"] or 0 for s in throttle.samples)
    assert throttle.pauses and peak > limit.value
    # a batch starts only when the lag is under the limit: it can overshoot by one batch's WAL (plus the
    # checkpoint writes of that batch), never by two
    assert peak <= limit.value + 1.5 * batch_wal, (peak, batch_wal)
    throttle.close()



def test_wait_for_replay_times_out_with_a_clear_error(private_sandbox: Sandbox) -> None:
    sb = private_sandbox
    with connect(sb.active_dsn) as a, connect(sb.passive_dsn) as p:
        pause_replay(p)
        try:
            a.execute("CREATE TABLE IF NOT EXISTS replay_probe (x int)")
            a.execute("INSERT INTO replay_probe VALUES (1)")
            with pytest.raises(InputError, match="has not replayed") as err:
                wait_for_replay(a, p, timeout_s=1)
            assert "replay paused" in err.value.fix
        finally:
            p.execute("SELECT pg_wal_replay_resume()")


def test_lag_checks_wait_out_a_burst_and_refuse_a_standby_that_stays_behind(private_sandbox: Sandbox) -> None:
    sb = private_sandbox
    limit = LagLimit.parse("1kB")
    with connect(sb.active_dsn) as a, connect(sb.passive_dsn) as p:
        wait_for_replay(a, p)
        rows, waited = standbys_within(a, limit, wait_s=5)
        assert rows and waited < 5 and not limit.exceeded(rows[0]["lag_bytes"], rows[0]["lag_seconds"])
        pause_replay(p)
        try:
            # a durable commit: the sandbox commits asynchronously, and WAL still in the
            # server's buffers is not yet behind the standby (pg_current_wal_lsn is the write
            # position)
            a.execute("SET synchronous_commit = on")
            a.execute("CREATE TABLE IF NOT EXISTS lag_probe (x int)")
            a.execute("INSERT INTO lag_probe SELECT g FROM generate_series(1, 20000) g")
            # behind and staying behind: the last sample is over the limit after the wait
            rows, waited = standbys_within(a, limit, wait_s=1, poll_s=0.2)
            assert waited >= 1 and limit.exceeded(rows[0]["lag_bytes"], rows[0]["lag_seconds"])
            # behind for a moment: replay resumes during the wait and the check passes
            threading.Timer(0.5, lambda: p.execute("SELECT pg_wal_replay_resume()")).start()
            rows, waited = standbys_within(a, limit, wait_s=20, poll_s=0.2)
            assert 0.4 <= waited < 20 and not limit.exceeded(rows[0]["lag_bytes"], rows[0]["lag_seconds"])
        finally:
            time.sleep(0.6)  # the timer's resume has run; resuming twice is harmless
            with connect(sb.passive_dsn) as p2:
                p2.execute("SELECT pg_wal_replay_resume()")


def test_a_base_backup_in_progress_is_not_taken_for_a_standby(private_sandbox: Sandbox, tmp_path: Path) -> None:
    """pg_basebackup shows in pg_stat_replication (state `backup`): the lag checks must
    not fail on it (a nightly backup during the pre-checks is normal); it is evidence."""
    sb = private_sandbox
    target = tmp_path / "base"
    proc = subprocess.Popen([sb.pg_bin.tool("pg_basebackup"), "-h", "127.0.0.1",
                             "-p", str(sb.clusters["active"].port), "-U", "postgres", "-D", str(target),
                             "-X", "none", "--max-rate", "32", "-c", "fast", "--no-sync"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with connect(sb.active_dsn) as a:
            deadline = time.monotonic() + 30
            while not a.execute("SELECT 1 FROM pg_stat_replication WHERE state = 'backup'").fetchone():
                assert proc.poll() is None and time.monotonic() < deadline, "pg_basebackup did not start"
                time.sleep(0.1)
            rows, _ = standbys_within(a, LagLimit.parse("16MB"), wait_s=5)
            assert rows and all(r["state"] == "streaming" for r in rows), rows
            backups = base_backups(a)
            assert [b["application_name"] for b in backups] == ["pg_basebackup"], backups
    finally:
        proc.kill()
        proc.wait()


def test_standby_has_the_same_checksums_after_execute_and_failover_rehearsal(fresh_db: Any, sandbox: Sandbox) -> None:
    with fresh_db.connect() as conn:
        create_demo_data(conn, 20_000)
    with Migration(fresh_db.dsn, TableSpec("public.orders", "created_date", retention=0.1),
                   progress=lambda p: None) as mig:
        mig.run("swapped")
        m = stored(mig)
        plan = mig.plan_for_state(m)
    live = QualifiedName("public", "orders")
    archive = QualifiedName("public", m.archive.name)
    types = {c.name: c.type for c in plan.info.columns}
    rec = Reconciler(plan.key, [types[k] for k in plan.key], [c.name for c in plan.info.columns])
    with fresh_db.connect() as a, connect(fresh_db.passive_dsn) as p:
        wait_for_replay(a, p)
        for table in (live, archive):
            bounds = rec.boundaries(a, Side(table), 8)
            left = [(s.counts["x"], s.sums["x"]) for s in rec.checksums(a, {"x": Side(table)}, bounds)]
            right = [(s.counts["x"], s.sums["x"]) for s in rec.checksums(p, {"x": Side(table)}, bounds)]
            assert left == right and sum(c for c, _ in left) > 0
    result = rehearse(sandbox, fresh_db.dsn, live, archive)
    assert result["promoted"] and result["intact"] and result["writable"], result
    with fresh_db.connect() as a:  # the pair itself is untouched
        assert a.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").fetchone()[0] >= 1


def test_single_site_run_marks_replication_items_not_applicable(fresh_db: Any, tmp_path: Path) -> None:
    with fresh_db.connect() as conn:
        create_demo_data(conn, 5000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TABLEMIG_")}
    proc = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "plans" / "orders_migration.py"), "-q",
                           "-p", "no:cacheprovider", "--active-dsn", fresh_db.dsn, "--execute",
                           "--reports-dir", str(tmp_path)], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    run = json.loads((tmp_path / "orders_migration" / "latest" / "run.json").read_text())
    st = {s["id"]: s for s in run["steps"]}
    for item in ("PRE-1.1a", "PRE-1.1b", "PRE-1.1c", "PRE-1.2d", "EX-3.1", "EX-3.2"):
        assert st[item]["status"] == "not-applicable", (item, st[item])
        assert "single-site" in st[item]["reason"]
    assert st["EX-2.2"]["status"] == "passed"
    with fresh_db.connect() as conn:
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("orders"))).fetchone() == (500,)
