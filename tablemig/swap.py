"""The swap: one short transaction that puts the new table in the original's place.

Forward (`swap`): rename `T -> A` (or `T -> T_backup` in copy mode) and `N -> T`, then make
the new `T` look like the old one to the application: index/constraint names, sequence
ownership and position, incoming foreign keys (re-pointed NOT VALID, validated later in
their own transactions), views and materialized views recreated, grants, RLS policies,
comment, user triggers and publication membership carried over. The capture trigger goes;
a mirror trigger on the new `T` keeps the archive equal to what the original would be, so
rolling back stays lossless until prune.

Backward (`swap_back`): the same exchange in the other direction, used by rollback.

Locks are taken in a fixed order (the table, the other table, referencing tables, views)
with `lock_timeout`, and the whole attempt is retried with backoff a bounded number of
times. A waiting ACCESS EXCLUSIVE request blocks every later query on the table, so no
attempt may wait longer than `lock_timeout`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from psycopg import sql

from . import state
from .catalog import DependentView, ForeignKey, TableInfo, inspect_table
from .errors import LockNotAcquired, TablemigError
from .executor import Executor
from .names import QualifiedName
from .structure import (
    TRIGGER_PREFIX,
    archive_index_name,
    change_log_name,
    drop_trigger_sql,
    secondary_indexes,
    sync_function_sql,
    temp_index_name,
    trigger_sql,
    truncate_guard_sql,
)

CAPTURE_TRIGGER = TRIGGER_PREFIX + "capture"
MIRROR_TRIGGER = TRIGGER_PREFIX + "mirror"
GUARD_TRIGGER = TRIGGER_PREFIX + "no_truncate"
PRUNE_TRIGGER = TRIGGER_PREFIX + "prune"


@dataclass
class SwapResult:
    attempts: int
    lock_hold_ms: float
    lsn: str
    record: dict[str, Any]
    attempt_log: list[dict[str, Any]] = field(default_factory=list)


def blockers(conn: psycopg.Connection[Any], tables: list[QualifiedName],
             older_than_s: float) -> list[dict[str, Any]]:
    """Sessions holding locks on `tables`, and transactions older than `older_than_s`
    (they would make the swap's ACCESS EXCLUSIVE request wait). Only sessions of this
    database: relation OIDs in pg_locks are per database."""
    rows = conn.execute("""
        SELECT DISTINCT a.pid, a.usename, a.application_name, a.state,
               round(extract(epoch FROM now() - a.xact_start)::numeric, 1) AS xact_seconds,
               left(a.query, 200) AS query,
               EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted
                         AND l.database = a.datid
                         AND l.relation = ANY(%s::regclass[])) AS holds_lock
          FROM pg_stat_activity a
         WHERE a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL
           AND a.backend_type = 'client backend'
           AND a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND (EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted
                          AND l.database = a.datid
                          AND l.relation = ANY(%s::regclass[]))
                OR now() - a.xact_start > make_interval(secs => %s))
         ORDER BY xact_seconds DESC""",
                        ([str(t) for t in tables], [str(t) for t in tables], older_than_s))
    cols = ["pid", "user", "application", "state", "xact_seconds", "query", "holds_lock"]
    return [dict(zip(cols, r, strict=True)) for r in rows.fetchall()]


def with_lock_retries(conn: psycopg.Connection[Any], what: str, tables: list[QualifiedName],
                      body: Callable[[float], dict[str, Any]], *, lock_timeout: str,
                      attempts: int, statement_timeout: str = "30s",
                      long_xact_seconds: float = 60, base_delay: float = 0.2,
                      mode: str = "ACCESS EXCLUSIVE",
                      on_attempt: Callable[[dict[str, Any]], None] | None = None,
                      watch: list[QualifiedName] | None = None, report_seen: bool = False,
                      durable: bool = False,
                      ) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
    """Run `body(locked_at)` in a transaction that first locks `tables` in `mode`.

    Each attempt waits at most `lock_timeout` for the locks; failures back off
    exponentially with jitter. After `attempts` failures, LockNotAcquired names the
    blockers seen (holders of locks on `tables` and on `watch`: relations `body` locks
    itself). `body` runs with the locks held and returns what to record. `durable` commits
    with synchronous_commit = on whatever the session's setting (the swap: it must survive
    a server crash once reported, and precede a subscriber's COMMIT PREPARED)."""
    log: list[dict[str, Any]] = []
    for attempt in range(1, attempts + 1):
        # With report_seen (the swap) every attempt records the sessions seen before it, also
        # old transactions that do not block; otherwise (the query costs milliseconds) only
        # a failed attempt asks, after the fact: the holder of a lock it waited for is still there.
        seen = blockers(conn, tables + (watch or []), long_xact_seconds) if report_seen else None
        t0 = time.perf_counter()
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)"
                             + (", set_config('synchronous_commit', 'on', true)" if durable else ""),
                             (lock_timeout, statement_timeout))
                conn.execute(sql.SQL("LOCK TABLE {} IN {} MODE").format(
                    sql.SQL(", ").join(t.ident() for t in tables), sql.SQL(mode)))
                locked_at = time.perf_counter()
                result = body(locked_at)
            hold_ms = (time.perf_counter() - locked_at) * 1000
            entry = {"attempt": attempt, "outcome": "ok", "wait_ms": round((locked_at - t0) * 1000, 1),
                     "hold_ms": round(hold_ms, 1), "blockers": seen or []}
            log.append(entry)
            if on_attempt:
                on_attempt(entry)
            result["lock_hold_ms"] = round(hold_ms, 1)
            return result, attempt, log
        except psycopg.errors.LockNotAvailable:
            wait_ms = round((time.perf_counter() - t0) * 1000, 1)
            if seen is None:
                seen = blockers(conn, tables + (watch or []), long_xact_seconds)
            entry = {"attempt": attempt, "outcome": "lock_timeout", "wait_ms": wait_ms, "blockers": seen}
            log.append(entry)
            if on_attempt:
                on_attempt(entry)
            if attempt < attempts:
                time.sleep(min(5.0, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random()))
    last = log[-1]["blockers"] if log else []
    who = "; ".join(f"pid {b['pid']} ({b['user']}, {b['state']}, transaction {b['xact_seconds']} s"
                    f", {'holds a lock' if b['holds_lock'] else 'old snapshot'}): {b['query']!r}"
                    for b in last[:5]) or "no blocker visible at the last attempt"
    raise LockNotAcquired(
        f"{what}: could not lock {', '.join(map(str, tables))} within {lock_timeout} in "
        f"{attempts} attempts; nothing was changed. Blockers: {who}",
        "wait for those sessions to finish (or end them: SELECT pg_terminate_backend(pid)), "
        "then rerun; the migration resumes at this step")


@dataclass(frozen=True)
class Dependents:
    """What the swap locks besides the two tables: tables whose foreign keys reference the
    table, and views / materialized views on it. Read with one cheap query before the
    lock; the full inspection under the lock must find no more than these."""

    children: frozenset[QualifiedName]
    views: frozenset[QualifiedName]
    matviews: frozenset[QualifiedName]

    @classmethod
    def read(cls, conn: psycopg.Connection[Any], table: QualifiedName) -> Dependents:
        rows = conn.execute("""
            SELECT 'f', n.nspname, c.relname FROM pg_constraint con
              JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE con.confrelid = %s::regclass AND con.contype = 'f' AND con.conrelid <> con.confrelid
            UNION
            SELECT v.relkind::text, n.nspname, v.relname FROM pg_depend d
              JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
              JOIN pg_namespace n ON n.oid = v.relnamespace
             WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
               AND d.refobjid = %s::regclass AND v.oid <> %s::regclass""", (str(table),) * 3).fetchall()
        pick = {k: frozenset(QualifiedName(sch, rel) for kind, sch, rel in rows if kind == k)
                for k in ("f", "v", "m")}
        return cls(pick["f"], pick["v"], pick["m"])

    def covers(self, info: TableInfo) -> bool:
        return ({fk.table for fk in info.incoming_fks} <= self.children
                and {v.name for v in info.views} <= self.views | self.matviews)

    def lock_list(self, t: QualifiedName, other: QualifiedName) -> list[QualifiedName]:
        # LOCK TABLE refuses materialized views; the swap's DROP MATERIALIZED VIEW takes their
        # lock under the same lock_timeout (they are watched for blockers)
        return [t, other, *sorted(self.children), *sorted(self.views)]


