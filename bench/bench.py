#!/usr/bin/env python3
"""Benchmark of the tablemig "table rename strategy" against its physical limit and the
naive DELETE + VACUUM FULL, on a production-like (durable) PostgreSQL.

What it does
------------
1. Starts its own sandbox (primary + streaming standby, `tablemig.sandbox.cluster`) with durable
   settings: fsync=on, full_page_writes=on, synchronous_commit=on, wal_compression=off,
   shared_buffers=2GB, maintenance_work_mem=512MB, max_wal_size=8GB,
   checkpoint_timeout=30min. `--reuse-dsn DSN` uses an existing server instead (its
   settings are recorded, not changed). The sandbox is stopped at the end, also on Ctrl-C.
2. Creates the data once with the real CLI (`tablemig demo-data --rows N`) in a source
   database `bench_src_<N>` (timed and reported), then VACUUM (ANALYZE) so every copy
   starts with hint bits and visibility map set. Each measured run gets an identical copy
   (`CREATE DATABASE run TEMPLATE src STRATEGY file_copy`; its time is reported apart and
   is not part of any measured figure), and a CHECKPOINT runs before each measured run.
   The cutoff is computed once like `table_migration.cutoff_value` (newest `--retention`
   of the rows) and checked against the one tablemig chose.
3. Measures in alternating order (tablemig, physical, naive, tablemig, ...; `--repeat R`):
   * physical: CREATE TABLE kept (LIKE orders INCLUDING DEFAULTS); INSERT ... SELECT the
     kept rows; ADD PRIMARY KEY; the two secondary indexes. Elapsed and WAL bytes.
   * naive: DELETE FROM orders WHERE created_date < cutoff; VACUUM FULL orders. Elapsed,
     WAL bytes, exclusive lock hold (= the VACUUM FULL duration).
   * tablemig: the real CLI `python -m tablemig.cli.main migrate ... --retention R` in a
     subprocess. Wall time, WAL bytes, core time (capture+backfill+index+replay+verify+swap
     from its JSON timings; replay = draining the change log and the switch to direct
     capture), every timing, lock_hold_ms, and the peak RSS of that process (ru_maxrss
     from wait4 on its pid).
   Then a table, the ratios against the targets, and all figures as JSON in
   bench/results/<timestamp>.json.
4. `--scale-test`: also migrates a table with the same number of kept rows but twice the
   total (2N rows over twice the months, retention/2: the kept rows span the same days at
   the same density, and order_items, which covers the last 30 days, still references kept
   orders only), alternating with the physical limit at 2N, and reports the growth of the
   tablemig core time (target <= 15 %) and of the peak RSS.
5. `--workload`: runs pgbench (the sandbox's binary) with bench/pgbench_orders.sql (70 %
   INSERT of a new order, 30 % UPDATE of one of the newest orders), `-c 4 -j 2 -T S
   --max-tries`, with per-transaction logs: a baseline on an untouched copy, the same while
   tablemig migrates another copy (migration started `--migration-delay` s after pgbench),
   and another baseline (the machine's speed drifts between minutes). Reports tps between
   the capture's install and the swap against the two baselines over the same seconds after
   pgbench's start (the target), worst latency overall and around the swap (+-1 s), failed
   transactions and aborted clients, and what the write guard measured and rested. The migration uses
   `--cutoff` = the cutoff computed before pgbench starts (`--workload-cutoff retention`
   for `--retention`: the orders pgbench inserts first would move it). Alone, `--workload`
   runs only this experiment; add `--measure` to also run step 3. `--trigger-overhead`
   runs pgbench without and with only the capture trigger installed (no backfill), to
   tell the trigger's cost from the backfill's.
6. `--smoke`: exits 1 when core/physical > `--smoke-limit` (3.0), taken as the median of
   the per-pair ratios (each tablemig run against the physical-limit run right after it,
   so that slow drifts of the machine cancel out). It first raises the scheduling priority
   of this process and of the primary's server processes (`boost`: SCHED_FIFO, else nice
   -20; when neither is permitted it waits at most 90 s for the 1-min load average to fall
   under 1), and runs one unmeasured warm-up round of tablemig and the physical limit
   (`--warmup N`; default 1 with --smoke, else 0). Meant for CI
   with `--rows 100000 --repeat 21` (`./scripts/test` runs it after the test suite).

Diagnostics: `--explain` prints EXPLAIN (ANALYZE, BUFFERS) of a first and a middle
bulk-load chunk (on a copy with only the capture installed); `--profile` runs one migration
in-process with a statement recorder and prints the backfill batches and the slowest
statements per step. Like `--workload`, alone they skip the measurement (add `--measure`).

Usage examples (from the repository root)
-----------------------------------------
    .venv/bin/python bench/bench.py --rows 100000 --smoke --repeat 21 --skip naive   # CI smoke
    .venv/bin/python bench/bench.py                                # 10M rows, repeat 1
    .venv/bin/python bench/bench.py --repeat 3 --workers 2 --batch-size 100000
    .venv/bin/python bench/bench.py --workload                     # pgbench experiment
    .venv/bin/python bench/bench.py --workload --workload-seconds 240
    .venv/bin/python bench/bench.py --trigger-overhead --explain --profile   # diagnostics
    .venv/bin/python bench/bench.py --scale-test                   # also 20M / 0.05
    .venv/bin/python bench/bench.py --keep-sandbox --sandbox-dir /tmp/tmb   # keep server
    .venv/bin/python bench/bench.py --reuse-dsn 'host=127.0.0.1 port=5432 dbname=tablemig user=postgres'
        (a source database bench_src_<N> left by an earlier run is reused, not regenerated)

Exit status: 0 done (targets missed are reported, not fatal, unless --strict), 1 smoke or
strict target failure, 2 error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import glob
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tablemig.pg.connect import connect

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PGBENCH_SCRIPT = HERE / "pgbench_orders.sql"
TABLE = "public.orders"
DATE_COLUMN = "created_date"
CORE_STEPS = ("capture", "backfill", "index", "replay", "verify", "swap")
PACING_KEYS = ("nice_ratio", "nice_slept_s", "app_write_share", "app_write_rate", "app_writes",
               "app_writes_expected", "app_share_kept", "rested_s", "engaged")
ALL_STEPS = (*CORE_STEPS, "validate_fks")
SRC_MARK = "tablemig-bench source complete"
SETTINGS_SHOWN = ("server_version", "fsync", "full_page_writes", "synchronous_commit",
                  "wal_compression", "wal_level", "shared_buffers", "maintenance_work_mem",
                  "work_mem", "max_wal_size", "checkpoint_timeout", "autovacuum",
                  "max_parallel_maintenance_workers", "max_parallel_workers_per_gather")

TARGETS = {  # name: (comparison, threshold)
    "core_over_physical": ("<=", 1.5),
    "naive_over_core": (">=", 3.0),
    "wal_tablemig_over_naive": ("<=", 0.2),
    "peak_rss_mb": ("<=", 200.0),
    "scale_core_growth_pct": ("<=", 15.0),
    "workload_capture_tps_pct": (">=", 85.0),
    "workload_swap_worst_ms": ("<=", 250.0),
    "workload_failed": ("<=", 0),
}

CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # our running subprocesses, by pid


def engine_fingerprint() -> str:
    """Short hash of the tablemig sources (the package is installed editable and other
    people edit it: a change between runs shows up here)."""
    import hashlib

    import tablemig

    root = Path(tablemig.__file__).resolve().parent
    h = hashlib.sha1()
    files = sorted([*root.rglob("*.py"), *root.parent.joinpath("sql_templates").rglob("*")])
    for f in files:
        if f.is_file() and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(root.parent)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:10]


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# server plumbing


def dsn_for(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)


class Server:
    """The server under test: an admin DSN and the bin dir of its client tools."""

    def __init__(self, admin_dsn: str, pg_bin: Any, sandbox: Any = None) -> None:
        self.admin_dsn = admin_dsn
        self.pg_bin = pg_bin
        self.sandbox = sandbox
        self.conn = connect(admin_dsn, application_name="tablemig-bench")

    def dsn(self, db: str) -> str:
        return dsn_for(self.admin_dsn, db)

    def scalar(self, query: Any, params: Any = None) -> Any:
        row = self.conn.execute(query, params).fetchone()
        return row[0] if row else None

    def lsn(self) -> str:
        return str(self.scalar("SELECT pg_current_wal_lsn()::text"))

    def wal_since(self, lsn: str) -> int:
        return int(self.scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)",
                               (lsn,)))

    def standby_caught_up(self, timeout_s: float = 60) -> float:
        """Wait until every standby has replayed all WAL written so far (the copy, the last
        run): its replay must not compete for the CPUs with the run that follows."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout_s:
            if self.scalar("SELECT coalesce(bool_and(replay_lsn >= pg_current_wal_insert_lsn()), true)"
                           " FROM pg_stat_replication"):
                break
            time.sleep(0.01)
        return time.perf_counter() - t0

    def checkpoint(self) -> float:
        t0 = time.perf_counter()
        self.conn.execute("CHECKPOINT")
        return time.perf_counter() - t0

    def settings(self) -> dict[str, str]:
        return {k: str(self.scalar(sql.SQL("SHOW {}").format(sql.Identifier(k))))
                for k in SETTINGS_SHOWN}

    def exists(self, db: str) -> bool:
        return bool(self.scalar("SELECT count(*) FROM pg_database WHERE datname = %s", (db,)))

    def drop(self, db: str) -> None:
        self.conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(db)))

    def copy(self, src: str, db: str) -> float:
        """Identical copy of `src`; returns seconds (reported, never measured)."""
        self.drop(db)
        t0 = time.perf_counter()
        strategy = sql.SQL(" STRATEGY file_copy")
        for attempt in range(60):
            try:
                self.conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(
                    sql.Identifier(db), sql.Identifier(src), strategy))
                break
            except psycopg.errors.SyntaxError:  # server older than 15: no STRATEGY
                strategy = sql.SQL("")
            except psycopg.errors.ObjectInUse:
                # a session still in the source (one just closed, or an autovacuum worker
                # the server did not stop within its 5 s on a busy machine): it ends soon
                if attempt == 59:
                    raise
                time.sleep(1)
        return time.perf_counter() - t0

    def close(self) -> None:
        self.conn.close()


