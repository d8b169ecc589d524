"""The migration of one table through its states, driven by the plan module and the CLI.

    planned -> capturing -> backfilling -> indexed -> verified -> swapped -> pruned -> cleaned
    any state before cleaned --rollback--> rolled_back

Every step reads the state row, does its work, and records the new state in the same
transaction as the work (or, for statements that cannot run in a transaction such as
CREATE INDEX CONCURRENTLY, makes the work idempotent). Rerunning resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from . import state
from .backfill import BatchCopier, CopyJob, Progress, Throttle, wait_while_paused
from .db import connect
from .errors import InputError, TablemigError
from .executor import Executor, Recorder
from .names import QualifiedName
from .planner import TablePlan, build_plan, missing_privileges
from .reconcile import Reconciler, Segment, Side
from .schema import install_schema, installed_version
from .spec import TableSpec
from .structure import (
    TRIGGER_PREFIX,
    create_table_sql,
    drop_trigger_sql,
    index_sql,
    secondary_indexes,
    sync_function_sql,
    temp_index_name,
    trigger_sql,
    truncate_guard_sql,
)
from .swap import (
    CAPTURE_TRIGGER,
    GUARD_TRIGGER,
    MIRROR_TRIGGER,
    PRUNE_TRIGGER,
    SwapResult,
    swap,
    swap_back,
    validate_foreign_keys,
    with_lock_retries,
)


@dataclass
class Settings:
    """Operational settings: from `table_migration.migration_config`, overridable."""

    lock_timeout: str = "200ms"
    swap_max_attempts: int = 10
    swap_statement_timeout: str = "30s"
    long_transaction_seconds: float = 60
    batch_target_seconds: float = 0.5
    verify_segments: int = 16

    @classmethod
    def load(cls, conn: psycopg.Connection[Any], **overrides: Any) -> Settings:
        rows = dict(conn.execute("SELECT config_key, config_value FROM"
                                 " table_migration.migration_config").fetchall())
        s = cls(lock_timeout=rows.get("lock_timeout", cls.lock_timeout),
                swap_max_attempts=int(rows.get("swap_max_attempts", cls.swap_max_attempts)),
                swap_statement_timeout=rows.get("swap_statement_timeout",
                                                cls.swap_statement_timeout),
                long_transaction_seconds=float(rows.get("long_transaction_seconds", 60)),
                batch_target_seconds=float(rows.get("batch_target_seconds", 0.5)),
                verify_segments=int(rows.get("verify_segments", 16)))
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s


@dataclass
class VerifyResult:
    segments: list[Segment]
    repaired: int
    rounds: int
    history_segments: list[Segment] = field(default_factory=list)

    @property
    def match(self) -> bool:
        return all(s.match for s in self.segments + self.history_segments)


class Migration:
    """One table's migration on the active site."""

    def __init__(self, dsn: str, spec: TableSpec, *, recorder: Recorder | None = None,
                 throttle: Throttle | None = None, progress: Progress | None = None,
                 plan_name: str | None = None, **setting_overrides: Any) -> None:
        self.dsn = dsn
        self.spec = spec
        self.recorder = recorder or Recorder()
        self.throttle = throttle
        self.progress = progress
        self.plan_name = plan_name
        self.overrides = setting_overrides
        self.conn = connect(dsn)
        self.ex = Executor(self.conn, recorder=self.recorder)
        self.timings: dict[str, float] = {}
        self.swap_result: SwapResult | None = None
        self.verify_result: VerifyResult | None = None
        self.backfill_samples: list[dict[str, Any]] = []
        self._locked_oid: int | None = None
        self._plan: TablePlan | None = None

    # -- plumbing -------------------------------------------------------------------------
    def close(self) -> None:
        if self._locked_oid is not None and not self.conn.closed:
            try:
                state.release_table_lock(self.conn, self._locked_oid)
            except psycopg.Error:
                pass  # the session is gone, and its advisory lock with it
        self.conn.close()

    def __enter__(self) -> Migration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def table(self) -> str:
        return str(self.spec.qualified)

    def plan(self) -> TablePlan:
        """Read-only plan (the dry run)."""
        self._plan = build_plan(self.conn, self.spec)
        return self._plan

    def _settings(self) -> Settings:
        return Settings.load(self.conn, **self.overrides)

    def _state(self) -> dict[str, Any] | None:
        if installed_version(self.conn) is None:
            return None
        return state.load(self.conn, self.table)

    def _lock(self, oid: int) -> None:
        if self._locked_oid is None:
            state.acquire_table_lock(self.conn, oid, self.table)
            self._locked_oid = oid

    def _timed(self, name: str, t0: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0) + time.perf_counter() - t0, 3)

    # -- steps ----------------------------------------------------------------------------
    def run(self, until: str = "swapped") -> dict[str, Any]:
        """Run every step up to and including `until` (a state name); resumes."""
        order = ["capturing", "backfilling", "indexed", "verified", "swapped"]
        if until not in order:
            raise InputError(f"unknown target state {until!r}", f"use one of {', '.join(order)}")
        self.capture()
        steps = {"backfilling": self.backfill, "indexed": self.build_indexes,
                 "verified": self.verify, "swapped": self.swap}
        for target in order[1:order.index(until) + 1]:
            m = self._state()
            if m and state.ORDER[m["state"]] > state.ORDER[target]:
                continue  # resuming: this step finished in an earlier run
            steps[target]()
        if until == "swapped":
            self.validate_foreign_keys()
        m = self._state()
        return dict(m) if m else {}

    def capture(self) -> None:
        """Install the schema, create N (and A in copy mode) and the capture trigger."""
        t0 = time.perf_counter()
        self.recorder.step = self.recorder.step or "capture"
        # Plan (which validates every input) before anything is installed: bad input changes nothing.
        # Planning is read-only and is done (and timed) apart from the migration core.
        plan = self._plan if self._plan and self._plan.resumed_state is None else self.plan()
        self._timed("plan", t0)
        if plan.blockers:
            raise TablemigError(f"{self.table} has blockers: " + "; ".join(plan.blockers),
                                "resolve them (the dry run lists them) and rerun")
        user = str(self.ex.scalar("SELECT current_user"))
        lacking = missing_privileges(self.conn, plan)
        if lacking:
            raise InputError(f"the role {user} lacks a privilege for {self.table}: " + "; ".join(lacking)
                             + "; nothing was changed",
                             "run as the table's owner (or a member of the owner role, also of referencing "
                             "tables and views) with CREATE on its schema; see README, Least privilege")
        t_install = time.perf_counter()
        try:
            install_schema(self.conn)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise InputError(f"the role {user} lacks a privilege to install the table_migration schema: "
                             f"{exc.diag.message_primary}",
                             "GRANT CREATE ON DATABASE to the role, or have the database owner run "
                             "`tablemig install-schema` once (the table owner is needed for the rest)") from None
        self._timed("install", t_install)
        self._lock(plan.info.oid)
        t0 = time.perf_counter()
        m = self._state()
        if m and m["state"] not in ("rolled_back", "cleaned"):
            if m["plan_name"] and self.plan_name and m["plan_name"] != self.plan_name:
                raise InputError(f"{self.table} is mid-migration (state {m['state']}) by plan {m['plan_name']!r}",
                                 f"finish or roll back that plan first (tablemig rollback --table {self.table})")
            if m["table_oid"] != plan.info.oid:
                raise InputError(f"state of {self.table} belongs to another table (oid "
                                 f"{m['table_oid']})", "inspect table_migration.migration_state")
            return  # resuming: capture is already in place
        info = plan.info
        capture_fn = plan.function_name("capture")

        def body(_locked_at: float) -> dict[str, Any]:
            self.conn.execute("DELETE FROM table_migration.migration_state WHERE table_name = %s",
                              (self.table,))
            self.conn.execute(
                "INSERT INTO table_migration.migration_state (table_name, table_oid, schema_name,"
                " original_name, new_name, archive_name, backup_name, date_column, date_type,"
                " key_columns, cutoff, archive_mode, state, plan_name, batch_size, rows_to_copy)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'capturing', %s, %s, %s)",
                (self.table, info.oid, plan.original.schema, plan.original.name, plan.new.name,
                 plan.archive.name, plan.backup.name if plan.backup else None, plan.date_column,
                 plan.date_type, plan.key, plan.cutoff, self.spec.archive_mode, self.plan_name,
                 self.spec.batch_size, plan.keep_rows))
            for stmt in create_table_sql(info, plan.new, user):
                self.ex.run(stmt)
            history = None
            if self.spec.archive_mode == "copy":
                history = plan.archive
                for stmt in create_table_sql(info, plan.archive, user, tag="h"):
                    self.ex.run(stmt)
            self.ex.run(sync_function_sql(info, capture_fn, "capture", plan.new, history,
                                          date_column=plan.date_column, date_type=plan.date_type,
                                          cutoff=plan.cutoff))
            for stmt in trigger_sql(plan.original, CAPTURE_TRIGGER, capture_fn):
                self.ex.run(stmt)
            self.ex.run(truncate_guard_sql(plan.original))
            self.conn.execute(
                "INSERT INTO table_migration.replication_control (table_name, replication_enabled,"
                " notes) VALUES (%s, false, 'migration in progress: capture installed')"
                " ON CONFLICT (table_name) DO UPDATE SET replication_enabled = false,"
                " notes = EXCLUDED.notes", (self.table,))
            state.log(self.conn, self.table, "capture", "installed",
                      details={"new_table": str(plan.new), "cutoff": plan.cutoff})
            return {}

        s = self._settings()
        # CREATE TRIGGER takes SHARE ROW EXCLUSIVE: it waits for running writers and blocks
        # new ones while waiting, so it gets the same bounded lock_timeout as the swap.
        try:
            with_lock_retries(self.conn, f"capture on {self.table}", [plan.original], body,
                              lock_timeout=s.lock_timeout, attempts=s.swap_max_attempts,
                              long_xact_seconds=s.long_transaction_seconds,
                              mode="SHARE ROW EXCLUSIVE")
        except psycopg.errors.InsufficientPrivilege as exc:
            raise InputError(
                f"the role {user} lacks a privilege: {exc.diag.message_primary}; nothing was changed",
                "run as the table's owner (or a member of the owner role) with CREATE on its schema; "
                "see README, Least privilege") from None
        self._timed("capture", t0)

    def _jobs(self, m: dict[str, Any]) -> list[tuple[str, CopyJob, int | None]]:
        plan = self._plan or self.plan()
        info = plan.info
        types = {c.name: c.type for c in info.columns}
        new = QualifiedName(m["schema_name"], m["new_name"])
        jobs = [("backfill", CopyJob(plan.original, new, plan.columns, plan.order_columns,
                                     [types[c] for c in plan.order_columns], plan.date_column,
                                     plan.date_type, m["cutoff"], plan.overriding, plan.key),
                 plan.keep_rows)]
        if m["archive_mode"] == "copy":
            arch = QualifiedName(m["schema_name"], m["archive_name"])
            jobs.append(("backfill_history", CopyJob(
                plan.original, arch, plan.columns, plan.key, [types[c] for c in plan.key],
                plan.date_column, plan.date_type, m["cutoff"], plan.overriding, plan.key,
                history=True), plan.archive_rows))
        return jobs

    def backfill(self) -> None:
        t0 = time.perf_counter()
        m = self._require("capturing", "backfilling")
        if m["state"] == "capturing":
            with self.conn.transaction():
                state.update(self.conn, self.table, state="backfilling")
        s = self._settings()
        for key, job, expected in self._jobs(m):
            m = self._state() or m
            copier = BatchCopier(self.dsn, job, self.table, key, batch_size=m["batch_size"],
                                 target_seconds=s.batch_target_seconds, workers=self.spec.workers,
                                 throttle=self.throttle, progress=self.progress,
                                 expected_rows=expected)
            stats = copier.run(self.conn, dict(m["checkpoint"] or {}))
            self.backfill_samples.extend(stats.samples)
            with self.conn.transaction():
                state.log(self.conn, self.table, key, "done", rows=stats.rows,
                          duration_ms=stats.seconds * 1000,
                          details={"batches": stats.batches, "workers": self.spec.workers})
        self._timed("backfill", t0)

    def build_indexes(self) -> None:
        """Secondary indexes on N built CONCURRENTLY after the load (a plain CREATE INDEX
        would block the capture trigger and so the application); idempotent."""
        t0 = time.perf_counter()
        m = self._require("backfilling", "indexed")
        if m["state"] == "indexed":
            return
        plan = self._plan or self.plan()
        targets = [QualifiedName(m["schema_name"], m["new_name"])]
        if m["archive_mode"] == "copy":
            targets.append(QualifiedName(m["schema_name"], m["archive_name"]))
        s = self._settings()
        for target in targets:
            for idx in secondary_indexes(plan.info):
                name = temp_index_name(idx, "n" if target.name == m["new_name"] else "h")
                found = self.conn.execute(
                    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = %s AND c.relname = %s", (target.schema, name)).fetchone()
                if found and found[0]:
                    continue
                if found:  # left INVALID by an interrupted build
                    self.ex.run(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                        sql.Identifier(target.schema, name)))
                self.ex.run(index_sql(plan.info, idx, target, name, concurrently=True))
                if idx.constraint_type == "u":
                    stmt = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} UNIQUE USING INDEX {}").format(
                        target.ident(), sql.Identifier(name), sql.Identifier(name))
                    with_lock_retries(self.conn, f"unique constraint on {target}", [target],
                                      lambda _t, st=stmt: (self.ex.run(st), {})[1],
                                      lock_timeout=s.lock_timeout, attempts=s.swap_max_attempts)
            for fk_name, _, _ in plan.info.outgoing_fks:
                self.ex.run(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                    target.ident(), sql.Identifier(fk_name)))
            self.ex.run(sql.SQL("ANALYZE {}").format(target.ident()))
        with self.conn.transaction():
            state.update(self.conn, self.table, state="indexed")
            state.log(self.conn, self.table, "index", "done",
                      details={"indexes": [i.name for i in secondary_indexes(plan.info)]})
        self._timed("index", t0)

    def _reconciler(self, plan: TablePlan) -> Reconciler:
        types = {c.name: c.type for c in plan.info.columns}
        return Reconciler(plan.key, [types[k] for k in plan.key],
                          [c.name for c in plan.info.columns], plan.columns)

    def verify(self, max_rounds: int = 3) -> VerifyResult:
        """Segment checksums of T[D >= C] against N; differing rows are repaired from T."""
        t0 = time.perf_counter()
        m = self._require("indexed", "verified")
        plan = self._plan or self.plan()
        rec = self._reconciler(plan)
        s = self._settings()
        src = Side(plan.original, plan.date_column, plan.date_type, m["cutoff"])
        dst = Side(QualifiedName(m["schema_name"], m["new_name"]))
        pairs = [(src, dst)]
        if m["archive_mode"] == "copy":
            pairs.append((Side(plan.original, plan.date_column, plan.date_type, m["cutoff"],
                               negate=True), Side(QualifiedName(m["schema_name"],
                                                                m["archive_name"]))))
        repaired, results = 0, []
        for source, target in pairs:
            bounds = rec.boundaries(self.conn, target, s.verify_segments)
            segs: list[Segment] = []
            for round_ in range(1, max_rounds + 1):
                segs = rec.checksums(self.conn, {"original": source, "new": target}, bounds)
                bad = [x for x in segs if not x.match]
                if not bad:
                    break
                for seg in bad:
                    keys = rec.differing_keys(self.conn, source, target, seg)
                    repaired += rec.repair(self.conn, source, target, keys, plan.overriding)
                if round_ == max_rounds:
                    segs = rec.checksums(self.conn, {"original": source, "new": target}, bounds)
            results.append(segs)
        result = VerifyResult(results[0], repaired, len(results),
                              results[1] if len(results) > 1 else [])
        self.verify_result = result
        if not result.match:
            with self.conn.transaction():
                state.log(self.conn, self.table, "verify", "mismatch", rows=repaired)
            raise TablemigError(f"verify of {self.table}: segments still differ after "
                                f"{max_rounds} repair rounds",
                                "check for writes bypassing the trigger (session_replication_role"
                                " = replica?) and rerun")
        with self.conn.transaction():
            state.update(self.conn, self.table, state="verified")
            state.log(self.conn, self.table, "verify", "match", rows=repaired,
                      details={"segments": len(result.segments), "repaired_rows": repaired})
        self._timed("verify", t0)
        return result

    def swap(self) -> SwapResult:
        t0 = time.perf_counter()
        m = self._require("verified", "swapped")
        if m["state"] == "swapped":
            return self.swap_result or SwapResult(m["swap_attempts"], float(m["lock_hold_ms"] or 0),
                                                  str(m["swap_lsn"]), m["swap_record"] or {})
        s = self._settings()
        self.swap_result = swap(self.ex, m, lock_timeout=s.lock_timeout,
                                attempts=s.swap_max_attempts,
                                statement_timeout=s.swap_statement_timeout,
                                long_xact_seconds=s.long_transaction_seconds)
        self._timed("swap", t0)
        return self.swap_result

    def validate_foreign_keys(self) -> list[str]:
        """VALIDATE the re-pointed foreign keys (after the swap; idempotent)."""
        t0 = time.perf_counter()
        m = self._state()
        if not m or m["state"] not in ("swapped", "pruned"):
            return []
        rec = m["swap_record"] or {}
        todo = [fk for fk in rec.get("foreign_keys", [])
                if f"{fk['table']}.{fk['name']}" not in rec.get("fk_validated", [])]
        done = validate_foreign_keys(self.ex, todo)
        if done:
            rec["fk_validated"] = rec.get("fk_validated", []) + done
            with self.conn.transaction():
                state.update(self.conn, self.table, swap_record=rec)
        self._timed("validate_fks", t0)
        return done

    def _require(self, *allowed: str) -> dict[str, Any]:
        m = self._state()
        if not m or m["state"] not in allowed:
            have = m["state"] if m else "not started"
            raise InputError(f"{self.table} is in state {have}; this step needs "
                             f"{' or '.join(allowed)}",
                             "run the steps in order (rerunning the plan resumes)")
        self._lock(int(m["table_oid"]))
        return m

    # -- after the swap -------------------------------------------------------------------
    def prune(self, batch_size: int | None = None) -> int:
        """Delete from the archive the rows that live in T; from here T and A are disjoint.

        The mirror trigger is first replaced, in one transaction, by a prune guard (deletes
        reach the archive; keys that exist in the archive are refused), the copies are
        deleted in batches, then the guard is dropped and the state becomes `pruned`.
        Resumable; a rollback during or after it goes through `rollback()`'s restore path."""
        t0 = time.perf_counter()
        m = self._require("swapped", "pruned")
        if m["state"] == "pruned":
            return 0
        s = self._settings()
        t = QualifiedName(m["schema_name"], m["original_name"])
        a = state.old_table(m)
        info = (self._plan or self.plan_for_state(m)).info
        mirror = QualifiedName("table_migration", f"mirror_{m['table_oid']}")
        guard = QualifiedName("table_migration", f"prune_{m['table_oid']}")
        copy_mode = m["archive_mode"] == "copy"
        if not (m["checkpoint"] or {}).get("prune_started") and not copy_mode:
            def start(_locked_at: float) -> dict[str, Any]:
                self.ex.run(drop_trigger_sql(t, MIRROR_TRIGGER))
                self.ex.run(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(mirror.ident()))
                self.ex.run(sync_function_sql(info, guard, "prune", a))
                for stmt in trigger_sql(t, PRUNE_TRIGGER, guard):
                    self.ex.run(stmt)
                self.conn.execute("UPDATE table_migration.migration_state SET checkpoint = checkpoint ||"
                                  " '{\"prune_started\": true}' WHERE table_name = %s", (self.table,))
                state.log(self.conn, self.table, "prune", "started")
                return {}
            with_lock_retries(self.conn, f"prune of {t}", [t], start, lock_timeout=s.lock_timeout,
                              attempts=s.swap_max_attempts, mode="SHARE ROW EXCLUSIVE")
            m = self._state() or m
        deleted = 0 if copy_mode else self._delete_archived_copies(m, t, a, batch_size or m["batch_size"])

        def finish(_locked_at: float) -> dict[str, Any]:
            for trg in (PRUNE_TRIGGER, MIRROR_TRIGGER, GUARD_TRIGGER):
                self.ex.run(drop_trigger_sql(t, trg))
            for fn in (guard, mirror):
                self.ex.run(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(fn.ident()))
            state.update(self.conn, self.table, state="pruned")
            self.conn.execute(sql.SQL(
                "UPDATE table_migration.migration_state SET checkpoint = checkpoint || jsonb_build_object("
                "'archive_rows_at_prune', (SELECT count(*) FROM {})) WHERE table_name = %s").format(a.ident()),
                (self.table,))
            state.log(self.conn, self.table, "prune", "done", rows=deleted)
            return {}
        with_lock_retries(self.conn, f"prune of {t}", [t], finish, lock_timeout=s.lock_timeout,
                          attempts=s.swap_max_attempts, mode="SHARE ROW EXCLUSIVE")
        self._timed("prune", t0)
        return deleted

    def _delete_archived_copies(self, m: dict[str, Any], t: QualifiedName, a: QualifiedName,
                                batch: int) -> int:
        key = [sql.Identifier(k) for k in m["key_columns"]]
        klist = sql.SQL(", ").join(key)
        texts = sql.SQL(", ").join(sql.SQL("src.{}::text").format(k) for k in key)
        src_order = sql.SQL(", ").join(sql.SQL("src.{}").format(k) for k in key)
        match = sql.SQL(" AND ").join(sql.SQL("a.{0} = b.{0}").format(k) for k in key)
        last = (m["checkpoint"] or {}).get("prune_last")
        total = 0
        typed = sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(self._type_of(t, k)))
                                   for k in m["key_columns"])
        above = sql.SQL("({}) > ({})").format(klist, typed)
        upto = sql.SQL("({}) <= ({})").format(klist, typed)
        while True:
            wait_while_paused(self.conn, self.table)
            if self.throttle:
                self.throttle()
            with self.conn.transaction():
                bound = self.conn.execute(sql.SQL(  # ORDER BY the typed columns, not the ::text outputs
                    "SELECT {} FROM {} AS src WHERE {} ORDER BY {} OFFSET %s LIMIT 1").format(
                    texts, t.ident(), above if last else sql.SQL("true"), src_order),
                    [*(last or []), batch - 1]).fetchone()
                upper = [str(v) for v in bound] if bound else None
                conds = ([above] if last else []) + ([upto] if upper else [])
                where = sql.SQL(" AND ").join(conds) if conds else sql.SQL("true")
                cur = self.conn.execute(sql.SQL(
                    "DELETE FROM {a} a USING (SELECT {k} FROM {t} WHERE {w}) b WHERE {m}").format(
                    a=a.ident(), k=klist, t=t.ident(), w=where, m=match),
                    [*(last or []), *(upper or [])])
                total += max(cur.rowcount, 0)
                last = upper or last
                self.conn.execute(
                    "UPDATE table_migration.migration_state SET checkpoint = checkpoint ||"
                    " jsonb_build_object('prune_last', %s::jsonb, 'prune_done', %s),"
                    " updated_at = now() WHERE table_name = %s",
                    (_json(last), bound is None, self.table))
            if bound is None:
                break
        return total

    def _type_of(self, table: QualifiedName, column: str) -> str:
        row = self.conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attname = %s", (str(table), column)).fetchone()
        assert row is not None
        return str(row[0])

    def rollback(self) -> str:
        """Undo the migration from whatever state it is in; returns what was done."""
        m = self._state()
        if not m or m["state"] in ("rolled_back",):
            return "nothing to roll back"
        if m["state"] == "cleaned":
            raise InputError(f"{self.table} was cleaned up after approval; the original is gone",
                             "restore from the backup (RB-3 full rollback)")
        self._lock(int(m["table_oid"]))
        s = self._settings()
        t = QualifiedName(m["schema_name"], m["original_name"])
        if m["state"] == "pruned" or (m["checkpoint"] or {}).get("prune_started"):
            self._unprune(m, s)
            m = self._state() or m
        if m["state"] == "swapped":
            self.swap_result = swap_back(self.ex, m, lock_timeout=s.lock_timeout,
                                         attempts=s.swap_max_attempts,
                                         statement_timeout=s.swap_statement_timeout,
                                         long_xact_seconds=s.long_transaction_seconds)
            validate_foreign_keys(self.ex, self.swap_result.record.get("foreign_keys", []))
            return "swapped back"
        new = QualifiedName(m["schema_name"], m["new_name"])

        def drop(_locked_at: float) -> dict[str, Any]:
            self.ex.run(drop_trigger_sql(t, CAPTURE_TRIGGER))
            self.ex.run(drop_trigger_sql(t, GUARD_TRIGGER))
            self.ex.run(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
                QualifiedName("table_migration", f"capture_{m['table_oid']}").ident()))
            self.ex.run(sql.SQL("DROP TABLE IF EXISTS {}").format(new.ident()))
            if m["archive_mode"] == "copy":
                self.ex.run(sql.SQL("DROP TABLE IF EXISTS {}").format(
                    QualifiedName(m["schema_name"], m["archive_name"]).ident()))
            state.update(self.conn, self.table, state="rolled_back")
            state.log(self.conn, self.table, "rollback", "capture removed")
            return {}

        with_lock_retries(self.conn, f"rollback of {t}", [t], drop, lock_timeout=s.lock_timeout,
                          attempts=s.swap_max_attempts)
        return "capture removed, new table dropped"

    def _unprune(self, m: dict[str, Any], s: Settings) -> None:
        """After prune: finish the prune, refuse on key collisions, mirror again and copy
        T's rows back into A; A is then complete and the swap can be undone."""
        t = QualifiedName(m["schema_name"], m["original_name"])
        a = state.old_table(m)
        if m["archive_mode"] == "copy":
            raise TablemigError(
                f"{t} was pruned in archive mode copy: the original stopped following the live table",
                f"restore by hand: the original (complete up to the prune) is {a}; rows written since are "
                f"in {t}; or restore from the PRE-2.1 backup (RB-3)")
        if m["state"] != "pruned":
            self.prune()  # an interrupted prune is finished first: then A holds history only
        key = sql.SQL(", ").join(map(sql.Identifier, m["key_columns"]))
        clash = self.conn.execute(sql.SQL(
            "SELECT {k} FROM {t} JOIN {a} USING ({k}) LIMIT 10").format(
            k=key, t=t.ident(), a=a.ident())).fetchall() if m["archive_mode"] == "rename" else []
        if clash:
            raise TablemigError(
                f"cannot roll back {t}: keys written after the prune also exist in the archive "
                f"{a} (e.g. {clash[:3]}); the original's key cannot hold both",
                "decide which row wins for each such key, delete the other, then rerun rollback")
        plan = self._plan or self.plan_for_state(m)
        info = plan.info
        fn = QualifiedName("table_migration", f"mirror_{m['table_oid']}")

        def mirror(_locked_at: float) -> dict[str, Any]:
            self.ex.run(sync_function_sql(info, fn, "mirror", a))
            for stmt in trigger_sql(t, MIRROR_TRIGGER, fn):
                self.ex.run(stmt)
            self.ex.run(truncate_guard_sql(t))
            return {}

        with_lock_retries(self.conn, f"restore mirror on {t}", [t], mirror,
                          lock_timeout=s.lock_timeout, attempts=s.swap_max_attempts,
                          mode="SHARE ROW EXCLUSIVE")
        if m["archive_mode"] == "rename":
            types = {c.name: c.type for c in info.columns}
            # no verify pass follows this copy, so it locks the rows it reads: a writer
            # changing one of them waits for the batch, then the mirror trigger sees the copy
            job = CopyJob(t, a, plan.columns, list(m["key_columns"]),
                          [types[k] for k in m["key_columns"]], None, "", "", plan.overriding,
                          list(m["key_columns"]), lock_rows=True)
            with self.conn.transaction():
                self.conn.execute(
                    "UPDATE table_migration.migration_state SET checkpoint = checkpoint - 'unprune'"
                    " WHERE table_name = %s", (self.table,))
            BatchCopier(self.dsn, job, self.table, "unprune", batch_size=m["batch_size"],
                        throttle=self.throttle, progress=self.progress).run(self.conn, {})
        with self.conn.transaction():
            state.update(self.conn, self.table, state="swapped")
            self.conn.execute("UPDATE table_migration.migration_state SET checkpoint = checkpoint"
                              " - 'prune_started' - 'prune_last' - 'prune_done' WHERE table_name = %s",
                              (self.table,))
            state.log(self.conn, self.table, "rollback", "archive made complete again")

    def plan_for_state(self, m: dict[str, Any]) -> TablePlan:
        """A plan for the live table as it is after the swap (used by the restore path)."""
        from .catalog import inspect_table

        live = QualifiedName(m["schema_name"], m["original_name"])
        info = inspect_table(self.conn, live, list(m["key_columns"]))
        return TablePlan(self.spec, info, live, QualifiedName(m["schema_name"], m["new_name"]),
                         QualifiedName(m["schema_name"], m["archive_name"]), None,
                         m["date_column"], m["date_type"], m["cutoff"], 0, 0, 0, 0, False)

    def cleanup(self, approved_by: str) -> list[str]:
        """After recorded business approval: drop what only served the migration (the
        kept original in copy mode). The archive stays: it is the history."""
        if not approved_by.strip():
            raise InputError("cleanup needs a recorded approval", "pass --approved-by NAME")
        m = self._require("pruned", "cleaned")
        dropped: list[str] = []
        with self.conn.transaction():
            if m["archive_mode"] == "copy" and m["backup_name"]:
                b = QualifiedName(m["schema_name"], m["backup_name"])
                self.ex.run(sql.SQL("DROP TABLE IF EXISTS {}").format(b.ident()))
                dropped.append(str(b))
            backups = [r[0] for r in self.conn.execute(
                "SELECT DISTINCT details->>'file' FROM table_migration.migration_log"
                " WHERE table_name = %s AND operation = 'backup'", (self.table,)).fetchall() if r[0]]
            removed = _remove_backups(backups)
            state.update(self.conn, self.table, state="cleaned")
            state.log(self.conn, self.table, "cleanup", "done",
                      details={"approved_by": approved_by, "dropped": dropped, "backups_removed": removed})
        return dropped + removed


def _remove_backups(files: list[str]) -> list[str]:
    """The PRE-2.1 dumps of this table (and their checksum files), where they are local."""
    from pathlib import Path

    removed = []
    for f in files:
        p = Path(f)
        if p.exists():
            p.unlink()
            removed.append(str(p))
            if not list(p.parent.glob("*.dump")):  # the last dump of that backup: its manifests too
                for extra in (p.parent / "SHA256SUMS", p.parent / "checksums.json"):
                    extra.unlink(missing_ok=True)
    return removed


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


__all__ = ["Migration", "Settings", "VerifyResult", "TRIGGER_PREFIX", "connect"]
