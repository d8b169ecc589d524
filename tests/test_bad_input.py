"""Bad input: each case gives an error naming the problem and the fix, and changes nothing.
Hostile and unusual names are migrated correctly."""

from __future__ import annotations

from typing import Any

import pytest
from snapshots import snapshot
from state_helpers import stored

from tablemig.config.spec import TableSpec
from tablemig.errors import InputError
from tablemig.lifecycle.driver import Migration

SETUP = """
CREATE TABLE t (id bigint PRIMARY KEY, d timestamptz, s text, n int);
INSERT INTO t SELECT g, '2024-01-01'::timestamptz + g * interval '1 hour', 's' || g, g FROM generate_series(1, 2000) g;
CREATE INDEX t_d ON t (d);
CREATE TABLE nokey (id bigint, d timestamptz);
INSERT INTO nokey SELECT g, now() FROM generate_series(1, 10) g;
CREATE VIEW v AS SELECT * FROM t;
CREATE TABLE parted (id bigint, d date NOT NULL, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
CREATE TABLE parted_2024 PARTITION OF parted FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE parent (id bigint PRIMARY KEY, d date);
CREATE TABLE child () INHERITS (parent);
CREATE TABLE t_new (x int);
CREATE EXTENSION IF NOT EXISTS file_fdw;
CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
CREATE FOREIGN TABLE ft (id bigint, d date) SERVER files OPTIONS (filename '/dev/null');
"""

CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("nope.t", {"retention": 0.1}, "schema 'nope' does not exist", "check the schema name"),
    ("public.missing", {"retention": 0.1}, "does not exist", "check the name"),
    ("v", {"retention": 0.1}, "is a view, not a table", "ordinary table"),
    ("ft", {"retention": 0.1}, "is a foreign table, not a table", "ordinary table"),
    ("nokey", {"retention": 0.1}, "has no primary key and no unique index", "add a primary key"),
    ("parted", {"retention": 0.1}, "is a partitioned table: refused", "DETACH PARTITION"),
    ("parent", {"retention": 0.1}, "takes part in table inheritance: refused", "NO INHERIT"),
    ("child", {"retention": 0.1}, "takes part in table inheritance: refused", "NO INHERIT"),
    ("t", {"retention": 0.1, "date_column": "nope"}, "column 'nope' does not exist", "name a date column"),
    ("t", {"retention": 0.1, "date_column": "s"}, "is of type text, not a date or timestamp", "choose a date"),
    ("t", {"cutoff": "2030-01-01"}, "keeps no rows", "earlier cutoff"),
    ("t", {"cutoff": "2000-01-01"}, "keeps all 2000 rows", "later cutoff"),
    ("t", {"cutoff": "not a date"}, "is not a valid timestamp with time zone", "2024-01-01"),
    ("t", {"retention": 0.1, "new_table": "t_new"}, "new table name public.t_new is already taken", "drop or rename"),
    ("t", {"retention": 0.1, "new_table": "t_fresh", "archive_table": "v"},
     "archive table name public.v is already taken", "drop or rename"),
]


@pytest.mark.parametrize(("table", "kw", "problem", "fix"), CASES, ids=[f"{c[0]}-{c[2][:24]}" for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(fresh_db: Any, table: str, kw: dict[str, Any], problem: str,
                                                  fix: str) -> None:
    with fresh_db.connect() as conn:
        conn.execute(SETUP)
        before = snapshot(conn, ("t",))
        kw = {"date_column": "d", **kw}
        with pytest.raises(InputError) as err:
            spec = TableSpec(table, **kw)
            with Migration(fresh_db.dsn, spec) as mig:
                mig.run("swapped")
        assert problem in err.value.problem, err.value.problem
        assert fix.lower() in err.value.fix.lower(), err.value.fix
        assert snapshot(conn, ("t",)) == before


@pytest.mark.parametrize(("kw", "problem"), [
    ({"retention": 0}, "out of range"), ({"retention": 1}, "out of range"), ({"retention": -0.5}, "out of range"),
    ({"retention": 1.5}, "out of range"), ({}, "exactly one of retention or cutoff"),
    ({"retention": 0.1, "cutoff": "2024-01-01"}, "exactly one of retention or cutoff"),
    ({"retention": 0.1, "archive_mode": "move"}, "archive mode 'move' is unknown"),
    ({"retention": 0.1, "batch_size": 0}, "batch size 0 must be positive"),
])
def test_bad_spec_is_refused_before_connecting(kw: dict[str, Any], problem: str) -> None:
    with pytest.raises(InputError) as err:
        TableSpec("public.t", "d", **kw)
    assert problem in err.value.problem and err.value.fix


def test_null_dates_are_reported_and_stay_in_the_archive(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        conn.execute(SETUP)
        conn.execute("UPDATE t SET d = NULL WHERE id % 100 = 0")
        spec = TableSpec("t", "d", retention=0.2, batch_size=300, new_table="t_live")
        with Migration(fresh_db.dsn, spec, progress=lambda p: None) as mig:
            plan = mig.plan()
            assert any("20 rows have a NULL d: they are history and stay in the archive" in w for w in plan.warnings)
            mig.run("swapped")
            archive = stored(mig).archive.name
        assert conn.execute("SELECT count(*) FROM t WHERE d IS NULL").fetchone() == (0,)
        assert conn.execute(f"SELECT count(*) FROM {archive} WHERE d IS NULL").fetchone() == (20,)


def test_unreachable_dsn_names_the_server_without_the_password() -> None:
    with pytest.raises(InputError) as err:
        Migration("host=127.0.0.1 port=1 dbname=x user=u password=Sup3rSecret connect_timeout=2",
                  TableSpec("t", "d", retention=0.1))
    assert "cannot connect" in err.value.problem and "Sup3rSecret" not in str(err.value)
    assert "is the server running" in err.value.fix


HOSTILE = [
    'Mixed Case "Quoted" Table',
    'x"; DROP TABLE victim; --',
    "ünïcødé tàblé",
    "t" * 63,
    "é" * 31 + "x",  # 63 bytes: a derived name must be shortened without splitting a character
]


@pytest.mark.parametrize("name", HOSTILE, ids=["quotes", "injection", "unicode", "63-bytes", "63-bytes-utf8"])
def test_hostile_and_unusual_names_migrate(fresh_db: Any, name: str) -> None:
    with fresh_db.connect() as conn:
        conn.execute("CREATE TABLE victim (x int)")
        conn.execute('CREATE SCHEMA "Odd Schema"')
        q = '"' + name.replace('"', '""') + '"'
        col = '"When; it happened"'
        conn.execute(f'CREATE TABLE "Odd Schema".{q} (id int PRIMARY KEY, {col} date NOT NULL, v text)')
        conn.execute(f'INSERT INTO "Odd Schema".{q} SELECT g, date \'2024-01-01\' + g, \'v\''
                     " FROM generate_series(1, 500) g")
        spec = TableSpec(f'"Odd Schema".{q}', "When; it happened", retention=0.1, batch_size=100)
        with Migration(fresh_db.dsn, spec, progress=lambda p: None) as mig:
            mig.run("swapped")
            m = stored(mig)
        assert conn.execute(f'SELECT count(*) FROM "Odd Schema".{q}').fetchone() == (50,)
        assert len(m.new.name.encode()) <= 63 and len(m.archive.name.encode()) <= 63
        assert conn.execute("SELECT to_regclass('victim')").fetchone() != (None,)