def boost(sandbox: Any) -> str:
    """Run this process and the primary's server processes (backends forked later inherit
    it from the postmaster) before anything else on the machine: real-time scheduling
    (SCHED_FIFO, lowest real-time priority; the kernel still leaves 5 % of each second to
    the rest), else nice -20. A measured run then waits for no CPU: another process (a CPU
    hog, another test suite) no longer stretches one run more than the next, and the times
    are those of a quiet machine. The standby keeps its priority: it replays in the
    background and competes with neither run. Needs root or CAP_SYS_NICE; returns what was
    done ("" when nothing could be)."""
    pm = sandbox.postmaster_pid("active")
    if pm is None:
        return ""
    try:
        children = [int(p) for p in Path(f"/proc/{pm}/task/{pm}/children").read_text().split()]
    except (OSError, ValueError):
        children = []
    pids = [0, pm, *children]  # 0: this process (its threads, started later, inherit it)
    for how, apply in (("SCHED_FIFO", lambda p: os.sched_setscheduler(p, os.SCHED_FIFO, os.sched_param(1))),
                       ("nice -20", lambda p: os.setpriority(os.PRIO_PROCESS, p, -20))):
        try:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):  # a child that exited meanwhile
                    apply(pid)
        except OSError:  # not permitted
            continue
        return how
    return ""


def durable_conf(a: argparse.Namespace) -> dict[str, str]:
    return {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on",
            "wal_compression": "off", "shared_buffers": a.shared_buffers,
            "maintenance_work_mem": "512MB", "max_wal_size": "8GB",
            "checkpoint_timeout": "30min", "log_checkpoints": "on"}


# --------------------------------------------------------------------------------------
# subprocesses


def run_child(cmd: list[str], out: Path, err: Path, env: dict[str, str] | None = None
              ) -> tuple[int, float, float]:
    """Run `cmd` to completion; (exit code, seconds, peak RSS MB of that process)."""
    with open(out, "wb") as o, open(err, "wb") as e:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=env)
        CHILDREN[p.pid] = p
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            CHILDREN.pop(p.pid, None)
        seconds = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, seconds, ru.ru_maxrss / 1024.0  # ru_maxrss is KiB on Linux


def start_child(cmd: list[str], out: Path, err: Path) -> subprocess.Popen[bytes]:
    o, e = open(out, "wb"), open(err, "wb")
    try:
        p = subprocess.Popen(cmd, stdout=o, stderr=e, stdin=subprocess.DEVNULL)
    finally:
        o.close()
        e.close()
    CHILDREN[p.pid] = p
    return p


def stop_children() -> None:
    for pid, p in list(CHILDREN.items()):
        if p.poll() is None:
            log(f"stopping child pid {pid}")
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        CHILDREN.pop(pid, None)


def tablemig_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tablemig.cli.main", *args]


def tail(path: Path, n: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-n:])


# --------------------------------------------------------------------------------------
# data


def ensure_source(srv: Server, rows: int, workdir: Path, months: int = 36) -> dict[str, Any]:
    """bench_src_<rows>[_m<months>] made with the real `tablemig demo-data` (reused when
    complete)."""
    db = f"bench_src_{rows}" + ("" if months == 36 else f"_m{months}")
    mark = srv.scalar("SELECT shobj_description(oid, 'pg_database') FROM pg_database"
                      " WHERE datname = %s", (db,))
    if mark and str(mark).startswith(SRC_MARK):
        info = json.loads(str(mark)[len(SRC_MARK):])
        info["reused"] = True
        log(f"reusing source database {db} ({rows:,} rows)")
        return info
    srv.drop(db)
    srv.conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    log(f"generating {rows:,} rows with `tablemig demo-data` into {db} ...")
    out, err = workdir / f"demo_data_{rows}.out", workdir / f"demo_data_{rows}.err"
    rc, seconds, _ = run_child(tablemig_cli("demo-data", "--dsn", srv.dsn(db), "--rows",
                                            str(rows), "--months", str(months)), out, err)
    if rc != 0:
        raise RuntimeError(f"demo-data failed (exit {rc}):\n{tail(err)}\n{tail(out)}")
    log(f"demo-data: {out.read_text().strip()} (wall {seconds:.1f} s)")
    with connect(srv.dsn(db), application_name="tablemig-bench") as c:
        t0 = time.perf_counter()
        c.execute("VACUUM (ANALYZE) orders")
        c.execute("VACUUM (ANALYZE) order_items")
        vacuum_s = time.perf_counter() - t0
        sizes = c.execute(
            "SELECT pg_database_size(current_database()), pg_relation_size('orders'),"
            " pg_total_relation_size('orders'), pg_total_relation_size('order_items'),"
            " (SELECT count(*) FROM orders), (SELECT count(*) FROM order_items)").fetchone()
        assert sizes is not None
    ckpt = srv.checkpoint()
    info = {"database": db, "rows": int(sizes[4]), "months": months, "order_items": int(sizes[5]),
            "generate_seconds": round(seconds, 2), "vacuum_analyze_seconds": round(vacuum_s, 2),
            "checkpoint_seconds": round(ckpt, 2), "database_bytes": int(sizes[0]),
            "orders_heap_bytes": int(sizes[1]), "orders_total_bytes": int(sizes[2]),
            "order_items_total_bytes": int(sizes[3]), "reused": False}
    srv.conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(db), sql.Literal(SRC_MARK + json.dumps(info))))
    log(f"source ready: {info['database_bytes'] / 2**30:.2f} GiB database, generate "
        f"{seconds:.1f} s, vacuum analyze {vacuum_s:.1f} s")
    return info


def compute_cutoff(dsn: str, retention: float) -> dict[str, Any]:
    """The cutoff exactly as table_migration.cutoff_value computes it."""
    with connect(dsn, application_name="tablemig-bench") as c:
        total = c.execute(sql.SQL("SELECT count({}) FROM orders").format(
            sql.Identifier(DATE_COLUMN))).fetchone()[0]  # type: ignore[index]
        keep = c.execute("SELECT greatest(1, ceil(%s::bigint * %s::numeric))::bigint",
                         (total, str(retention))).fetchone()[0]  # type: ignore[index]
        cutoff = c.execute(sql.SQL(
            "SELECT t.{d}::text FROM orders t WHERE t.{d} IS NOT NULL ORDER BY t.{d} DESC"
            " OFFSET %s LIMIT 1").format(d=sql.Identifier(DATE_COLUMN)),
            (keep - 1,)).fetchone()[0]  # type: ignore[index]
        kept = c.execute(sql.SQL("SELECT count(*) FROM orders WHERE {} >= %s::timestamptz")
                         .format(sql.Identifier(DATE_COLUMN)), (cutoff,)).fetchone()[0]  # type: ignore[index]
        maxid = c.execute("SELECT max(id) FROM orders").fetchone()[0]  # type: ignore[index]
    return {"retention": retention, "total": int(total), "keep_target": int(keep),
            "cutoff": str(cutoff), "kept_rows": int(kept), "max_id": int(maxid)}


# --------------------------------------------------------------------------------------
# the three methods


def run_physical(srv: Server, db: str, cut: dict[str, Any]) -> dict[str, Any]:
    stmts = [
        ("create", "CREATE TABLE kept (LIKE orders INCLUDING DEFAULTS)", None),
        ("insert", "INSERT INTO kept SELECT * FROM orders WHERE created_date >= %s::timestamptz",
         (cut["cutoff"],)),
        ("primary_key", "ALTER TABLE kept ADD PRIMARY KEY (id)", None),
        ("index_customer_id", "CREATE INDEX ON kept (customer_id)", None),
        ("index_created_date", "CREATE INDEX ON kept (created_date)", None),
    ]
    steps: dict[str, float] = {}
    with connect(srv.dsn(db), application_name="tablemig-bench-physical") as c:
        start = srv.lsn()
        t_all = time.perf_counter()
        for name, stmt, params in stmts:
            t0 = time.perf_counter()
            c.execute(stmt, params)
            steps[name] = round(time.perf_counter() - t0, 3)
        elapsed = time.perf_counter() - t_all
        wal = srv.wal_since(start)
        rows = c.execute("SELECT count(*) FROM kept").fetchone()[0]  # type: ignore[index]
    return {"method": "physical", "elapsed_s": round(elapsed, 3), "wal_bytes": wal,
            "steps": steps, "rows_after": int(rows), "ok": int(rows) == cut["kept_rows"]}


