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
from .sqltext import Fragment

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


def base_types(conn: psycopg.Connection[Any], table_oid: int) -> dict[str, str]:
    """{column: its base type without precision} (a domain's own base type, recursively)."""
    return {r[0]: r[1] for r in conn.execute(_BASE_TYPES, (table_oid, table_oid)).fetchall()}


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


def _in_zone(conn: psycopg.Connection[Any], text: str, zone: str) -> str:
    with conn.transaction():
        conn.execute("SELECT set_config('TimeZone', %s, true)", (zone,))
        row = conn.execute("SELECT %s::timestamptz::text", (text,)).fetchone()
    assert row is not None
    return str(row[0])


def read_cutoff(conn: psycopg.Connection[Any], text: str, date_type: str,
                timezone: Callable[[], str] | None) -> Cutoff:
    """A cutoff given by the user, read in the database's TimeZone when it is a timestamptz
    without an offset (`timezone` gives that zone; None: the connection's own)."""
    try:
        if date_type == TIMESTAMPTZ and timezone is not None:
            zone = timezone()
            local = _in_zone(conn, text, zone)
            return Cutoff(_cast(conn, local, date_type), local, zone)
        return show_cutoff(conn, _cast(conn, text, date_type), date_type, timezone)
    except psycopg.Error as exc:
        raise InputError(f"cutoff {text!r} is not a valid {date_type}: {exc.diag.message_primary}",
                         "give e.g. '2024-01-01' or '2024-01-01 00:00:00+00'") from None


def show_cutoff(conn: psycopg.Connection[Any], value: str, date_type: str,
                timezone: Callable[[], str] | None) -> Cutoff:
    """A resolved cutoff (`value`, as stored), with its local form for a timestamptz."""
    if date_type != TIMESTAMPTZ or timezone is None:
        return Cutoff(value)
    zone = timezone()
    return Cutoff(value, _in_zone(conn, value, zone), zone)


def _cast(conn: psycopg.Connection[Any], text: str, date_type: str) -> str:
    row = conn.execute(sql.SQL("SELECT %s::{}::text").format(Fragment(date_type)), (text,)).fetchone()
    assert row is not None
    return str(row[0])
