"""The whole plan at real size (`--whole-plan`): a plan module written by `tablemig new-plan`
run as a user runs it, `pytest PLAN --execute --active-dsn ... --passive-dsn ...`, in a
subprocess, against the bench's durable primary and its streaming standby; once per
`--plan-retention`. Each checklist step's time (run.json) and the engine's timings stand
next to the physical limit of the work that step does, measured before on a fresh copy of
the same data (`LIMITS` says what each limit is). The plan process's peak RSS (wait4 of the
pytest process: it and the client tools it waited for) is judged against 200 MB."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tablemig.pg.connect import connect

from .. import physical
from ..proc import log, run_child, tablemig_cli, tail
from ..results import engine_fingerprint, fmt, ratio, size_label, verdict
from ..runs import CORE_STEPS, Bench, fresh_copy
from ..server import APP, checkpoint, drop_database, standby_caught_up
from ..source import DATE_COLUMN, TABLE, Cut, cutoff

# What each physical limit is, in words for the output (the keys are figures measured by
# `limits`, combined per step in STEP_LIMITS and ENGINE_LIMITS).
LIMITS = {
    "scan_all": "one read of every row of the table with the comparisons' row hash "
                "(SELECT count(*), sum(hash_record_extended(ROW(...), 0)))",
    "scan_all_standby": "the same read on the standby",
    "scan_kept": "the same read of the kept rows only (WHERE date >= cutoff, through the date index)",
    "scan_new": "the same read of a bare table holding the kept rows",
    "scan_new_standby": "the same read of that table on the standby",
    "scan_pair": "scan_kept and scan_new at the same time on two connections (verify reads its two sides so)",
    "months": "one GROUP BY month count of every row",
    "plan_reads": "what a plan must read: one read of the table counting its rows, those with a date, those "
                  "on or after the cutoff and those without a date; and the kept rows' dates walked through "
                  "the date index, newest first, to the cutoff (each step that plans the table reads so)",
    "dump": "pg_dump --format=custom --table of the table alone",
    "restore": "pg_restore of that dump into an empty database (table, rows, key, indexes)",
    "insert": "one INSERT ... SELECT of the kept rows into a bare table (columns and defaults only)",
    "indexes": "the original's indexes (key as primary key) built on that table one after the other",
}

# checklist step -> (limit figures summed, what the step reads or writes)
STEP_LIMITS: dict[str, tuple[tuple[str, ...], str]] = {
    "PRE-1.1c": (("scan_all", "scan_all_standby"), "the table on both sites"),
    "PRE-2.1": (("dump",), "pg_dump of the table"),
    "PRE-2.3": (("restore",), "pg_restore of the table"),
    "EX-1.3": (("months",), "rows per month"),
    **{step: (("plan_reads",), "plans the table") for step in ("PRE-1.2d", "PRE-1.3a", "PRE-1.3b", "PRE-1.3d",
                                                          "PRE-2.4", "PRE-3.1")},
    "EX-2.2": (("insert", "indexes", "scan_pair", "lock_hold"), "load, indexes, verify, the swap's lock hold"),
    "EX-3.2": (("scan_new", "scan_all", "scan_new_standby", "scan_all_standby"),
               "live table and archive on both sites"),
    "EX-4.1": (("scan_new", "scan_all"), "live table and archive"),
    "POST-2": (("scan_new", "scan_kept"), "live rows and their copies in the archive"),
}
# engine timing -> limit figures summed ("lock_hold" is the swap's own lock hold)
ENGINE_LIMITS: dict[str, tuple[str, ...]] = {
    "backfill": ("insert",), "index": ("indexes",), "verify": ("scan_pair",), "swap": ("lock_hold",),
}
# a step in one of these did not do its work; a warning or a missing attestation did
FAILED_STATUSES = ("failed", "blocked", "interrupted", "not-run", "error")


def _timed_pair(dsn: str, cut: Cut) -> float:
    """scan_kept and scan_new at once on two connections; wall seconds."""
    out: list[BaseException] = []

    def scan(table: str, c: Cut | None) -> None:
        try:
            physical.hash_scan(dsn, table, c)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            out.append(exc)

    threads = [threading.Thread(target=scan, args=(TABLE, cut)),
               threading.Thread(target=scan, args=(physical.BARE, None))]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if out:
        raise out[0]
    return time.perf_counter() - t0


def _plan_reads(c: psycopg.Connection[Any], cut: Cut) -> float:
    """The reads that give a plan its figures: the counts in one pass, the cutoff as the
    k-th newest date through the date index; seconds."""
    d, t = sql.Identifier(DATE_COLUMN), sql.Identifier("orders")
    t0 = time.perf_counter()
    c.execute(sql.SQL("SELECT count(*), count({d}), count(*) FILTER (WHERE {d} >= %s::timestamptz),"
                      " count(*) FILTER (WHERE {d} IS NULL) FROM {t}").format(d=d, t=t), (cut.cutoff,)).fetchone()
    c.execute(sql.SQL("SELECT x.{d} FROM {t} AS x WHERE x.{d} IS NOT NULL ORDER BY x.{d} DESC OFFSET %s LIMIT 1")
              .format(d=d, t=t), (cut.kept_rows - 1,)).fetchone()
    return time.perf_counter() - t0


def limits(b: Bench, cut: Cut, label: str) -> dict[str, Any]:
    """Every physical limit of LIMITS, measured on a fresh copy (reads first, then the
    copy of the kept rows that the later reads use)."""
    t = b.target
    got: dict[str, Any] = {}
    with fresh_copy(b, f"limits_{label}") as (db, facts):
        dsn, standby = t.dsn(db), t.standby(db)
        got["scan_all"] = physical.hash_scan(dsn, TABLE)["seconds"]
        if standby:
            got["scan_all_standby"] = physical.hash_scan(standby, TABLE)["seconds"]
        got["scan_kept"] = physical.hash_scan(dsn, TABLE, cut)["seconds"]
        with connect(dsn, application_name=APP) as c:
            t0 = time.perf_counter()
            c.execute(sql.SQL("SELECT date_trunc('month', {d}), count(*) FROM {t} GROUP BY 1").format(
                d=sql.Identifier(DATE_COLUMN), t=sql.Identifier("orders"))).fetchall()
            got["months"] = round(time.perf_counter() - t0, 3)
            got["plan_reads"] = round(_plan_reads(c, cut), 3)
        dump = b.workdir / f"limits_{label}.dump"
        got.update({f"dump_{k}": v for k, v in physical.pg_dump_table(t.pg_bin.tool("pg_dump"), dsn, TABLE,
                                                                        dump).items()})
        got["dump"] = got.pop("dump_seconds")
        scratch = f"bench_restore_{label}"
        drop_database(t, scratch)
        t.conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
        try:
            got["restore"] = physical.pg_restore_table(t.pg_bin.tool("pg_restore"), t.dsn(scratch), dump)["seconds"]
        finally:
            drop_database(t, scratch)
            dump.unlink(missing_ok=True)
        checkpoint(t)
        with connect(dsn, application_name=APP) as c:
            steps = physical.copy_kept(c, cut)
        got["insert"] = steps["insert"]
        got["index_steps"] = {k: v for k, v in steps.items() if k not in ("create", "insert")}
        got["indexes"] = round(sum(got["index_steps"].values()), 3)
        got["scan_new"] = physical.hash_scan(dsn, physical.BARE)["seconds"]
        got["scan_pair"] = round(_timed_pair(dsn, cut), 3)
        if standby:
            standby_caught_up(t, timeout_s=600)
            got["scan_new_standby"] = physical.hash_scan(standby, physical.BARE)["seconds"]
        got["copy_seconds"] = facts["copy_seconds"]
    return got


def _plan_module(b: Bench, cut: Cut, plan_dir: Path, name: str) -> Path:
    plan_dir.mkdir(parents=True, exist_ok=True)
    # the plan's own directory is pytest's rootdir and conftest boundary: nothing of this
    # repository's test suite is loaded, as for a user's plan
    (plan_dir / "pytest.ini").write_text("[pytest]\n")
    module = plan_dir / f"{name}.py"
    lag = ["--max-replication-lag", b.args.plan_max_lag] if b.args.plan_max_lag else []
    args = ["new-plan", "--table", TABLE, "--date-column", DATE_COLUMN, "--retention", str(cut.retention),
            "--batch-size", str(b.args.batch_size), *lag, "--output", module.name, "--force"]
    (plan_dir / "new-plan.cmd").write_text(shlex.join(["tablemig", *args]))
    done = run_child(tablemig_cli(*args), plan_dir / "new-plan.out", plan_dir / "new-plan.err", cwd=plan_dir)
    if done.code != 0:
        raise RuntimeError(f"new-plan failed:\n{tail(plan_dir / 'new-plan.err')}")
    return module


def plan_command(module: Path, active: str, passive: str | None, reports: Path) -> list[str]:
    """The command a DBA runs, with the bench's reports directory."""
    return [sys.executable, "-m", "pytest", str(module), "--execute", "--active-dsn", active,
            *(["--passive-dsn", passive] if passive else []), "--reports-dir", str(reports),
            "-p", "no:cacheprovider", "-q"]


