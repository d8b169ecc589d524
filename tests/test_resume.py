"""A plan run that does not finish, and the run after it.

* Ctrl-C (SIGINT) while a step runs: the terminal, run.json, junit.xml and report.html say
  INTERRUPTED (the step interrupted, the later ones not run), pytest exits non-zero, and
  the rerun passes.
* SIGKILL of the plan during the load (while the application writes) and after the swap:
  each rerun continues from the recorded state, re-checks what is read-only, skips what is
  done (`resumed: already <state>`) and completes every item; the data is exact.
* A table left in any state (indexed, verified, pruned): the dry run reports the state and
  what remains, the executed plan completes.

The long steps are made long deterministically: `tablemig pause` holds the load, a session
of the test holds a lock a later step needs.
"""

from __future__ import annotations

import json
import os
import signal
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from faults_helpers import (
    Harness,
    Session,
    backfill_stuck,
    block_backfill_at,
    check_twin_invariants,
    migrate_args,
    ok,
    scalar,
    state_row,
    unblock_backfill,
    wait_for,
    wait_harness_gone,
)
from twin import CUTOFF, Writers, create_events

from tablemig.cli.newplan import render_plan
from tablemig.config.plan import Contact, TableConfig

HUMAN = ("PRE-1.3c", "PRE-3.1", "PRE-3.2", "POST-3", "SC-7", "SC-8")
ATTEST = [arg for item in HUMAN for arg in ("--attest", f"{item}=alice")]
# what the sandbox cannot offer: WAL archiving (PRE-2.2, RB-3), track_functions (POST-2)
SANDBOX_WARNINGS = {"PRE-2.2", "POST-2", "RB-3"}
# people who can be reached (the template's "[Name]" placeholders are a CONTACTS warning)
CONTACTS = [Contact("DBA Lead", "Ana Ruiz", "+34 600 100 200", "ana.ruiz@shop.es", "Primary"),
            Contact("Operations", "Noc Desk", "+34 600 100 300", "noc@shop.es", "24/7")]


def _plan(tmp: Path, name: str) -> Path:
    plan = tmp / f"{name}.py"
    plan.write_text(render_plan(name=name, path=str(plan), tables=[
        TableConfig("public.events", "d", cutoff=CUTOFF.isoformat(), batch_size=500)], contacts=CONTACTS))
    return plan


def _args(plan: Path, db: Any, tmp: Path, *extra: str) -> list[str]:
    return [str(plan), "-p", "no:cacheprovider", "--active-dsn", db.dsn, "--passive-dsn", db.passive_dsn,
            "--reports-dir", str(tmp / "reports"), *ATTEST, *extra]


def _latest(tmp: Path, plan: Path) -> Path:
    return (tmp / "reports" / plan.stem / "latest").resolve()


def _run_json(tmp: Path, plan: Path) -> dict[str, Any]:
    return dict(json.loads((_latest(tmp, plan) / "run.json").read_text()))


def _plan_to_end(plan: Path, db: Any, tmp: Path, workdir: str, *extra: str) -> tuple[int, str, dict[str, Any]]:
    with Harness(tmp / workdir, *_args(plan, db, tmp, *extra), module="pytest") as run:
        rc = run.wait(timeout=900)
        return rc, run.stdout, _run_json(tmp, plan)


def _assert_completed(run: dict[str, Any]) -> None:
    """Every checklist item passed, attested or not applicable (or a warning the sandbox
    causes); the run's verdict is PASSED."""
    assert run["status"] == "passed", run.get("headline")
    ids = {s["id"] for s in run["steps"]}
    assert len(ids) == 50, sorted(ids)
    bad = [(s["id"], s["status"], s["reason"]) for s in run["steps"]
           if s["status"] not in ("passed", "attested", "not-applicable")
           and not (s["status"] == "warning" and s["id"] in SANDBOX_WARNINGS)]
    assert not bad, bad


def _status(run: dict[str, Any], item: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["id"] == item)


