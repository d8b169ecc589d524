"""The plan's checks on a database that never stops writing, and at any size.

* the checklist, dry run then --execute, while writers insert, update, delete, move dates
  across the cutoff both ways and change keys during the whole run (physical standby): every
  step that compares numbers reads them in one snapshot (EX-1.3, EX-4.1, POST-2) and the two
  sites are compared so that the comparison converges (PRE-1.1c, EX-3.2);
* EX-4.1 counts the archive's rows missing from the live table with an anti-join, never
  `NOT IN (SELECT ...)`;
* a check that runs longer than the plan's validation_timeout fails its step and names itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from twin import CUTOFF, Writers, create_events

from tablemig.checklist.steps.execution import integrity_counts_sql
from tablemig.cli.newplan import render_plan
from tablemig.config.plan import PlanConfig, TableConfig
from tablemig.config.spec import TableSpec
from tablemig.errors import InputError
from tablemig.lifecycle.driver import Migration
from tablemig.pg.names import QualifiedName

ROWS = 10_000


def _run(plan: Path, db: Any, tmp: Path, *extra: str, passive: bool = True) -> tuple[dict[str, dict[str, Any]], str]:
    cmd = [sys.executable, "-m", "pytest", str(plan), "-q", "-p", "no:cacheprovider", "--active-dsn", db.dsn,
           "--reports-dir", str(tmp / "reports"), *extra]
    if passive:
        cmd += ["--passive-dsn", db.passive_dsn]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp)
    run = json.loads(sorted((tmp / "reports").glob("*/latest/run.json"))[-1].read_text())
    return {s["id"]: s for s in run["steps"]}, proc.stdout[-3000:]


def test_plan_checks_pass_under_writes_on_a_standby(fresh_db: Any, tmp_path: Path) -> None:
    """Fails on a check that reads two numbers at two moments (EX-1.3 summed the monthly
    counts of one moment against the plan's total of another) or that reads each site once
    (PRE-1.1c, EX-3.2)."""
    with fresh_db.connect() as conn:
        create_events(conn, ROWS)
    plan = tmp_path / "busy_plan.py"
    plan.write_text(render_plan(name="busy_plan", path=str(plan), tables=[
        TableConfig("public.events", "d", cutoff=CUTOFF.isoformat(), batch_size=2000)]))
    with Writers(fresh_db.dsn, ROWS, threads=2) as writers:
        dry, dry_out = _run(plan, fresh_db, tmp_path)
        done, out = _run(plan, fresh_db, tmp_path, "--execute")
    assert sum(writers.stats.ops.values()) > 200, writers.stats
    for item in ("PRE-1.1c", "EX-1.3"):
        assert dry[item]["status"] in ("passed", "warning"), (item, dry[item], dry_out)
    for item in ("PRE-1.1c", "EX-1.3", "EX-2.2", "EX-3.2", "EX-4.1", "POST-2"):
        assert done[item]["status"] in ("passed", "warning"), (item, done[item], out)
    assert "divergent" not in done["EX-3.2"]["reason"]
    live = done["EX-3.2"]["evidence"]["sites"]["live"]
    assert live["divergent_keys"] == 0 and live["rows_active"] > 0
    assert done["POST-2"]["evidence"]["integrity"]["public.events"]["match"]


ANALYSIS_PLAN = '''
from tablemig.config.plan import PlanConfig, TableConfig, step
from tablemig.checklist.registry import STEPS
from tablemig.plugin.steps import StepContext

PLAN = PlanConfig(name="analysis_plan", tables=[TableConfig("public.events", "d", cutoff={cutoff!r})])


@step("EX-1.3")
def test_ex_1_3_analyze_tables(ctx: StepContext) -> None:
    """EX-1.3 alone, while rows are inserted without a pause."""
    STEPS["EX-1.3"](ctx)
'''


def test_ex_1_3_adds_up_while_rows_are_inserted(fresh_db: Any, tmp_path: Path) -> None:
    """The monthly counts and the total they must add up to come from one snapshot. Fails
    when they are read at two moments (a commit falls between them at every run)."""
    with fresh_db.connect() as conn:
        create_events(conn, ROWS)
    plan = tmp_path / "analysis_plan.py"
    plan.write_text(ANALYSIS_PLAN.format(cutoff=CUTOFF.isoformat()))
    stop = threading.Event()
    inserted = [0]

    def insert() -> None:
        with fresh_db.connect() as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO events VALUES (nextval('events_ids'), now(), 1, 'new')")
                inserted[0] += 1

    writer = threading.Thread(target=insert, daemon=True)
    writer.start()
    try:
        steps, out = _run(plan, fresh_db, tmp_path, passive=False)
    finally:
        stop.set()
        writer.join(10)
    assert inserted[0] > 100
    step = steps["EX-1.3"]
    assert step["status"] == "passed", (step, out)
    assert step["evidence"]["rows_total"] > ROWS  # counted while the inserts ran


def test_ex_4_1_counts_the_archive_with_an_anti_join(fresh_db: Any) -> None:
    """No `NOT IN (SELECT ...)`: once the live keys no longer fit work_mem PostgreSQL would
    scan them again for every archive row. The plan is an anti-join, whatever work_mem."""
    with fresh_db.connect() as conn:
        create_events(conn, 20_000, table="big")
        conn.execute("CREATE TABLE big_live AS SELECT * FROM big WHERE d >= %s", (CUTOFF,))
        conn.execute("ALTER TABLE big_live ADD PRIMARY KEY (id)")
        conn.execute("ANALYZE big_live")
        query = integrity_counts_sql(QualifiedName("public", "big_live"), QualifiedName("public", "big"), ["id"])
        text = query.as_string(conn)
        assert "NOT IN" not in text.upper() and "NOT EXISTS" in text.upper()
        for work_mem in ("64kB", "64MB"):
            conn.execute(f"SET work_mem = '{work_mem}'")
            shown = "\n".join(r[0] for r in conn.execute(b"EXPLAIN " + text.encode()).fetchall())
            assert "Anti Join" in shown, shown
            assert "SubPlan" not in shown, shown
        live, history, total = conn.execute(query).fetchone()
        assert (live, history, total) == (conn.execute("SELECT count(*) FROM big_live").fetchone()[0],
                                         20_000 - live, 20_000)


def test_validation_timeout_is_checked_when_the_plan_is_read() -> None:
    table = [TableConfig("public.orders", "created_date", retention=0.1)]
    assert PlanConfig("p", table).validation_timeout == "30min"
    assert PlanConfig("p", table, validation_timeout="2 h").validation_timeout == "2h"
    assert PlanConfig("p", table, validation_timeout="1500").validation_timeout == "1500ms"
    with pytest.raises(InputError, match="validation_timeout 'soon' is not a duration"):
        PlanConfig("p", table, validation_timeout="soon")


TIMEOUT_PLAN = '''
import psycopg
from tablemig.pg.connect import connect
from tablemig.config.plan import PlanConfig, TableConfig, step
from tablemig.checklist.registry import STEPS
from tablemig.plugin.steps import StepContext

PLAN = PlanConfig(name="slow_plan", tables=[TableConfig("public.events", "d", cutoff={cutoff!r})],
                  validation_timeout="1s")


@step("POST-2")
def test_post_2_first_week(ctx: StepContext) -> None:
    """POST-2, while another session holds a lock on the archive: its check waits."""
    with connect(ctx.active_dsn) as other:
        other.execute("BEGIN")
        other.execute("LOCK TABLE public.{archive} IN ACCESS EXCLUSIVE MODE")
        STEPS["POST-2"](ctx)
'''


def test_a_check_longer_than_validation_timeout_fails_its_step_and_names_the_query(
        fresh_db: Any, tmp_path: Path) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, 3_000)
    with Migration(fresh_db.dsn, TableSpec("public.events", "d", cutoff=CUTOFF.isoformat()),
                   progress=lambda p: None) as mig:
        mig.run("swapped")
        m = mig.state()
    assert m is not None
    plan = tmp_path / "slow_plan.py"
    plan.write_text(TIMEOUT_PLAN.format(cutoff=CUTOFF.isoformat(), archive=m.archive.name))
    steps, out = _run(plan, fresh_db, tmp_path, "--execute", passive=False)
    post = steps["POST-2"]
    assert post["status"] == "failed", (post, out)
    reason = post["reason"]
    assert reason.startswith("POST-2 (Short-term tasks): ") and "validation_timeout (1s)" in reason, reason
    assert "LEFT JOIN" in reason and m.archive.name in reason, reason  # the query itself
    assert "raise validation_timeout in the plan" in reason, reason
