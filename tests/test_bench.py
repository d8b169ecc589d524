"""The bench package: its work measures against a real server, the smoke's verdict, the
whole plan's limits per step, and the summary written from result files."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import psycopg

from bench import cli, workstats
from bench.phases import family, smoke, whole_plan
from bench.results import result_path, size_label
from bench.runs import Bench
from bench.server import Target, drop_database
from bench.source import cutoff
from bench.summary import MARKER
from bench.summary import family as family_summary
from bench.summary import main as summary_main
from tablemig.pg.binaries import find_pg_bin
from tablemig.pg.connect import connect
from tablemig.sandbox.demo_data import create_demo_data

# what the smoke measured at 100k rows keeping 10k (docs/benchmarks.md)
CORE = {"rows_read": 101_919, "blocks": 11_468, "wal_bytes": 2_043_384}
PHYSICAL = {"rows_read": 40_000, "blocks": 10_744, "wal_bytes": 1_915_256}
PLAN = {"rows_read": 220_958, "blocks": 2_280, "wal_bytes": 479_392}


def _pair(core: dict[str, int] | None = None, core_s: float = 0.1) -> dict[str, Any]:
    work = {**workstats.Work().as_dict()}
    tm = {"work": {"core": {**work, **(core or CORE)}, "plan": {**work, **PLAN}, "migrate": work},
          "core_s": core_s, "wall_s": 1.2, "ok": True}
    ph = {"work": {**work, **PHYSICAL}, "elapsed_s": 0.04, "ok": True}
    return smoke.pair_of(tm, ph, 100_000)


def test_smoke_passes_the_work_it_measured_and_fails_one_more_pass_over_the_kept_rows() -> None:
    assert smoke.judge([_pair() for _ in range(5)], 10.0)["verdict"] == "PASS"
    # one more read of the 10,000 kept rows of one table, in every pair
    extra = {**CORE, "rows_read": CORE["rows_read"] + 10_000}
    res = smoke.judge([_pair(extra) for _ in range(5)], 10.0)
    assert res["verdict"] == "FAIL" and res["failed"] == ["rows_read"]
    # a full copy of the table: every measure
    copy = {"rows_read": 861_919, "blocks": 743_723, "wal_bytes": 24_251_392}
    assert set(smoke.judge([_pair(copy)] * 3, 10.0)["failed"]) == {"rows_read", "blocks", "wal_bytes"}


def test_smoke_verdict_is_the_median_of_the_pairs_and_time_fails_only_past_the_catastrophic_bound() -> None:
    slow = [_pair(core_s=0.35) for _ in range(5)]  # 8.75x: a machine under load
    assert smoke.judge(slow, 10.0)["verdict"] == "PASS"
    resting = [_pair(core_s=0.6) for _ in range(5)]  # 15x: the core waits instead of working
    assert smoke.judge(resting, 10.0)["failed"] == ["wall"]
    one_odd = [_pair() for _ in range(4)] + [_pair({**CORE, "rows_read": 500_000})]
    assert smoke.judge(one_odd, 10.0)["verdict"] == "PASS"
    wrong = _pair()
    wrong["tablemig"]["ok"] = False
    assert smoke.judge([wrong], 10.0)["failed"] == ["rows kept"]


def test_work_measures_count_what_a_finished_session_did(fresh_db: Any, active: psycopg.Connection[Any],
                                                         active_dsn: str) -> None:
    with fresh_db.connect() as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = off)")
        c.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g")
    target = Target(active_dsn, None, find_pg_bin(), None, active)
    before = workstats.read(target, fresh_db.name)
    c = connect(fresh_db.dsn, settings={"enable_indexscan": "off", "enable_indexonlyscan": "off",
                                        "enable_bitmapscan": "off"})
    for _ in range(3):
        c.execute("SELECT count(*) FROM t").fetchone()
    c.execute("INSERT INTO t SELECT g, 'y' FROM generate_series(1001, 1010) g")
    # an idle backend holds back what it counted for up to 10 s after its first flush: the
    # measure waits for the session to end, which writes everything out
    closing = threading.Timer(1.0, c.close)
    closing.start()
    try:
        work, _ = workstats.since(target, fresh_db.name, before)
    finally:
        closing.join()
    assert work.rows_read == 3000
    assert work.rows_written == 10
    assert work.blocks >= 3 * 5  # 1,000 short rows fill 5 pages, read three times
    assert work.wal_bytes > 0


def test_whole_plan_steps_stand_next_to_their_limits() -> None:
    plan = {"steps": [{"id": "PRE-2.1", "status": "passed", "seconds": 30.0, "reason": ""},
                      {"id": "EX-2.2", "status": "passed", "seconds": 40.0, "reason": ""},
                      {"id": "PRE-1.2a", "status": "passed", "seconds": 0.1, "reason": ""}],
            "timings": {"backfill": 9.0, "swap": 0.05, "plan": 2.0}, "lock_hold_ms": 20.0}
    lim = {"dump": 10.0, "insert": 3.0, "indexes": 4.0, "scan_pair": 2.0}
    got = whole_plan.compare(plan, lim)
    steps = {s["id"]: s for s in got["steps"]}
    assert steps["PRE-2.1"]["limit_s"] == 10.0 and steps["PRE-2.1"]["ratio"] == 3.0
    assert steps["EX-2.2"]["limit_s"] == 9.02  # load, indexes, verify and the swap's lock hold
    assert steps["PRE-1.2a"]["limit_s"] is None
    engine = {e["step"]: e for e in got["engine"]}
    assert engine["backfill"]["ratio"] == 3.0
    assert engine["swap"]["limit_s"] == 0.02
    assert set(whole_plan.LIMITS) >= {k for keys, _ in whole_plan.STEP_LIMITS.values() for k in keys} - {"lock_hold"}


def test_summary_rewrites_the_figures_below_the_marker_only(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    res = smoke.judge([_pair() for _ in range(3)], 10.0)
    res["scheduling"] = "SCHED_FIFO"
    run = {"started": "20250101-120000", "phases": ["smoke"], "command": ".venv/bin/python -m bench --smoke",
           "note": "two CPU hogs", "machine": {"cpus": 2}, "server": {"settings": {"server_version": "15.1"}},
           "cutoff": {"total": 100_000, "kept_rows": 10_000}, "loadavg_at_start": 2.1, "loadavg_at_end": 2.3,
           "smoke": res}
    path = result_path("20250101-120000", ["smoke"], 100_000)
    assert path.name == "20250101-120000_smoke_100k.json" and size_label(10_000_000) == "10M"
    (results / path.name).write_text(json.dumps(run))
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nWritten by hand.\n\n{MARKER}\n\nstale figures\n")
    assert summary_main(["--results", str(results), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nWritten by hand.\n")
    assert "stale figures" not in text and text.count(MARKER) == 1
    assert "`.venv/bin/python -m bench --smoke` (two CPU hogs)" in text
    assert "| rows_read | 101,919 | 40,000 | 2.548 | 2.7 | ok |" in text
    assert "| two CPU hogs | 1 × 3 | 2.1–2.3 |" in text


def _family(fresh_db: Any, active: psycopg.Connection[Any], active_dsn: str, tmp_path: Path,
            a: Any) -> tuple[dict[str, Any], Bench]:
    """The family phase run on 2000 demo orders (its source database dropped afterwards)."""
    with fresh_db.connect() as c:
        create_demo_data(c, 2000)
        c.execute("VACUUM (ANALYZE) orders")
    target = Target(active_dsn, None, find_pg_bin(), None, active)
    b = Bench(target, a, tmp_path, {"database": fresh_db.name, "rows": 2000}, cutoff(fresh_db.dsn, a.retention))
    try:
        return family.run(b), b
    finally:
        drop_database(target, family.source_name(b))


def test_family_phase_keeps_the_referenced_orders_live_in_tablemig_and_its_physical_limit(
        fresh_db: Any, active: psycopg.Connection[Any], active_dsn: str, tmp_path: Path) -> None:
    a = cli.parse_args(["--family", "--rows", "2000"])
    assert [ph.name for ph in cli.PHASES if ph.selected(a)] == ["family"]
    cmd = family.migrate_command(a, "dbname=x", 0.1)
    assert cmd[-2:] == ["--child", "public.refunds=keep"]
    assert {"migrate", "--execute", "--yes", "--json"} <= set(cmd)
    res, b = _family(fresh_db, active, active_dsn, tmp_path, a)
    src, runs, s = res["source"], res["runs"], res["summary"]
    assert src["child_rows"] == 6000 and src["order_items"] == "dropped"
    assert 0 < src["old_orders_referenced"] == src["child_rows_old"] < src["old_orders"]
    assert src["live_rows_expected"] == b.cut.kept_rows + src["old_orders_referenced"]
    assert [r["method"] for r in runs] == ["tablemig", "physical"]
    tm, ph = runs
    # the same live table both ways: the recent orders and every order a refund references
    assert tm["rows_after"] == ph["rows_after"] == src["live_rows_expected"]
    assert tm["old_rows_live"] == src["old_orders_referenced"] and tm["fk_ok"] and tm["cutoff_matches"]
    assert tm["retained"]["retained_rows_copied_before_lock"] == src["old_orders_referenced"]
    assert s["all_ok"] and s["rounds"] == 1 and s["core_over_physical"] is not None
    assert set(ph["steps"]) == {"create", "insert", "primary_key", "index_customer_id", "index_created_date"}
    run = {"started": "20250101-120000", "phases": ["family"], "command": ".venv/bin/python -m bench --family",
           "cutoff": b.cut.as_dict(), "family": res}
    text = "\n".join(family_summary([(tmp_path / "r.json", run)]))
    assert "## Family (child policy keep)" in text and "## Family (child policy follow)" not in text
    assert f"= {src['live_rows_expected']:,} rows (as expected in every run)" in text
    assert "one round (`--repeat 1`)" in text


def test_family_phase_with_follow_moves_the_lines_with_their_orders(
        fresh_db: Any, active: psycopg.Connection[Any], active_dsn: str, tmp_path: Path) -> None:
    """`--family --family-policy follow`: lines of orders of every age; tablemig and the
    physical limit keep the same orders and the lines referencing them."""
    a = cli.parse_args(["--family", "--family-policy", "follow", "--rows", "2000"])
    assert family.migrate_command(a, "dbname=x", 0.1)[-2:] == ["--child", "public.lines=follow"]
    res, b = _family(fresh_db, active, active_dsn, tmp_path, a)
    src, runs, s = res["source"], res["runs"], res["summary"]
    assert src["child_rows"] == 6000 and src["policy"] == "follow" and src["live_rows_expected"] == b.cut.kept_rows
    assert src["child_live_rows_expected"] == 6000 - src["child_rows_old"] > 0
    tm, ph = runs
    assert tm["rows_after"] == ph["rows_after"] == b.cut.kept_rows and tm["old_rows_live"] == 0
    assert tm["child_rows_live"] == src["child_live_rows_expected"] and tm["fk_ok"] and s["all_ok"]
    assert tm["followed"]["rows_archived"] == src["child_rows_old"]
    assert {"child_insert", "child_primary_key", "child_index_order_id"} <= set(ph["steps"])
    run = {"started": "20250101-120000", "phases": ["family"], "command": ".venv/bin/python -m bench --family",
           "cutoff": b.cut.as_dict(), "family": res}
    text = "\n".join(family_summary([(tmp_path / "r.json", run)]))
    assert "## Family (child policy follow)" in text and "The child's new table (swap record, `follow`)" in text
