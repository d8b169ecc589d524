"""The migration of one table through its states, driven by the plan module and the CLI.

    planned -> capturing -> backfilling -> indexed -> verified -> swapped -> pruned -> cleaned
    any state before cleaned --rollback--> rolled_back

capture creates the bare new table N (no key, no index) and a trigger on T that logs the
keys of written rows to a change log; backfill bulk-loads T[D >= C] into N in a few large
chunks; index builds N's key and secondary indexes with plain CREATE INDEX (only the
harness writes N); verify first replays the change log into N and, in one short locked
transaction, switches the trigger to direct capture (it then keeps N equal itself; see
tablemig/lifecycle/replay.py), then compares checksums. Every step reads the state row, does its
work, and records the new state in the same transaction as the work (or makes the work
idempotent). Rerunning resumes.

This module holds the plumbing, capture, backfill and swap; the index step is in
`tablemig.lifecycle.index`, the replay and verify in `tablemig.lifecycle.verify`, prune, rollback
and cleanup in `tablemig.lifecycle.after_swap` (mixins of `Migration`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from ..config.settings import Settings
from ..config.spec import TableSpec
from ..errors import InputError, TablemigError
from ..pg.connect import connect, database_timezone
from ..pg.locking import blockers, with_lock_retries
from ..pg.names import QualifiedName
from ..pg.schema import install_schema, installed_version
from . import state
from .after_swap import AfterSwap
from .backfill import ChunkLoader, CopyJob, Progress, Throttle
from .executor import Executor, Recorder
from .failures import records_failure
from .families import references
from .index import IndexBuild
from .logical import Subscriber
from .orphan_guard import arm, disarm
from .pacing import Pacer
from .planner import TablePlan, build_plan, missing_privileges
from .structure import (
    TRIGGER_PREFIX,
    change_log_name,
    change_log_sql,
    create_table_sql,
    sync_function_sql,
    trigger_sql,
    truncate_guard_sql,
)
from .swap import CAPTURE_TRIGGER, SwapResult, swap, validate_foreign_keys
from .verify import Verification, VerifyResult

log = logging.getLogger("tablemig.migration")
# the phases logged as they start and end, in the words `tablemig status` uses
PHASE_WORDS = {"capture": "capture", "backfill": "backfill", "index": "index build",
               "replay": "replay", "verify": "verify", "swap": "swap", "validate_fks": "foreign key validation",
               "prune": "prune"}


class Migration(IndexBuild, Verification, AfterSwap):
    """One table's migration on the active site."""

    # Below `parallel_min_rows` rows kept, more connections cost more than they save (a
    # fresh backend's start and cold caches cost more than a second core saves): the
    # indexes are built one after the other and the new tables analyzed in the index
    # step's transaction, and verify reads both sides with one statement, all on the
    # harness's connection. Larger tables build several indexes at once, ANALYZE in the
    # background (overlapping the replay and verify) and verify both sides at once on two
    # connections. Below
    # `segment_min_rows` verify compares the table as one segment.
    parallel_min_rows = 200_000
    segment_min_rows = 50_000

    def __init__(self, dsn: str, spec: TableSpec, *, recorder: Recorder | None = None,
                 throttle: Throttle | None = None, progress: Progress | None = None,
                 plan_name: str | None = None, subscribers: Sequence[str] = (),
                 **setting_overrides: Any) -> None:
        self.dsn = dsn
        self.spec = spec
        self.recorder = recorder or Recorder()
        self.throttle = throttle
        # the write guard and the nice ratio (tablemig.lifecycle.pacing): from migration_config, or
        # fixed by an override
        self.pacer = Pacer(dsn, setting_overrides.get("nice_ratio"), setting_overrides.get("app_write_share"),
                           label=str(spec.qualified))
        self.progress = progress
        self.plan_name = plan_name
        self.overrides = setting_overrides
        # The harness's own transactions need not wait for a WAL flush: a server crash can
        # lose only the last of them, all later ones with them (commits are in WAL order),
        # and the rerun resumes from the state that survived. The swap and swap back commit
        # durably (with_lock_retries(durable=True)).
        self.conn = connect(dsn, settings={"synchronous_commit": "off"}, prepare_threshold=None)
        self.ex = Executor(self.conn, recorder=self.recorder)
        self.timings: dict[str, float] = {}
        self.swap_result: SwapResult | None = None
        self.verify_result: VerifyResult | None = None
        self.backfill_samples: list[dict[str, Any]] = []
        self._locked_oid: int | None = None
        self._plan: TablePlan | None = None
        # logical subscribers of the active site (tablemig.lifecycle.logical); physical standbys need nothing
        self.subscribers = [Subscriber(d, dsn, recorder=self.recorder) for d in subscribers]
        self.switch_lock_hold_ms: float | None = None
        self._schema_seen = False
        self._timezone: str | None = None
        # ANALYZE of the new tables, started in the background once their indexes are built
        # (verify waits for it)
        self._stats_ready = False
        self._analyze: threading.Thread | None = None
        self._analyze_error: BaseException | None = None

    # -- plumbing -------------------------------------------------------------------------
    def close(self) -> None:
        if self._analyze is not None:
            self._analyze.join()
        for sub in self.subscribers:
            sub.close()
        self.pacer.close()
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
        self._plan = build_plan(self.conn, self.spec, timezone=self.database_timezone)
        return self._plan

    @property
    def last_plan(self) -> TablePlan | None:
        """The plan this migration made last (None before any)."""
        return self._plan

    def database_timezone(self) -> str:
        """The database's own TimeZone (tablemig.pg.cutoff), asked once."""
        if self._timezone is None:
            self._timezone = database_timezone(self.dsn)
        return self._timezone

    def _settings(self) -> Settings:
        return Settings.load(self.conn, **self.overrides)

    def _state(self) -> dict[str, Any] | None:
        if not self._schema_seen:  # once there, the schema stays for this run: one query less per step
            if installed_version(self.conn) is None:
                return None
            self._schema_seen = True
        return state.load(self.conn, self.table)

    def _lock(self, oid: int) -> None:
        if self._locked_oid is None:
            state.acquire_table_lock(self.conn, oid, self.table)
            self._locked_oid = oid

    def _small(self, m: dict[str, Any], plan: TablePlan) -> bool:
        """Fewer rows to build than `parallel_min_rows`: one connection does all the work."""
        rows = (plan.keep_rows or 0) + (plan.archive_rows if m["archive_mode"] == "copy" else 0)
        return rows < self.parallel_min_rows

    def _begin(self, phase: str) -> float:
        """Log the start of a phase; its clock (for `_timed`)."""
        log.info("%s: %s: started", self.table, PHASE_WORDS.get(phase, phase))
        return time.perf_counter()

    def _timed(self, name: str, t0: float) -> None:
        took = time.perf_counter() - t0
        self.timings[name] = round(self.timings.get(name, 0) + took, 3)
        if name in PHASE_WORDS:
            log.info("%s: %s: done in %.2f s", self.table, PHASE_WORDS[name], took)

    def _settle(self, *, between_steps: bool = True) -> float:
        """The write guard's rest, if the application is owed one; between steps it is
        timed as `rest` (rests within a step are part of its time). Returns the seconds."""
        t0 = time.perf_counter()
        self.pacer.settle(self.conn)
        took = time.perf_counter() - t0
        if took > 0.001 and between_steps:
            self._timed("rest", t0)
        return took

    # -- steps ----------------------------------------------------------------------------
    def run(self, until: str = "swapped") -> dict[str, Any]:
        """Run every step up to and including `until` (a state name); resumes."""
        order = ["capturing", "backfilling", "indexed", "verified", "swapped"]
        if until not in order:
            raise InputError(f"unknown target state {until!r}", f"use one of {', '.join(order)}")
        self.capture()
        self.resolve_subscribers()
        steps: dict[str, Callable[[], object]] = {"backfilling": self.backfill, "indexed": self.build_indexes,
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

    @records_failure("capture")
    def capture(self) -> None:
        """Install the schema, create N (and A in copy mode) and the capture trigger."""
        t0 = time.perf_counter()
        self.recorder.step = self.recorder.step or "capture"
        # Plan (which validates every input) before anything is installed: bad input changes nothing.
        # Planning is read-only and is done (and timed) apart from the migration core.
        plan = self._plan if self._plan and self._plan.resumed_state is None else self.plan()
        # the trigger function is rendered while planning: a template error shows before
        # anything is installed, and its rendering is not part of the capture
        log_function = sync_function_sql(plan.info, plan.function_name("capture"), "log",
                                         change_log_name(plan.info.oid), search_path=plan.search_path)
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
        # the table lock is keyed by the original's OID, which after the swap is the archive's
        m = self._state()
        under_way = m is not None and m["state"] not in ("rolled_back", "cleaned")
        self._lock(int(m["table_oid"]) if m is not None and under_way else plan.info.oid)
        t0 = time.perf_counter()
        m = self._state()
        if m and m["state"] not in ("rolled_back", "cleaned"):
            if m["plan_name"] and self.plan_name and m["plan_name"] != self.plan_name:
                raise InputError(f"{self.table} is mid-migration (state {m['state']}) by plan {m['plan_name']!r}",
                                 "finish or roll back that plan first "
                                 f"(tablemig rollback --execute --table {self.table})")
            found = self.conn.execute("SELECT to_regclass(%s)::oid", (str(state.old_table(m)),)).fetchone() \
                if plan.swapped else (plan.info.oid,)
            original_oid = found[0] if found else None
            if m["table_oid"] != original_oid:
                raise InputError(f"state of {self.table} belongs to another table (oid "
                                 f"{m['table_oid']})", "inspect table_migration.migration_state")
            return  # resuming: capture is already in place
        log.info("%s: capture: started", self.table)
        info = plan.info
        capture_fn = plan.function_name("capture")
        # every statement is composed before the lock is taken: the lock is held only while
        # they run. N (and H) bare: the key and the indexes are built after the load; the
        # trigger logs changed keys until the replay switches it to direct capture.
        change_log = change_log_name(info.oid)
        ddl: list[sql.Composable] = list(create_table_sql(info, plan.new, user, with_key=False))
        if self.spec.archive_mode == "copy":
            ddl.extend(create_table_sql(info, plan.archive, user, tag="h", with_key=False))
        ddl.append(change_log_sql(info, change_log))
        ddl.append(log_function)
        ddl.extend(trigger_sql(plan.original, CAPTURE_TRIGGER, capture_fn))
        ddl.append(truncate_guard_sql(plan.original))

        def body(_locked_at: float) -> dict[str, Any]:
            # three round trips under the lock: the state row, the DDL, the records
            with self.conn.pipeline():
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
            with self.ex.batched():
                for stmt in ddl:
                    self.ex.run(stmt)
            with self.conn.pipeline():
                self.conn.execute(
                    "INSERT INTO table_migration.replication_control (table_name, replication_enabled,"
                    " notes) VALUES (%s, false, 'migration in progress: capture installed')"
                    " ON CONFLICT (table_name) DO UPDATE SET replication_enabled = false,"
                    " notes = EXCLUDED.notes", (self.table,))
                state.log(self.conn, self.table, "capture", "installed",
                          details={"new_table": str(plan.new), "cutoff": plan.cutoff,
                                   "change_log": str(change_log)})
            return {}

        s = self._settings()
        # CREATE TRIGGER takes SHARE ROW EXCLUSIVE: it waits for running writers and blocks
        # new ones while waiting, so it gets the same bounded lock_timeout as the swap.
        try:
            with_lock_retries(self.conn, f"capture on {self.table}", [plan.original], body,
                              mode="SHARE ROW EXCLUSIVE", **s.lock_options())
        except psycopg.errors.InsufficientPrivilege as exc:
            raise InputError(
                f"the role {user} lacks a privilege: {exc.diag.message_primary}; nothing was changed",
                "run as the table's owner (or a member of the owner role) with CREATE on its schema; "
                "see README, Least privilege") from None
        self._timed("capture", t0)

    def _attach_subscribers(self) -> None:
        """Logical subscribers get N once it has its key (before the replay: its updates and
        deletes need a replica identity); idempotent. See tablemig.lifecycle.logical."""
        if not self.subscribers:
            return
        m = self._state()
        if m is None:
            return
        for sub in self.subscribers:
            done = sub.attach(self.ex, m)
            with self.conn.transaction():
                state.log(self.conn, self.table, "replay", "subscriber attached", details=done)

    def resolve_subscribers(self) -> list[str]:
        """Settle a swap left prepared on a subscriber by a crash (see tablemig.lifecycle.logical)."""
        if not self.subscribers:
            return []
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
        recent = CopyJob(plan.original, new, plan.columns, plan.order_columns,
                         [types[c] for c in plan.order_columns], plan.date_column,
                         plan.date_type, m["cutoff"], plan.overriding, plan.key)
        jobs: list[tuple[str, CopyJob, int | None]] = [("backfill", recent, plan.keep_rows)]
        if m["archive_mode"] == "copy":
            arch = QualifiedName(m["schema_name"], m["archive_name"])
            jobs.append(("backfill_history", CopyJob(
                plan.original, arch, plan.columns, plan.key, [types[c] for c in plan.key],
                plan.date_column, plan.date_type, m["cutoff"], plan.overriding, plan.key,
                history=True), plan.archive_rows))
        return jobs

    @records_failure("backfill")
    def backfill(self) -> None:
        """Bulk load T[D >= C] into the bare N (and, copy mode, the rest into H) in a few
        large chunks (see tablemig/lifecycle/backfill.py, ChunkLoader)."""
        t0 = self._begin("backfill")
        m = self._require("capturing", "backfilling")
        self._require_change_log(m, "loading")
        moved: list[bool] = [] if m["state"] == "capturing" else [True]

        def advance(conn: psycopg.Connection[Any]) -> None:
            state.update(conn, self.table, state="backfilling")
            moved.append(True)

        plan = self._plan or self.plan()
        self.pacer.start(self.conn, self._settings())
        types = {c.name: c.type for c in plan.info.columns}
        for i, (key, job, expected) in enumerate(self._jobs(m)):
            if i:  # the checkpoint as the job before left it
                m = self._state() or m
            split = plan.date_column if plan.order_by_date and not job.history else plan.key[0]
            loader = ChunkLoader(self.dsn, job, self.table, key, split=split,
                                 split_type=plan.date_type if split == plan.date_column else types[split],
                                 min_chunk_rows=max(m["batch_size"], 1), workers=self.spec.workers,
                                 throttle=self.throttle, progress=self.progress,
                                 expected_rows=expected, pace=self.pacer)
            # the state moves on in the transaction that saves the first chunk plan
            stats = loader.run(self.conn, dict(m["checkpoint"] or {}), on_plan=None if moved else advance)
            if not moved:  # the plan was saved by an earlier run
                with self.conn.transaction():
                    advance(self.conn)
            self.backfill_samples.extend(stats.samples)
            state.log(self.conn, self.table, key, "done", rows=stats.rows,
                      duration_ms=stats.seconds * 1000,
                      details={"batches": stats.batches, "workers": self.spec.workers, "split": split})
        self._timed("backfill", t0)

    @records_failure("swap")
    def swap(self) -> SwapResult:
        m = self._require("verified", "swapped")
        if m["state"] == "swapped":
            return self.swap_result or SwapResult(m["swap_attempts"], float(m["lock_hold_ms"] or 0),
                                                  str(m["swap_lsn"]), m["swap_record"] or {})
        t0 = self._begin("swap")
        s = self._settings()
        plan = self._plan or self.plan()
        refs = references(self.conn, int(m["table_oid"]))
        guard = arm(self.ex, m, plan, refs, s) if refs else None
        try:
            for sub in self.subscribers:  # caught up before the locks: the barrier under them is short
                t = QualifiedName(m["schema_name"], m["original_name"])
                sub.link(self.conn, t)
                sub.wait_ready([QualifiedName(m["schema_name"], m["new_name"])])
                sub.barrier()
            self.swap_result = swap(self.ex, m, peers=self.subscribers, search_path=plan.search_path,
                                    guard=guard, **s.swap_options())
        except BaseException:
            if guard is not None:
                disarm(self.ex, m, plan, refs, s)
            raise
        self._timed("swap", t0)
        last = self.swap_result.attempt_log[-1] if self.swap_result.attempt_log else None
        if last is not None and not last["blockers"]:
            # for the audit: old transactions seen right after (asked after the swap, so the
            # query's milliseconds stay out of the swap)
            last["blockers"] = blockers(self.conn, [QualifiedName(m["schema_name"], m["original_name"])],
                                        s.long_transaction_seconds)
        return self.swap_result

    @records_failure("validate_fks")
    def validate_foreign_keys(self) -> list[str]:
        """VALIDATE the re-pointed foreign keys (after the swap; idempotent)."""
        t0 = self._begin("validate_fks")
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