def test_interrupted_run_says_so_everywhere_and_the_rerun_passes(fresh_db: Any, tmp_path: Path) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, 20_000)
    plan = _plan(tmp_path, "interrupted_plan")
    # the capture is in place and the load is paused: the plan's EX-2.2 waits for `resume`
    ok(*migrate_args(fresh_db.dsn, "--until", "capturing"))
    ok("pause", "--dsn", fresh_db.dsn, "--table", "public.events")
    with Harness(tmp_path / "first", *_args(plan, fresh_db, tmp_path, "--execute"), module="pytest") as run, \
            fresh_db.connect() as conn:
        wait_for(lambda: scalar(conn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                      " AND application_name LIKE 'tablemig%%'"
                                      " AND query ILIKE '%%checkpoint->>''paused''%%'"),
                 "the plan's load waiting on the pause", timeout=300, alive=run)
        run.proc.send_signal(signal.SIGINT)
        rc = run.wait(timeout=120)
        out = run.stdout
    assert rc != 0  # pytest's "interrupted"
    assert "tablemig: run INTERRUPTED during EX-2.2 public.events" in out, out[-3000:]
    result = _run_json(tmp_path, plan)
    assert result["status"] == "interrupted" and result["interrupted_at"] == ["EX-2.2 public.events"]
    steps = {s["id"]: s for s in result["steps"]}
    assert steps["EX-2.2"]["status"] == "interrupted" and steps["EX-2.2"]["duration_s"] > 0
    order = [s["id"] for s in result["steps"]]  # in checklist order
    later = result["steps"][order.index("EX-2.2") + 1:]
    assert len(later) == 25 and all(s["status"] == "not-run" for s in later), [(s["id"], s["status"]) for s in later]
    assert result["not_run"] == len(later)
    assert all(s["status"] != "running" for s in result["steps"])
    junit = ET.parse(_latest(tmp_path, plan) / "junit.xml").getroot()
    suite = junit.find("testsuite")
    assert suite is not None and int(suite.get("errors") or 0) >= 2
    errors = {c.get("name"): e for c in suite.iter("testcase") if (e := c.find("error")) is not None}
    assert "EX-2.2 public.events" in errors and "run verdict" in errors
    assert errors["run verdict"].get("type") == "interrupted"
    html = (_latest(tmp_path, plan) / "report.html").read_text()
    assert "<title>interrupted_plan · execute · INTERRUPTED" in html
    assert 'data-step-id="EX-2.2" data-status="interrupted"' in html and 'id="unfinished"' in html
    # the rerun continues the load and completes every item
    ok("resume", "--dsn", fresh_db.dsn, "--table", "public.events")
    with fresh_db.connect() as conn:
        wait_harness_gone(conn)
    rc, out, result = _plan_to_end(plan, fresh_db, tmp_path, "second", "--execute")
    assert rc == 0, out[-3000:]
    _assert_completed(result)
    assert "tablemig: run PASSED" in out
    assert _status(result, "EX-2.2")["evidence"]["resumed"] == "resumed: already backfilling"
    with fresh_db.connect() as conn:
        check_twin_invariants(conn)


def test_plan_killed_in_the_load_and_after_the_swap_resumes(fresh_db: Any, tmp_path: Path) -> None:
    rows = 60_000
    with fresh_db.connect() as conn:
        create_events(conn, rows)
    plan = _plan(tmp_path, "killed_plan")
    ok(*migrate_args(fresh_db.dsn, "--until", "capturing"))
    # 1. SIGKILL in the load, while the application writes: a load chunk waits on the test's
    # uncommitted rows, the chunks before it are committed
    blocker = block_backfill_at(fresh_db.dsn, offset=3000)
    try:
        with Harness(tmp_path / "first", *_args(plan, fresh_db, tmp_path, "--execute"), module="pytest") as run, \
                fresh_db.connect() as conn:
            wait_for(lambda: backfill_stuck(conn), "the plan's load mid-way", timeout=300, alive=run)
            with Writers(fresh_db.dsn, rows) as writers:
                wait_for(lambda: sum(writers.stats.ops.values()) > 30, "application writes", timeout=60)
                run.kill()
                wait_harness_gone(conn)
                wait_for(lambda: sum(writers.stats.ops.values()) > 60, "writes after the kill", timeout=60)
    finally:
        blocker.close()
    unblock_backfill(fresh_db.dsn)
    with fresh_db.connect() as conn:
        m = state_row(conn)
        assert m is not None and m["state"] == "backfilling" and m["rows_copied"] > 0, m
    assert not (tmp_path / "reports" / plan.stem / "latest").exists()  # killed: no report, nothing stale
    # the dry run of a table mid-load reports its state and what remains
    rc, out, result = _plan_to_end(plan, fresh_db, tmp_path, "dry")
    assert rc == 0, out[-3000:]
    ex22 = _status(result, "EX-2.2")
    assert ex22["status"] == "dry-run" and ex22["evidence"]["resumed_state"] == "backfilling"
    assert any("load the kept rows" in w for w in ex22["evidence"]["remaining"])
    # 2. SIGKILL after the swap: EX-3.3 waits for the test's lock on its replication_control row
    holder = Session(fresh_db.dsn)
    try:
        holder.execute("SELECT * FROM table_migration.replication_control WHERE table_name = 'public.events'"
                       " FOR UPDATE")
        with Harness(tmp_path / "second", *_args(plan, fresh_db, tmp_path, "--execute"), module="pytest") as run, \
                fresh_db.connect() as conn:
            wait_for(lambda: (state_row(conn) or {}).get("state") == "swapped" and scalar(
                conn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                      " AND application_name LIKE 'tablemig%%' AND wait_event_type = 'Lock'"
                      " AND query ILIKE '%%replication_control%%'"),
                "the plan waiting in EX-3.3 after the swap", timeout=300, alive=run)
            run.kill()
            wait_harness_gone(conn)
    finally:
        holder.close()
    second = _latest(tmp_path, plan)
    assert _run_json(tmp_path, plan)["mode"] == "dry-run"  # the killed run left no report
    # the dry run after the swap: nothing crashes, the state is reported
    rc, out, result = _plan_to_end(plan, fresh_db, tmp_path, "dry2")
    assert rc == 0, out[-3000:]
    assert _status(result, "EX-2.2")["evidence"]["resumed_state"] == "swapped"
    assert _status(result, "PRE-1.1c")["status"] == "passed"
    # 3. the rerun completes the checklist
    rc, out, result = _plan_to_end(plan, fresh_db, tmp_path, "third", "--execute")
    assert rc == 0, out[-3000:]
    assert _latest(tmp_path, plan) != second
    _assert_completed(result)
    for item in ("EX-2.1", "EX-2.2"):
        assert _status(result, item)["evidence"]["resumed"] == "resumed: already swapped", item
    checked = _status(result, "PRE-1.1c")["evidence"]["tables"]
    assert len(checked) == 2  # the live table and the original, now the archive
    with fresh_db.connect() as conn:
        check_twin_invariants(conn)