def run_plan(b: Bench, cut: Cut, label: str) -> dict[str, Any]:
    """The whole plan, executed on a fresh copy; its run.json read back."""
    t = b.target
    # outside the repository, as a user's plan is (its module, backups and reports)
    plan_dir = Path(tempfile.gettempdir()) / f"tablemig-bench-{b.workdir.name}-plan_{label}"
    name = f"bench_plan_{label.replace('.', '_')}"
    module = _plan_module(b, cut, plan_dir, name)
    with fresh_copy(b, f"plan_{label}") as (db, facts):
        # run from the plan's directory, as a DBA runs it
        cmd = plan_command(Path(module.name), t.dsn(db), t.standby(db), Path("reports"))
        log(f"whole plan {label}: {' '.join(cmd[1:4])} --execute ... (load {facts['loadavg_before']:.2f})")
        fp = engine_fingerprint()
        done = run_child(cmd, plan_dir / "pytest.out", plan_dir / "pytest.err", cwd=plan_dir, sample_every=1.0)
        run_json = plan_dir / "reports" / name / "latest" / "run.json"
        if not run_json.exists():
            raise RuntimeError(f"the plan wrote no run.json (exit {done.code}):\n{tail(plan_dir / 'pytest.out', 30)}")
        data = json.loads(run_json.read_text())
    new_plan = (plan_dir / "new-plan.cmd").read_text()
    if data.get("status") == "passed" and not b.args.keep_logs:  # the dumps are the size of the table
        shutil.rmtree(plan_dir, ignore_errors=True)
    steps = [{"id": s["id"], "status": s["status"], "seconds": s.get("duration_s"), "reason": s.get("reason") or ""}
             for s in data["steps"]]
    table = (data.get("tables") or {}).get(TABLE, {})
    return {"command": shlex.join(["pytest", *cmd[3:]]), "directory": str(plan_dir),  # removed after a passed run
            "new_plan": new_plan,
            "exit_code": done.code, "status": data.get("status"),
            "wall_s": round(done.seconds, 1), "peak_rss_mb": round(done.peak_rss_mb, 1),
            "own_peak_rss_mb": None if done.own_peak_rss_mb is None else round(done.own_peak_rss_mb, 1),
            "load": done.load, "loadavg_before": facts["loadavg_before"], "engine": fp, "run_json": str(run_json),
            "steps": steps, "timings": table.get("timings") or {}, "lock_hold_ms": table.get("lock_hold_ms"),
            "swap_attempts": table.get("swap_attempts"), "rows_copied": table.get("rows_copied"),
            "not_ok": [s for s in steps if s["status"] in FAILED_STATUSES]}


