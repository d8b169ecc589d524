"""I8 faithful: after the swap the live table has every property of the original but its
name, and a rollback gives the original all of them back — or the migration is refused
before anything changes. One small table per property (tests/fidelity_cases.py), migrated
through the command line and through a generated plan: the inventory of the original and
of the live table must be identical, and writes that rely on the property must behave the
same on the original, on the live table and on the original after the rollback."""

from __future__ import annotations

import contextlib
import fcntl
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fidelity_cases import BY_NAME, CASES, CUTOFF, Case, create, mirror_holds, use
from snapshots import snapshot

from conftest import FreshDb, new_database
from tablemig.cli.newplan import render_plan
from tablemig.config.plan import TableConfig
from tablemig.pg import inventory
from tablemig.pg.names import QualifiedName

IDENTICAL = "inventory identical except the name"
MIGRATED = [c.name for c in CASES if c.refused is None]


def _tablemig(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tablemig.cli.main", *args], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def _inventory(conn: psycopg.Connection[Any], case: Case) -> inventory.Inventory:
    return inventory.read(conn, QualifiedName(case.schema, "t"))


def _archive(conn: psycopg.Connection[Any], case: Case) -> str:
    row = conn.execute("SELECT archive_name FROM table_migration.migration_state WHERE table_name = %s",
                       (case.table,)).fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_I8_cli_migrate_and_rollback_carry_every_property(module_db: FreshDb, name: str) -> None:
    case = BY_NAME[name]
    spec = ["--dsn", module_db.dsn, "--table", case.table, "--date-column", "d", "--cutoff", CUTOFF]
    with module_db.connect() as conn:
        create(conn, case)
        case.check(conn)  # the check itself holds on the original
        before = _inventory(conn, case)
        if case.refused:
            catalog = snapshot(conn)
            proc = _tablemig("migrate", "--execute", "--json", *spec)
            assert proc.returncode != 0 and case.refused in proc.stderr, proc.stderr
            assert snapshot(conn) == catalog, "a refused migration changed the catalog"
            return
        proc = _tablemig("migrate", "--execute", "--json", *spec)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["inventory"] == IDENTICAL
        use(conn, case)
        assert inventory.differences(before, _inventory(conn, case)) == []
        case.check(conn)
        assert mirror_holds(conn, _archive(conn, case)) == 0
        proc = _tablemig("rollback", "--execute", "--dsn", module_db.dsn, "--table", case.table)
        assert proc.returncode == 0 and "swapped back" in proc.stdout, proc.stderr
        assert inventory.differences(before, _inventory(conn, case)) == []
        case.check(conn)


def test_I8_swap_refuses_what_changed_on_the_original_during_the_migration(module_db: FreshDb) -> None:
    """A property the new table cannot have (here a column comment made after it was built)
    is found under the swap's lock: the swap rolls back and names it; the migration resumes
    once the new table has it too."""
    case = Case("changed_during", "ALTER TABLE t ADD PRIMARY KEY (id);", lambda conn: None)
    spec = ["--dsn", module_db.dsn, "--table", case.table, "--date-column", "d", "--cutoff", CUTOFF]
    with module_db.connect() as conn:
        create(conn, case)
        before = _inventory(conn, case)
        assert _tablemig("migrate", "--execute", "--json", *spec, "--until", "verified").returncode == 0
        use(conn, case)
        conn.execute("COMMENT ON COLUMN t.v IS 'said during the migration'")
        proc = _tablemig("migrate", "--execute", "--json", *spec)
        assert proc.returncode != 0, proc.stdout
        assert "columns v: comment 'said during the migration' before, None after" in proc.stderr, proc.stderr
        assert "nothing was changed" in proc.stderr and "Traceback" not in proc.stderr
        assert conn.execute("SELECT state FROM table_migration.migration_state WHERE table_name = %s",
                            (case.table,)).fetchone() == ("verified",)
        assert inventory.differences(before, _inventory(conn, case)) == [
            "columns v: comment None before, 'said during the migration' after"]
        conn.execute("COMMENT ON COLUMN t_new.v IS 'said during the migration'")
        proc = _tablemig("migrate", "--execute", "--json", *spec)
        assert proc.returncode == 0 and json.loads(proc.stdout)["inventory"] == IDENTICAL, proc.stderr


# -- the same tables through one generated plan ---------------------------------------------
def _run_plan(plan: Path, db: FreshDb, tmp: Path, *extra: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", str(plan), "-q", "-p", "no:cacheprovider", "--active-dsn", db.dsn,
           "--passive-dsn", db.passive_dsn or "", "--reports-dir", str(tmp / "reports"), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp)
    runs = sorted((tmp / "reports").glob("*/latest/run.json"))
    assert runs, proc.stdout[-3000:] + proc.stderr[-3000:]
    run: dict[str, Any] = json.loads(runs[-1].read_text())
    return run


def _steps(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{s['id']} {s['table']}": s for s in run["steps"] if s["table"]}


def _attempt(errors: list[str], stage: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - recorded per case, asserted by its own test
        errors.append(f"{stage}: {type(exc).__name__}: {exc}")
        return None


def _check_swapped(conn: psycopg.Connection[Any], case: Case, steps: dict[str, Any],
                   before: inventory.Inventory, err: list[str]) -> None:
    """One case after --execute: refused with nothing changed, or swapped faithfully with
    the archive mirroring the live rows."""
    ex21, ex41 = steps[f"EX-2.1 {case.table}"], steps.get(f"EX-4.1 {case.table}", {})
    if case.refused:
        if ex21["status"] != "failed" or case.refused not in json.dumps(ex21):
            err.append(f"EX-2.1 did not refuse: {ex21['status']} {ex21.get('reason')}")
        diffs = inventory.differences(before, _inventory(conn, case))
        leftover = conn.execute("SELECT to_regclass('t_new')").fetchone()
        if diffs or leftover != (None,):
            err.append(f"refused, but changed: {diffs} {leftover}")
        return
    said = ex41.get("evidence", {}).get("inventory")
    if ex41.get("status") != "passed" or said != IDENTICAL:
        err.append(f"EX-4.1 {ex41.get('status')}: {ex41.get('reason')} {said}")
    diffs = _attempt(err, "inventory after the swap", inventory.differences, before,
                     _attempt(err, "read", _inventory, conn, case) or {})
    if diffs:
        err.append(f"after the swap: {diffs}")
    _attempt(err, "check after the swap", case.check, conn)
    archive = _attempt(err, "archive", _archive, conn, case)
    if archive and _attempt(err, "mirror", mirror_holds, conn, archive):
        err.append("the archive lacks live rows")


def _plan_outcome(db: FreshDb, tmp: Path) -> dict[str, list[str]]:
    """Every case through one plan: set up, --execute, checks, --execute --rollback,
    checks. Returns the problems found per case (empty: faithful)."""
    errors: dict[str, list[str]] = {c.name: [] for c in CASES}
    before: dict[str, inventory.Inventory] = {}
    with db.connect() as conn:
        for case in CASES:
            create(conn, case)
            _attempt(errors[case.name], "check on the original", case.check, conn)
            before[case.name] = _inventory(conn, case)
    plan = tmp / "fidelity_plan.py"
    plan.write_text(render_plan(name="fidelity_plan", path=str(plan),
                                tables=[TableConfig(c.table, "d", cutoff=CUTOFF) for c in CASES]))
    steps = _steps(_run_plan(plan, db, tmp, "--execute"))
    with db.connect() as conn:
        for case in CASES:
            use(conn, case)
            _check_swapped(conn, case, steps, before[case.name], errors[case.name])
    steps = _steps(_run_plan(plan, db, tmp, "--execute", "--rollback"))
    with db.connect() as conn:
        for case in CASES:
            if case.refused:
                continue
            err, rb1 = errors[case.name], steps[f"RB-1 {case.table}"]
            if rb1["status"] != "passed" or rb1.get("evidence", {}).get("inventory") != IDENTICAL:
                err.append(f"RB-1 {rb1['status']}: {rb1.get('reason')} {rb1.get('evidence', {}).get('inventory')}")
            use(conn, case)
            diffs = _attempt(err, "inventory after the rollback", inventory.differences, before[case.name],
                             _attempt(err, "read", _inventory, conn, case) or {})
            if diffs:
                err.append(f"after the rollback: {diffs}")
            _attempt(err, "check after the rollback", case.check, conn)
    return errors


@contextlib.contextmanager
def _once_per_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                  name: str) -> Iterator[tuple[Path, bool]]:
    """A directory shared by the xdist workers of this run, locked while the caller holds it;
    True when the caller is the first to hold it."""
    worker = getattr(request.config, "workerinput", None)
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent / f"{name}-{worker['testrunuid'][:12]}") if worker else base / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            first = not (folder / "done").exists()
            yield folder, first
            if first:
                (folder / "done").touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def plan_outcome(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 active: psycopg.Connection[Any], active_dsn: str, passive_dsn: str | None) -> dict[str, list[str]]:
    """The plan runs once per test run (also under xdist: the other workers read its outcome)."""
    with _once_per_run(request, tmp_path_factory, "fidelity-plan") as (folder, first):
        result = folder / "outcome.json"
        if first:
            with new_database(active, active_dsn, passive_dsn) as db:
                result.write_text(json.dumps(_plan_outcome(db, folder)))
        outcome: dict[str, list[str]] = json.loads(result.read_text())
        return outcome


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_I8_plan_execute_and_rollback_carry_every_property(plan_outcome: dict[str, list[str]], name: str) -> None:
    assert plan_outcome[name] == []
