"""Fixtures shared by the test suite (the plan fixtures come from the tablemig plugin).

Every test that changes data gets its own database (`fresh_db`), created on the active
site and replicated to the standby, so tests stay independent under pytest-xdist.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tablemig.db import connect
from tablemig.replication import wait_for_replay


def with_dbname(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)


@dataclass
class FreshDb:
    name: str
    dsn: str
    passive_dsn: str | None

    def connect(self, **kw: Any) -> psycopg.Connection[Any]:
        return connect(self.dsn, **kw)


@pytest.fixture
def fresh_db(active: psycopg.Connection[Any], active_dsn: str,
             passive_dsn: str | None) -> Iterator[FreshDb]:
    """A new empty database on the active site (visible on the standby by replication)."""
    with new_database(active, active_dsn, passive_dsn) as db:
        yield db


@pytest.fixture(scope="module")
def module_db(active: psycopg.Connection[Any], active_dsn: str,
              passive_dsn: str | None) -> Iterator[FreshDb]:
    """`fresh_db` shared by the tests of one module (each keeps to its own schema)."""
    with new_database(active, active_dsn, passive_dsn) as db:
        yield db


@contextlib.contextmanager
def new_database(active: psycopg.Connection[Any], active_dsn: str,
                 passive_dsn: str | None) -> Iterator[FreshDb]:
    """Create a database on the active site, wait for the standby to have it, drop it after."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    active.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    if passive_dsn:
        # a test connecting to the passive site at once must not race the standby's replay
        # of CREATE DATABASE (it lags a moment while another xdist worker writes)
        with connect(passive_dsn) as passive:
            if passive.execute("SELECT pg_is_in_recovery()").fetchone()[0]:  # type: ignore[index]
                wait_for_replay(active, passive, timeout_s=30)
    db = FreshDb(name, with_dbname(active_dsn, name),
                 with_dbname(passive_dsn, name) if passive_dsn else None)
    try:
        yield db
    finally:
        active.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
