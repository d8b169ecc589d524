"""The date column's type and the cutoff, read as PostgreSQL reads them.

Every date and timestamp type counts, with or without a precision (`timestamp(3)`), and a
domain over one of them: the planner compares the column with the cutoff in the base type
(`date`, `timestamp without time zone`, `timestamp with time zone`), so a cutoff is never
rounded to the column's precision.

A cutoff given without an offset (`2024-10-01`) for a `timestamptz` column is read in the
database's own TimeZone (its database and role settings, else the server's), as an
application session of the table's database reads it, not in the UTC of tablemig's own
connections. The plan shows the resolved cutoff with its offset in that time zone; the
state row keeps it in UTC (with `+00`), the form every tablemig connection uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..errors import InputError
from .names import QualifiedName
from .schema import install_schema
from .sqltext import Fragment
from .statements import Statements, statements

DATE_TYPES = ("date", "timestamp without time zone", "timestamp with time zone")
TIMESTAMPTZ = "timestamp with time zone"

# Each column's base type without its precision: domains resolved through pg_type.typbasetype.
_BASE_TYPES = """
WITH RECURSIVE d(attnum, typ, depth) AS (
    SELECT a.attnum, a.atttypid, 0 FROM pg_attribute a
     WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
    SELECT d.attnum, t.typbasetype, d.depth + 1 FROM d JOIN pg_type t ON t.oid = d.typ WHERE t.typtype = 'd'
)
SELECT DISTINCT ON (d.attnum) a.attname, format_type(d.typ, NULL)
  FROM d JOIN pg_attribute a ON a.attrelid = %s AND a.attnum = d.attnum
 ORDER BY d.attnum, d.depth DESC
"""


def base_types(conn: psycopg.Connection[Any] | Statements, table_oid: int) -> dict[str, str]:
    """{column: its base type without precision} (a domain's own base type, recursively)."""
    return {r[0]: r[1] for r in statements(conn).read(_BASE_TYPES, (table_oid, table_oid)).fetchall()}


@dataclass(frozen=True)
class Cutoff:
    """`value`: the cutoff as text of the date column's base type (a timestamptz in UTC);
    `local`: a timestamptz in the database's TimeZone `timezone`, with its offset."""

    value: str
    local: str | None = None
    timezone: str | None = None

    def shown(self) -> str:
        """The cutoff as a DBA reads it: with its offset in the database's time zone."""
        return f"{self.local} ({self.timezone})" if self.local else self.value


def _in_zone(st: Statements, text: str, zone: str) -> str:
    # the zone for this transaction only, rolled back: a read in a dry run too
    with st.transaction(force_rollback=True):
        st.run("SELECT set_config('TimeZone', %s, true)", (zone,))
        row = st.read("SELECT %s::timestamptz::text", (text,)).fetchone()
    assert row is not None
    return str(row[0])


def read_cutoff(conn: psycopg.Connection[Any] | Statements, text: str, date_type: str,
                timezone: Callable[[], str] | None) -> Cutoff:
    """A cutoff given by the user, read in the database's TimeZone when it is a timestamptz
    without an offset (`timezone` gives that zone; None: the connection's own)."""
    st = statements(conn)
    try:
        if date_type == TIMESTAMPTZ and timezone is not None:
            zone = timezone()
            local = _in_zone(st, text, zone)
            return Cutoff(_cast(st, local, date_type), local, zone)
        return show_cutoff(st, _cast(st, text, date_type), date_type, timezone)
    except psycopg.Error as exc:
        raise InputError(f"cutoff {text!r} is not a valid {date_type}: {exc.diag.message_primary}",
                         "give e.g. '2024-01-01' or '2024-01-01 00:00:00+00'") from None


def show_cutoff(conn: psycopg.Connection[Any] | Statements, value: str, date_type: str,
                timezone: Callable[[], str] | None) -> Cutoff:
    """A resolved cutoff (`value`, as stored), with its local form for a timestamptz."""
    if date_type != TIMESTAMPTZ or timezone is None:
        return Cutoff(value)
    zone = timezone()
    return Cutoff(value, _in_zone(statements(conn), value, zone), zone)


def _cast(st: Statements, text: str, date_type: str) -> str:
    row = st.read(sql.SQL("SELECT %s::{}::text").format(Fragment(date_type)), (text,)).fetchone()
    assert row is not None
    return str(row[0])


def compute_cutoff(conn: psycopg.Connection[Any] | Statements, table: QualifiedName, column: str,
                   fraction: float) -> str:
    """The cutoff keeping the newest `fraction` of `table`'s rows by `column`: the one
    implementation, `table_migration.cutoff_value` (its rules for ties and NULLs are there).
    Also without the schema installed (a dry run, a benchmark): then it is installed in a
    transaction that is rolled back, so nothing changes."""
    st = statements(conn)
    query = "SELECT table_migration.cutoff_value(%s::regclass, %s::name, %s::numeric)"
    params = (str(table), column, fraction)
    try:
        # the function as the database has it now (a dry run's own "installation" is not real)
        if st.read("SELECT to_regprocedure('table_migration.cutoff_value(regclass,name,numeric)')"
                   " IS NOT NULL").scalar():
            return str(st.read(query, params).scalar())
        with st.transaction(force_rollback=True):
            install_schema(st)
            return str(st.read(query, params).scalar())
    except psycopg.errors.RaiseException as exc:  # pragma: no cover - mapped below
        raise InputError(str(exc.diag.message_primary), exc.diag.message_hint or "") from None
    except psycopg.Error as exc:
        raise InputError(f"cutoff for {table}.{column}: {exc.diag.message_primary}",
                         exc.diag.message_hint or "check the column and the retention") from None
