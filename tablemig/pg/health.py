"""The health of the migrations in a database, for monitoring (`tablemig health`) and the
checklist's monitoring items: the rows of `table_migration.health_check()` (the one
judgement, also what a DBA gets from psql), the figures behind them, and their verdict in
the exit codes of monitoring plugins (Nagios, Icinga, Sensu): 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ..errors import InputError
from .schema import installed_version

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
# health_check()'s statuses; anything else it may say one day is not known to be fine
STATUS_CODES = {"ok": OK, "warning": WARNING, "alert": CRITICAL}


@dataclass
class Health:
    """What `health_check()` said on one site, with the numbers behind it."""

    site: str
    checks: list[dict[str, Any]]
    standbys: list[dict[str, Any]] = field(default_factory=list)
    migrations: list[dict[str, Any]] = field(default_factory=list)
    max_replication_lag: str | None = None
    waited_s: float = 0.0

    @property
    def code(self) -> int:
        """The worst status of the checks as a monitoring plugin's exit code."""
        return max((status_code(c["status"]) for c in self.checks), default=OK)


def status_code(status: str) -> int:
    return STATUS_CODES.get(status, UNKNOWN)


def health_rows(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The rows of `table_migration.health_check()`."""
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute("SELECT * FROM table_migration.health_check()").fetchall())


def _lag_alerts(rows: list[dict[str, Any]]) -> bool:
    return any(r["check_name"] == "replication_lag" and r["status"] == "alert" for r in rows)


def read_health(conn: psycopg.Connection[Any], *, site: str = "active", settle_s: float = 0.0,
                poll_s: float = 0.5) -> Health:
    """The health of the migrations on `conn`'s database. With `settle_s`, a replication lag
    alert is checked again until it clears, at most that long: a burst of WAL written by
    another session is not a standby that cannot keep up (the checklist's items wait; a
    monitoring system retries on its own and calls this with 0). Refused without the schema."""
    if installed_version(conn) is None:
        raise InputError("no tablemig schema in this database: there is no migration to check here",
                         "check --dsn (the database of the migrated tables), or install the schema "
                         "(tablemig install-schema) before monitoring it")
    t0 = time.monotonic()
    rows = health_rows(conn)
    while _lag_alerts(rows) and time.monotonic() - t0 < settle_s:
        time.sleep(poll_s)
        rows = health_rows(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        standbys = cur.execute(
            "SELECT application_name, lag_bytes, CASE WHEN lag_bytes > 0 THEN lag_seconds END AS lag_seconds"
            "  FROM (SELECT application_name, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS lag_bytes,"
            "               extract(epoch FROM replay_lag)::float AS lag_seconds"
            "          FROM pg_stat_replication WHERE state IS DISTINCT FROM 'backup') s"
            " WHERE NOT pg_is_in_recovery()"
            " UNION ALL"
            " SELECT 'self', pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint,"
            "        CASE WHEN pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()"
            "             THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float ELSE 0 END"
            " WHERE pg_is_in_recovery() ORDER BY 1").fetchall()
        migrations = cur.execute(
            "SELECT table_name, state, rows_copied, rows_to_copy, lock_hold_ms,"
            "       coalesce((checkpoint->>'paused')::boolean, false) AS paused,"
            "       extract(epoch FROM now() - updated_at)::float AS seconds_since_update"
            "  FROM table_migration.migration_state ORDER BY table_name").fetchall()
        limit = cur.execute("SELECT table_migration.get_config('max_replication_lag') AS v").fetchone()
    return Health(site, rows, list(standbys), list(migrations), limit["v"] if limit else None,
                  round(time.monotonic() - t0, 3))
