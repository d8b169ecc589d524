"""`tablemig status [--watch]`: per table the state and the phase under way (backfill, index
build, replay and verify, swap ...), rows copied of the total, rate and ETA (between two
refreshes of `--watch`), paused, whether a tablemig run holds the table, and the passive's lag.

The stored state names the last step finished (`backfilling` once the backfill is done); the
phase says what comes next, and whether a run is doing it now (the run's advisory lock on the
table is held)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from psycopg import sql

from ..lifecycle.state import LOCK_CLASS, load_all
from ..pg.connect import connect
from ..pg.names import QualifiedName
from ..pg.schema import installed_version
from ..pg.statements import Direct
from . import describe
from .conventions import OK, add_dsn, add_json, dsn_of, emit

# the step that follows each stored state (the state names the step last finished)
NEXT_PHASE = {"planned": "capture", "capturing": "backfill", "backfilling": "index build",
              "indexed": "replay and verify", "verified": "swap"}
FINISHED = {"swapped": "swapped (prune and cleanup after approval)", "pruned": "pruned (cleanup after approval)",
            "cleaned": "cleaned up", "rolled_back": "rolled back"}

# whether a tablemig run holds the table's advisory lock (tablemig.lifecycle.state)
_RUNNING = ("SELECT EXISTS (SELECT FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
            " AND l.classid = %s::oid AND l.objid = (%s::bigint & 2147483647)::oid)")
_SHOWN = ("table_name", "state", "new_name", "archive_name", "cutoff", "rows_copied", "rows_to_copy",
          "swap_attempts", "lock_hold_ms", "updated_at", "last_error")
# bytes of WAL the slowest standby has still to replay (NULL without pg_monitor or a standby)
_LAG = "SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))::bigint FROM pg_stat_replication"


def phase(r: dict[str, Any]) -> str:
    """What the migration of one table is doing, or will do when it is run again."""
    state = str(r.get("state"))
    if state in FINISHED:
        return FINISHED[state]
    step = NEXT_PHASE.get(state, state)
    if r.get("running"):
        return f"{step} (running)"
    return f"{step} next (no tablemig run holds the table: rerun migrate to continue)"


def read(dsn: str, table: str | None) -> list[dict[str, Any]] | None:
    """The state of the migrations (None: the database has no tablemig schema)."""
    with connect(dsn) as conn:
        if installed_version(conn) is None:
            return None
        name = table and str(QualifiedName.parse(table))
        states = load_all(Direct(conn), name)
        lag = conn.execute(_LAG).fetchone()
        rows: list[dict[str, Any]] = []
        for m in states:
            full = m.row()
            r: dict[str, Any] = {k: full[k] for k in _SHOWN}
            r["paused"] = bool(m.checkpoint.data.get("paused"))
            # a postponed cut-over waiting (tablemig.lifecycle.hold): what it waits for
            r["holding"] = m.checkpoint.holding
            held = conn.execute(_RUNNING, (LOCK_CLASS, m.table_oid)).fetchone()
            r["running"] = bool(held and held[0])
            # keys logged by the capture trigger and not replayed yet (the change log lives
            # until the swap; it is empty from the switch to direct capture on)
            log = m.objects.change_log
            found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (str(log),)).fetchone()
            r["change_log_backlog"] = (conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                log.ident())).fetchone() or [None])[0] if found and found[0] else None
            r["phase"] = phase(r)
            r["passive_lag_bytes"] = lag[0] if lag else None
            rows.append(r)
        return rows


def with_rates(rows: list[dict[str, Any]], before: dict[str, tuple[float, int]], now: float) -> None:
    """Rate and ETA of each table's copy since the previous refresh (`before`: table ->
    (time, rows copied)), updated for the next one."""
    for r in rows:
        copied, total = r.get("rows_copied"), r.get("rows_to_copy")
        prev = before.get(r["table_name"])
        if copied is None:
            continue
        if prev is not None and now > prev[0] and copied >= prev[1]:
            rate = (copied - prev[1]) / (now - prev[0])
            r["rows_per_second"] = round(rate)
            r["eta_seconds"] = round((total - copied) / rate) if rate > 0 and total and total > copied else None
        before[r["table_name"]] = (now, copied)


def cmd_status(a: argparse.Namespace) -> int:
    dsn = dsn_of(a)
    before: dict[str, tuple[float, int]] = {}
    shown = 0
    try:
        while True:
            rows = read(dsn, a.table)
            if rows is None:
                emit(a, [], "no tablemig schema in this database: no migration was started here")
                return OK
            with_rates(rows, before, time.monotonic())
            if a.watch and a.json:  # one JSON document a line (JSON Lines)
                print(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "tables": rows}, default=str))
            else:
                if a.watch:
                    print(f"-- {time.strftime('%Y-%m-%d %H:%M:%S')} (every {a.watch:g} s; Ctrl-C ends)")
                emit(a, rows, describe.status_text(rows))
            sys.stdout.flush()
            shown += 1
            if not a.watch or (a.count and shown >= a.count):
                return OK
            time.sleep(a.watch)
            if not a.json:
                print()
    except KeyboardInterrupt:
        if a.watch:
            return OK  # the way a watch ends
        raise


def _seconds(text: str) -> float:
    from .conventions import argument_error

    try:
        value = float(text)
    except ValueError:
        value = -1
    if not 0.1 <= value <= 3600:
        raise argument_error(f"--watch {text!r} is not an interval in seconds", "give seconds, e.g. --watch 5")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="state and phase of the migrations in a database (--watch: refresh)")
    add_dsn(p)
    p.add_argument("--table")
    p.add_argument("--watch", type=_seconds, nargs="?", const=5.0, default=None, metavar="SECONDS",
                   help="refresh every SECONDS (default 5) until Ctrl-C, with the copy's rate and ETA")
    p.add_argument("--count", type=int, default=0, metavar="N", help="with --watch: stop after N refreshes")
    add_json(p)
    p.set_defaults(func=cmd_status)