def compare(plan: dict[str, Any], lim: dict[str, Any]) -> dict[str, Any]:
    """Each step's time next to its limit."""
    def limit_of(keys: tuple[str, ...]) -> float | None:
        vals = [(plan["lock_hold_ms"] or 0) / 1000 if k == "lock_hold" else lim.get(k) for k in keys]
        return None if any(v is None for v in vals) else round(sum(v for v in vals if v is not None), 3)

    steps = []
    for s in plan["steps"]:
        keys, what = STEP_LIMITS.get(s["id"], ((), ""))
        lo = limit_of(keys) if keys else None
        steps.append({**s, "limit_s": lo, "limit": " + ".join(keys), "limit_what": what,
                      "ratio": ratio(s["seconds"], lo)})
    engine = []
    for k, v in plan["timings"].items():
        keys = ENGINE_LIMITS.get(k, ())
        lo = limit_of(keys) if keys else None
        engine.append({"step": k, "seconds": v, "limit_s": lo, "limit": " + ".join(keys), "ratio": ratio(v, lo)})
    core = sum(plan["timings"].get(k, 0.0) for k in CORE_STEPS)
    return {"steps": steps, "engine": engine, "core_s": round(core, 3)}


def run(b: Bench) -> dict[str, Any]:
    sizes = []
    for retention in b.args.plan_retention:
        cut = cutoff(b.target.dsn(b.src), retention)
        label = f"{size_label(cut.total)}_r{retention:g}"
        log(f"whole plan at {cut.total:,} rows keeping {cut.kept_rows:,} (retention {retention:g}): limits ...")
        lim = limits(b, cut, label)
        log(f"limits {label}: " + ", ".join(f"{k} {v}" for k, v in lim.items() if not isinstance(v, dict)))
        plan = run_plan(b, cut, label)
        log(f"whole plan {label}: {plan['status']} in {plan['wall_s']} s, peak RSS {plan['peak_rss_mb']} MB")
        sizes.append({"label": label, "cutoff": cut.as_dict(), "limits": lim, "plan": plan, **compare(plan, lim)})
    return {"sizes": sizes, "limit_definitions": LIMITS}


