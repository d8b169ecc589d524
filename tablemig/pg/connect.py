"""Connections with the session settings every comparison relies on, where a DSN comes
from (`resolve_dsn`), and DSN redaction."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .sqltext import EscapingCursor

# Text forms of rows must be identical on every connection that checksums them.
SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c extra_float_digits=3 -c IntervalStyle=postgres"

_PASSWORD_URL = re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)")
# a quoted value, or an unquoted one up to a space or the quote closing a literal around the DSN
_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']+)", re.IGNORECASE)


def redact(text: str) -> str:
    """Remove passwords from any string that may hold a DSN or connection error."""
    text = _PASSWORD_URL.sub(r"\1***\3", text)
    return _PASSWORD_KV.sub(r"\1***", text)


# libpq's environment variables that name a server or a database (its other PG* variables,
# PGPASSWORD, PGSSLMODE, PGCONNECT_TIMEOUT ..., are read by libpq itself on every connection)
LIBPQ_TARGET_VARIABLES = {"PGSERVICE": "service", "PGHOST": "host", "PGHOSTADDR": "hostaddr", "PGPORT": "port",
                          "PGDATABASE": "dbname", "PGUSER": "user"}
DSN_VARIABLES = ("TABLEMIG_DSN", "TABLEMIG_ACTIVE_DSN")


def resolve_dsn(explicit: str | None, env: Mapping[str, str],
                variables: Sequence[str] = DSN_VARIABLES) -> str | None:
    """The connection string of the active site, from the first of: `explicit` (a command
    line option), the first of `variables` set in `env` (TABLEMIG_DSN, then
    TABLEMIG_ACTIVE_DSN), libpq's PG* variables that name a server or database (PGSERVICE,
    PGHOST, PGHOSTADDR, PGPORT, PGDATABASE, PGUSER; returned as the conninfo they make, so
    messages and child tools see the same target). None when nothing names a database.

    An empty value counts as not set. A malformed string is refused (`parse_dsn`)."""
    for value in (explicit, *(env.get(v) for v in variables)):
        if value is not None and value.strip():
            parse_dsn(value)
            return value
    params = {key: env[var] for var, key in LIBPQ_TARGET_VARIABLES.items() if env.get(var, "").strip()}
    return make_conninfo("", **params) if params else None


def parse_dsn(dsn: str) -> dict[str, Any]:
    """The parameters of a connection string (key=value pairs or a URI); a malformed one is
    refused with the problem and the fix, never a traceback."""
    from ..errors import InputError

    try:
        return dict(conninfo_to_dict(dsn))
    except psycopg.ProgrammingError as exc:
        raise InputError(f"the connection string {redact(dsn)!r} is malformed: {redact(str(exc)).strip()}",
                         "give key=value pairs (host=db1 port=5432 dbname=shop user=app) or a URI "
                         "(postgresql://app@db1:5432/shop); quote a value that holds spaces: dbname='my db'") from None


def connect(dsn: str, *, autocommit: bool = True, application_name: str = "tablemig",
            settings: dict[str, str] | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a connection with fixed text forms (UTC, ISO dates, exact floats) and the
    given session `settings` (sent with the startup packet: no extra round trip)."""
    params = parse_dsn(dsn)
    extra = params.get("options", "")
    more = " ".join(f"-c {k}={v}" for k, v in (settings or {}).items())
    params["options"] = f"{extra} {SESSION_OPTIONS} {more}".strip()
    params.setdefault("application_name", application_name)
    params.setdefault("connect_timeout", "10")
    kwargs.setdefault("cursor_factory", EscapingCursor)  # names with "%" (tablemig.pg.sqltext)
    try:
        conn = psycopg.connect(make_conninfo("", **params), autocommit=autocommit, **kwargs)
    except psycopg.OperationalError as exc:
        from ..errors import ConnectionFailed

        raise ConnectionFailed(
            f"cannot connect to {redact(dsn)}: {redact(str(exc)).strip()}",
            "check host, port, database and credentials; is the server running?",
        ) from None
    if conn.info.server_version >= 140000:
        # A backend whose client died (harness killed) stops within a second instead of
        # finishing a long statement nobody waits for, and releases its locks.
        conn.execute("SET client_connection_check_interval = '1s'")
        if not autocommit:
            conn.commit()
    return conn


def database_timezone(dsn: str) -> str:
    """The TimeZone a session of this role gets in this database by default (its database
    and role settings, else the server's configuration), not the UTC tablemig's own
    connections fix: a session opened with the DSN as given."""
    params = parse_dsn(dsn)
    params.setdefault("application_name", "tablemig")
    params.setdefault("connect_timeout", "10")
    try:
        with psycopg.connect(make_conninfo("", **params), autocommit=True) as conn:
            row = conn.execute("SELECT current_setting('TimeZone')").fetchone()
    except psycopg.OperationalError as exc:
        from ..errors import ConnectionFailed

        raise ConnectionFailed(f"cannot connect to {redact(dsn)}: {redact(str(exc)).strip()}",
                         "check host, port, database and credentials; is the server running?") from None
    assert row is not None
    return str(row[0])


def server_identity(conn: psycopg.Connection[Any]) -> tuple[str, str, int]:
    """(system identifier, data directory or address, port) to tell two servers apart."""
    row = conn.execute(
        "SELECT (SELECT system_identifier::text FROM pg_control_system()),"
        " coalesce(inet_server_addr()::text, 'local'), current_setting('port')::int"
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


@contextmanager
def read_snapshot(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Every statement inside reads one snapshot (a REPEATABLE READ, READ ONLY transaction):
    numbers compared with each other are read at one moment."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield
