"""The index step: the new table's key and secondary indexes, built with plain CREATE
INDEX after the load (while the trigger only logs keys, the harness alone writes the new
table), then the key constraints, the indexes' properties and the new tables' ANALYZE."""

from __future__ import annotations

import contextlib
import threading

import psycopg
from psycopg import sql

from ..errors import TablemigError
from ..pg.names import QualifiedName
from . import analyze
from .backfill import require_change_log
from .context import RunContext
from .copying import forked
from .executor import Executor
from .objects import temp_index_name
from .planner import TablePlan
from .state import State
from .structure import index_properties_sql, index_sql, key_constraint_sql, key_index, secondary_indexes

Work = list[tuple[QualifiedName, str, sql.Composable]]


def missing(ex: Executor, m: State, plan: TablePlan) -> Work:
    """(table, index name, CREATE INDEX) of every index N (and H) still lacks; an index left
    INVALID (by a concurrent build of an older version) is dropped first."""
    out: Work = []
    for target, tag in m.new_tables():
        wanted = [(idx, temp_index_name(idx, tag)) for idx in [key_index(plan.info), *secondary_indexes(plan.info)]]
        # a dry run's new table has no index yet
        valid: dict[str, bool] = dict(ex.read(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = ANY(%s)",
            (target.schema, [name for _, name in wanted]), reads=[str(target)]).fetchall())
        for idx, name in wanted:
            found = valid.get(name)
            if found:
                continue
            if found is not None:
                ex.run(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(target.schema, name)))
            out.append((target, name, index_sql(plan.info, idx, target, name, concurrently=False)))
    return out


