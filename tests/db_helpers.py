"""Reading one value in a test (the query's row must be there); dropping what a test's roles
own."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Params


def scalar(conn: psycopg.Connection[Any], query: sql.SQL | sql.Composed | str, params: Params | None = None) -> Any:
    """The first column of the query's first row; fails the test when it returns no row."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, f"no row from {query!r}"
    return row[0]


def drop_owned(connect: Callable[[], psycopg.Connection[Any]], roles: sql.Composable) -> None:
    """DROP OWNED BY `roles` in the database `connect` opens. It can deadlock with an
    autovacuum ANALYZE of a table it drops (both write pg_statistic), and is then the victim:
    retried a few times."""
    for attempt in range(5):
        try:
            with connect() as conn:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(roles))
            return
        except psycopg.errors.DeadlockDetected:
            if attempt == 4:
                raise
            time.sleep(0.5)
