"""Executor.batched(): statements sent together keep their order, reads and statements
with parameters see everything batched before them, and an error fails the transaction
and is recorded."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tablemig.lifecycle.executor import Executor, Recorder


def test_batched_statements_run_in_order_and_reads_see_them(fresh_db: Any) -> None:
    rec = Recorder()
    with fresh_db.connect() as conn:
        ex = Executor(conn, recorder=rec)
        with conn.transaction(), ex.batched():
            ex.run("CREATE TABLE b1 (x int) -- a trailing comment does not swallow the next statement")
            ex.run("INSERT INTO b1 VALUES (1)")
            ex.run("ALTER TABLE b1 RENAME TO b2")
            assert ex.scalar("SELECT count(*) FROM b2") == 1  # a read flushes what is pending
            ex.run("INSERT INTO b2 VALUES (%s)", (2,))  # parameters: run on their own, in order
            ex.run("INSERT INTO b2 VALUES (3)")
        assert conn.execute("SELECT array_agg(x ORDER BY x) FROM b2").fetchone()[0] == [1, 2, 3]
    sent = [s for s in rec.statements if s.batch]
    assert [s.batch for s in sent] == [3, 3, 3, 1]
    assert all(s.executed and s.error is None for s in rec.statements)


def test_an_error_in_a_batch_fails_the_transaction_and_is_recorded(fresh_db: Any) -> None:
    rec = Recorder()
    with fresh_db.connect() as conn:
        ex = Executor(conn, recorder=rec)
        with pytest.raises(psycopg.errors.UndefinedTable), conn.transaction(), ex.batched():
            ex.run("CREATE TABLE c1 (x int)")
            ex.run("INSERT INTO no_such_table VALUES (1)")
            ex.run("CREATE TABLE c2 (x int)")
        assert conn.execute("SELECT to_regclass('c1'), to_regclass('c2')").fetchone() == (None, None)
    assert "one of the 3 statements sent together failed" in (rec.statements[-1].error or "")
    assert "no_such_table" in (rec.statements[-1].error or "")


def test_recorded_sql_carries_its_values_and_no_password(fresh_db: Any) -> None:
    """What the record shows is what a DBA could rerun: the bound values written in as
    literals (never %s), and a password inside a value redacted."""
    from psycopg import sql

    rec = Recorder()
    with fresh_db.connect() as conn:
        ex = Executor(conn, recorder=rec)
        ex.run("CREATE TABLE v1 (d date, note text)")
        ex.run(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(sql.Identifier("v1")),
               ("2024-01-31", "it's host=h password=hunter2 dbname=x"))
        assert conn.execute("SELECT note FROM v1").fetchone()[0].endswith("password=hunter2 dbname=x")
    shown = rec.statements[-1].text
    assert "%s" not in shown and "'2024-01-31'" in shown and "it''s" in shown, shown
    assert "hunter2" not in shown and "password=***" in shown, shown
