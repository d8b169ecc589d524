"""Execution · Phase 4: performance and application testing (EX-4.2, EX-4.3)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from ...config.settings import Settings
from ...errors import LockNotAcquired
from ...lifecycle.resume import AFTER_SWAP
from ...lifecycle.state import State
from ...pg import probes
from ...pg.catalog import inspect_table
from ...pg.locking import with_lock_retries
from ...pg.names import QualifiedName
from ...pg.query_plans import STATEMENT_TIMEOUT, compare
from ..context import StepContext


def _swapped(ctx: StepContext) -> State | None:
    m = ctx.migration().state()
    return m if m and m.state in AFTER_SWAP else None


def _after_swap(ctx: StepContext, would: str) -> tuple[State, QualifiedName, QualifiedName] | None:
    """(state, live table, original) after the swap; None (recorded as dry-run) before it."""
    m = _swapped(ctx)
    if m is None:
        if not ctx.execute:
            ctx.dry_run(f"after the swap: {would}")
            return None
        raise AssertionError("the table is not swapped")
    return m, m.live, m.old_table


TRIGGER_ROUNDS = 5
TRIGGER_ROWS = 200


def _may_skip_triggers(conn: psycopg.Connection[Any]) -> bool:
    """Can this session set `session_replication_role` (superuser, or granted SET on it)?"""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL session_replication_role = replica")
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False


def _interleaved(once: Callable[[str], float], labels: tuple[str, str]) -> dict[str, list[float]]:
    """Each measurement once to warm up, then TRIGGER_ROUNDS rounds, alternating which goes first."""
    samples: dict[str, list[float]] = {k: [] for k in labels}
    for label in labels:
        once(label)
    for i in range(TRIGGER_ROUNDS):
        for label in (labels if i % 2 == 0 else labels[::-1]):
            samples[label].append(once(label))
    return samples


def _trigger_overhead(conn: psycopg.Connection[Any], m: State, live: QualifiedName) -> dict[str, Any]:
    """The same update of TRIGGER_ROWS rows with the triggers and without them, each in a
    transaction that is rolled back, interleaved, medians. Rows another session holds are
    skipped (SKIP LOCKED), so the application is never waited for. Without the triggers means
    `session_replication_role = replica` (this session only, no lock); a role that may not set
    it disables the user triggers inside the transaction instead, which takes SHARE ROW
    EXCLUSIVE: through the lock helper (bounded waits, autovacuum handled)."""
    d = sql.Identifier(m.date_column)
    key = sql.SQL(", ").join(map(sql.Identifier, m.key))
    # rows a rewrite may touch: those satisfying the table's NOT VALID CHECKs (probes.rewritable)
    upd = sql.SQL("UPDATE {t} SET {d} = {d} WHERE ({k}) IN (SELECT {k} FROM {t} WHERE {ok} ORDER BY {k} LIMIT %s"
                  " FOR UPDATE SKIP LOCKED)").format(t=live.ident(), d=d, k=key, ok=probes.rewritable(conn, live))
    replica = _may_skip_triggers(conn)
    how = "session_replication_role = replica" if replica else "ALTER TABLE ... DISABLE TRIGGER USER, rolled back"

    def timed(_locked_at: float = 0.0) -> dict[str, Any]:
        t0 = time.perf_counter()
        conn.execute(upd, (TRIGGER_ROWS,), prepare=False)
        return {"ms": (time.perf_counter() - t0) * 1000}

    def disabled(_locked_at: float) -> dict[str, Any]:
        conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(live.ident()))
        return timed()

    def once(label: str) -> float:
        if label == "without_triggers" and not replica:
            measured, _, _ = with_lock_retries(
                conn, f"EX-4.2 trigger overhead on {live}", [live], disabled, mode="SHARE ROW EXCLUSIVE",
                rehearse=True, statement_timeout=STATEMENT_TIMEOUT, **Settings.current(conn).lock_options())
            return float(measured["ms"])
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL lock_timeout = '200ms'")
            conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(STATEMENT_TIMEOUT)))
            if label == "without_triggers":
                conn.execute("SET LOCAL session_replication_role = replica")
            return float(timed()["ms"])

    try:
        samples = _interleaved(once, ("with_triggers", "without_triggers"))
    except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
        return {"measured": False, "why": f"not measured: {exc.diag.message_primary}"}
    except LockNotAcquired as exc:
        return {"measured": False, "why": f"not measured: {exc.problem}"}
    med = {k: round(statistics.median(v), 2) for k, v in samples.items()}
    return {"measured": True, "rows_updated": TRIGGER_ROWS, "median_ms": med, "rounds": TRIGGER_ROUNDS,
            "without_triggers_by": how,
            "overhead_x": round(med["with_triggers"] / max(med["without_triggers"], 0.001), 2)}


def ex_4_2_performance(ctx: StepContext) -> None:
    """The live table's query plans against the original's (tablemig.pg.query_plans): a plan that
    cannot use an index the original uses, or touches far more buffers per row, fails; timings
    are medians of interleaved repetitions and are reported, never judged. In a dry run only
    the read-only part runs."""
    m = _swapped(ctx)
    if m is None:
        _after_swap(ctx, "query plans, buffers and timings on the new table against the original; trigger "
                         "overhead")
        return
    live, original = m.live, m.old_table
    conn = ctx.connect()
    found = compare(conn, live, original, m.date_column, m.date_type, m.cutoff.text)
    overhead = _trigger_overhead(conn, m, live) if ctx.execute else {
        "measured": False, "why": "not measured in a dry run (it writes, in transactions rolled back)"}
    size = conn.execute("SELECT pg_total_relation_size(%s::regclass), pg_total_relation_size(%s::regclass)",
                        (str(live), str(original))).fetchone()
    db = conn.execute("SELECT xact_commit, xact_rollback, blks_read, blks_hit, temp_bytes, deadlocks"
                      " FROM pg_stat_database WHERE datname = current_database()").fetchone()
    ctx.table.facts["performance"] = {
        "queries": [{"query": q["query"], "live_ms": (q.get("live") or {}).get("median_ms"),
                     "original_ms": (q.get("original") or {}).get("median_ms")} for q in found["queries"]],
        "trigger_overhead_x": overhead.get("overhead_x")}
    ctx.evidence(queries=found["queries"], not_probed=found["not_probed"], method=found["method"],
                 original_table=str(original), trigger_overhead=overhead,
                 bytes={"live": size and size[0], "original": size and size[1]},
                 database_stats=dict(zip(["commits", "rollbacks", "blks_read", "blks_hit", "temp_bytes",
                                          "deadlocks"], db or [], strict=False)))
    assert not found["worse"], "the new table's plans are worse than the original's: " + "; ".join(found["worse"])


def _reads(conn: psycopg.Connection[Any], m: State, live: QualifiedName) -> dict[str, Any]:
    """The live table and the views the swap recreated, read."""
    results: dict[str, Any] = {}
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(live.ident())).fetchone()
    results["read"] = {"rows": row and row[0]}
    for v in m.swap_record.views:
        n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(QualifiedName.parse(v).ident())).fetchone()
        results.setdefault("views", {})[v] = n and n[0]
    return results


def _own_row(conn: psycopg.Connection[Any], live: QualifiedName, m: State) -> int:
    """A row of the probe's own in its rolled-back transaction, which nothing references: a
    copy of a row under a new key (a table whose every row is referenced must have one
    integer key column for the probe)."""
    info = inspect_table(conn, live, list(m.key))
    column = info.column(m.key[0])
    assert len(m.key) == 1 and column is not None and column.type in ("integer", "bigint", "smallint"), (
        f"every row of {live} is referenced, and its key is not one integer column: the write probe "
        "needs a row no foreign key references")
    return probes.insert_copy(conn, live, m.key[0], info.written_columns, info.identity_always)


def _write_probe(conn: psycopg.Connection[Any], m: State, live: QualifiedName,
                 archive: QualifiedName) -> dict[str, Any]:
    """An update and a delete of one live row (one that no foreign key references), rolled
    back: what the mirror trigger did to the archive's copy."""
    key = sql.SQL(", ").join(map(sql.Identifier, m.key))
    match = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in m.key)
    rules = [r for (r,) in conn.execute("SELECT rulename FROM pg_rewrite WHERE ev_class = %s::regclass"
                                        " AND rulename <> '_RETURN' ORDER BY rulename", (str(live),)).fetchall()]

    def write_through(_locked_at: float = 0.0) -> dict[str, Any]:
        # the mirror trigger is under test, not the table's own rules (a DO INSTEAD NOTHING
        # rule on DELETE is the application's choice): they are disabled in this rolled-back
        # transaction
        for rule in rules:
            conn.execute(sql.SQL("ALTER TABLE {} DISABLE RULE {}").format(live.ident(), sql.Identifier(rule)))
        # the newest row no foreign key references: the probe's DELETE tests the mirror
        # trigger, not the children's ON DELETE actions
        first = conn.execute(sql.SQL("SELECT {k} FROM {t} l WHERE {ok} AND {free} ORDER BY {k} DESC LIMIT 1").format(
            k=key, t=live.ident(), ok=probes.rewritable(conn, live),
            free=probes.unreferenced(conn, live, "l"))).fetchone()
        if first is None:  # every row is referenced (children of every row: docs/families.md)
            first = (_own_row(conn, live, m),)
        assert first is not None
        conn.execute(sql.SQL("UPDATE {} SET {d} = {d} WHERE {m}").format(
            live.ident(), d=sql.Identifier(m.date_column), m=match), first)
        mirrored = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(archive.ident(), match),
                                first).fetchone()
        conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(live.ident(), match), first)
        gone = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(archive.ident(), match),
                            first).fetchone()
        return {"updated_key": list(map(str, first)), "in_archive_after_update": mirrored and mirrored[0],
                "in_archive_after_delete": gone and gone[0]}

    if rules:  # DISABLE RULE takes ACCESS EXCLUSIVE: through the lock helper, for a short probe
        done, _, _ = with_lock_retries(conn, f"EX-4.3 write probe on {live}", [live], write_through,
                                       rehearse=True, **Settings.current(conn).lock_options())
        done.pop("lock_hold_ms", None)
        return done
    with conn.transaction(force_rollback=True):
        return write_through()


