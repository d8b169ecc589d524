"""The dry run is the execution in plan mode: the same statements, in the same order, with
the same parameters, differing only in values the run observes (row counts, durations)."""

from __future__ import annotations

from typing import Any

import pytest
from plan_compare import run, same, statements
from twin import CUTOFF, create_events

from tablemig.config.spec import TableSpec
from tablemig.pg.schema import install_schema
from tablemig.sandbox.demo_data import create_demo_data


@pytest.mark.parametrize("archive_mode,identity", [("rename", False), ("copy", True)])
def test_the_dry_run_records_the_statements_the_execution_runs(fresh_db: Any, archive_mode: str,
                                                               identity: bool) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, 5_000, identity=identity)
        before = conn.execute("SELECT count(*), to_regnamespace('table_migration') FROM events").fetchone()
    spec = TableSpec("public.events", "d", cutoff=CUTOFF.isoformat(), batch_size=500, archive_mode=archive_mode)
    planned, would = run(fresh_db.dsn, spec, "plan", "swapped")
    with fresh_db.connect() as conn:  # the dry run changed nothing
        assert conn.execute("SELECT count(*), to_regnamespace('table_migration') FROM events").fetchone() == before
        assert before is not None and before[1] is None
    executed, final = run(fresh_db.dsn, spec, "execute", "swapped")
    assert would is not None and final is not None and would.state == final.state == "swapped"
    dry, real = statements(planned), statements(executed)
    assert not [s for s in planned.statements if s.kind == "change" and s.executed]
    changes = [s[2] for s in dry if s[1] == "change"]
    assert any(s.startswith("CREATE TRIGGER") for s in changes), "the capture trigger is in the dry run"
    assert any("ALTER TABLE" in s and "RENAME" in s for s in changes), "the swap is in the dry run"
    same(dry, real)


def test_the_demo_plan_dry_run_records_the_statements_the_execution_runs(fresh_db: Any) -> None:
    """The demo's orders: a table referenced by a foreign key (the swap arms the orphan
    check and validates the re-pointed key) and read by a view (recreated by the swap). The
    schema is installed beforehand, as EX-1.1 does."""
    with fresh_db.connect() as conn:
        create_demo_data(conn, 5_000)
        install_schema(conn)
    spec = TableSpec("public.orders", "created_date", retention=0.1, batch_size=500)
    planned, would = run(fresh_db.dsn, spec, "plan", "swapped")
    executed, final = run(fresh_db.dsn, spec, "execute", "swapped")
    assert would is not None and final is not None and would.state == final.state == "swapped"
    dry, real = statements(planned), statements(executed)
    assert any("VALIDATE CONSTRAINT" in s[2] for s in dry if s[1] == "change"), "the re-pointed key is validated"
    same(dry, real)