def run_naive(srv: Server, db: str, cut: dict[str, Any]) -> dict[str, Any]:
    with connect(srv.dsn(db), application_name="tablemig-bench-naive") as c:
        start = srv.lsn()
        t0 = time.perf_counter()
        deleted = c.execute("DELETE FROM orders WHERE created_date < %s::timestamptz",
                            (cut["cutoff"],)).rowcount
        t1 = time.perf_counter()
        c.execute("VACUUM FULL orders")
        t2 = time.perf_counter()
        wal = srv.wal_since(start)
        rows = c.execute("SELECT count(*) FROM orders").fetchone()[0]  # type: ignore[index]
    return {"method": "naive", "elapsed_s": round(t2 - t0, 3), "wal_bytes": wal,
            "steps": {"delete": round(t1 - t0, 3), "vacuum_full": round(t2 - t1, 3)},
            "lock_hold_ms": round((t2 - t1) * 1000, 1), "rows_deleted": deleted,
            "rows_after": int(rows), "ok": int(rows) == cut["kept_rows"]}


def num(x: Any) -> float | None:
    return None if x is None else float(x)


def migration_events(dsn: str) -> list[dict[str, Any]]:
    with connect(dsn, application_name="tablemig-bench") as c:
        rows = c.execute(
            "SELECT operation, status, extract(epoch FROM logged_at)::float8, rows_affected,"
            " duration_ms::float8, details FROM table_migration.migration_log"
            " ORDER BY log_id").fetchall()
    return [{"operation": r[0], "status": r[1], "at": r[2], "rows": r[3],
             "duration_ms": r[4], "details": r[5]} for r in rows]


def migrate_cmd(a: argparse.Namespace, dsn: str, retention: float,
                until: str = "swapped", cutoff: str | None = None) -> list[str]:
    which = ["--cutoff", cutoff] if cutoff else ["--retention", str(retention)]
    return tablemig_cli("migrate", "--dsn", dsn, "--table", TABLE, "--date-column",
                        DATE_COLUMN, *which, "--batch-size", str(a.batch_size),
                        "--workers", str(a.workers), "--until", until,
                        *(["--nice-ratio", str(a.nice_ratio)] if a.nice_ratio is not None else []),
                        *(["--app-write-share", str(a.app_write_share)]
                          if a.app_write_share is not None else []))


def run_tablemig(srv: Server, db: str, cut: dict[str, Any], a: argparse.Namespace,
                 workdir: Path, label: str) -> dict[str, Any]:
    dsn = srv.dsn(db)
    out, err = workdir / f"{label}.out", workdir / f"{label}.err"
    start = srv.lsn()
    started_at = time.time()
    rc, wall, rss = run_child(migrate_cmd(a, dsn, cut["retention"]), out, err)
    wal = srv.wal_since(start)
    if rc != 0:
        raise RuntimeError(f"tablemig migrate failed (exit {rc}); stderr:\n{tail(err)}")
    result = json.loads(out.read_text())
    timings = {k: float(v) for k, v in (result.get("timings") or {}).items()}
    core = sum(timings.get(k, 0.0) for k in CORE_STEPS)
    with connect(dsn, application_name="tablemig-bench") as c:
        st = c.execute("SELECT cutoff, rows_copied, rows_to_copy, batch_size, swap_attempts"
                       " FROM table_migration.migration_state").fetchone()
        rows = c.execute("SELECT count(*) FROM orders").fetchone()[0]  # type: ignore[index]
    assert st is not None
    events = migration_events(dsn)
    backfill_done = next((e for e in events if e["operation"] == "backfill"
                          and e["status"] == "done"), None)
    progress = tail(err, 3).splitlines()
    return {"method": "tablemig", "wall_s": round(wall, 3), "elapsed_s": round(core, 3),
            "core_s": round(core, 3), "timings": timings, "wal_bytes": wal,
            "lock_hold_ms": num(result.get("lock_hold_ms")),
            "swap_attempts": result.get("swap_attempts"), "peak_rss_mb": round(rss, 1),
            "pacing": {k: result.get(k) for k in PACING_KEYS},
            "rows_copied": st[1], "rows_to_copy": st[2],
            "batches": (backfill_done or {}).get("details", {}).get("batches"),
            "cutoff": st[0], "cutoff_matches": st[0] == cut["cutoff"], "rows_after": int(rows),
            "ok": int(rows) == cut["kept_rows"], "started_at": started_at,
            "last_progress": progress[-1].strip() if progress else "", "events": events}


# --------------------------------------------------------------------------------------
# phases


def measured(srv: Server, src: str, method: str, cut: dict[str, Any], a: argparse.Namespace,
             workdir: Path, label: str) -> dict[str, Any]:
    db = f"bench_{label}"
    copy_s = srv.copy(src, db)
    ckpt = srv.checkpoint()
    srv.standby_caught_up()
    load0, fp = loadavg(), engine_fingerprint()
    log(f"{label}: copy {copy_s:.1f} s, checkpoint {ckpt:.1f} s, load {load0:.2f}; "
        f"running {method} ...")
    try:
        if method == "tablemig":
            res = run_tablemig(srv, db, cut, a, workdir, label)
        elif method == "physical":
            res = run_physical(srv, db, cut)
        else:
            res = run_naive(srv, db, cut)
    finally:
        if not a.keep_copies:
            srv.drop(db)
    res.update(label=label, rows_total=cut["total"], copy_seconds=round(copy_s, 2),
               checkpoint_seconds=round(ckpt, 2), loadavg_before=load0,
               loadavg_after=loadavg(), engine=fp if method == "tablemig" else None)
    log(f"{label}: {method} {res['elapsed_s']:.2f} s, WAL {res['wal_bytes'] / 2**20:.0f} MiB"
        + ("" if res.get("ok") else "  ROW COUNT MISMATCH"))
    return res


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(x: float | None, y: float | None) -> float | None:
    return None if x is None or not y else x / y


