"""The `table_migration` schema: install / upgrade, the config, the audit log and the
functions a DBA calls from psql. Every test runs against the real sandbox server."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors as pgerrors

from tablemig.errors import InputError
from tablemig.pg.connect import connect
from tablemig.pg.schema import CONFIG_SEED, SCHEMA, SCHEMA_VERSION, install_schema, installed_version, render_schema

REPO = Path(__file__).resolve().parents[1]

SNAPSHOT_QUERIES = {
    "pg_class": """
        SELECT c.oid::bigint, c.relname, c.relkind, c.relfilenode::bigint, c.relnatts, c.relhastriggers
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'table_migration' ORDER BY c.relname""",
    "pg_proc": """
        SELECT p.oid::bigint, p.proname, pg_get_function_identity_arguments(p.oid), p.prosrc,
               p.provolatile, p.prorettype::regtype::text
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'table_migration' ORDER BY p.proname""",
    "pg_attribute": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               a.atthasdef, a.attisdropped
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'table_migration' AND a.attnum > 0 ORDER BY c.relname, a.attnum""",
    "pg_trigger": """
        SELECT t.oid::bigint, t.tgname, t.tgrelid::regclass::text, t.tgfoid::regprocedure::text,
               t.tgenabled, t.tgtype
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'table_migration' ORDER BY t.tgname""",
    # xmin: even an UPDATE that writes the same values would show
    "migration_config": """
        SELECT xmin::text, config_key, config_value, description, updated_at::text
          FROM table_migration.migration_config ORDER BY config_key""",
    "schema_info": "SELECT version, installed_at::text, xmin::text FROM table_migration.schema_info ORDER BY 1",
}


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    return {name: conn.execute(q).fetchall() for name, q in SNAPSHOT_QUERIES.items()}