def _repoint_fks(ex: Executor, fks: list[ForeignKey]) -> None:
    for fk in fks:
        body = fk.definition.removesuffix(" NOT VALID")
        ex.run(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(fk.table.ident(),
                                                                   sql.Identifier(fk.name)))
        ex.run(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
            fk.table.ident(), sql.Identifier(fk.name), sql.SQL(body)))


def _recreate_views(ex: Executor, views: list[DependentView]) -> None:
    """Views resolve table names when created: re-issuing the saved definition binds them
    to whatever table now has the name."""
    for v in views:
        body = v.definition.rstrip().rstrip(";")
        opts = (sql.SQL(" WITH ({})").format(sql.SQL(", ").join(sql.SQL(o) for o in v.options))
                if v.options else sql.SQL(""))
        if v.kind == "v":
            ex.run(sql.SQL("CREATE OR REPLACE VIEW {}{} AS {}").format(v.name.ident(), opts,
                                                                       sql.SQL(body)))
            continue
        ex.run(sql.SQL("DROP MATERIALIZED VIEW {}").format(v.name.ident()))
        ex.run(sql.SQL("CREATE MATERIALIZED VIEW {}{} AS {} WITH DATA").format(
            v.name.ident(), opts, sql.SQL(body)))
        ex.run(sql.SQL("ALTER MATERIALIZED VIEW {} OWNER TO {}").format(
            v.name.ident(), sql.Identifier(v.owner)))
        for idx in v.indexes:
            ex.run(sql.SQL(idx))
        _grant(ex, v.name, v.acl, "TABLE")


def _grant(ex: Executor, target: QualifiedName, acl: list[tuple[str, str, bool]],
           kind: str = "TABLE") -> None:
    for grantee, priv, grantable in acl:
        who = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
        ex.run(sql.SQL("GRANT {} ON {} {} TO {}{}").format(
            sql.SQL(priv), sql.SQL(kind), target.ident(), who,
            sql.SQL(" WITH GRANT OPTION" if grantable else "")))


def _column_grants(ex: Executor, info: TableInfo, target: QualifiedName) -> None:
    """Column privileges (`pg_attribute.attacl`, read by the inspection): CREATE TABLE ...
    LIKE does not copy them and the table ACL does not hold them, so they are re-granted
    column by column."""
    for grantee, priv, grantable, columns in info.column_acl:
        who = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
        ex.run(sql.SQL("GRANT {} ({}) ON TABLE {} TO {}{}").format(
            sql.SQL(priv), sql.SQL(", ").join(map(sql.Identifier, columns)), target.ident(), who,
            sql.SQL(" WITH GRANT OPTION" if grantable else "")))


def _policies(ex: Executor, target: QualifiedName, info: TableInfo) -> None:
    enabled, forced = info.rls
    if enabled:
        ex.run(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(target.ident()))
    if forced:
        ex.run(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(target.ident()))
    cmds = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}
    for p in info.policies:
        roles = sql.SQL(", ").join(sql.SQL("PUBLIC") if r == "PUBLIC" else sql.Identifier(r)
                                   for r in p["roles"])
        q = sql.SQL(" USING ({})").format(sql.SQL(p["qual"])) if p["qual"] else sql.SQL("")
        c = sql.SQL(" WITH CHECK ({})").format(sql.SQL(p["check"])) if p["check"] else sql.SQL("")
        ex.run(sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}{}{}").format(
            sql.Identifier(p["name"]), target.ident(),
            sql.SQL("PERMISSIVE" if p["permissive"] else "RESTRICTIVE"),
            sql.SQL(cmds[p["cmd"]]), roles, q, c))


