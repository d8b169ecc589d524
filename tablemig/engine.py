"""The migration of one table through its states, driven by the plan module and the CLI.

    planned -> capturing -> backfilling -> indexed -> verified -> swapped -> pruned -> cleaned
    any state before cleaned --rollback--> rolled_back

Every step reads the state row, does its work, and records the new state in the same
transaction as the work (or, for statements that cannot run in a transaction such as
CREATE INDEX CONCURRENTLY, makes the work idempotent). Rerunning resumes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from . import state
from .after_swap import AfterSwap
from .backfill import BatchCopier, CopyJob, Progress, Throttle
from .db import connect
from .errors import InputError, TablemigError
from .executor import Executor, Recorder
from .logical import Subscriber
from .names import QualifiedName
from .planner import TablePlan, build_plan, missing_privileges
from .reconcile import Reconciler, Segment, Side
from .schema import install_schema, installed_version
from .settings import Settings
from .spec import TableSpec
from .structure import (
    TRIGGER_PREFIX,
    create_table_sql,
    index_sql,
    secondary_indexes,
    sync_function_sql,
    temp_index_name,
    trigger_sql,
    truncate_guard_sql,
)
from .swap import (
    CAPTURE_TRIGGER,
    SwapResult,
    swap,
    validate_foreign_keys,
    with_lock_retries,
)


@dataclass
class VerifyResult:
    segments: list[Segment]
    repaired: int
    rounds: int
    history_segments: list[Segment] = field(default_factory=list)

    @property
    def match(self) -> bool:
        return all(s.match for s in self.segments + self.history_segments)


class Migration(AfterSwap):
    """One table's migration on the active site."""

    def __init__(self, dsn: str, spec: TableSpec, *, recorder: Recorder | None = None,
                 throttle: Throttle | None = None, progress: Progress | None = None,
                 plan_name: str | None = None, subscribers: Sequence[str] = (),
                 **setting_overrides: Any) -> None:
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
        # logical subscribers of the active site (tablemig.logical); physical standbys need nothing
        self.subscribers = [Subscriber(d, dsn, recorder=self.recorder) for d in subscribers]

    # -- plumbing -------------------------------------------------------------------------
    def close(self) -> None:
        for sub in self.subscribers:
            sub.close()
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
        self.resolve_subscribers()
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
        for sub in self.subscribers:  # refusals before anything changes
            sub.link(self.conn, plan.original)
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
            if m["state"] == "capturing":
                self._attach_subscribers()  # an interrupted attach is finished
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
        self._attach_subscribers()
        self._timed("capture", t0)

    def _attach_subscribers(self) -> None:
        m = self._state()
        for sub in self.subscribers:
            if m is None:
                return
            done = sub.attach(self.ex, m)
            with self.conn.transaction():
                state.log(self.conn, self.table, "capture", "subscriber attached", details=done)

    def resolve_subscribers(self) -> list[str]:
        """Settle a swap left prepared on a subscriber by a crash (see tablemig.logical)."""
        m = self._state()
        done: list[str] = []
        for sub in self.subscribers:
            if m is not None:
                sub.link(self.conn, QualifiedName(m["schema_name"], m["original_name"]))
                done += sub.resolve(m)
        if done:
            with self.conn.transaction():
                state.log(self.conn, self.table, "swap", "subscriber resolved", details={"done": done})
        return done

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
        for sub in self.subscribers:  # caught up before the locks: the barrier under them is short
            t = QualifiedName(m["schema_name"], m["original_name"])
            sub.link(self.conn, t)
            sub.wait_ready([QualifiedName(m["schema_name"], m["new_name"])])
            sub.barrier()
        self.swap_result = swap(self.ex, m, lock_timeout=s.lock_timeout,
                                attempts=s.swap_max_attempts,
                                statement_timeout=s.swap_statement_timeout,
                                long_xact_seconds=s.long_transaction_seconds,
                                peers=self.subscribers)
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
        for sub in self.subscribers:
            sub.link(self.conn, QualifiedName(m["schema_name"], m["original_name"]))
            done += [f"subscriber: {fk}" for fk in sub.validate_foreign_keys(m)]
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


__all__ = ["Migration", "Settings", "VerifyResult", "TRIGGER_PREFIX", "connect"]
