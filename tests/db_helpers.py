"""Reading one value in a test: the query's row must be there."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Params


def scalar(conn: psycopg.Connection[Any], query: sql.SQL | sql.Composed | str, params: Params | None = None) -> Any:
    """The first column of the query's first row; fails the test when it returns no row."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, f"no row from {query!r}"
    return row[0]
