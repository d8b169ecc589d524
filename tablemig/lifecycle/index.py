"""The index step: the new table's key and secondary indexes, built with plain CREATE
INDEX after the load (while the trigger only logs keys, the harness alone writes the new
table). A mixin of `tablemig.lifecycle.driver.Migration`, which provides the connection, the state
row and the step plumbing used here."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from ..errors import TablemigError
from ..pg.connect import connect
from ..pg.names import QualifiedName
from . import state
from .executor import Executor
from .failures import records_failure
from .planner import TablePlan
from .replay import log_exists
from .step_host import StepHost
from .structure import (
    change_log_name,
    index_properties_sql,
    index_sql,
    key_constraint_sql,
    key_index,
    secondary_indexes,
    temp_index_name,
)

if TYPE_CHECKING:
    from collections.abc import Callable


class IndexBuild(StepHost):
    """The index step of a migration."""

    _analyze_in_background: Callable[[dict[str, Any]], None]
    _analyze_now: Callable[[dict[str, Any]], None]

    def _index_work(self, m: dict[str, Any], plan: TablePlan) -> list[tuple[QualifiedName, str, sql.Composable]]:
        """(table, index name, CREATE INDEX) of every index N (and H) still lacks; an
        index left INVALID (by a concurrent build of an older version) is dropped first."""
        out: list[tuple[QualifiedName, str, sql.Composable]] = []
        for target, tag in state.new_tables(m):
            wanted = [(idx, temp_index_name(idx, tag))
                      for idx in [key_index(plan.info), *secondary_indexes(plan.info)]]
            valid = dict(self.conn.execute(
                "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = ANY(%s)",
                (target.schema, [name for _, name in wanted])).fetchall())
            for idx, name in wanted:
                found = valid.get(name)
                if found:
                    continue
                if found is not None:
                    self.ex.run(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(target.schema, name)))
                out.append((target, name, index_sql(plan.info, idx, target, name, concurrently=False)))
        return out

    def _build(self, work: list[tuple[QualifiedName, str, sql.Composable]], workers: int) -> list[str]:
        """Run the CREATE INDEX statements, on `workers` connections at once (CREATE INDEX
        takes SHARE: builds on one table run side by side). Returns the names of the
        indexes whose build found duplicate keys (stale rows of the load)."""
        dup: list[str] = []
        parallel = workers > 1 and len(work) > 1
        lock = threading.Lock()
        todo = list(work)
        errors: list[BaseException] = []

        def run(conn: psycopg.Connection[Any], ex: Executor) -> None:
            while True:
                self.pacer(conn)  # after the build before (one worker when paced)
                with lock:
                    if not todo or errors:
                        return
                    _, name, stmt = todo.pop(0)
                try:
                    with conn.transaction():
                        ex.run(stmt)
                except psycopg.errors.UniqueViolation:
                    with lock:
                        dup.append(name)

        def worker() -> None:
            try:
                with connect(self.dsn, application_name="tablemig-index") as c:
                    # at least 256MB for the sort (a larger server setting is kept); the builds
                    # already use the cores: no extra sort workers
                    c.execute("SELECT set_config('maintenance_work_mem', greatest(setting::bigint,"
                              " 262144)::text || 'kB', false) FROM pg_settings"
                              " WHERE name = 'maintenance_work_mem'")
                    c.execute("SET max_parallel_maintenance_workers = 0")
                    run(c, Executor(c, recorder=self.recorder))
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                with lock:
                    errors.append(exc)

        if not parallel:
            run(self.conn, self.ex)
        else:
            threads = [threading.Thread(target=worker, daemon=True)
                       for _ in range(min(workers, len(work)))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        return dup

    def _drop_logged_keys(self, m: dict[str, Any]) -> int:
        """Delete from N (and H) every row whose key is in the change log. Only such rows
        can be stale copies (a row moved between load chunks is copied twice); the replay
        copies them again from T."""
        log = change_log_name(int(m["table_oid"]))
        keys = sql.SQL(", ").join(map(sql.Identifier, m["key_columns"]))
        match = sql.SQL(" AND ").join(sql.SQL("x.{0} = c.{0}").format(sql.Identifier(k))
                                      for k in m["key_columns"])
        n = 0
        with self.conn.transaction():
            for table, _ in state.new_tables(m):
                cur = self.conn.execute(sql.SQL(
                    "DELETE FROM {t} x USING (SELECT DISTINCT {k} FROM {log}) c WHERE {m}").format(
                    t=table.ident(), k=keys, log=log.ident(), m=match))
                n += max(cur.rowcount, 0)
        return n

    def _require_change_log(self, m: dict[str, Any], doing: str) -> None:
        """Before the replay the change log must exist: a migration captured by an older
        tablemig (trigger writing N directly, N with its key) cannot be resumed here."""
        log = change_log_name(int(m["table_oid"]))
        if not log_exists(self.conn, log):
            raise TablemigError(f"{self.table}: the change log {log} is missing while {doing}",
                                "the migration was started by another tablemig version; roll it back"
                                " (tablemig rollback) and start again")

    @records_failure("index")
    def build_indexes(self) -> None:
        """N's key and secondary indexes, built with plain CREATE INDEX after the load:
        while the trigger logs keys, only the harness writes N. Several build at once on
        large tables. A build interrupted by a crash leaves nothing (CREATE INDEX is
        transactional); built ones are kept on a rerun."""
        t0 = self._begin("index")
        m = self._require("backfilling", "indexed")
        if m["state"] == "indexed":
            return
        plan = self._plan or self.plan()
        s = self._settings()
        self._require_change_log(m, "indexing")
        small = self._small(m, plan)
        self.pacer.start(self.conn, s)
        # on a small table one connection builds them all (Migration.parallel_min_rows); a
        # paced migration (nice_ratio, or the write guard while the application writes)
        # builds one index at a time, each in its own transaction, and rests between them
        paced = self.pacer.paced
        workers = 1 if small or paced else s.index_workers
        work = self._index_work(m, plan)
        fresh = len(work) == len(state.new_tables(m)) * (1 + len(secondary_indexes(plan.info)))
        if workers <= 1 and fresh and not paced and self._build_at_once(m, plan, work, small):
            self._timed("index", t0)
            return
        # one unpaced connection: everything in one transaction (one commit; a crash leaves
        # nothing); paced, no transaction stays open while the migration rests
        with self.conn.transaction() if workers <= 1 and not paced else contextlib.nullcontext():
            dup = self._build(work, workers)
            if dup:
                dropped = self._drop_logged_keys(m)
                with self.conn.transaction():
                    state.log(self.conn, self.table, "index", "stale rows dropped", rows=dropped,
                              details={"indexes": dup})
                dup = self._build(self._index_work(m, plan), workers)
                if dup:
                    raise TablemigError(f"{self.table}: duplicate keys in the new table's indexes {dup}",
                                        "report it; roll back (tablemig rollback) and rerun")
            with self.conn.transaction():
                self._key_constraints(m, plan, fresh=False)
            if paced and not small:
                # a unit of its own: nothing of the migration runs while it rests
                self.pacer(self.conn)
                self._analyze_now(m)
            with self.conn.transaction():
                if small:
                    self._analyze_now(m)
                self._indexed(plan, workers)
        if not small and not paced:
            self._analyze_in_background(m)
        self._timed("index", t0)

    def _build_at_once(self, m: dict[str, Any], plan: TablePlan,
                       work: list[tuple[QualifiedName, str, sql.Composable]], small: bool) -> bool:
        """A fresh build on one connection, unpaced: every index, the key constraints, a
        small table's ANALYZE and the state in one transaction, in two round trips. False,
        with nothing changed, when a unique index finds duplicate keys (stale rows of the
        load): the step by step path handles those."""
        try:
            with self.conn.transaction():
                with self.ex.batched():
                    for _, _, stmt in work:
                        self.ex.run(stmt)
                    self._key_constraints(m, plan, fresh=True)
                    if small:
                        self._analyze_now(m)
                self._indexed(plan, 1)
        except psycopg.errors.UniqueViolation:
            self._stats_ready = False
            return False
        if not small:
            self._analyze_in_background(m)
        return True

    def _key_constraints(self, m: dict[str, Any], plan: TablePlan, *, fresh: bool) -> None:
        """N's (and H's) key constraints on their unique indexes (deferrable as the
        original's), the indexes' comments, CLUSTER ON and replica identity, and the
        outgoing foreign keys validated. `fresh`: the indexes were built in this
        transaction, so none of their constraints can exist yet."""
        for target, tag in state.new_tables(m):
            for idx in [key_index(plan.info), *secondary_indexes(plan.info)]:
                name = temp_index_name(idx, tag)
                if idx.constraint_type in ("p", "u") and (fresh or not self.conn.execute(
                        "SELECT 1 FROM pg_constraint WHERE conrelid = %s::regclass AND conname = %s",
                        (str(target), name)).fetchone()):
                    for stmt in key_constraint_sql(idx, target, tag):
                        self.ex.run(stmt)
                for stmt in index_properties_sql(idx, target, tag):  # idempotent
                    self.ex.run(stmt)
            for fk_name, _, _ in plan.info.outgoing_fks:
                self.ex.run(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                    target.ident(), sql.Identifier(fk_name)))

    def _indexed(self, plan: TablePlan, workers: int) -> None:
        state.advance(self.conn, self.table, "index", "done", state="indexed",
                      details={"indexes": [i.name for i in secondary_indexes(plan.info)],
                               "parallel": workers})
