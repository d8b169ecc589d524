"""EX-4.2 decides from plan shapes and buffers, not from a timing: it passes on a busy server
(CPU and I/O load, an application transaction open on the live table) and fails, naming the
index, when the live table lacks an index the original uses. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from faults_helpers import Session, migrate_args, ok
from twin import CUTOFF, create_events

from tablemig.cli.newplan import render_plan
from tablemig.config.plan import TableConfig
from tablemig.pg.connect import connect


def _swapped(db: Any, tmp: Path) -> Path:
    """public.events migrated up to the swap (by the CLI), and a plan for it."""
    with db.connect() as conn:
        create_events(conn, 20_000)
    ok(*migrate_args(db.dsn))
    plan = tmp / "perf_plan.py"
    plan.write_text(render_plan(name="perf_plan", path=str(plan), tables=[
        TableConfig("public.events", "d", cutoff=CUTOFF.isoformat())]))
    return plan


def _ex_4_2(plan: Path, db: Any, tmp: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "pytest", str(plan), "-q", "-p", "no:cacheprovider", "--execute",
                           "-k", "ex_4_2", "--active-dsn", db.dsn, "--passive-dsn", db.passive_dsn,
                           "--reports-dir", str(tmp / "reports")], capture_output=True, text=True, timeout=600,
                          cwd=tmp)
    run = json.loads((tmp / "reports" / "perf_plan" / "latest" / "run.json").read_text())
    return proc, next(s for s in run["steps"] if s["id"] == "EX-4.2")


@contextmanager
def _busy(dsn: str) -> Iterator[dict[str, int]]:
    """Two sessions burning CPU, one writing and deleting a scratch table (I/O, WAL), until
    the block ends; counts the rounds each did."""
    stop = threading.Event()
    rounds = {"cpu": 0, "io": 0}

    def cpu() -> None:
        with connect(dsn) as c:
            while not stop.is_set():
                c.execute("SELECT count(*) FROM generate_series(1, 300000) g WHERE md5(g::text) > 'f'")
                rounds["cpu"] += 1

    def io() -> None:
        with connect(dsn) as c:
            c.execute("CREATE TABLE IF NOT EXISTS busy_scratch (i int, t text)")
            while not stop.is_set():
                c.execute("INSERT INTO busy_scratch SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 20000) g")
                c.execute("DELETE FROM busy_scratch")
                rounds["io"] += 1

    threads = [threading.Thread(target=f, daemon=True) for f in (cpu, cpu, io)]
    for t in threads:
        t.start()
    try:
        yield rounds
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)


def test_ex_4_2_passes_on_a_busy_server(fresh_db: Any, tmp_path: Path) -> None:
    plan = _swapped(fresh_db, tmp_path)
    app = Session(fresh_db.dsn)  # an application transaction, open on the live table throughout
    try:
        app.execute("UPDATE events SET v = v + 1 WHERE id = (SELECT max(id) FROM events)")
        with _busy(fresh_db.dsn) as rounds:
            proc, step = _ex_4_2(plan, fresh_db, tmp_path)
        assert rounds["cpu"] > 0 and rounds["io"] > 0
    finally:
        app.close()
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert step["status"] == "passed", step["reason"]
    ev = step["evidence"]
    queries = [q for q in ev["queries"] if "skipped" not in q]
    assert {q["query"] for q in queries} >= {"rows with d >= cutoff", "lookup by id"}
    for q in queries:
        assert q["verdict"] == "plan no worse than the original's", q
        assert q["live"]["runs"] == q["original"]["runs"] >= 5
        assert q["index_use"]["live"] and q["index_use"]["original"], q
    assert ev["trigger_overhead"]["measured"], ev["trigger_overhead"]
    assert ev["trigger_overhead"]["median_ms"]["with_triggers"] > 0


def test_ex_4_2_fails_when_the_live_table_lacks_an_index_the_original_uses(fresh_db: Any, tmp_path: Path) -> None:
    plan = _swapped(fresh_db, tmp_path)
    with fresh_db.connect() as conn:
        # after the swap the live table carries the original's index names
        conn.execute("DROP INDEX events_d_idx")
        archive = conn.execute("SELECT archive_name FROM table_migration.migration_state").fetchone()
        assert archive is not None
        archived_index = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s"
                                      " AND indexdef LIKE '%%(d)'", archive).fetchone()
    assert archived_index is not None
    proc, step = _ex_4_2(plan, fresh_db, tmp_path)
    assert proc.returncode != 0
    assert step["status"] == "failed"
    reason = step["reason"]
    assert "rows with d >= cutoff" in reason and "public.events has no index for it" in reason, reason
    assert archived_index[0] in reason and "USING btree (d)" in reason, reason
    assert "lookup by id" not in reason  # the key's index is there: that plan is no worse
    bad = next(q for q in step["evidence"]["queries"] if q["query"] == "rows with d >= cutoff")
    assert bad["index_use"]["live"] == "none (sequential scan)"