def _copy_triggers(ex: Executor, info: TableInfo, source: QualifiedName,
                   target: QualifiedName, target_quoted: str) -> list[str]:
    """Recreate the user triggers on `target` and disable them on `source` (the archive
    must not run application triggers on mirrored writes). Returns the disabled ones."""
    disabled = []
    for trg in info.triggers:
        ident = ex.scalar("SELECT quote_ident(%s)", (trg.name,))
        head = f"CREATE TRIGGER {ident} "
        if not trg.definition.startswith(head):
            head = f"CREATE CONSTRAINT TRIGGER {ident} "
        anchor = f" ON {info.quoted} "
        before, sep, after = trg.definition[len(head):].partition(anchor)
        if not sep or anchor in after:
            raise TablemigError(f"cannot re-target trigger {trg.name}: {trg.definition}",
                                "drop and recreate this trigger by hand after the swap")
        ex.run(sql.SQL(head + before + " ON " + target_quoted + " " + after))
        if trg.enabled != "D":
            ex.run(sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(
                source.ident(), sql.Identifier(trg.name)))
            disabled.append(trg.name)
    return disabled


def _sequences(ex: Executor, old: TableInfo, live: QualifiedName) -> None:
    """Serial sequences follow the live table; identity sequences continue from the old."""
    for column, seq, kind in old.sequences:
        if kind == "serial":
            ex.run(sql.SQL("ALTER SEQUENCE {} OWNED BY {}.{}").format(
                sql.SQL(seq), live.ident(), sql.Identifier(column)))
        else:
            ex.run(sql.SQL(
                "SELECT setval(pg_get_serial_sequence(%s, %s), s.last_value, s.is_called)"
                " FROM {} s").format(sql.SQL(seq)), (str(live), column))


def _publications(ex: Executor, pubs: list[str], old: QualifiedName, live: QualifiedName) -> None:
    for pub in pubs:
        ex.run(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(sql.Identifier(pub), old.ident()))
        ex.run(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(sql.Identifier(pub), live.ident()))


def _rename_index(ex: Executor, table: QualifiedName, schema: str, constraint: str | None,
                  old: str, new: str) -> None:
    if constraint:
        ex.run(sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
            table.ident(), sql.Identifier(old), sql.Identifier(new)))
    else:
        ex.run(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
            sql.Identifier(schema, old), sql.Identifier(new)))


class SwapPeer(Protocol):
    """Another site that must make the same exchange atomically with this one (a logical
    subscriber). `prepare_swap` runs last inside the locked transaction and leaves a
    prepared transaction; `finish_swap` commits or rolls it back once this site's
    transaction has committed or failed."""

    name: str

    def prepare_swap(self, m: dict[str, Any], *, back: bool) -> dict[str, Any]: ...

    def finish_swap(self, m: dict[str, Any], *, back: bool, committed: bool) -> None: ...


def _coordinated(peers: Sequence[SwapPeer], m: dict[str, Any], back: bool,
                 run: Callable[[], tuple[dict[str, Any], int, list[dict[str, Any]]]],
                 ) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
    try:
        out = run()
    except BaseException:
        for p in peers:
            p.finish_swap(m, back=back, committed=False)
        raise
    for p in peers:
        p.finish_swap(m, back=back, committed=True)
    return out


def exchange(ex: Executor, info: TableInfo, t: QualifiedName, n: QualifiedName,
             outgoing: QualifiedName) -> dict[str, Any]:
    """Rename `t -> outgoing` and `n -> t` and make the new `t` look like the old one
    (index and constraint names, sequences, incoming FKs, views, grants, policies, user
    triggers, comment). Shared by the active site and logical subscribers."""
    schema = t.schema
    ex.run(sql.SQL("ALTER TABLE {} RENAME TO {}").format(t.ident(), sql.Identifier(outgoing.name)))
    ex.run(sql.SQL("ALTER TABLE {} RENAME TO {}").format(n.ident(), sql.Identifier(t.name)))
    names = []
    for idx in [i for i in info.indexes if i.is_key] + secondary_indexes(info):
        archived, temp = archive_index_name(idx), temp_index_name(idx)
        _rename_index(ex, outgoing, schema, idx.constraint, idx.name, archived)
        _rename_index(ex, t, schema, idx.constraint, temp, idx.name)
        names.append([idx.name, archived, temp, idx.constraint])
    _sequences(ex, info, t)
    _repoint_fks(ex, info.incoming_fks)
    _recreate_views(ex, info.views)
    _grant(ex, t, info.acl)
    _column_grants(ex, info, t)
    _policies(ex, t, info)
    disabled = _copy_triggers(ex, info, outgoing, t, ex.text(t.ident()))
    if info.comment is not None:
        ex.run(sql.SQL("COMMENT ON TABLE {} IS {}").format(t.ident(), sql.Literal(info.comment)))
    return {"indexes": names, "disabled_triggers": disabled}


