"""What every phase shares: the run's context, a fresh copy of the source per measured run,
and the three ways of shrinking the table (tablemig's CLI, the physical limit, the naive
DELETE + VACUUM FULL)."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import sql

from tablemig.pg.connect import connect

from . import physical
from .proc import loadavg, log, run_child, tablemig_cli, tail
from .results import engine_fingerprint
from .server import (
    Target,
    checkpoint,
    copy_database,
    drop_database,
    standby_caught_up,
    wal_lsn,
    wal_since,
)
from .source import DATE_COLUMN, TABLE, Cut

CORE_STEPS = ("capture", "backfill", "index", "replay", "verify", "swap")
ALL_STEPS = (*CORE_STEPS, "validate_fks")
PACING_KEYS = ("nice_ratio", "nice_slept_s", "app_write_share", "app_write_rate", "app_writes",
               "app_writes_expected", "app_share_kept", "rested_s", "engaged")


@dataclass(frozen=True)
class Bench:
    """One bench run: the server, the options, where logs go, the source and its cutoff."""

    target: Target
    args: argparse.Namespace
    workdir: Path
    source: dict[str, Any]
    cut: Cut

    @property
    def src(self) -> str:
        return str(self.source["database"])


@contextlib.contextmanager
def fresh_copy(b: Bench, label: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A copy of the source for one measured run, checkpointed, with the standby caught up;
    dropped afterwards unless --keep-copies. Yields its name and the facts of its making."""
    db = f"bench_{label}"
    copy_s = copy_database(b.target, b.src, db)
    ckpt = checkpoint(b.target)
    standby_caught_up(b.target)
    facts = {"label": label, "copy_seconds": round(copy_s, 2), "checkpoint_seconds": round(ckpt, 2),
             "loadavg_before": loadavg()}
    try:
        yield db, facts
    finally:
        facts["loadavg_after"] = loadavg()
        if not b.args.keep_copies:
            drop_database(b.target, db)


def migrate_cmd(a: argparse.Namespace, dsn: str, retention: float, until: str = "swapped",
                cutoff: str | None = None) -> list[str]:
    """`tablemig migrate` of the orders table with the bench's options."""
    which = ["--cutoff", cutoff] if cutoff else ["--retention", str(retention)]
    # --execute --yes: change without asking or describing first; --json: the result on stdout
    return tablemig_cli("migrate", "--execute", "--yes", "--json", "--dsn", dsn, "--table", TABLE,
                        "--date-column", DATE_COLUMN, *which,
                        "--batch-size", str(a.batch_size), "--workers", str(a.workers), "--until", until,
                        *(["--nice-ratio", str(a.nice_ratio)] if a.nice_ratio is not None else []),
                        *(["--app-write-share", str(a.app_write_share)] if a.app_write_share is not None
                          else []))


def plan_cmd(dsn: str, retention: float) -> list[str]:
    """`tablemig plan` (read-only) of the orders table."""
    return tablemig_cli("plan", "--json", "--dsn", dsn, "--table", TABLE, "--date-column", DATE_COLUMN,
                        "--retention", str(retention))


def migration_events(dsn: str) -> list[dict[str, Any]]:
    """tablemig's audit log of the database, oldest first."""
    with connect(dsn, application_name="tablemig-bench") as c:
        rows = c.execute(
            "SELECT operation, status, extract(epoch FROM logged_at)::float8, rows_affected,"
            " duration_ms::float8, details FROM table_migration.migration_log ORDER BY log_id").fetchall()
    return [{"operation": r[0], "status": r[1], "at": r[2], "rows": r[3], "duration_ms": r[4], "details": r[5]}
            for r in rows]


def num(x: Any) -> float | None:
    return None if x is None else float(x)