@pytest.mark.parametrize("until", ["indexed", "verified", "pruned"])
def test_plan_resumes_from_any_recorded_state(fresh_db: Any, tmp_path: Path, until: str) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, 20_000)
    ok(*migrate_args(fresh_db.dsn, "--until", "swapped" if until == "pruned" else until))
    if until == "pruned":
        ok("prune", "--execute", "--dsn", fresh_db.dsn, "--table", "public.events")
    plan = _plan(tmp_path, f"from_{until}")
    rc, out, result = _plan_to_end(plan, fresh_db, tmp_path, "dry")
    assert rc == 0, out[-3000:]
    assert _status(result, "EX-2.2")["evidence"]["resumed_state"] == until
    rc, out, result = _plan_to_end(plan, fresh_db, tmp_path, "execute", "--execute")
    assert rc == 0, out[-3000:]
    _assert_completed(result)
    assert _status(result, "EX-2.2")["evidence"]["resumed"] == f"resumed: already {until}"
    with fresh_db.connect() as conn:
        m = state_row(conn)
        assert m is not None and m["state"] == ("pruned" if until == "pruned" else "swapped")
        if until != "pruned":
            check_twin_invariants(conn)
        else:  # live and archive are the original's two halves
            assert scalar(conn, "SELECT count(*) FROM events") + scalar(
                conn, f"SELECT count(*) FROM {m['archive_name']}") == 20_000
            assert scalar(conn, f"SELECT count(*) FROM events e JOIN {m['archive_name']} a USING (id)") == 0


def test_parts_left_by_a_killed_parallel_run_are_never_merged(fresh_db: Any, tmp_path: Path) -> None:
    """Under pytest -n the workers write parts that the controller merges; a run killed
    before its merge leaves them behind. The next run merges its own parts only (and removes
    old leftovers): its report is not the dead run's."""
    with fresh_db.connect() as conn:
        create_events(conn, 5_000)
    plan = _plan(tmp_path, "parallel_plan")
    stale = tmp_path / "reports" / plan.stem / ".parts" / "ffffffff"  # sorts after any run id
    stale.mkdir(parents=True)
    (stale / "gw0.json").write_text(json.dumps({
        "plan": plan.stem, "module": plan.stem, "mode": "dry-run", "started": 1.0, "facts": {}, "tables": {},
        "contacts": [], "steps": [{"id": "PRE-1.1a", "table": None, "status": "failed", "reason": "stale",
                                   "started": 1.0, "duration_s": 0.0, "evidence": {}, "statements": []}]}))
    os.utime(stale / "gw0.json", (1.0, 1.0))
    rc, out, result = _plan_to_end(plan, fresh_db, tmp_path, "parallel", "-n", "2", "--dist", "loadgroup")
    assert rc == 0, out[-3000:]
    assert result["status"] == "passed" and _status(result, "PRE-1.1a")["status"] == "passed"
    assert len(result["steps"]) == 50 and not [s for s in result["steps"] if s["status"] == "not-run"]
    runs = [p for p in (tmp_path / "reports" / plan.stem).iterdir()
            if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
    assert len(runs) == 1 and not stale.exists()