def exchange_back(ex: Executor, info: TableInfo, t: QualifiedName, n: QualifiedName,
                  outgoing: QualifiedName, rec: dict[str, Any]) -> None:
    """Undo `exchange` (the new table is renamed back to `n`; the caller drops it)."""
    schema = t.schema
    ex.run(sql.SQL("ALTER TABLE {} RENAME TO {}").format(t.ident(), sql.Identifier(n.name)))
    ex.run(sql.SQL("ALTER TABLE {} RENAME TO {}").format(outgoing.ident(), sql.Identifier(t.name)))
    for original, archived, temp, constraint in rec.get("indexes", []):
        _rename_index(ex, n, schema, constraint, original, temp)
        _rename_index(ex, t, schema, constraint, archived, original)
    _sequences(ex, info, t)  # `info` is the table now renamed to `n`: its sequences
    _repoint_fks(ex, info.incoming_fks)
    _recreate_views(ex, info.views)
    _grant(ex, t, info.acl)
    _column_grants(ex, info, t)
    for name in rec.get("disabled_triggers", []):
        ex.run(sql.SQL("ALTER TABLE {} ENABLE TRIGGER {}").format(t.ident(), sql.Identifier(name)))
    ex.run(sql.SQL("COMMENT ON TABLE {} IS {}").format(t.ident(), sql.Literal(info.comment)))


def swap(ex: Executor, m: dict[str, Any], *, lock_timeout: str, attempts: int,
         statement_timeout: str, long_xact_seconds: float,
         on_attempt: Callable[[dict[str, Any]], None] | None = None,
         peers: Sequence[SwapPeer] = ()) -> SwapResult:
    """Forward swap of the table described by state row `m`; `peers` (logical subscribers)
    make the same exchange, committed right after this one (see tablemig.logical)."""
    conn = ex.conn
    schema = m["schema_name"]
    t = QualifiedName(schema, m["original_name"])
    n = QualifiedName(schema, m["new_name"])
    a = QualifiedName(schema, m["archive_name"])
    outgoing = QualifiedName(schema, m["backup_name"]) if m["archive_mode"] == "copy" else a
    deps = Dependents.read(conn, t)

    def body(locked_at: float) -> dict[str, Any]:
        info = inspect_table(conn, t, list(m["key_columns"]))  # under the lock: current
        if not deps.covers(info):
            raise psycopg.errors.LockNotAvailable("dependencies changed while locking")
        fn = QualifiedName("table_migration", f"mirror_{m['table_oid']}")
        mirror = sync_function_sql(info, fn, "mirror", outgoing)
        with ex.batched():  # the DDL in as few round trips as its reads allow
            ex.run(drop_trigger_sql(t, CAPTURE_TRIGGER))
            ex.run(drop_trigger_sql(t, GUARD_TRIGGER))
            ex.run(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
                QualifiedName("table_migration", f"capture_{m['table_oid']}").ident()))
            # the change log, emptied by the switch to direct capture (this commit is durable anyway)
            ex.run(sql.SQL("DROP TABLE IF EXISTS {}").format(change_log_name(int(m["table_oid"])).ident()))
            record = exchange(ex, info, t, n, outgoing)
            if not peers:  # a managed subscriber keeps both tables published (see tablemig.logical)
                _publications(ex, info.publications, outgoing, t)
            ex.run(sql.SQL("COMMENT ON TABLE {} IS {}").format(outgoing.ident(), sql.Literal(
                f"tablemig: original {t} (all rows) before the swap; cutoff {m['cutoff']} on "
                f"{m['date_column']}")))
            ex.run(mirror)
            for stmt in trigger_sql(t, MIRROR_TRIGGER, fn):
                ex.run(stmt)
            ex.run(truncate_guard_sql(t))
        record |= {"foreign_keys": [fk.__dict__ | {"table": str(fk.table)} for fk in info.incoming_fks],
                   "views": [str(v.name) for v in info.views], "publications": info.publications,
                   "outgoing": outgoing.name, "fk_validated": []}
        # Last, with every lock held: the peers catch up and prepare their own exchange.
        record["peers"] = {p.name: p.prepare_swap(m, back=False) for p in peers}
        state.update(conn, str(t), state="swapped", swap_record=record,
                     swap_attempts=m.get("swap_attempts", 0) + 1,
                     lock_hold_ms=round((time.perf_counter() - locked_at) * 1000, 1),
                     swap_lsn=ex.scalar("SELECT pg_current_wal_insert_lsn()::text"))
        state.log(conn, str(t), "swap", "done", details={"renamed": [str(t), outgoing.name]})
        return record

    record, used, log = _coordinated(peers, m, False, lambda: with_lock_retries(
        conn, f"swap of {t}", deps.lock_list(t, n), body, lock_timeout=lock_timeout,
        attempts=attempts, statement_timeout=statement_timeout,
        long_xact_seconds=long_xact_seconds, on_attempt=on_attempt, watch=sorted(deps.matviews),
        durable=True))
    hold = record.pop("lock_hold_ms")
    lsn = str(ex.scalar("SELECT pg_current_wal_insert_lsn()::text"))
    state.update(conn, str(t), lock_hold_ms=hold, swap_attempts=used, swap_lsn=lsn)
    return SwapResult(used, hold, lsn, record, log)


