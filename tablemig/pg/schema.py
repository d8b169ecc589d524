"""Install and upgrade the `table_migration` schema (idempotent, versioned).

Same version installed: nothing is executed. Older version: every template is applied
again (they are written to be re-runnable) and the new version recorded. Newer version:
refused, because this tablemig would not understand it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import psycopg

from ..errors import InputError
from .statements import Statements, statements
from .templating import render, template_names

SCHEMA = "table_migration"
# 2: the app_write_share seed (the write guard); 3: date domains, the autovacuum settings;
# 4: health_check() judges replication lag against max_replication_lag too (lag_limit())
SCHEMA_VERSION = 4

# (key, default value, description). Values a DBA changed are never overwritten.
CONFIG_SEED: list[tuple[str, str, str]] = [
    ("data_retention_percentage", "0.1", "fraction of rows (by date) kept in the live table"),
    ("batch_size", "10000", "rows per backfill / prune batch (starting size when tuned)"),
    ("batch_target_seconds", "0.5", "backfill batch size is tuned towards this batch time"),
    ("backfill_workers", "1", "concurrent backfill workers over disjoint key ranges"),
    ("max_replication_lag", "16MB", "pause batches while the passive lags more (size or time)"),
    ("lock_timeout", "200ms", "lock_timeout of each swap attempt"),
    ("swap_max_attempts", "10", "bounded attempts to take the swap's locks"),
    ("swap_statement_timeout", "30s", "statement_timeout inside the swap transaction"),
    ("autovacuum_cancel", "on", "cancel an ordinary autovacuum holding a lock a step needs, when the role may"),
    ("autovacuum_lock_wait", "2s", "when it may not: one lock attempt waits this long (above deadlock_timeout)"
     " so the server cancels the autovacuum; the application queues behind that attempt meanwhile"),
    ("autovacuum_wraparound_wait", "600", "seconds to wait for an anti-wraparound vacuum holding the"
     " table (never cancelled) before failing the step"),
    ("long_transaction_seconds", "60", "transactions older than this are reported as swap blockers"),
    ("verify_segments", "16", "key-range segments compared by verify"),
    ("index_workers", "3", "connections building the new table's indexes at once (large tables)"),
    ("replay_batch", "10000", "change-log rows replayed per transaction"),
    ("switch_below", "1000", "switch to direct capture once a replay batch finds fewer rows"),
    ("nice_ratio", "0", "after each unit of bulk work sleep this many times its duration;"
     " re-read every 5 s while running"),
    ("app_write_share", "0.9", "write guard: rest between units of bulk work so that the"
     " application keeps this share of its write rate (0: off, below 1); re-read every 5 s"),
    ("alert_replication_lag", "5 minutes", "health_check(): replication lag alert threshold"),
    ("alert_volume_change_pct", "50", "health_check(): unusual live-row change since the swap (%)"),
    ("alert_stuck_after", "1 hour", "health_check(): unfinished migration idle longer than this"),
    ("alert_archive_growth_rows", "0", "health_check(): archive rows added after prune"),
]


@dataclass(frozen=True)
class InstallResult:
    action: str  # "installed", "upgraded", "unchanged"
    previous_version: int | None
    version: int
    statements: list[str]


SCHEMA_INFO = f"{SCHEMA}.schema_info"


def installed_version(conn: psycopg.Connection[Any] | Statements, *, as_planned: bool = True) -> int | None:
    """The installed schema version (None: not installed). In a dry run that installed it,
    the version it would have installed (unless not `as_planned`: the database's)."""
    st = statements(conn)
    reads = [SCHEMA] if as_planned else []
    found = st.read("SELECT to_regclass(%s) IS NOT NULL", (SCHEMA_INFO,), reads=reads,
                    planned=[(True,)]).scalar()
    if not found:
        return None
    v = st.read(f"SELECT max(version) FROM {SCHEMA}.schema_info", reads=reads,  # noqa: S608
                planned=[(SCHEMA_VERSION,)]).scalar()
    return int(v) if v is not None else None


def render_schema() -> list[str]:
    """The SQL of every schema template, rendered (for review and for install)."""
    ctx = {"schema": SCHEMA, "version": SCHEMA_VERSION, "config_seed": CONFIG_SEED,
           "batch_size": dict((k, v) for k, v, _ in CONFIG_SEED)["batch_size"]}
    return [render(name, **ctx) for name in template_names("schema")]


def install_schema(conn: psycopg.Connection[Any] | Statements) -> InstallResult:
    """Install or upgrade the schema in one transaction, serialised by an advisory lock."""
    st = statements(conn)
    with st.transaction():
        st.run("SELECT pg_advisory_xact_lock(hashtext('tablemig.pg.schema'))")
        before = installed_version(st)
        if before == SCHEMA_VERSION:
            return InstallResult("unchanged", before, SCHEMA_VERSION, [])
        if before is not None and before > SCHEMA_VERSION:
            raise InputError(
                f"{SCHEMA} schema version {before} is newer than this tablemig "
                f"(knows version {SCHEMA_VERSION})",
                "upgrade tablemig to the version that installed the schema",
            )
        statements_ = render_schema()
        for text in statements_:
            st.run(text)
        st.run(f"INSERT INTO {SCHEMA}.schema_info (version) VALUES (%s)"  # noqa: S608
               " ON CONFLICT (version) DO NOTHING", (SCHEMA_VERSION,))
        st.creates(SCHEMA)
    return InstallResult("installed" if before is None else "upgraded", before,
                         SCHEMA_VERSION, statements_)


def _cmd_install(args: argparse.Namespace) -> int:
    import os

    from ..cli.conventions import emit
    from .connect import connect, resolve_dsn

    if args.print_sql:
        sql_text = "\n".join(render_schema())
        emit(args, {"version": SCHEMA_VERSION, "statements": render_schema()}, sql_text)
        return 0
    dsn = resolve_dsn(args.dsn, os.environ)
    if not dsn:
        raise InputError("install-schema needs a database: no --dsn, TABLEMIG_DSN or PGHOST/PGDATABASE given",
                         "give --dsn (the active site), or --print-sql to only print the SQL")
    with connect(dsn) as conn:
        result = install_schema(conn)
    prev = "" if result.previous_version is None else f" (was {result.previous_version})"
    emit(args, {"action": result.action, "previous_version": result.previous_version, "version": result.version},
         f"{SCHEMA} schema {result.action}: version {result.version}{prev}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ..cli.conventions import DSN_HELP, add_json

    p = sub.add_parser("install-schema", help="install or upgrade the table_migration schema")
    p.add_argument("--dsn", help=DSN_HELP)
    p.add_argument("--print-sql", action="store_true", help="print the SQL instead of running it")
    add_json(p)
    p.set_defaults(func=_cmd_install)
