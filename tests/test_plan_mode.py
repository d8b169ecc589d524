"""The dry run is the execution in plan mode: the same statements, in the same order, with
the same parameters, differing only in values the run observes (row counts, durations)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from twin import CUTOFF, create_events

from tablemig.config.spec import TableSpec
from tablemig.lifecycle.driver import Migration
from tablemig.lifecycle.executor import Recorder, StatementRecord
from tablemig.sandbox.demo_data import create_demo_data


def _shown(value: Any) -> Any:
    """A recorded parameter with every observed value reduced to its kind."""
    if isinstance(value, dict):
        if set(value) == {"observed", "value"}:
            return {"observed": value["observed"]}
        return {k: _shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown(v) for v in value]
    return value


# a catalog read of a table by its OID: after the swap the live table is another relation,
# whose OID the server assigned when the execution created it
_INSPECT = re.compile(r"(EXECUTE tablemig_inspect_\w+)\(\d+\)")


def _statements(recorder: Recorder) -> list[tuple[str, str, Any]]:
    def one(s: StatementRecord) -> tuple[str, str, Any]:
        d = s.as_dict()
        return s.kind, _INSPECT.sub(r"\1(oid)", " ".join(s.sql.split())), _shown(d.get("params"))
    return [one(s) for s in recorder.statements]


def _same(dry: list[tuple[str, str, Any]], real: list[tuple[str, str, Any]]) -> None:
    first = next((i for i, (a, b) in enumerate(zip(dry, real, strict=False)) if a != b), None)
    assert first is None and len(dry) == len(real), (
        f"the dry run and the execution differ at statement {first} of {len(dry)}/{len(real)}: "
        f"{dry[first] if first is not None and first < len(dry) else None} != "
        f"{real[first] if first is not None and first < len(real) else None}")


def _run(dsn: str, spec: TableSpec, mode: str, until: str) -> tuple[Recorder, Any]:
    recorder = Recorder()
    # unpaced, as a dry run is: the write guard's rests (and the drain of the change log
    # after one) are decided by the clock, not by the plan
    with Migration(dsn, spec, mode=mode, recorder=recorder, progress=lambda p: None,  # type: ignore[arg-type]
                   lock_timeout="1s", nice_ratio=0, app_write_share=0) as mig:
        final = mig.run(until)
    return recorder, final


@pytest.mark.parametrize("archive_mode,identity", [("rename", False), ("copy", True)])
def test_the_dry_run_records_the_statements_the_execution_runs(fresh_db: Any, archive_mode: str,
                                                               identity: bool) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, 5_000, identity=identity)
        before = conn.execute("SELECT count(*), to_regnamespace('table_migration') FROM events").fetchone()
    spec = TableSpec("public.events", "d", cutoff=CUTOFF.isoformat(), batch_size=500, archive_mode=archive_mode)
    planned, would = _run(fresh_db.dsn, spec, "plan", "swapped")
    with fresh_db.connect() as conn:  # the dry run changed nothing
        assert conn.execute("SELECT count(*), to_regnamespace('table_migration') FROM events").fetchone() == before
        assert before is not None and before[1] is None
    executed, final = _run(fresh_db.dsn, spec, "execute", "swapped")
    assert would is not None and final is not None and would.state == final.state == "swapped"
    dry, real = _statements(planned), _statements(executed)
    assert not [s for s in planned.statements if s.kind == "change" and s.executed]
    changes = [s for s in dry if s[0] == "change"]
    assert any(s[1].startswith("CREATE TRIGGER") for s in changes), "the capture trigger is in the dry run"
    assert any("ALTER TABLE" in s[1] and "RENAME" in s[1] for s in changes), "the swap is in the dry run"
    _same(dry, real)


def test_the_demo_plan_dry_run_records_the_statements_the_execution_runs(fresh_db: Any) -> None:
    """The demo's orders: a table referenced by a foreign key (the swap arms the orphan
    check and validates the re-pointed key) and read by a view (recreated by the swap)."""
    with fresh_db.connect() as conn:
        create_demo_data(conn, 5_000)
    spec = TableSpec("public.orders", "created_date", retention=0.1, batch_size=500)
    planned, would = _run(fresh_db.dsn, spec, "plan", "swapped")
    executed, final = _run(fresh_db.dsn, spec, "execute", "swapped")
    assert would is not None and final is not None and would.state == final.state == "swapped"
    dry, real = _statements(planned), _statements(executed)
    assert any("VALIDATE CONSTRAINT" in s[1] for s in dry if s[0] == "change"), "the re-pointed key is validated"
    _same(dry, real)