def _error_handling(conn: psycopg.Connection[Any], live: QualifiedName) -> dict[str, str]:
    """A duplicate key and a TRUNCATE, each rolled back: how the live table refused them."""
    errors = {}
    with conn.transaction(force_rollback=True):
        try:
            with conn.transaction():
                # a DEFERRABLE key would only refuse it at commit
                conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
                conn.execute(sql.SQL("INSERT INTO {t} SELECT * FROM {t} LIMIT 1").format(t=live.ident()))
            errors["duplicate_key"] = "accepted (unexpected)"
        except psycopg.Error as exc:
            errors["duplicate_key"] = f"refused: {exc.diag.message_primary}"

    def truncate(_locked_at: float) -> dict[str, Any]:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("TRUNCATE {}").format(live.ident()))
            return {"truncate": "allowed (no mirror trigger: after prune)"}
        except psycopg.Error as exc:
            return {"truncate": f"refused: {exc.diag.message_primary}"}

    # TRUNCATE takes ACCESS EXCLUSIVE before its guard trigger refuses it: through the lock
    # helper, rolled back
    tried, _, _ = with_lock_retries(conn, f"EX-4.3 TRUNCATE probe on {live}", [live], truncate, rehearse=True,
                                    **Settings.current(conn).lock_options())
    errors["truncate"] = tried["truncate"]
    return errors


