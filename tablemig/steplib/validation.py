"""Execution · Phase 4: performance and application testing (EX-4.2, EX-4.3)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from ..locking import with_lock_retries
from ..names import QualifiedName
from ..settings import Settings
from ..state import live_table, old_table
from ..steps import StepContext


def _swapped(ctx: StepContext) -> dict[str, Any] | None:
    m = ctx.migration()._state()
    return m if m and m["state"] in ("swapped", "pruned") else None


def _timed(conn: psycopg.Connection[Any], query: sql.Composable, params: tuple[Any, ...], runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        conn.execute(query, params).fetchall()
        best = min(best, time.perf_counter() - t0)
    return round(best * 1000, 3)


def _after_swap(ctx: StepContext, would: str) -> tuple[dict[str, Any], QualifiedName, QualifiedName] | None:
    """(state, live table, original) after the swap; None (recorded as dry-run) before it."""
    m = _swapped(ctx)
    if m is None:
        if not ctx.execute:
            ctx.dry_run(f"after the swap: {would}")
            return None
        raise AssertionError("the table is not swapped")
    return m, live_table(m), old_table(m)


def _timed_update(conn: psycopg.Connection[Any], live: QualifiedName, upd: sql.Composable,
                  disable: bool) -> Callable[[float], dict[str, Any]]:
    def body(_locked_at: float) -> dict[str, Any]:
        if disable:
            conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(live.ident()))
        t0 = time.perf_counter()
        conn.execute(upd)  # type: ignore[call-overload]
        return {"ms": round((time.perf_counter() - t0) * 1000, 2)}
    return body


def ex_4_2_performance(ctx: StepContext) -> None:
    found = _after_swap(ctx, "query timings on the new table against the archive, trigger overhead")
    if found is None:
        return
    m, live, archive = found
    conn = ctx.connect()
    d = sql.Identifier(m["date_column"])
    recent = sql.SQL("SELECT count(*) FROM {} WHERE {} >= %s::{}")
    t_live = _timed(conn, recent.format(live.ident(), d, sql.SQL(m["date_type"])), (m["cutoff"],))
    t_arch = _timed(conn, recent.format(archive.ident(), d, sql.SQL(m["date_type"])), (m["cutoff"],))
    plan_row = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) SELECT * FROM {} WHERE {} >= %s::{} LIMIT 100").format(
        live.ident(), d, sql.SQL(m["date_type"])), (m["cutoff"],)).fetchone()
    # trigger overhead: the same updates with and without the mirror trigger, rolled back
    key = sql.SQL(", ").join(map(sql.Identifier, m["key_columns"]))
    upd = sql.SQL("UPDATE {t} SET {d} = {d} WHERE ({k}) IN (SELECT {k} FROM {t} ORDER BY {k} LIMIT 500)").format(
        t=live.ident(), d=d, k=key)
    timings = {}
    settings = Settings.current(conn)
    for label, disable in (("with_mirror_trigger", False), ("without_trigger", True)):
        # rolled back; disabling the triggers takes SHARE ROW EXCLUSIVE: through the lock helper
        measured, _, _ = with_lock_retries(
            conn, f"EX-4.2 trigger overhead on {live}", [live], _timed_update(conn, live, upd, disable),
            mode="SHARE ROW EXCLUSIVE" if disable else "ROW EXCLUSIVE", rehearse=True,
            **settings.lock_options())
        timings[label] = measured["ms"]
    overhead = timings["with_mirror_trigger"] / max(timings["without_trigger"], 0.001)
    size = conn.execute("SELECT pg_total_relation_size(%s::regclass), pg_total_relation_size(%s::regclass)",
                        (str(live), str(archive))).fetchone()
    db = conn.execute("SELECT xact_commit, xact_rollback, blks_read, blks_hit, temp_bytes, deadlocks"
                      " FROM pg_stat_database WHERE datname = current_database()").fetchone()
    ctx.table.facts["performance"] = {"recent_query_ms_live": t_live, "recent_query_ms_archive": t_arch,
                                      "trigger_overhead_x": round(overhead, 2), **timings}
    ctx.evidence(recent_rows_query_ms={"live": t_live, "original (archive)": t_arch},
                 live_plan=plan_row and plan_row[0][0]["Plan"]["Node Type"],
                 update_500_rows_ms=timings, trigger_overhead_x=round(overhead, 2),
                 bytes={"live": size and size[0], "archive": size and size[1]},
                 database_stats=dict(zip(["commits", "rollbacks", "blks_read", "blks_hit", "temp_bytes",
                                          "deadlocks"], db or [], strict=False)))
    assert t_live <= t_arch * 1.5 + 5, "queries on the new table are slower than on the original"


def ex_4_3_application_testing(ctx: StepContext) -> None:
    found = _after_swap(ctx, "reads, writes through the triggers, error handling, failover rehearsal")
    if found is None:
        return
    m, live, archive = found
    conn = ctx.connect()
    key = sql.SQL(", ").join(map(sql.Identifier, m["key_columns"]))
    results: dict[str, Any] = {}
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(live.ident())).fetchone()
    results["read"] = {"rows": row and row[0]}
    for v in (m["swap_record"] or {}).get("views", []):
        n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(QualifiedName.parse(v).ident())).fetchone()
        results.setdefault("views", {})[v] = n and n[0]
    with conn.transaction(force_rollback=True):
        first = conn.execute(sql.SQL("SELECT {k} FROM {t} ORDER BY {k} DESC LIMIT 1").format(
            k=key, t=live.ident())).fetchone()
        assert first is not None
        match = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in m["key_columns"])
        conn.execute(sql.SQL("UPDATE {} SET {d} = {d} WHERE {m}").format(
            live.ident(), d=sql.Identifier(m["date_column"]), m=match), first)
        mirrored = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(archive.ident(), match),
                                first).fetchone()
        conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(live.ident(), match), first)
        gone = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(archive.ident(), match),
                            first).fetchone()
        results["write_through_triggers"] = {"updated_key": list(map(str, first)),
                                             "in_archive_after_update": mirrored and mirrored[0],
                                             "in_archive_after_delete": gone and gone[0]}
    errors = {}
    with conn.transaction(force_rollback=True):
        try:
            with conn.transaction():
                conn.execute(sql.SQL("INSERT INTO {t} SELECT * FROM {t} LIMIT 1").format(t=live.ident()))
            errors["duplicate_key"] = "accepted (unexpected)"
        except psycopg.Error as exc:
            errors["duplicate_key"] = f"refused: {exc.diag.message_primary}"
        try:
            with conn.transaction():
                conn.execute(sql.SQL("TRUNCATE {}").format(live.ident()))
            errors["truncate"] = "allowed (no mirror trigger: after prune)"
        except psycopg.Error as exc:
            errors["truncate"] = f"refused: {exc.diag.message_primary}"
    results["error_handling"] = errors
    sb = ctx.request.getfixturevalue("sandbox")
    results["failover"] = ("rehearsed on a promoted copy of the standby (see tablemig.failover)"
                           if sb is not None else "not rehearsed: only in the sandbox")
    if sb is not None:
        from ..failover import rehearse

        results["failover_rehearsal"] = rehearse(sb, ctx.active_dsn, live, archive)
        assert results["failover_rehearsal"]["writable"], "the promoted copy could not write the migrated tables"
    ctx.evidence(**results)
    assert errors["duplicate_key"].startswith("refused")
    wt = results["write_through_triggers"]
    if m["state"] == "swapped":
        assert wt["in_archive_after_update"] == 1 and wt["in_archive_after_delete"] == 0