def verdict(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    op, limit = TARGETS[name]
    ok = value <= limit if op == "<=" else value >= limit
    return "MET" if ok else "MISSED"


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by = {m: [r for r in runs if r["method"] == m] for m in ("tablemig", "physical", "naive")}
    tm, ph, nv = by["tablemig"], by["physical"], by["naive"]
    s: dict[str, Any] = {
        "tablemig_core_s": median([r["core_s"] for r in tm]),
        "tablemig_wall_s": median([r["wall_s"] for r in tm]),
        "tablemig_wal_bytes": median([r["wal_bytes"] for r in tm]),
        "tablemig_lock_hold_ms": median([r["lock_hold_ms"] for r in tm]),
        "peak_rss_mb": max([r["peak_rss_mb"] for r in tm], default=None),
        "physical_s": median([r["elapsed_s"] for r in ph]),
        "physical_wal_bytes": median([r["wal_bytes"] for r in ph]),
        "naive_s": median([r["elapsed_s"] for r in nv]),
        "naive_wal_bytes": median([r["wal_bytes"] for r in nv]),
        "naive_lock_hold_ms": median([r["lock_hold_ms"] for r in nv]),
        "timings_median": {k: median([r["timings"].get(k) for r in tm]) for k in ALL_STEPS},
    }
    s["tablemig_core_min_s"] = min([r["core_s"] for r in tm], default=None)
    s["physical_min_s"] = min([r["elapsed_s"] for r in ph], default=None)
    s["naive_min_s"] = min([r["elapsed_s"] for r in nv], default=None)
    s["core_over_physical_min"] = ratio(s["tablemig_core_min_s"], s["physical_min_s"])
    s["core_over_physical"] = ratio(s["tablemig_core_s"], s["physical_s"])
    # each tablemig run against the physical run right after it: the machine's slow drifts
    # (another VM, the page cache, autovacuum) hit both alike and cancel out
    s["core_over_physical_paired"] = median([ratio(t["core_s"], p["elapsed_s"]) for t, p in zip(tm, ph, strict=False)])
    s["naive_over_core"] = ratio(s["naive_s"], s["tablemig_core_s"])
    s["wal_tablemig_over_naive"] = ratio(s["tablemig_wal_bytes"], s["naive_wal_bytes"])
    s["all_rows_ok"] = all(r.get("ok") for r in runs)
    s["cutoff_matches"] = all(r.get("cutoff_matches", True) for r in runs)
    return s


def fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def print_runs(title: str, runs: list[dict[str, Any]]) -> None:
    print(f"\n== {title} ==")
    head = (f"{'run':<16}{'method':<10}{'rows':>11}{'elapsed s':>10}{'wall s':>9}{'WAL MiB':>9}"
            f"{'lock ms':>9}{'RSS MB':>8}{'load':>6}  steps (s)")
    print(head)
    print("-" * len(head))
    for r in runs:
        steps = r.get("timings") or r.get("steps") or {}
        steps_s = " ".join(f"{k}={v:g}" for k, v in steps.items())
        print(f"{r['label']:<16}{r['method']:<10}{r['rows_total']:>11,}{r['elapsed_s']:>10.2f}"
              f"{fmt(r.get('wall_s')):>9}{r['wal_bytes'] / 2**20:>9.0f}"
              f"{fmt(r.get('lock_hold_ms'), '.1f'):>9}{fmt(r.get('peak_rss_mb'), '.0f'):>8}"
              f"{fmt(r.get('loadavg_before'), '.1f'):>6}"
              f"  {steps_s}" + ("" if r.get("ok") else "  ROWS MISMATCH"))
    print("(elapsed = tablemig core capture+backfill+index+replay+verify+swap; physical/naive total;"
          " wall = whole CLI process; naive lock = VACUUM FULL; load = 1-min load average"
          " before the run: above ~0.5 something else used the CPUs)")
    engines = {r["engine"] for r in runs if r.get("engine")}
    if len(engines) > 1:
        print(f"WARNING: the tablemig sources changed between runs (fingerprints {sorted(engines)})")


def print_ratios(s: dict[str, Any]) -> None:
    print("\n== ratios (medians over repeats) ==")
    lines = [
        ("core_over_physical", "tablemig core / physical limit", s["core_over_physical"],
         "<= 1.5 (aim 1.25)", ".2f"),
        ("naive_over_core", "naive / tablemig core", s["naive_over_core"], ">= 3", ".2f"),
        ("wal_tablemig_over_naive", "tablemig WAL / naive WAL", s["wal_tablemig_over_naive"],
         "<= 0.2", ".3f"),
        ("peak_rss_mb", "tablemig peak RSS (MB)", s["peak_rss_mb"], "<= 200", ".0f"),
    ]
    for key, label, value, target, spec in lines:
        print(f"{label:<34} = {fmt(value, spec):>8}   target {target:<18} {verdict(key, value)}")
    if s["core_over_physical_paired"] is not None:
        print(f"(median of the per-pair ratios, each tablemig run against the physical run after it: "
              f"{fmt(s['core_over_physical_paired'])})")
    if s["tablemig_core_min_s"] is not None and s["physical_min_s"] is not None:
        print(f"(best runs: tablemig core {fmt(s['tablemig_core_min_s'])} s / physical "
              f"{fmt(s['physical_min_s'])} s = {fmt(s['core_over_physical_min'])})")
    print(f"tablemig core {fmt(s['tablemig_core_s'])} s (wall {fmt(s['tablemig_wall_s'])} s), "
          f"physical {fmt(s['physical_s'])} s, naive {fmt(s['naive_s'])} s; "
          f"swap lock {fmt(s['tablemig_lock_hold_ms'], '.1f')} ms vs naive lock "
          f"{fmt(s['naive_lock_hold_ms'], '.0f')} ms")
    print(f"WAL MiB: tablemig {fmt((s['tablemig_wal_bytes'] or 0) / 2**20, '.0f')}, physical "
          f"{fmt((s['physical_wal_bytes'] or 0) / 2**20, '.0f')}, naive "
          f"{fmt((s['naive_wal_bytes'] or 0) / 2**20, '.0f')}")
    if not s["all_rows_ok"] or not s["cutoff_matches"]:
        print("WARNING: a run kept a different number of rows or used another cutoff")


def phase_measure(srv: Server, src: str, cut: dict[str, Any], a: argparse.Namespace,
                  workdir: Path) -> list[dict[str, Any]]:
    runs = []
    order = [m for m in ("tablemig", "physical", "naive") if m not in a.skip]
    if a.smoke and srv.sandbox is not None:
        a.boosted = boost(srv.sandbox)
        log(f"scheduling of this process and the primary: {a.boosted or 'unchanged (not permitted)'}")
    if a.smoke and not a.boosted:  # right after a test suite the machine may still be busy: wait for it (bounded)
        deadline = time.monotonic() + 90
        while loadavg() > 1.0 and time.monotonic() < deadline:
            time.sleep(2)
        log(f"load average {loadavg():.2f} before the smoke")
    for i in range(1, a.warmup + 1):  # not counted: first runs pay for cold caches and processes
        for method in order:
            if method != "naive":
                measured(srv, src, method, cut, a, workdir, f"warmup_{method}_{i}")
    for i in range(1, a.repeat + 1):
        for method in order:
            runs.append(measured(srv, src, method, cut, a, workdir, f"{method}_{i}"))
    return runs


def phase_scale(srv: Server, a: argparse.Namespace, workdir: Path,
                base_runs: list[dict[str, Any]]) -> dict[str, Any]:
    rows2 = a.rows * 2
    retention2 = a.retention / 2
    # twice the history at the same recent density: the kept rows span the same days, so
    # order_items (last 30 days) still only references kept orders
    src2 = ensure_source(srv, rows2, workdir, months=a.months * 2)
    cut2 = compute_cutoff(srv.dsn(src2["database"]), retention2)
    log(f"scale: {rows2:,} rows, retention {retention2}: keeps {cut2['kept_rows']:,} rows")
    runs = []
    for i in range(1, a.repeat + 1):
        runs.append(measured(srv, src2["database"], "tablemig", cut2, a, workdir, f"tablemig_2x_{i}"))
        runs.append(measured(srv, src2["database"], "physical", cut2, a, workdir, f"physical_2x_{i}"))
    base_tm = [r for r in base_runs if r["method"] == "tablemig"]
    base_ph = [r for r in base_runs if r["method"] == "physical"]
    core1 = median([r["core_s"] for r in base_tm])
    core2 = median([r["core_s"] for r in runs if r["method"] == "tablemig"])
    ph1 = median([r["elapsed_s"] for r in base_ph])
    ph2 = median([r["elapsed_s"] for r in runs if r["method"] == "physical"])
    rss1 = max([r["peak_rss_mb"] for r in base_tm], default=None)
    rss2 = max([r["peak_rss_mb"] for r in runs if r["method"] == "tablemig"], default=None)
    steps = {k: (median([r["timings"].get(k) for r in base_tm]),
                 median([r["timings"].get(k) for r in runs if r["method"] == "tablemig"]))
             for k in ALL_STEPS}
    return {"source": src2, "cutoff": cut2, "runs": runs, "core_1x_s": core1, "core_2x_s": core2,
            "scale_core_growth_pct": None if not core1 or core2 is None
            else (core2 / core1 - 1) * 100,
            "physical_1x_s": ph1, "physical_2x_s": ph2,
            "physical_growth_pct": None if not ph1 or ph2 is None else (ph2 / ph1 - 1) * 100,
            "peak_rss_1x_mb": rss1, "peak_rss_2x_mb": rss2, "steps_1x_2x": steps}


def print_scale(sc: dict[str, Any], rows: int) -> None:
    print_runs(f"scale test: {rows * 2:,} rows, same {sc['cutoff']['kept_rows']:,} kept rows",
               sc["runs"])
    g = sc["scale_core_growth_pct"]
    print(f"\ntablemig core {fmt(sc['core_1x_s'])} s at {rows:,} rows -> {fmt(sc['core_2x_s'])} s"
          f" at {rows * 2:,}: growth {fmt(g, '+.1f')} %   target <= 15 %   "
          f"{verdict('scale_core_growth_pct', g)}")
    print(f"physical limit {fmt(sc['physical_1x_s'])} s -> {fmt(sc['physical_2x_s'])} s "
          f"(growth {fmt(sc['physical_growth_pct'], '+.1f')} %); peak RSS "
          f"{fmt(sc['peak_rss_1x_mb'], '.0f')} MB -> {fmt(sc['peak_rss_2x_mb'], '.0f')} MB")
    print("per step (1x -> 2x): " + ", ".join(
        f"{k} {fmt(v[0])}->{fmt(v[1])}" for k, v in sc["steps_1x_2x"].items()))


# --------------------------------------------------------------------------------------
# workload (pgbench)


def pgbench_cmd(srv: Server, db: str, a: argparse.Namespace, seconds: int, prefix: Path,
                cut: dict[str, Any]) -> list[str]:
    p = conninfo_to_dict(srv.dsn(db))
    span = max(1, min(100_000, cut["kept_rows"] // 10))
    cmd = [str(srv.pg_bin.tool("pgbench")), "-n", "-f", str(PGBENCH_SCRIPT),
           "-c", str(a.clients), "-j", str(a.threads), "-T", str(seconds),
           f"--max-tries={a.max_tries}", "--failures-detailed", "-l",
           f"--log-prefix={prefix}", "-P", "5", "-M", a.query_mode,
           "-D", f"maxid={cut['max_id']}", "-D", f"span={span}"]
    if a.rate:
        cmd += ["-R", str(a.rate)]
    for flag, key in (("-h", "host"), ("-p", "port"), ("-U", "user")):
        if p.get(key):
            cmd += [flag, str(p[key])]
    return [*cmd, db]


def read_pgbench_log(prefix: Path) -> list[tuple[float, float | None]]:
    """(end epoch, latency s or None when failed) per transaction, sorted by end."""
    txns: list[tuple[float, float | None]] = []
    for path in glob.glob(f"{prefix}.*"):
        with open(path) as fh:
            for line in fh:
                f = line.split()
                if len(f) < 6:
                    continue
                end = int(f[4]) + int(f[5]) / 1e6
                lat = int(f[2]) / 1e6 if f[2].isdigit() else None
                txns.append((end, lat))
    txns.sort()
    return txns


def parse_pgbench_out(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in text.splitlines():
        line = line.strip()
        for key, label in (("processed", "number of transactions actually processed:"),
                           ("failed", "number of failed transactions:"),
                           ("serialization_failures", "number of serialization failures:"),
                           ("deadlock_failures", "number of deadlock failures:"),
                           ("retried", "number of transactions retried:"),
                           ("tps", "tps =")):
            if line.startswith(label):
                tok = line[len(label):].split()[0]
                try:
                    out[key] = float(tok) if key == "tps" else int(tok.split("/")[0])
                except ValueError:
                    out[key] = tok
    return out


def window(txns: list[tuple[float, float | None]], a: float, b: float) -> dict[str, Any]:
    """Transactions ending in [a, b]: count, tps, worst and p99 latency (ms)."""
    lats = [lat for end, lat in txns if a <= end <= b and lat is not None]
    n = len(lats)
    lats.sort()
    return {"from": a, "to": b, "seconds": round(b - a, 3), "committed": n,
            "tps": round(n / (b - a), 1) if b > a else None,
            "worst_ms": round(lats[-1] * 1000, 1) if lats else None,
            "p99_ms": round(lats[min(n - 1, int(n * 0.99))] * 1000, 1) if lats else None,
            "p50_ms": round(lats[n // 2] * 1000, 1) if lats else None}


def overlapping_worst(txns: list[tuple[float, float | None]], a: float, b: float) -> float | None:
    """Worst latency (ms) of transactions whose [start, end] overlaps [a, b]."""
    worst = None
    for end, lat in txns:
        if lat is not None and end >= a and end - lat <= b:
            worst = lat if worst is None else max(worst, lat)
    return None if worst is None else round(worst * 1000, 1)


def per_second(txns: list[tuple[float, float | None]], t0: float) -> list[list[float]]:
    buckets: dict[int, list[float]] = {}
    for end, lat in txns:
        b = buckets.setdefault(int(end - t0), [0, 0.0, 0])
        if lat is None:
            b[2] += 1
        else:
            b[0] += 1
            b[1] = max(b[1], lat * 1000)
    return [[s, *buckets[s]] for s in sorted(buckets)]  # second, committed, worst ms, failed


def run_pgbench(srv: Server, db: str, a: argparse.Namespace, seconds: int, workdir: Path,
                label: str, cut: dict[str, Any], during: Any = None) -> dict[str, Any]:
    prefix = workdir / f"pgbench_{label}"
    for old in glob.glob(f"{prefix}.*"):
        os.unlink(old)
    out, err = workdir / f"{label}.pgbench.out", workdir / f"{label}.pgbench.err"
    cmd = pgbench_cmd(srv, db, a, seconds, prefix, cut)
    t_start = time.time()
    p = start_child(cmd, out, err)
    extra = None
    try:
        if during:
            extra = during(p)
        rc = p.wait()
    finally:
        if p.poll() is None:
            stop_children()
        CHILDREN.pop(p.pid, None)
    t_end = time.time()
    stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
    parsed = parse_pgbench_out(stdout)
    aborted = [ln for ln in stderr.splitlines() if "aborted" in ln]
    txns = read_pgbench_log(prefix)
    if not a.keep_logs:
        for f in glob.glob(f"{prefix}.*"):
            os.unlink(f)
    failed_log = sum(1 for _, lat in txns if lat is None)
    res = {"label": label, "exit_code": rc, "seconds": seconds, "started_at": t_start,
           "ended_at": t_end, "pgbench": parsed, "aborted_lines": aborted[:20],
           "aborted_clients": len(aborted), "failed_in_log": failed_log,
           "all": window(txns, t_start + 1, min(t_end, t_start + seconds)), "per_second": per_second(txns, t_start),
           "command": " ".join(cmd)}
    if rc != 0:
        log(f"pgbench {label} exited {rc}: {tail(err, 5)}")
    return res | {"txns": txns, "extra": extra}


def phase_workload(srv: Server, src: str, cut: dict[str, Any], a: argparse.Namespace,
                   workdir: Path, est_migration_s: float | None) -> dict[str, Any]:
    if a.workload_seconds:
        seconds = a.workload_seconds
    else:
        # ~26 s unloaded at 10M rows on 2 cores; under load it may take twice as long, and
        # the write guard (on unless --app-write-share 0) rests several times its work
        est = est_migration_s if est_migration_s else 10 + cut["total"] * 2.5e-6
        factor = 3 if a.app_write_share == 0 else 10
        seconds = int(math.ceil(a.migration_delay + est * factor + 15))
    log(f"workload: pgbench -c {a.clients} -j {a.threads} -T {seconds} (a baseline, a run with a "
        f"migration starting after {a.migration_delay} s, another baseline)")

    def baseline(label: str) -> tuple[dict[str, Any], list[tuple[float, float | None]], float]:
        """pgbench alone on an untouched copy."""
        db = f"bench_{label}"
        copy_s = srv.copy(src, db)
        srv.checkpoint()
        srv.standby_caught_up()
        try:
            run = run_pgbench(srv, db, a, seconds, workdir, label, cut)
        finally:
            if not a.keep_copies:
                srv.drop(db)
        run.pop("extra")
        log(f"{label}: {run['all']['tps']} tps, worst {run['all']['worst_ms']} ms")
        return run, run.pop("txns"), copy_s

    # the machine's speed drifts by tens of per cent between minutes: a baseline on each side
    # of the migration run, each judged over the same seconds after pgbench's start
    base, base_txns, copy_s = baseline("wl_base")

    db = "bench_wl_mig"
    copy2_s = srv.copy(src, db)
    srv.checkpoint()
    srv.standby_caught_up()

    def migrate(p: subprocess.Popen[bytes]) -> dict[str, Any]:
        time.sleep(a.migration_delay)
        if p.poll() is not None:
            raise RuntimeError("pgbench ended before the migration started")
        label = "wl_migrate"
        out, err = workdir / f"{label}.out", workdir / f"{label}.err"
        fp = engine_fingerprint()
        started = time.time()
        fixed = cut["cutoff"] if a.workload_cutoff == "fixed" else None
        rc, wall, rss = run_child(migrate_cmd(a, srv.dsn(db), cut["retention"], cutoff=fixed),
                                  out, err)
        ended = time.time()
        if rc != 0:
            raise RuntimeError(f"tablemig migrate under load failed (exit {rc}):\n{tail(err)}")
        if p.poll() is not None:
            log("WARNING: pgbench ended before the migration finished; raise --workload-seconds")
        res = json.loads(out.read_text())
        return {"started_at": started, "ended_at": ended, "wall_s": round(wall, 3),
                "peak_rss_mb": round(rss, 1), "timings": res.get("timings"),
                "nice_ratio": res.get("nice_ratio"), "nice_slept_s": res.get("nice_slept_s"),
                "pacing": {k: res.get(k) for k in PACING_KEYS},
                "lock_hold_ms": num(res.get("lock_hold_ms")), "swap_attempts": res.get("swap_attempts"),
                "pgbench_running_at_end": p.poll() is None, "engine": fp}

    try:
        mig = run_pgbench(srv, db, a, seconds, workdir, "wl_mig", cut, during=migrate)
        events = migration_events(srv.dsn(db))
    finally:
        if not a.keep_copies:
            srv.drop(db)
    txns = mig.pop("txns")
    m = mig.pop("extra")
    base2, base2_txns, _ = baseline("wl_base_after")
    ev = {f"{e['operation']}:{e['status']}": e["at"] for e in events}
    t_cap_start = m["started_at"]
    t_cap_done = ev.get("capture:installed")
    t_backfill = ev.get("backfill:done")
    t_index = ev.get("index:done")
    t_verify = ev.get("verify:match")
    t_switch = ev.get("replay:switched")
    switch_ev = next((e for e in events if e["operation"] == "replay" and e["status"] == "switched"), None)
    switch_hold_ms = ((switch_ev or {}).get("details") or {}).get("lock_hold_ms")
    t_swap_end = ev.get("swap:done")
    hold = (m.get("lock_hold_ms") or 0) / 1000
    t_swap_start = t_swap_end - hold if t_swap_end else None
    phases: dict[str, Any] = {}
    if t_swap_start:
        # from the capture trigger's install (the plan before it only reads) to the swap
        phases["capture_to_swap"] = window(txns, t_cap_done or t_cap_start, t_swap_start)
        phases["start_to_swap"] = window(txns, t_cap_start, t_swap_start)
        phases["before_migration"] = window(txns, mig["started_at"] + 1, t_cap_start)
        # the same run's own baseline: the seconds before the migration starts (after a
        # warm-up); with --migration-delay 20 or more it is a control adjacent in time
        phases["before_migration_warm"] = window(txns, mig["started_at"] + min(5.0, a.migration_delay / 2),
                                                 t_cap_start)
        phases["after_swap"] = window(txns, t_swap_end + 1, mig["ended_at"])
    for name, (x, y) in {"plan+capture": (t_cap_start, t_cap_done), "backfill": (t_cap_done, t_backfill),
                         "index": (t_backfill, t_index), "replay": (t_index, t_switch),
                         "verify": (t_switch or t_index, t_verify),
                         "swap": (t_verify, t_swap_end)}.items():
        if x and y:
            phases[name] = window(txns, x, y)
    both = [x for x in (base["all"]["tps"], base2["all"]["tps"]) if x]
    base_tps = round(sum(both) / len(both), 1) if both else None
    cap_tps = phases.get("capture_to_swap", {}).get("tps")

    def same_seconds(run: dict[str, Any], run_txns: list[tuple[float, float | None]]) -> dict[str, Any]:
        """A baseline over the seconds after its start that the capture-to-swap window
        spans in the migration run (tps drifts as the table grows and after the checkpoint)."""
        if not t_swap_start:
            return {}
        return window(run_txns, run["started_at"] + ((t_cap_done or t_cap_start) - mig["started_at"]),
                      run["started_at"] + (t_swap_start - mig["started_at"]))

    same_before, same_after = same_seconds(base, base_txns), same_seconds(base2, base2_txns)
    pair = [x.get("tps") for x in (same_before, same_after) if x.get("tps")]
    same = {"tps": round(sum(pair) / len(pair), 1) if pair else None,
            "before_tps": same_before.get("tps"), "after_tps": same_after.get("tps")}
    swap_worst = (overlapping_worst(txns, t_swap_start - 1, t_swap_end + 1)
                  if t_swap_start else None)
    capture_worst = (overlapping_worst(txns, t_cap_done - 1, t_cap_done + 1)
                     if t_cap_done else None)
    # the switch to direct capture holds SHARE ROW EXCLUSIVE on the table: a second stall
    switch_worst = (overlapping_worst(txns, t_switch - 1, t_switch + 1) if t_switch else None)
    failed = (mig["pgbench"].get("failed") or 0) + mig["aborted_clients"] + mig["failed_in_log"]
    covered = bool(t_swap_end and t_swap_end + 1 < mig["ended_at"])
    summary = {
        "seconds": seconds, "baseline_tps": base_tps,
        "baseline_worst_ms": base["all"]["worst_ms"], "baseline_p99_ms": base["all"]["p99_ms"],
        "migration_run_tps": mig["all"]["tps"], "capture_to_swap_tps": cap_tps,
        # the target: capture-to-swap tps against the two baselines over the same seconds
        "workload_capture_tps_pct": None if not same.get("tps") or cap_tps is None
        else cap_tps / same["tps"] * 100,
        "capture_tps_pct_whole_baselines": None if not base_tps or cap_tps is None
        else cap_tps / base_tps * 100,
        "baseline_before_tps": base["all"]["tps"], "baseline_after_tps": base2["all"]["tps"],
        "baseline_same_window_tps": same.get("tps"),
        "baseline_same_window_before_tps": same.get("before_tps"),
        "baseline_same_window_after_tps": same.get("after_tps"),
        "same_run_before_tps": phases.get("before_migration_warm", {}).get("tps"),
        "capture_tps_pct_same_run": None if not phases.get("before_migration_warm", {}).get("tps")
        or cap_tps is None else cap_tps / phases["before_migration_warm"]["tps"] * 100,
        "worst_ms_overall": mig["all"]["worst_ms"], "p99_ms_overall": mig["all"]["p99_ms"],
        "workload_swap_worst_ms": swap_worst, "capture_install_worst_ms": capture_worst,
        "switch_worst_ms": switch_worst, "switch_lock_hold_ms": switch_hold_ms,
        "baseline_failed": sum((b["pgbench"].get("failed") or 0) + b["aborted_clients"] for b in (base, base2)),
        "workload_failed": failed, "migration_failed_pgbench": mig["pgbench"].get("failed"),
        "aborted_clients": mig["aborted_clients"], "swap_covered": covered,
        "lock_hold_ms": m.get("lock_hold_ms"), "swap_attempts": m.get("swap_attempts"),
        "migration_wall_s": m["wall_s"], "migration_timings": m["timings"],
        "nice_ratio": m.get("nice_ratio"), "nice_slept_s": m.get("nice_slept_s"),
        "pacing": m.get("pacing"),
        "migration_core_s": round(sum((m["timings"] or {}).get(k, 0) for k in CORE_STEPS), 3),
    }
    return {"summary": summary, "phases": phases, "baseline": base, "baseline_after": base2,
            "migration_run": mig,
            "migration": m, "events": events, "copy_seconds": [round(copy_s, 2), round(copy2_s, 2)],
            "timestamps": {"capture_start": t_cap_start, "capture_installed": t_cap_done,
                           "backfill_done": t_backfill, "index_done": t_index,
                           "replay_switched": t_switch,
                           "verify_done": t_verify, "swap_start": t_swap_start,
                           "swap_done": t_swap_end}}


def print_workload(w: dict[str, Any], a: argparse.Namespace) -> None:
    s = w["summary"]
    print(f"\n== workload: pgbench -c {a.clients} -j {a.threads} -T {s['seconds']} "
          f"--max-tries={a.max_tries} -M {a.query_mode}"
          + (f" -R {a.rate}" if a.rate else "") + " (70 % INSERT / 30 % UPDATE of recent orders) ==")
    if a.rate:
        print("(with -R every latency includes pgbench's schedule lag: once the server falls behind the "
              "rate, transactions wait behind earlier ones; a lock stall shows as the swap's lock hold)")
    for title, key in (("baseline before", "baseline"), ("baseline after ", "baseline_after")):
        b = w[key]
        print(f"{title} (no migration): {b['all']['committed']:,} txns, {fmt(b['all']['tps'], '.1f')} "
              f"tps, p50 {b['all']['p50_ms']} ms, p99 {b['all']['p99_ms']} ms, worst "
              f"{b['all']['worst_ms']} ms (pgbench's own tps {b['pgbench'].get('tps')})")
    mr = w["migration_run"]
    print(f"with migration:                {mr['all']['committed']:,} txns, {fmt(s['migration_run_tps'], '.1f')}"
          f" tps, p50 {mr['all']['p50_ms']} ms, p99 {mr['all']['p99_ms']} ms, worst "
          f"{mr['all']['worst_ms']} ms (pgbench's own tps {mr['pgbench'].get('tps')})")
    print(f"migration under load: wall {s['migration_wall_s']:.1f} s, core {s['migration_core_s']:.1f} s,"
          f" timings {s['migration_timings']}, swap lock {s['lock_hold_ms']} ms, attempts "
          f"{s['swap_attempts']}; nice ratio {s.get('nice_ratio')} (slept {s.get('nice_slept_s')} s)")
    g = s.get("pacing") or {}
    if g.get("app_write_share"):
        print(f"write guard: keep {g['app_write_share']:g} of the application's writes; its free rate "
              f"{fmt(g.get('app_write_rate'), ',.0f')}/s, kept {fmt(g.get('app_share_kept'), '.3f')} by the "
              f"guard's own count ({g.get('app_writes')} of {g.get('app_writes_expected')} expected), "
              f"rested {fmt(g.get('rested_s'), '.1f')} s")
    else:
        print("write guard: off")
    print(f"{'window':<18}{'seconds':>9}{'txns':>9}{'tps':>9}{'p50 ms':>9}{'p99 ms':>9}{'worst ms':>10}")
    for name in ("before_migration", "plan+capture", "backfill", "index", "replay", "verify", "swap",
                 "start_to_swap", "capture_to_swap", "after_swap"):
        ph = w["phases"].get(name)
        if ph:
            print(f"{name:<18}{ph['seconds']:>9.1f}{ph['committed']:>9,}{fmt(ph['tps'], '.1f'):>9}"
                  f"{fmt(ph['p50_ms'], '.1f'):>9}{fmt(ph['p99_ms'], '.1f'):>9}{fmt(ph['worst_ms'], '.1f'):>10}")
    print(f"tps capture->swap / baselines over the same seconds = "
          f"{fmt(s['workload_capture_tps_pct'], '.1f'):>5} %  target >= 85 %  "
          f"{verdict('workload_capture_tps_pct', s['workload_capture_tps_pct'])}")
    print(f"  (capture->swap {fmt(s['capture_to_swap_tps'], '.1f')} tps; the baselines over the same seconds "
          f"after pgbench's start: {fmt(s['baseline_same_window_before_tps'], '.1f')} before, "
          f"{fmt(s['baseline_same_window_after_tps'], '.1f')} after; against the baselines' whole runs "
          f"{fmt(s['capture_tps_pct_whole_baselines'], '.1f')} %; against this run's own "
          f"{a.migration_delay:g} s before the migration ({fmt(s['same_run_before_tps'], '.1f')} tps) "
          f"{fmt(s['capture_tps_pct_same_run'], '.1f')} %)")
    print(f"worst latency within +-1 s of swap = {fmt(s['workload_swap_worst_ms'], '.1f')} ms  "
          f"target <= 250 ms  {verdict('workload_swap_worst_ms', s['workload_swap_worst_ms'])}")
    print(f"worst latency overall = {fmt(s['worst_ms_overall'], '.1f')} ms; around capture "
          f"install (+-1 s) = {fmt(s['capture_install_worst_ms'], '.1f')} ms; around the switch to "
          f"direct capture (+-1 s) = {fmt(s['switch_worst_ms'], '.1f')} ms (its lock held "
          f"{fmt(s['switch_lock_hold_ms'], '.1f')} ms)")
    print(f"failed transactions = {s['workload_failed']} (pgbench failed "
          f"{s['migration_failed_pgbench']}, aborted clients {s['aborted_clients']})  target 0  "
          f"{verdict('workload_failed', s['workload_failed'])}")
    if not s["swap_covered"]:
        print("WARNING: pgbench did not run until 1 s after the swap; raise --workload-seconds")


def phase_trigger(srv: Server, src: str, cut: dict[str, Any], a: argparse.Namespace,
                  workdir: Path) -> dict[str, Any]:
    """pgbench on an untouched copy, then on a copy with only the capture trigger installed
    (`migrate --until capturing`, no backfill running): the trigger's own cost."""
    seconds = a.trigger_seconds
    out: dict[str, Any] = {"seconds": seconds}
    for label in ("trig_base", "trig_capture"):
        db = f"bench_{label}"
        srv.copy(src, db)
        try:
            if label == "trig_capture":
                rc, _, _ = run_child(migrate_cmd(a, srv.dsn(db), cut["retention"],
                                                 until="capturing", cutoff=cut["cutoff"]),
                                     workdir / f"{label}.out", workdir / f"{label}.err")
                if rc != 0:
                    raise RuntimeError(f"migrate --until capturing failed:\n"
                                       f"{tail(workdir / f'{label}.err')}")
            srv.checkpoint()
            r = run_pgbench(srv, db, a, seconds, workdir, label, cut)
        finally:
            if not a.keep_copies:
                srv.drop(db)
        r.pop("txns")
        r.pop("extra")
        out[label] = r
    b, c = out["trig_base"]["all"], out["trig_capture"]["all"]
    out["tps_pct"] = c["tps"] / b["tps"] * 100 if b["tps"] and c["tps"] else None
    return out


def print_trigger(t: dict[str, Any], a: argparse.Namespace) -> None:
    b, c = t["trig_base"]["all"], t["trig_capture"]["all"]
    print(f"\n== capture trigger alone: pgbench -c {a.clients} -j {a.threads} -T {t['seconds']}, "
          f"no backfill running ==")
    for name, w in (("no trigger", b), ("capture trigger", c)):
        print(f"{name:<16} {fmt(w['tps'], '.1f'):>8} tps  p50 {w['p50_ms']} ms  p99 {w['p99_ms']} ms"
              f"  worst {w['worst_ms']} ms")
    print(f"tps with the trigger / without = {fmt(t['tps_pct'], '.1f')} %")


# --------------------------------------------------------------------------------------
# diagnostics


def phase_explain(srv: Server, src: str, cut: dict[str, Any], a: argparse.Namespace,
                  workdir: Path) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of a first and a middle bulk-load chunk, rolled back."""
    from tablemig.config.spec import TableSpec
    from tablemig.lifecycle.driver import Migration

    db = "bench_explain"
    srv.copy(src, db)
    out: dict[str, Any] = {}
    try:
        rc, _, _ = run_child(migrate_cmd(a, srv.dsn(db), cut["retention"], until="capturing"),
                             workdir / "explain.out", workdir / "explain.err")
        if rc != 0:
            raise RuntimeError(f"migrate --until capturing failed:\n{tail(workdir / 'explain.err')}")
        spec = TableSpec(TABLE, DATE_COLUMN, retention=cut["retention"], batch_size=a.batch_size)
        with Migration(srv.dsn(db), spec) as mig:
            m = mig._state()  # noqa: SLF001 - diagnostic use of the engine's internals
            assert m is not None
            _, job, _ = mig._jobs(m)[0]  # noqa: SLF001
            c = mig.conn
            plan = mig.plan()
            from tablemig.lifecycle.backfill import chunk_sql, plan_chunks
            split = DATE_COLUMN if plan.order_by_date else plan.key[0]
            split_type = (plan.date_type if plan.order_by_date
                          else {col.name: col.type for col in plan.info.columns}[split])
            chunks = plan_chunks(c, job, split, split_type, cut["kept_rows"], a.batch_size)
            for name, ch in (("first_chunk", chunks[0]), ("middle_chunk", chunks[len(chunks) // 2])):
                plans = {}
                params = [job.cutoff, *([ch.lo] if ch.lo is not None else []),
                          *([ch.hi] if ch.hi is not None else [])]
                q = chunk_sql(job, split, split_type, ch.lo is not None, ch.hi is not None)
                c.execute("BEGIN")
                try:
                    text = sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ").as_string(c) + q.as_string(c)
                    rows = c.execute(text, params).fetchall()
                    plans["copy"] = {"sql": q.as_string(c), "params": params,
                                     "plan": [r[0] for r in rows]}
                finally:
                    c.execute("ROLLBACK")
                out[name] = plans
    finally:
        if not a.keep_copies:
            srv.drop(db)
    return out


def print_explain(ex: dict[str, Any]) -> None:
    for batch, plans in ex.items():
        for qname, p in plans.items():
            print(f"\n== EXPLAIN {batch} / {qname} ==\n{p['sql']}\n  params {p['params']}")
            print("\n".join("  " + line for line in p["plan"]))


def phase_profile(srv: Server, src: str, cut: dict[str, Any], a: argparse.Namespace
                  ) -> dict[str, Any]:
    """One migration in-process with a statement recorder: slowest statements per step."""
    from tablemig.config.spec import TableSpec
    from tablemig.lifecycle.driver import Migration
    from tablemig.lifecycle.executor import Recorder

    db = "bench_profile"
    srv.copy(src, db)
    srv.checkpoint()
    try:
        rec = Recorder()
        spec = TableSpec(TABLE, DATE_COLUMN, retention=cut["retention"], batch_size=a.batch_size,
                         workers=a.workers)
        with Migration(srv.dsn(db), spec, recorder=rec, progress=lambda _p: None) as mig:
            # the steps of Migration.run("swapped"), labelled for the recorder
            for step, fn in (("capture", mig.capture), ("backfill", mig.backfill),
                             ("index", mig.build_indexes), ("replay", mig.replay),
                             ("verify", mig.verify),
                             ("swap", mig.swap), ("validate_fks", mig.validate_foreign_keys)):
                rec.step = step
                fn()
            timings = dict(mig.timings)
            samples = mig.backfill_samples
    finally:
        if not a.keep_copies:
            srv.drop(db)
    top = sorted(rec.statements, key=lambda s: -s.duration_ms)[:25]
    return {"timings": timings,
            "batches": [{"rows": s["batch_rows"], "seconds": round(s["batch_seconds"], 3),
                         "size": s["batch_size"]} for s in samples],
            "slowest": [{"step": s.step, "ms": round(s.duration_ms, 1), "rows": s.rows,
                         "sql": " ".join(s.sql.split())[:300]} for s in top]}


def print_profile(p: dict[str, Any]) -> None:
    print(f"\n== profile (in-process run) timings {p['timings']} ==")
    b = p["batches"]
    if b:
        print(f"backfill: {len(b)} batches; sizes {[x['size'] for x in b][:12]}...; seconds "
              f"{[x['seconds'] for x in b][:12]}...")
    for s in p["slowest"]:
        print(f"{s['ms']:>10.1f} ms  {s['step']:<10} rows={s['rows']}  {s['sql'][:200]}")


# --------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/bench.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Usage examples"):],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--rows", type=int, default=10_000_000,
                   help="orders rows in the source table (default 10000000, ~1.9 GB)")
    g.add_argument("--months", type=int, default=36,
                   help="months of history for demo-data (default 36)")
    g.add_argument("--retention", type=float, default=0.1,
                   help="fraction kept (default 0.1 = the newest 10%% of rows)")
    g = p.add_argument_group("measurement")
    g.add_argument("--repeat", type=int, default=1,
                   help="rounds of tablemig, physical, naive (alternating; default 1)")
    g.add_argument("--batch-size", type=int, default=50_000,
                   help="tablemig --batch-size (initial; the engine adapts it; default 50000)")
    g.add_argument("--workers", type=int, default=1, help="tablemig --workers (default 1)")
    g.add_argument("--nice-ratio", type=float,
                   help="tablemig --nice-ratio: pace the bulk work (default: none)")
    g.add_argument("--app-write-share", type=float,
                   help="tablemig --app-write-share: the write guard's share (default: tablemig's, "
                        "0.9; 0: off)")
    g.add_argument("--skip", action="append", default=[], choices=["tablemig", "physical", "naive"],
                   help="leave a method out of the measurement (repeatable)")
    g.add_argument("--measure", action="store_true",
                   help="run the alternating measurement even with --workload, --explain or "
                        "--profile")
    g.add_argument("--smoke", action="store_true",
                   help="CI mode: exit 1 if tablemig core / physical > --smoke-limit")
    g.add_argument("--smoke-limit", type=float, default=3.0, help="(default 3.0)")
    g.add_argument("--warmup", type=int, default=None,
                   help="unmeasured rounds of tablemig and physical before the measured ones "
                        "(default 1 with --smoke, else 0)")
    g.add_argument("--strict", action="store_true", help="exit 1 when any target is missed")
    g = p.add_argument_group("scale test")
    g.add_argument("--scale-test", action="store_true",
                   help="also migrate 2x rows over 2x months with retention/2 (same kept "
                        "rows); implies the measurement")
    g = p.add_argument_group("workload (pgbench)")
    g.add_argument("--workload", action="store_true",
                   help="pgbench baseline, then pgbench during a migration (alone: only this)")
    g.add_argument("--workload-seconds", type=int, default=0,
                   help="pgbench -T for both runs (default: delay + 3x the expected migration "
                        "+ 15 s; expected = the measured tablemig wall time if measured in "
                        "this run, else 10 s + 2.5 us per row)")
    g.add_argument("--clients", type=int, default=4, help="pgbench -c (default 4)")
    g.add_argument("--threads", type=int, default=2, help="pgbench -j (default 2)")
    g.add_argument("--max-tries", type=int, default=10,
                   help="pgbench --max-tries: retries of serialization/deadlock failures (default 10)")
    g.add_argument("--rate", type=float, default=0,
                   help="pgbench -R target tps (default 0 = as fast as possible)")
    g.add_argument("--query-mode", default="simple", choices=["simple", "extended", "prepared"],
                   help="pgbench -M (default simple)")
    g.add_argument("--workload-cutoff", choices=["fixed", "retention"], default="fixed",
                   help="fixed (default): migrate with --cutoff = the cutoff computed before "
                        "pgbench starts, so the kept rows do not depend on how many orders "
                        "pgbench inserted first; retention: --retention like the measurement")
    g.add_argument("--trigger-overhead", action="store_true",
                   help="pgbench without and with only the capture trigger installed (no "
                        "backfill): separates the trigger's cost from the backfill's")
    g.add_argument("--trigger-seconds", type=int, default=40,
                   help="pgbench -T of each --trigger-overhead run (default 40)")
    g.add_argument("--migration-delay", type=float, default=2.0,
                   help="seconds between pgbench start and migration start (default 2)")
    g = p.add_argument_group("diagnostics")
    g.add_argument("--explain", action="store_true",
                   help="EXPLAIN (ANALYZE, BUFFERS) a first and a middle backfill batch")
    g.add_argument("--profile", action="store_true",
                   help="one in-process migration with per-statement timings")
    g = p.add_argument_group("server")
    g.add_argument("--reuse-dsn", help="use this server instead of starting a sandbox "
                                       "(needs CREATEDB; settings are recorded, not changed)")
    g.add_argument("--sandbox-dir", help="sandbox root (default /tmp/tablemig-bench-<pid>; "
                                         "must be traversable by the postgres user)")
    g.add_argument("--keep-sandbox", action="store_true",
                   help="leave the sandbox running at the end (prints its DSN; stop it with "
                        "`tablemig sandbox stop --dir DIR`)")
    g.add_argument("--shared-buffers", default="2GB", help="sandbox shared_buffers (default 2GB)")
    g.add_argument("--keep-copies", action="store_true", help="do not drop the per-run databases")
    g.add_argument("--keep-logs", action="store_true",
                   help="keep pgbench per-transaction logs in the work directory")
    g.add_argument("--out", help="result JSON path (default bench/results/<timestamp>.json)")
    a = p.parse_args(argv)
    if a.repeat < 1 or a.rows < 1000 or not 0 < a.retention < 1:
        p.error("need --repeat >= 1, --rows >= 1000 and 0 < --retention < 1")
    if a.warmup is None:
        a.warmup = 1 if a.smoke else 0
    a.boosted = ""
    a.do_measure = (not (a.workload or a.explain or a.profile or a.trigger_overhead)
                    or a.measure or a.scale_test or a.smoke)
    return a


def targets_report(results: dict[str, Any]) -> dict[str, Any]:
    vals: dict[str, Any] = {}
    s = results.get("summary") or {}
    for k in ("core_over_physical", "naive_over_core", "wal_tablemig_over_naive", "peak_rss_mb"):
        if s.get(k) is not None:
            vals[k] = s[k]
    if results.get("scale"):
        vals["scale_core_growth_pct"] = results["scale"]["scale_core_growth_pct"]
    if results.get("workload"):
        w = results["workload"]["summary"]
        for k in ("workload_capture_tps_pct", "workload_swap_worst_ms", "workload_failed"):
            vals[k] = w[k]
    return {k: {"value": v, "target": f"{TARGETS[k][0]} {TARGETS[k][1]}", "verdict": verdict(k, v)}
            for k, v in vals.items()}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = RESULTS / f"{stamp}_work"
    workdir.mkdir(parents=True, exist_ok=True)
    out_path = Path(a.out) if a.out else RESULTS / f"{stamp}.json"

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    results: dict[str, Any] = {"started": stamp, "argv": sys.argv[1:], "options": vars(a).copy()}
    sb = None
    srv: Server | None = None
    failed = True
    t_total = time.perf_counter()
    try:
        if a.reuse_dsn:
            from tablemig.pg.binaries import find_pg_bin

            srv = Server(a.reuse_dsn, find_pg_bin())
            results["server"] = {"kind": "reused", "dsn": a.reuse_dsn}
        else:
            from tablemig.sandbox.cluster import start_sandbox

            root = Path(a.sandbox_dir or f"/tmp/tablemig-bench-{os.getpid()}")
            t0 = time.perf_counter()
            log(f"starting sandbox (primary + standby) at {root} ...")
            sb = start_sandbox(root, extra_conf=durable_conf(a))
            log(f"sandbox up in {time.perf_counter() - t0:.1f} s: {sb.active_dsn}")
            srv = Server(sb.active_dsn, sb.pg_bin, sb)
            results["server"] = {"kind": "sandbox", "root": str(root), "dsn": sb.active_dsn,
                                 "standby_dsn": sb.passive_dsn,
                                 "start_seconds": round(time.perf_counter() - t0, 1)}
        results["server"]["settings"] = srv.settings()
        results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                              "loadavg_at_start": loadavg()}
        results["engine_fingerprint_at_start"] = engine_fingerprint()
        src = ensure_source(srv, a.rows, workdir, months=a.months)
        results["source"] = src
        cut = compute_cutoff(srv.dsn(src["database"]), a.retention)
        results["cutoff"] = cut
        log(f"cutoff {cut['cutoff']}: keep {cut['kept_rows']:,} of {cut['total']:,} rows")
        est = None
        if a.do_measure:
            runs = phase_measure(srv, src["database"], cut, a, workdir)
            results["runs"] = runs
            results["summary"] = summarize(runs)
            results["scheduling"] = a.boosted
            est = median([r["wall_s"] for r in runs if r["method"] == "tablemig"])
        if a.scale_test:
            results["scale"] = phase_scale(srv, a, workdir, results.get("runs", []))
        if a.workload:
            results["workload"] = phase_workload(srv, src["database"], cut, a, workdir, est)
        if a.trigger_overhead:
            results["trigger"] = phase_trigger(srv, src["database"], cut, a, workdir)
        if a.explain:
            results["explain"] = phase_explain(srv, src["database"], cut, a, workdir)
        if a.profile:
            results["profile"] = phase_profile(srv, src["database"], cut, a)
        failed = False
    except KeyboardInterrupt:
        log("interrupted")
        results["error"] = "interrupted"
    except Exception as exc:  # noqa: BLE001 - reported, and the sandbox still stopped
        traceback.print_exc()
        results["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        stop_children()
        if srv:
            srv.close()
        if sb is not None:
            if a.keep_sandbox and not failed:
                log(f"sandbox kept at {sb.root}: --reuse-dsn '{sb.active_dsn}'; stop it with "
                    f"`.venv/bin/tablemig sandbox stop --dir {sb.root}`")
            else:
                log("stopping the sandbox ...")
                sb.stop(keep_logs=failed)
                if failed:
                    log(f"server logs kept in {sb.root / 'logs'}")
        results["total_seconds"] = round(time.perf_counter() - t_total, 1)
        results["targets"] = targets_report(results)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2, default=str))

    if failed:
        log(f"failed; partial results in {out_path}")
        return 130 if results.get("error") == "interrupted" else 2
    # ---- report
    src = results["source"]
    print(f"\n== data: {src['rows']:,} orders ({src['database_bytes'] / 2**30:.2f} GiB database, "
          f"orders {src['orders_total_bytes'] / 2**30:.2f} GiB with indexes); "
          + ("source reused" if src.get("reused") else
             f"generated by `tablemig demo-data` in {src['generate_seconds']:.1f} s + VACUUM "
             f"ANALYZE {src['vacuum_analyze_seconds']:.1f} s")
          + f"; cutoff {results['cutoff']['cutoff']} keeps {results['cutoff']['kept_rows']:,} rows ==")
    st = results["server"]["settings"]
    print("server: " + ", ".join(f"{k}={st[k]}" for k in SETTINGS_SHOWN))
    runs = results.get("runs") or []
    if runs:
        copies = [r["copy_seconds"] for r in runs]
        print(f"per-run database copy (not measured): {min(copies):.1f}-{max(copies):.1f} s")
        print_runs(f"measurement: {a.rows:,} rows, retention {a.retention}, batch size "
                   f"{a.batch_size}, workers {a.workers}, repeat {a.repeat}", runs)
        for r in runs:
            if r["method"] == "tablemig":
                print(f"  {r['label']}: {r['batches']} batches, rows copied {r['rows_copied']:,}; "
                      f"last progress: {r['last_progress']}")
        print_ratios(results["summary"])
    if results.get("scale"):
        print_scale(results["scale"], a.rows)
    if results.get("workload"):
        print_workload(results["workload"], a)
    if results.get("trigger"):
        print_trigger(results["trigger"], a)
    if results.get("explain"):
        print_explain(results["explain"])
    if results.get("profile"):
        print_profile(results["profile"])
    print(f"\nresults: {out_path} (total {results['total_seconds']:.0f} s)")
    rc = 0
    if a.smoke:
        summ = results.get("summary") or {}
        r = summ.get("core_over_physical_paired")
        ok = r is not None and r <= a.smoke_limit
        print(f"SMOKE: tablemig core / physical (median of {a.repeat} paired runs) = {fmt(r)} "
              f"(limit {a.smoke_limit}; ratio of the medians {fmt(summ.get('core_over_physical'))}, "
              f"of the best runs {fmt(summ.get('core_over_physical_min'))}; scheduling "
              f"{a.boosted or 'not raised: the figures include the machine load'}) {'PASS' if ok else 'FAIL'}")
        rc = 0 if ok else 1
    if a.strict and any(t["verdict"] == "MISSED" for t in results["targets"].values()):
        rc = 1
    return rc


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(2)