def swap_back(ex: Executor, m: dict[str, Any], *, lock_timeout: str, attempts: int,
              statement_timeout: str, long_xact_seconds: float,
              peers: Sequence[SwapPeer] = ()) -> SwapResult:
    """Undo a swap: the archive (kept current by the mirror trigger) becomes `T` again and
    the new table is dropped. Lossless while the mirror trigger was in place."""
    conn = ex.conn
    schema = m["schema_name"]
    t = QualifiedName(schema, m["original_name"])
    rec = m["swap_record"] or {}
    outgoing = QualifiedName(schema, rec.get("outgoing") or m["archive_name"])
    n = QualifiedName(schema, m["new_name"])
    deps = Dependents.read(conn, t)

    def body(locked_at: float) -> dict[str, Any]:
        info = inspect_table(conn, t, list(m["key_columns"]))
        if not deps.covers(info):
            raise psycopg.errors.LockNotAvailable("dependencies changed while locking")
        with ex.batched():
            ex.run(drop_trigger_sql(t, MIRROR_TRIGGER))
            ex.run(drop_trigger_sql(t, GUARD_TRIGGER))
            ex.run(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
                QualifiedName("table_migration", f"mirror_{m['table_oid']}").ident()))
            exchange_back(ex, info, t, n, outgoing, rec)
            if not peers:
                _publications(ex, info.publications, n, t)
            ex.run(sql.SQL("DROP TABLE {}").format(n.ident()))
        for p in peers:
            p.prepare_swap(m, back=True)
        state.update(conn, str(t), state="rolled_back")
        state.log(conn, str(t), "rollback", "swapped back")
        return {"foreign_keys": [fk.__dict__ | {"table": str(fk.table)} for fk in info.incoming_fks]}

    record, used, log = _coordinated(peers, m, True, lambda: with_lock_retries(
        conn, f"swap back of {t}", deps.lock_list(t, outgoing), body,
        lock_timeout=lock_timeout, attempts=attempts, statement_timeout=statement_timeout,
        long_xact_seconds=long_xact_seconds, watch=sorted(deps.matviews), report_seen=True,
        durable=True))
    hold = record.pop("lock_hold_ms")
    return SwapResult(used, hold, str(ex.scalar("SELECT pg_current_wal_insert_lsn()::text")),
                      record, log)


def validate_foreign_keys(ex: Executor, fks: list[dict[str, Any]]) -> list[str]:
    """VALIDATE re-pointed foreign keys, each in its own transaction (SHARE UPDATE
    EXCLUSIVE on the referencing table only: writes continue)."""
    done = []
    for fk in fks:
        child = QualifiedName.parse(fk["table"])
        ex.run(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
            child.ident(), sql.Identifier(fk["name"])))
        done.append(f"{child}.{fk['name']}")
    return done