def target_values(res: dict[str, Any]) -> dict[str, float | None]:
    return {"whole_plan_peak_rss_mb": max([s["plan"]["peak_rss_mb"] for s in res["sizes"]], default=None)}


def report(res: dict[str, Any], _b: Bench) -> None:
    for size in res["sizes"]:
        p, c = size["plan"], size["cutoff"]
        print(f"\n== whole plan: {c['total']:,} rows keeping {c['kept_rows']:,} (retention {c['retention']:g}): "
              f"{p['status']} in {p['wall_s']} s; peak RSS {p['peak_rss_mb']} MB (pytest alone "
              f"{fmt(p['own_peak_rss_mb'], '.0f')} MB) target <= 200 MB "
              f"{verdict('whole_plan_peak_rss_mb', p['peak_rss_mb'])}; load {p['load']} ==")
        print(f"{'step':<10}{'status':<16}{'time s':>9}{'limit s':>9}{'ratio':>7}  limit")
        for s in size["steps"]:
            print(f"{s['id']:<10}{s['status']:<16}{fmt(s['seconds'], '.2f'):>9}{fmt(s['limit_s'], '.2f'):>9}"
                  f"{fmt(s['ratio'], '.2f'):>7}  {s['limit']}")
        print("engine: " + ", ".join(f"{e['step']} {fmt(e['seconds'], '.2f')} s"
                                     + (f" (limit {fmt(e['limit_s'], '.2f')}, {fmt(e['ratio'], '.2f')}x)"
                                        if e["limit_s"] else "") for e in size["engine"]))
        for s in p["not_ok"]:
            print(f"DID NOT PASS: {s['id']} {s['status']}: {s['reason'][:300]}")
    print("\nlimits: " + "; ".join(f"{k}: {v}" for k, v in res["limit_definitions"].items()))