def run_tablemig(b: Bench, db: str, label: str, cmd: list[str] | None = None) -> dict[str, Any]:
    """The real CLI migrating `db` in a subprocess: wall time, WAL, the engine's timings
    (core = capture + backfill + index + replay + verify + swap), lock hold, peak RSS.
    What it left is read by `check_tablemig` (after any work measure: it reads rows too)."""
    t = b.target
    out, err = b.workdir / f"{label}.out", b.workdir / f"{label}.err"
    start = wal_lsn(t)
    started_at = time.time()
    fp = engine_fingerprint()
    done = run_child(cmd or migrate_cmd(b.args, t.dsn(db), b.cut.retention), out, err)
    wal = wal_since(t, start)
    if done.code != 0:
        raise RuntimeError(f"tablemig migrate failed (exit {done.code}); stderr:\n{tail(err)}")
    result = json.loads(out.read_text())
    timings = {k: float(v) for k, v in (result.get("timings") or {}).items()}
    core = sum(timings.get(k, 0.0) for k in CORE_STEPS)
    progress = tail(err, 3).splitlines()
    return {"method": "tablemig", "wall_s": round(done.seconds, 3), "elapsed_s": round(core, 3),
            "core_s": round(core, 3), "timings": timings, "wal_bytes": wal,
            "lock_hold_ms": num(result.get("lock_hold_ms")), "swap_attempts": result.get("swap_attempts"),
            "peak_rss_mb": round(done.peak_rss_mb, 1), "pacing": {k: result.get(k) for k in PACING_KEYS},
            "started_at": started_at, "engine": fp, "last_progress": progress[-1].strip() if progress else ""}


def check_tablemig(b: Bench, db: str, res: dict[str, Any]) -> None:
    """What the migration left: its state, the rows of the live table, its audit log."""
    dsn = b.target.dsn(db)
    with connect(dsn, application_name="tablemig-bench") as c:
        st = c.execute("SELECT cutoff, rows_copied, rows_to_copy FROM table_migration.migration_state").fetchone()
        rows = c.execute("SELECT count(*) FROM orders").fetchone()
    assert st is not None and rows is not None
    events = migration_events(dsn)
    backfill_done = next((e for e in events if e["operation"] == "backfill" and e["status"] == "done"), None)
    res.update(rows_copied=st[1], rows_to_copy=st[2],
               batches=((backfill_done or {}).get("details") or {}).get("batches"), cutoff=str(st[0]),
               cutoff_matches=str(st[0]) == b.cut.cutoff, rows_after=int(rows[0]),
               ok=int(rows[0]) == b.cut.kept_rows, events=events)


def run_physical(b: Bench, db: str) -> dict[str, Any]:
    """The physical limit (`physical.copy_kept`) on its own connection."""
    t = b.target
    with connect(t.dsn(db), application_name="tablemig-bench-physical") as c:
        start = wal_lsn(t)
        t0 = time.perf_counter()
        steps = physical.copy_kept(c, b.cut)
        elapsed = time.perf_counter() - t0
        wal = wal_since(t, start)
    return {"method": "physical", "elapsed_s": round(elapsed, 4), "wal_bytes": wal, "steps": steps}


def check_physical(b: Bench, db: str, res: dict[str, Any]) -> None:
    """The rows the physical limit kept."""
    with connect(b.target.dsn(db), application_name="tablemig-bench") as c:
        rows = c.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(physical.BARE))).fetchone()
    assert rows is not None
    res.update(rows_after=int(rows[0]), ok=int(rows[0]) == b.cut.kept_rows)


def run_naive(b: Bench, db: str) -> dict[str, Any]:
    """DELETE + VACUUM FULL on its own connection; its lock hold is the VACUUM FULL."""
    t = b.target
    with connect(t.dsn(db), application_name="tablemig-bench-naive") as c:
        start = wal_lsn(t)
        steps = physical.naive(c, b.cut)
        wal = wal_since(t, start)
        rows = c.execute("SELECT count(*) FROM orders").fetchone()
    assert rows is not None
    return {"method": "naive", "elapsed_s": round(sum(steps.values()), 3), "wal_bytes": wal, "steps": steps,
            "lock_hold_ms": round(steps["vacuum_full"] * 1000, 1), "rows_after": int(rows[0]),
            "ok": int(rows[0]) == b.cut.kept_rows}


def measured(b: Bench, method: str, label: str) -> dict[str, Any]:
    """One measured run of `method` on a fresh copy."""
    with fresh_copy(b, label) as (db, facts):
        log(f"{label}: copy {facts['copy_seconds']:.1f} s, checkpoint {facts['checkpoint_seconds']:.1f} s, "
            f"load {facts['loadavg_before']:.2f}; running {method} ...")
        if method == "tablemig":
            res = run_tablemig(b, db, label)
            check_tablemig(b, db, res)
        elif method == "physical":
            res = run_physical(b, db)
            check_physical(b, db, res)
        else:
            res = run_naive(b, db)
    res.update(facts, rows_total=b.cut.total)
    log(f"{label}: {method} {res['elapsed_s']:.2f} s, WAL {res['wal_bytes'] / 2**20:.0f} MiB"
        + ("" if res.get("ok") else "  ROW COUNT MISMATCH"))
    return res