def functions(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute("SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                        " WHERE n.nspname = %s", (SCHEMA,)).fetchall()
    return {r[0] for r in rows}


def config(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return dict(conn.execute("SELECT config_key, config_value FROM table_migration.migration_config").fetchall())


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tablemig.cli.main", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def db(fresh_db: Any) -> Iterator[Any]:
    """A fresh database with the schema installed, and an open connection to it."""
    with fresh_db.connect() as conn:
        install_schema(conn)
        fresh_db.conn = conn
        yield fresh_db


# --- install / upgrade -------------------------------------------------------------------


def test_install_then_reinstall_is_a_no_op(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        assert installed_version(conn) is None
        first = install_schema(conn)
        assert first.action == "installed"
        assert first.previous_version is None
        assert first.version == SCHEMA_VERSION
        assert len(first.statements) == len(render_schema()) >= 2
        assert installed_version(conn) == SCHEMA_VERSION
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

        before = snapshot(conn)
        assert before["pg_class"] and before["pg_proc"] and before["pg_trigger"]
        second = install_schema(conn)
        assert second.action == "unchanged"
        assert second.statements == []
        assert second.previous_version == SCHEMA_VERSION
        assert snapshot(conn) == before


def test_concurrent_installs_serialise(fresh_db: Any) -> None:
    """Two installers at once: one installs, the other waits and finds it done."""
    results: list[str] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker() -> None:
        try:
            with fresh_db.connect() as conn:
                barrier.wait(timeout=30)
                results.append(install_schema(conn).action)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures
    assert sorted(results) == ["installed", "unchanged"]


def test_upgrade_from_older_version_restores_objects_and_keeps_dba_config(db: Any) -> None:
    conn = db.conn
    # Simulate an older install: version 0, a function it did not have, a seed it did not
    # know, and a value the DBA tuned.
    conn.execute("UPDATE table_migration.schema_info SET version = 0")
    conn.execute("DROP FUNCTION table_migration.health_check()")
    conn.execute("DELETE FROM table_migration.migration_config WHERE config_key = 'verify_segments'")
    conn.execute("UPDATE table_migration.migration_config SET config_value = '5000', description = 'tuned'"
                 " WHERE config_key = 'batch_size'")
    conn.execute("SELECT table_migration.log_event('public.t', 'backfill', 'ok', 42)")
    assert "health_check" not in functions(conn)
    assert installed_version(conn) == 0

    result = install_schema(conn)
    assert result.action == "upgraded"
    assert result.previous_version == 0
    assert result.version == SCHEMA_VERSION
    assert result.statements == render_schema()
    assert installed_version(conn) == SCHEMA_VERSION
    assert "health_check" in functions(conn)
    rows = conn.execute("SELECT status FROM table_migration.health_check()").fetchall()
    assert all(r[0] in ("ok", "warning", "alert") for r in rows)
    cfg = config(conn)
    assert cfg["batch_size"] == "5000"  # the DBA's value survives the upgrade
    assert conn.execute("SELECT description FROM table_migration.migration_config"
                        " WHERE config_key = 'batch_size'").fetchone() == ("tuned",)
    assert cfg["verify_segments"] == dict((k, v) for k, v, _ in CONFIG_SEED)["verify_segments"]
    # the audit log is kept, and is still append-only after the triggers were re-created
    assert conn.execute("SELECT count(*) FROM table_migration.migration_log").fetchone() == (1,)
    with pytest.raises(pgerrors.InsufficientPrivilege):
        conn.execute("DELETE FROM table_migration.migration_log")
    assert install_schema(conn).action == "unchanged"


def test_newer_installed_version_is_refused_and_nothing_changes(db: Any) -> None:
    conn = db.conn
    conn.execute("INSERT INTO table_migration.schema_info (version) VALUES (999)")
    conn.execute("DROP FUNCTION table_migration.health_check()")  # would be re-created by an install
    before = snapshot(conn)
    with pytest.raises(InputError) as info:
        install_schema(conn)
    assert "999" in info.value.problem
    assert f"version {SCHEMA_VERSION}" in info.value.problem
    assert info.value.fix
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert snapshot(conn) == before
    assert "health_check" not in functions(conn)


def test_render_schema_quotes_and_orders_templates() -> None:
    statements = render_schema()
    assert statements[0].lstrip().startswith("-- tablemig schema")
    assert 'CREATE SCHEMA IF NOT EXISTS "table_migration"' in statements[0]
    assert "get_config" in statements[1]
    assert "{{" not in "".join(statements) and "{%" not in "".join(statements)
    for key, value, _ in CONFIG_SEED:
        assert f"'{key}', '{value}'" in statements[0]


# --- tables and config ------------------------------------------------------------------


def table_columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s"
                        " AND table_name = %s ORDER BY ordinal_position", (SCHEMA, table)).fetchall()
    return [r[0] for r in rows]


def test_migration_config_is_seeded(db: Any) -> None:
    conn = db.conn
    assert table_columns(conn, "migration_config") == ["config_key", "config_value", "description",
                                                       "updated_at"]
    cfg = config(conn)
    assert cfg["data_retention_percentage"] == "0.1"
    assert cfg["batch_size"] == "10000"
    for key in ("max_replication_lag", "lock_timeout", "swap_max_attempts"):
        assert cfg.get(key), key
    assert cfg == {k: v for k, v, _ in CONFIG_SEED}
    # the values are usable as what they describe
    row = conn.execute("SELECT %s::interval, %s::int, %s::numeric",
                       (cfg["lock_timeout"], cfg["swap_max_attempts"], cfg["data_retention_percentage"]))
    assert row.fetchone() is not None
    missing = conn.execute("SELECT count(*) FROM table_migration.migration_config"
                           " WHERE description IS NULL OR updated_at IS NULL").fetchone()
    assert missing == (0,)


def test_get_config(db: Any) -> None:
    conn = db.conn
    assert conn.execute("SELECT table_migration.get_config('batch_size')").fetchone() == ("10000",)
    conn.execute("UPDATE table_migration.migration_config SET config_value = '2500' WHERE config_key = 'batch_size'")
    assert conn.execute("SELECT table_migration.get_config('batch_size')").fetchone() == ("2500",)
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT table_migration.get_config('no_such_key')")
    diag = info.value.diag
    assert "no_such_key" in (diag.message_primary or "")
    assert diag.sqlstate == "42704"  # undefined_object
    hint = diag.message_hint or ""
    assert "known keys" in hint
    for key in ("batch_size", "data_retention_percentage", "lock_timeout"):
        assert key in hint


def test_migration_log_is_append_only(db: Any) -> None:
    conn = db.conn
    log_id = conn.execute("SELECT table_migration.log_event('public.orders', 'backfill', 'ok', 10,"
                          " 12.5, '{\"batch\": 1}'::jsonb)").fetchone()
    assert log_id is not None and log_id[0] is not None
    row = conn.execute("SELECT table_name, operation, status, rows_affected, duration_ms, details,"
                       " executed_by = current_user, logged_at IS NOT NULL FROM table_migration.migration_log"
                       " WHERE log_id = %s", log_id).fetchone()
    assert row is not None
    assert row[:4] == ("public.orders", "backfill", "ok", 10)
    assert float(row[4]) == 12.5 and row[5] == {"batch": 1} and row[6] and row[7]
    conn.execute("INSERT INTO table_migration.migration_log (operation, status) VALUES ('manual', 'ok')")

    refused = {
        "UPDATE": "UPDATE table_migration.migration_log SET status = 'failed'",
        "DELETE": "DELETE FROM table_migration.migration_log",
        "TRUNCATE": "TRUNCATE table_migration.migration_log",
    }
    for op, statement in refused.items():
        with pytest.raises(psycopg.Error) as info:
            conn.execute(statement)
        message = info.value.diag.message_primary or ""
        assert "append-only" in message and op in message, message
        assert info.value.diag.sqlstate == "42501"
        # the hint names nothing that does not exist
        for fn in re.findall(r"table_migration\.(\w+)\(", info.value.diag.message_hint or ""):
            assert fn in functions(conn), f"hint names missing function {fn}"
    assert conn.execute("SELECT count(*), count(*) FILTER (WHERE status = 'ok')"
                        " FROM table_migration.migration_log").fetchone() == (2, 2)


def test_replication_control_and_migration_state_tables(db: Any) -> None:
    conn = db.conn
    assert table_columns(conn, "replication_control") == ["table_name", "replication_enabled",
                                                          "last_sync_time", "notes"]
    conn.execute("INSERT INTO table_migration.replication_control (table_name) VALUES ('public.orders')")
    assert conn.execute("SELECT replication_enabled FROM table_migration.replication_control").fetchone() == (True,)
    state_columns = table_columns(conn, "migration_state")
    for col in ("table_name", "state", "cutoff", "new_name", "archive_name", "date_column", "checkpoint"):
        assert col in state_columns
    with pytest.raises(pgerrors.CheckViolation):
        conn.execute("INSERT INTO table_migration.migration_state (table_name, table_oid, schema_name,"
                     " original_name, new_name, archive_name, date_column, date_type, key_columns, cutoff, state)"
                     " VALUES ('public.t', 1, 'public', 't', 't_new', 't_archive', 'd', 'date', '{id}',"
                     " '2024-01-01', 'bogus')")


# --- validate_table_structure -----------------------------------------------------------


def structure(conn: psycopg.Connection[Any], new_ddl: str) -> dict[str, tuple[str, str]]:
    conn.execute("DROP TABLE IF EXISTS orig, new_t")
    conn.execute("CREATE TABLE orig (id bigint PRIMARY KEY, d date NOT NULL, note text, gone int)")
    conn.execute("ALTER TABLE orig DROP COLUMN gone")  # dropped columns are not compared
    conn.execute(new_ddl)
    rows = conn.execute("SELECT check_name, status, detail FROM"
                        " table_migration.validate_table_structure('orig', 'new_t')").fetchall()
    return {name: (status, detail) for name, status, detail in rows}


def test_validate_table_structure(db: Any) -> None:
    conn = db.conn
    same = structure(conn, "CREATE TABLE new_t (id bigint PRIMARY KEY, d date NOT NULL, note text)")
    assert set(same) == {"column id", "column d", "column note", "primary key"}
    assert {s for s, _ in same.values()} == {"ok"}

    missing = structure(conn, "CREATE TABLE new_t (id bigint PRIMARY KEY, d date NOT NULL)")
    assert missing["column note"][0] == "error"
    assert missing["column id"][0] == "ok"

    extra = structure(conn, "CREATE TABLE new_t (id bigint PRIMARY KEY, d date NOT NULL, note text, x int)")
    assert extra["extra column x"][0] == "warning"
    assert all(s == "ok" for name, (s, _) in extra.items() if name != "extra column x")

    extra_default = structure(conn, "CREATE TABLE new_t (id bigint PRIMARY KEY, d date NOT NULL, note text,"
                                    " x int NOT NULL DEFAULT 0)")
    assert extra_default["extra column x"][0] == "warning"
    extra_required = structure(conn, "CREATE TABLE new_t (id bigint PRIMARY KEY, d date NOT NULL, note text,"
                                     " x int NOT NULL)")
    assert extra_required["extra column x"][0] == "error"

    retyped = structure(conn, "CREATE TABLE new_t (id bigint PRIMARY KEY, d date NOT NULL, note varchar(10))")
    assert retyped["column note"][0] == "error"
    assert "text" in retyped["column note"][1] and "character varying(10)" in retyped["column note"][1]

    stricter = structure(conn, "CREATE TABLE new_t (id bigint PRIMARY KEY, d date NOT NULL, note text NOT NULL)")
    assert stricter["column note"][0] == "error"

    other_key = structure(conn, "CREATE TABLE new_t (id bigint, d date NOT NULL, note text, PRIMARY KEY (id, d))")
    assert other_key["primary key"][0] == "error"
    no_key = structure(conn, "CREATE TABLE new_t (id bigint, d date NOT NULL, note text)")
    assert no_key["primary key"][0] == "error"


# --- health_check -----------------------------------------------------------------------


def test_health_check_on_the_active(db: Any, passive_dsn: str | None) -> None:
    conn = db.conn
    rows = conn.execute("SELECT check_name, table_name, status, observed, threshold, detail"
                        " FROM table_migration.health_check()").fetchall()
    assert all(r[2] in ("ok", "warning", "alert") for r in rows)
    if passive_dsn is not None:  # the sandbox's standby streams from this server
        lag = [r for r in rows if r[0] == "replication_lag"]
        assert lag, rows
        # max_replication_lag as configured, alert_replication_lag as an interval
        assert lag[0][4] == "max_replication_lag 16MB; alert_replication_lag 00:05:00"
        assert lag[0][5].startswith("standby ")
    # an unrepaired capture failure is an alert
    conn.execute("INSERT INTO table_migration.capture_failures (table_name, operation, message)"
                 " VALUES ('public.orders', 'INSERT', 'boom')")
    rows = conn.execute("SELECT check_name, table_name, status FROM table_migration.health_check()").fetchall()
    assert ("failed_trigger_executions", "public.orders", "alert") in rows


def wait_for_passive(dsn: str, query: str, params: tuple[Any, ...] = (), timeout: float = 60) -> Any:
    """Poll the standby until `query` returns a row (or the bounded wait ends)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            with connect(dsn) as conn:
                row = conn.execute(query, params).fetchone()
                if row is not None:
                    return row
        except (InputError, psycopg.Error) as exc:  # the database may not be replayed yet
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"not on the standby after {timeout}s: {query} ({last})")


def test_schema_replicates_to_the_standby(db: Any) -> None:
    if db.passive_dsn is None:
        pytest.skip("single-site run: no standby")
    wait_for_passive(db.passive_dsn, "SELECT 1 FROM information_schema.schemata"
                                     " WHERE schema_name = 'table_migration'")
    wait_for_passive(db.passive_dsn, "SELECT 1 FROM table_migration.schema_info WHERE version = %s",
                     (SCHEMA_VERSION,))
    with connect(db.passive_dsn) as standby:
        assert standby.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        assert standby.execute("SELECT table_migration.get_config('batch_size')").fetchone() == ("10000",)
        rows = standby.execute("SELECT check_name, status, detail FROM table_migration.health_check()").fetchall()
        assert any(r[0] == "replication_lag" and "standby" in r[2] for r in rows), rows
        assert all(r[1] in ("ok", "warning", "alert") for r in rows)


# --- the CLI ----------------------------------------------------------------------------


def test_cli_install_schema(fresh_db: Any) -> None:
    first = cli("install-schema", "--dsn", fresh_db.dsn)
    assert first.returncode == 0, first.stderr
    assert f"table_migration schema installed: version {SCHEMA_VERSION}" in first.stdout
    second = cli("install-schema", "--dsn", fresh_db.dsn)
    assert second.returncode == 0, second.stderr
    assert "unchanged" in second.stdout
    with fresh_db.connect() as conn:
        assert installed_version(conn) == SCHEMA_VERSION


def test_cli_print_sql_does_not_connect() -> None:
    # an address nothing listens on: printing must not even try to connect
    out = cli("install-schema", "--print-sql", "--dsn", "host=127.0.0.1 port=1 dbname=nowhere connect_timeout=1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "\n".join(render_schema()).strip()
    assert 'CREATE SCHEMA IF NOT EXISTS "table_migration"' in out.stdout
    assert "CREATE OR REPLACE FUNCTION \"table_migration\".health_check()" in out.stdout
    plain = cli("install-schema", "--print-sql")
    assert plain.returncode == 0 and plain.stdout == out.stdout


def test_cli_install_schema_needs_a_dsn() -> None:
    out = cli("install-schema")
    assert out.returncode == 2
    assert "--dsn" in out.stderr and "Traceback" not in out.stderr


def test_cli_unreachable_server_is_a_clear_error() -> None:
    out = cli("install-schema", "--dsn", "host=127.0.0.1 port=1 dbname=nowhere password=s3cret connect_timeout=2")
    assert out.returncode == 3  # the server could not be reached
    assert "cannot connect" in out.stderr
    assert "s3cret" not in out.stderr and "Traceback" not in out.stderr