def _build(ctx: RunContext, work: Work, workers: int) -> list[str]:
    """Run the CREATE INDEX statements, on `workers` connections at once (CREATE INDEX
    takes SHARE: builds on one table run side by side). Returns the names of the indexes
    whose build found duplicate keys (stale rows of the load)."""
    builds = _Builds(ctx, work)
    if not (workers > 1 and len(work) > 1):
        builds.run(ctx.ex)
    else:
        threads = [threading.Thread(target=builds.worker, args=(i,), daemon=True)
                   for i in range(min(workers, len(work)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if builds.errors:
        raise builds.errors[0]
    return builds.dup


class _Builds:
    """The index builds still to run, shared by the workers; what they found."""

    def __init__(self, ctx: RunContext, work: Work) -> None:
        self.ctx = ctx
        self.todo = list(work)
        self.dup: list[str] = []
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()

    def run(self, ex: Executor) -> None:
        """Take the next build until none is left (or a worker failed)."""
        while True:
            self.ctx.pacer(ex.conn)  # after the build before (one worker when paced)
            with self.lock:
                if not self.todo or self.errors:
                    return
                _, name, stmt = self.todo.pop(0)
            try:
                with ex.transaction():
                    ex.run(stmt)
            except psycopg.errors.UniqueViolation:
                with self.lock:
                    self.dup.append(name)

    def worker(self, number: int) -> None:
        """A thread of its own connection, running builds."""
        try:
            with forked(self.ctx.ex, self.ctx.dsn, "tablemig-index", f"index-{number + 1}") as ex:
                # at least 256MB for the sort (a larger server setting is kept); the builds
                # already use the cores: no extra sort workers
                ex.run("SELECT set_config('maintenance_work_mem', greatest(setting::bigint,"
                       " 262144)::text || 'kB', false) FROM pg_settings WHERE name = 'maintenance_work_mem'")
                ex.run("SET max_parallel_maintenance_workers = 0")
                self.run(ex)
        except BaseException as exc:  # noqa: BLE001 - re-raised by _build
            with self.lock:
                self.errors.append(exc)


def _drop_logged_keys(ctx: RunContext, m: State) -> int:
    """Delete from N (and H) every row whose key is in the change log. Only such rows can
    be stale copies (a row moved between load chunks is copied twice); the replay copies
    them again from T."""
    log = m.objects.change_log
    keys = sql.SQL(", ").join(map(sql.Identifier, m.key))
    match = sql.SQL(" AND ").join(sql.SQL("x.{0} = c.{0}").format(sql.Identifier(k)) for k in m.key)
    n = 0
    with ctx.ex.transaction():
        for table, _ in m.new_tables():
            n += max(ctx.ex.run(sql.SQL("DELETE FROM {t} x USING (SELECT DISTINCT {k} FROM {log}) c WHERE {m}").format(
                t=table.ident(), k=keys, log=log.ident(), m=match)).rowcount, 0)
    return n


def run(ctx: RunContext) -> None:
    """N's key and secondary indexes, built with plain CREATE INDEX after the load: while
    the trigger logs keys, only the harness writes N. Several build at once on large
    tables. A build interrupted by a crash leaves nothing (CREATE INDEX is transactional);
    built ones are kept on a rerun."""
    t0 = ctx.begin("index")
    m = ctx.require("backfilling", "indexed")
    if m.state == "indexed":
        return
    plan = ctx.current_plan()
    s = ctx.settings()
    require_change_log(ctx, m, "indexing")
    small = ctx.small(m, plan)
    ctx.pacer.start(ctx.conn, s)
    # on a small table one connection builds them all (RunContext.parallel_min_rows); a
    # paced migration (nice_ratio, or the write guard while the application writes)
    # builds one index at a time, each in its own transaction, and rests between them
    paced = ctx.pacer.paced
    workers = 1 if small or paced else s.index_workers
    work = missing(ctx.ex, m, plan)
    fresh = len(work) == len(m.new_tables()) * (1 + len(secondary_indexes(plan.info)))
    analysis = analyze.of(ctx)
    if workers <= 1 and fresh and not paced and _build_at_once(ctx, m, plan, work, small):
        ctx.timed("index", t0)
        return
    # one unpaced connection: everything in one transaction (one commit; a crash leaves
    # nothing); paced, no transaction stays open while the migration rests
    ex = ctx.ex
    with ex.transaction() if workers <= 1 and not paced else contextlib.nullcontext():
        dup = _build(ctx, work, workers)
        if dup:
            dropped = _drop_logged_keys(ctx, m)
            with ex.transaction():
                ctx.store.log("index", "stale rows dropped", rows=dropped, details={"indexes": dup})
            dup = _build(ctx, missing(ex, m, plan), workers)
            if dup:
                raise TablemigError(f"{ctx.table}: duplicate keys in the new table's indexes {dup}",
                                    "report it; roll back (tablemig rollback) and rerun")
        with ex.transaction():
            _key_constraints(ex, m, plan, fresh=False)
        if paced and not small:
            # a unit of its own: nothing of the migration runs while it rests
            ctx.pacer(ctx.conn)
            analysis.now(ex, m)
        with ex.transaction():
            if small:
                analysis.now(ex, m)
            _indexed(ctx, plan, workers)
    if not small and not paced:
        analysis.in_background(ctx, m)
    ctx.timed("index", t0)


def _build_at_once(ctx: RunContext, m: State, plan: TablePlan, work: Work, small: bool) -> bool:
    """A fresh build on one connection, unpaced: every index, the key constraints, a small
    table's ANALYZE and the state in one transaction, in two round trips. False, with
    nothing changed, when a unique index finds duplicate keys (stale rows of the load):
    the step by step path handles those."""
    ex, analysis = ctx.ex, analyze.of(ctx)
    try:
        with ex.transaction():
            with ex.batched():
                for _, _, stmt in work:
                    ex.run(stmt)
                _key_constraints(ex, m, plan, fresh=True)
                if small:
                    analysis.now(ex, m)
            _indexed(ctx, plan, 1)
    except psycopg.errors.UniqueViolation:
        analysis.done = False
        return False
    if not small:
        analysis.in_background(ctx, m)
    return True


def _key_constraints(ex: Executor, m: State, plan: TablePlan, *, fresh: bool) -> None:
    """N's (and H's) key constraints on their unique indexes (deferrable as the original's),
    the indexes' comments, CLUSTER ON and replica identity, and the outgoing foreign keys
    validated. `fresh`: the indexes were built in this transaction, so none of their
    constraints can exist yet."""
    for target, tag in m.new_tables():
        for idx in [key_index(plan.info), *secondary_indexes(plan.info)]:
            name = temp_index_name(idx, tag)
            if idx.constraint_type in ("p", "u") and (fresh or not ex.read(
                    "SELECT 1 FROM pg_constraint WHERE conrelid = %s::regclass AND conname = %s",
                    (str(target), name), reads=[str(target)]).fetchone()):
                for stmt in key_constraint_sql(idx, target, tag):
                    ex.run(stmt)
            for stmt in index_properties_sql(idx, target, tag):  # idempotent
                ex.run(stmt)
        for fk_name, _, _ in plan.info.outgoing_fks:
            ex.run(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(target.ident(), sql.Identifier(fk_name)))


def _indexed(ctx: RunContext, plan: TablePlan, workers: int) -> None:
    ctx.store.advance("index", "done", state="indexed",
                      details={"indexes": [i.name for i in secondary_indexes(plan.info)], "parallel": workers})