def ex_4_3_application_testing(ctx: StepContext) -> None:
    if not ctx.execute:  # it writes, in transactions rolled back, and promotes a copy of the standby
        ctx.dry_run("after the swap: reads, writes through the triggers, error handling, failover rehearsal")
        return
    found = _after_swap(ctx, "reads, writes through the triggers, error handling, failover rehearsal")
    if found is None:
        return
    m, live, archive = found
    conn = ctx.connect()
    results: dict[str, Any] = _reads(conn, m, live)
    results["write_through_triggers"] = _write_probe(conn, m, live, archive)
    errors = _error_handling(conn, live)
    results["error_handling"] = errors
    sb = ctx.request.getfixturevalue("sandbox")
    results["failover"] = ("rehearsed on a promoted copy of the standby (see tablemig.sandbox.failover)"
                           if sb is not None else "not rehearsed: only in the sandbox")
    if sb is not None:
        from ...sandbox.failover import rehearse

        results["failover_rehearsal"] = rehearse(sb, ctx.active_dsn, live, archive)
        assert results["failover_rehearsal"]["writable"], "the promoted copy could not write the migrated tables"
    ctx.evidence(**results)
    assert errors["duplicate_key"].startswith("refused")
    wt = results["write_through_triggers"]
    if m.state == "swapped":
        assert wt["in_archive_after_update"] == 1 and wt["in_archive_after_delete"] == 0
