"""The verify step: the replay of the change log, the switch to direct capture, the
background ANALYZE of the new table and the checksum comparison of both sides. A mixin of
`tablemig.lifecycle.driver.Migration`, which provides the connection, the state row and the step
plumbing used here."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from ..config.settings import Settings
from ..errors import TablemigError
from ..pg.connect import connect
from ..pg.locking import with_lock_retries
from ..pg.names import QualifiedName
from ..pg.reconcile import Reconciler, Segment, Side
from . import state
from .backfill import wait_while_paused
from .executor import Executor
from .failures import records_failure
from .planner import TablePlan
from .replay import Replayer, Target, log_exists
from .step_host import StepHost
from .structure import change_log_name, deferred_names, sync_function_sql

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .families import Reference


SETTLE_ROUNDS = 5  # write guard: rests in the replay, each followed by a drain of what it logged


@dataclass
class VerifyResult:
    segments: list[Segment]
    repaired: int
    rounds: int
    history_segments: list[Segment] = field(default_factory=list)

    @property
    def match(self) -> bool:
        return all(s.match for s in self.segments + self.history_segments)


class Verification(StepHost):
    """The replay and verify steps of a migration."""

    verify_result: VerifyResult | None
    switch_lock_hold_ms: float | None
    _stats_ready: bool
    _analyze: threading.Thread | None
    _analyze_error: BaseException | None
    _attach_subscribers: Callable[[], None]

    def _replayer(self, m: dict[str, Any], plan: TablePlan, s: Settings) -> Replayer:
        targets = [Target(table, history=tag == "h") for table, tag in state.new_tables(m)]
        return Replayer(plan.original, change_log_name(int(m["table_oid"])), targets,
                        list(m["key_columns"]), plan.columns, m["date_column"], m["date_type"],
                        m["cutoff"], plan.overriding, limit=s.replay_batch, switch_below=s.switch_below)

    def replay(self, settings: Settings | None = None) -> None:
        """Drain the change log into N while writes continue, then switch the trigger to
        direct capture in one short transaction that locks out T's writers (see
        tablemig/lifecycle/replay.py). Idempotent: nothing to do once the log is gone."""
        t0 = self._begin("replay")
        m = self._require("indexed", "verified")
        self._attach_subscribers()
        log = change_log_name(int(m["table_oid"]))
        if (m["checkpoint"] or {}).get("switched") or not log_exists(self.conn, log):
            return  # switched by an earlier run (the log is dropped by the swap)
        plan = self._plan or self.plan()
        s = settings or self._settings()
        rep = self._replayer(m, plan, s)

        # not paced (nice_ratio): the replay's work follows the application's write rate,
        # and slowing it down only lengthens the capture and the switch's final batch
        def pause() -> None:
            wait_while_paused(self.conn, self.table)
            if self.throttle:
                self.throttle()

        replayed, rounds = rep.drain(self.conn, pause=pause, flush=self.throttle is not None)
        # The write guard settles its debt here, while the trigger only logs keys (its
        # cheapest mode), and the log that grew meanwhile is drained again: a rest after the
        # switch would cost the application the direct capture's second write of every row,
        # so verify's checksums and the swap follow the switch without rests.
        for _ in range(SETTLE_ROUNDS):
            if self._settle(between_steps=False) < 0.05:
                break
            more, batches = rep.drain(self.conn, pause=pause, flush=self.throttle is not None)
            replayed, rounds = replayed + more, rounds + batches
        final: dict[str, int] = {}
        # rendered before the lock: the lock is held only while statements run
        direct = direct_capture_sql(m, plan)

        def switch(_locked_at: float) -> dict[str, Any]:
            final["rows"] = rep.batch(self.conn, None)
            self.ex.run(direct)
            # the emptied log stays until the swap drops it: a DROP here would make this
            # commit wait for a WAL flush (a transaction that drops files always does)
            self.conn.execute("UPDATE table_migration.migration_state SET checkpoint = checkpoint"
                              " || '{\"switched\": true}'::jsonb WHERE table_name = %s", (self.table,))
            return {}

        result, attempts, _ = with_lock_retries(
            self.conn, f"switch to direct capture on {self.table}", [plan.original], switch,
            mode="SHARE ROW EXCLUSIVE", **s.lock_options())
        state.log(self.conn, self.table, "replay", "switched",
                  rows=replayed + final.get("rows", 0), duration_ms=(time.perf_counter() - t0) * 1000,
                  details={"batches": rounds, "replayed_under_lock": final.get("rows", 0),
                           "lock_hold_ms": result.get("lock_hold_ms"), "attempts": attempts})
        self.switch_lock_hold_ms = result.get("lock_hold_ms")
        self._timed("replay", t0)

    def _analyze_now(self, m: dict[str, Any]) -> None:
        """ANALYZE the new tables on the harness's connection (a small table's, in the
        index step's transaction: its statistics commit with its indexes)."""
        for table, _ in state.new_tables(m):
            self.ex.run(sql.SQL("ANALYZE {}").format(table.ident()))
        self._stats_ready = True

    def _analyze_in_background(self, m: dict[str, Any]) -> None:
        """ANALYZE the new tables (the planner needs their statistics from the swap on) on
        another connection, started as soon as their indexes exist (an expression index
        gets its statistics too): it overlaps the replay and verify's checksums (ANALYZE's
        SHARE UPDATE EXCLUSIVE lets both go on) and takes no time of its own in the core.
        verify waits for it. A small table is analyzed by the index step (_analyze_now)."""
        if self._analyze is not None or self._stats_ready:
            return
        tables = [table for table, _ in state.new_tables(m)]
        self._analyze_error = None

        def run() -> None:
            try:
                with connect(self.dsn, application_name="tablemig-analyze") as c:
                    ex = Executor(c, recorder=self.recorder)
                    for t in tables:
                        ex.run(sql.SQL("ANALYZE {}").format(t.ident()))
            except BaseException as exc:  # noqa: BLE001 - re-raised by verify
                self._analyze_error = exc

        self._analyze = threading.Thread(target=run, daemon=True)
        self._analyze.start()

    def _analyzed(self) -> None:
        """Wait for the background ANALYZE; its error, if any, is verify's."""
        if self._analyze is not None:
            self._analyze.join()
            self._analyze = None
            self._stats_ready = self._analyze_error is None
        if self._analyze_error is not None:
            error, self._analyze_error = self._analyze_error, None
            raise error

    def _reconciler(self, plan: TablePlan) -> Reconciler:
        types = {c.name: c.type for c in plan.info.columns}
        return Reconciler(plan.key, [types[k] for k in plan.key],
                          [c.name for c in plan.info.columns], plan.columns)

    def _compare(self, m: dict[str, Any], s: Settings, max_rounds: int,
                 peer: psycopg.Connection[Any] | None) -> tuple[int, list[list[Segment]]]:
        """Checksums of each (source, target) pair, repairing differing rows for up to
        `max_rounds` rounds; returns the rows repaired and each pair's last segments."""
        plan = self._plan or self.plan()
        rec = self._reconciler(plan)
        src = Side(plan.original, plan.date_column, plan.date_type, m["cutoff"])
        dst = Side(QualifiedName(m["schema_name"], m["new_name"]))
        pairs = [(src, dst)]
        if m["archive_mode"] == "copy":
            pairs.append((Side(plan.original, plan.date_column, plan.date_type, m["cutoff"],
                               negate=True), Side(QualifiedName(m["schema_name"],
                                                                m["archive_name"]))))
        repaired, results = 0, []
        for source, target in pairs:
            # a small table is one segment (a repair joins it whole, cheaply); a large one is
            # cut at its key's histogram when it has one (no scan of the key)
            rows = plan.keep_rows if target is dst else plan.archive_rows
            bounds = ([] if (rows or 0) < self.segment_min_rows else
                      rec.stats_boundaries(self.conn, target, s.verify_segments)
                      or rec.boundaries(self.conn, target, s.verify_segments))
            segs: list[Segment] = []
            for round_ in range(1, max_rounds + 1):
                segs = rec.checksums(self.conn, {"original": source, "new": target}, bounds, peer=peer)
                bad = [x for x in segs if not x.match]
                if not bad:
                    break
                for seg in bad:
                    keys = rec.differing_keys(self.conn, source, target, seg)
                    repaired += rec.repair(self.conn, source, target, keys, plan.overriding)
                if round_ == max_rounds:
                    segs = rec.checksums(self.conn, {"original": source, "new": target}, bounds, peer=peer)
            results.append(segs)
        return repaired, results

    @records_failure("verify")
    def verify(self, max_rounds: int = 3) -> VerifyResult:
        """Segment checksums of T[D >= C] against N; differing rows are repaired from T.
        First replays the change log and switches to direct capture (`replay`), so that
        from here on the trigger keeps N equal and both sides can be read in one snapshot.
        On a large table the two sides are summed at once on two connections sharing one
        snapshot; a small or paced one reads both with one statement on one connection."""
        m0 = self._require("indexed", "verified")
        s = self._settings()
        small = self._small(m0, self._plan or self.plan())
        # normally done by build_indexes; done here when the indexes were built by an
        # earlier run
        if not small:
            self._analyze_in_background(m0)
        elif not self._stats_ready:
            self._analyze_now(m0)
        # the write guard: the application gets its share back before the replay (and during
        # it, see replay())
        self._settle()
        # the second reader's connection opens while the replay runs; a small table, and a
        # paced migration (nice_ratio, or the write guard while the application writes), are
        # read by one statement on one connection
        with contextlib.ExitStack() as stack:
            pending: Future[psycopg.Connection[Any]] | None = None
            if not small and not self.pacer.paced:
                opening = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tablemig-verify")
                pending = opening.submit(connect, self.dsn, application_name="tablemig-verify")
                opening.shutdown(wait=False)
                stack.callback(_close_when_open, pending)
            try:
                self.replay(s)
                t0 = self._begin("verify")
                repaired, results = self._compare(m0, s, max_rounds, pending.result() if pending else None)
            except BaseException:
                with contextlib.suppress(BaseException):  # the first error is the one reported
                    self._analyzed()
                raise
        self._analyzed()
        result = VerifyResult(results[0], repaired, len(results),
                              results[1] if len(results) > 1 else [])
        self.verify_result = result
        if not result.match:
            state.log(self.conn, self.table, "verify", "mismatch", rows=repaired)
            raise TablemigError(f"verify of {self.table}: segments still differ after "
                                f"{max_rounds} repair rounds",
                                "check for writes bypassing the trigger (session_replication_role"
                                " = replica?) and rerun")
        state.advance(self.conn, self.table, "verify", "match", rows=repaired, state="verified",
                      details={"segments": len(result.segments), "repaired_rows": repaired})
        self._timed("verify", t0)
        return result


def direct_capture_sql(m: dict[str, Any], plan: TablePlan, *, family: QualifiedName | None = None,
                       refs: Sequence[Reference] = ()) -> sql.SQL:
    """The capture function in direct mode (it keeps N, and H, equal itself); with `family`
    it also feeds the swap step's orphan check (tablemig.lifecycle.families)."""
    history = (QualifiedName(m["schema_name"], m["archive_name"]) if m["archive_mode"] == "copy" else None)
    return sync_function_sql(plan.info, plan.function_name("capture"), "capture",
                             QualifiedName(m["schema_name"], m["new_name"]), history,
                             date_column=m["date_column"], date_type=m["date_type"], cutoff=m["cutoff"],
                             search_path=plan.search_path, family=family, source=plan.original,
                             self_refs=[(r.child_columns, r.parent_columns) for r in refs if r.self_ref],
                             defer=[*deferred_names(plan.info, m["schema_name"], "n"),
                                    *(deferred_names(plan.info, history.schema, "h") if history else [])])


def _close_when_open(pending: Future[psycopg.Connection[Any]]) -> None:
    """Close the connection `pending` opens (it may still be opening; one that failed to
    open has nothing to close)."""
    with contextlib.suppress(Exception):
        pending.result().close()
