"""Replay of the change log into the new table (and the history copy), then the switch to
direct capture.

While the new table N is loaded and indexed, the capture trigger on T does not write N: it
appends the key(s) of every written row to the change log L (`table_migration.changes_<oid>`,
one row per key, WAL-logged). The replay drains L while the application keeps writing:

    repeat, each time in one REPEATABLE READ transaction:
        take the first `limit` log rows visible to the snapshot (ids and keys);
        DELETE FROM N the rows with those keys;
        INSERT INTO N the rows of T with those keys and D >= C, as the snapshot sees them;
        (copy mode: the same for H with the rows D < C OR D IS NULL)
        DELETE those log rows (by id)
    until a batch finds fewer than `switch_below` rows.

Why N ends up exact. N is written only by the harness (bulk load, replay), so N's rows for
a key change only when the harness writes them. Every write to T committed after the
capture was installed has a log row, committed in the same transaction. For a key k
replayed by a batch with snapshot S: N's rows for k become T's rows for k as of S. A write
to k not visible to S (committed later, or still running) has a log row that S cannot see
either, so that log row survives the batch's DELETE (which only deletes rows visible to S)
and a later batch copies k again from T's then-current state. Hence after a batch, every
key either matches T as of a snapshot later than its last visible write, or has a log row
still waiting. The bulk load's rows (taken from older snapshots, possibly stale, missing or,
for a row moved between chunks, copied twice) are corrected the same way: every key changed
after the capture started is in the log. Rows never changed since the capture are copied
exactly once by the load and are current.

The switch. Once the log is small, one short transaction takes `LOCK TABLE T IN SHARE ROW
EXCLUSIVE MODE` (it waits for running writers, with the bounded lock_timeout and retries of
the swap, and blocks new ones): with no writer able to run, replaying the remaining log
rows is exact; the trigger function is replaced by the direct mode "capture" (it upserts
into N, and H, itself, as before this change) and the log table is dropped. From then on
N is kept equal by the trigger, and verify, swap, prune and rollback work unchanged. The
swap transaction itself contains no DML on N (a logical-replication subscriber maps
changes by table name).

The replay joins the batch's keys to T and N by nested loops over their key indexes (hash
and merge joins are disabled for its transactions): a batch costs what its keys cost,
never a scan of T.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from psycopg import sql

from ..config.settings import Settings
from ..pg.locking import with_lock_retries
from ..pg.names import QualifiedName
from ..pg.sqltext import Fragment
from ..pg.statements import Statements
from .capture import direct_function_sql
from .context import RunContext
from .executor import Observed
from .planner import TablePlan
from .state import State
from .structure import change_id_column
from .subscribers import attach

SETTLE_ROUNDS = 5  # write guard: rests in the replay, each followed by a drain of what it logged


@dataclass(frozen=True)
class Target:
    """A table fed from T: N (rows D >= C) or, in copy mode, H (D < C OR D IS NULL)."""

    table: QualifiedName
    history: bool = False


@dataclass
class Replayer:
    """Drains the change log into the targets (see the module docstring). A dry run has an
    empty log: each drain finds nothing to replay."""

    source: QualifiedName
    log: QualifiedName
    targets: list[Target]
    key: list[str]
    columns: list[str]  # written columns (no generated ones)
    date_column: str
    date_type: str
    cutoff: str
    overriding: bool
    limit: int = 10_000
    switch_below: int = 1_000

    def _filter(self, history: bool) -> sql.Composable:
        d, t = sql.Identifier("t", self.date_column), Fragment(self.date_type)
        if history:
            return sql.SQL("({d} < %s::{t} OR {d} IS NULL)").format(d=d, t=t)
        return sql.SQL("{} >= %s::{}").format(d, t)

    def backlog(self, st: Statements) -> int:
        """The log rows not replayed yet."""
        return int(st.read(sql.SQL("SELECT count(*) FROM {}").format(self.log.ident()), reads=[str(self.log)],
                           planned=[(0,)]).scalar() or 0)

    def batch(self, st: Statements, limit: int | None) -> int:
        """Replay up to `limit` log rows (all when None) in the caller's transaction, which
        must be REPEATABLE READ (or hold a lock that keeps writers out). Returns the log
        rows processed."""
        keys = sql.SQL(", ").join(map(sql.Identifier, self.key))
        cid = sql.Identifier(change_id_column(self.key))
        st.run("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
        reads = [str(self.log)]
        if limit is None:
            row = st.read(sql.SQL("SELECT max({}), count(*) FROM {}").format(cid, self.log.ident()),
                          reads=reads, planned=[(None, 0)]).fetchone()
        else:
            row = st.read(sql.SQL(
                "SELECT max(s.{id}), count(*) FROM (SELECT {id} FROM {log} ORDER BY {id}"
                " LIMIT %s) s").format(id=cid, log=self.log.ident()), (limit,), reads=reads,
                planned=[(None, 0)]).fetchone()
        if not row or row[0] is None:
            return 0
        upto, count = int(row[0]), int(row[1])
        changed = sql.SQL("SELECT DISTINCT {k} FROM {log} WHERE {id} <= %s").format(
            k=keys, log=self.log.ident(), id=cid)
        match = sql.SQL(" AND ").join(sql.SQL("x.{0} = c.{0}").format(sql.Identifier(k)) for k in self.key)
        cols = sql.SQL(", ").join(map(sql.Identifier, self.columns))
        tcols = sql.SQL(", ").join(sql.Identifier("t", c) for c in self.columns)
        tmatch = sql.SQL(" AND ").join(sql.SQL("t.{0} = c.{0}").format(sql.Identifier(k)) for k in self.key)
        for target in self.targets:
            st.run(sql.SQL("DELETE FROM {tgt} x USING ({changed}) c WHERE {match}").format(
                tgt=target.table.ident(), changed=changed, match=match), (upto,))
            st.run(sql.SQL(
                "INSERT INTO {tgt} ({cols}){ovr} SELECT {tcols} FROM ({changed}) c"
                " JOIN {src} t ON {tmatch} WHERE {filter}").format(
                tgt=target.table.ident(), cols=cols, tcols=tcols, changed=changed,
                src=self.source.ident(), tmatch=tmatch, filter=self._filter(target.history),
                ovr=sql.SQL(" OVERRIDING SYSTEM VALUE" if self.overriding else "")),
                (upto, self.cutoff))
        st.run(sql.SQL("DELETE FROM {} WHERE {} <= %s").format(self.log.ident(), cid), (upto,))
        return count

    def drain(self, st: Statements, *, pause: Callable[[], None] | None = None,
              max_rounds: int = 10_000, flush: bool = False) -> tuple[int, int]:
        """Replay batches (each its own REPEATABLE READ transaction) until one finds fewer
        than `switch_below` log rows. Returns (log rows replayed, batches). Commits are
        asynchronous (a batch lost in a crash is lost with its log deletions), or flushed
        locally with `flush` (a replication-lag throttle must see their WAL)."""
        total = rounds = 0
        if pause:
            pause()
        # a log already below switch_below is left to the switch's final batch: one count
        # instead of a transaction that would replay the same rows a moment earlier
        below = st.read(sql.SQL("SELECT count(*) FROM (SELECT FROM {} LIMIT %s) s").format(self.log.ident()),
                        (self.switch_below,), reads=[str(self.log)], planned=[(0,)]).scalar()
        if below is not None and below < self.switch_below:
            return 0, 0
        while rounds < max_rounds:
            if pause and rounds:
                pause()
            with st.transaction(isolation="REPEATABLE READ"):
                st.run("SELECT set_config('synchronous_commit', %s, true)", ("local" if flush else "off",))
                n = self.batch(st, self.limit)
            total += n
            rounds += 1
            if n < self.switch_below:
                break
        return total, rounds


def log_exists(st: Statements, log: QualifiedName) -> bool:
    """Is the change log there (the switch to direct capture empties it; the swap drops it)?"""
    return bool(st.read("SELECT to_regclass(%s) IS NOT NULL", (str(log),), reads=[str(log)],
                        planned=[(True,)]).scalar())


def replayer(m: State, plan: TablePlan, s: Settings) -> Replayer:
    targets = [Target(table, history=tag == "h") for table, tag in m.new_tables()]
    return Replayer(plan.original, m.objects.change_log, targets, list(m.key), plan.columns, m.date_column,
                    m.date_type, m.cutoff.text, plan.overriding, limit=s.replay_batch, switch_below=s.switch_below)


def run(ctx: RunContext, settings: Settings | None = None) -> None:
    """Drain the change log into N while writes continue, then switch the trigger to
    direct capture in one short transaction that locks out T's writers (see the module
    docstring). Idempotent: nothing to do once switched."""
    t0 = ctx.begin("replay")
    m = ctx.require("indexed", "verified")
    attach(ctx)
    ex = ctx.ex
    if m.checkpoint.switched or not log_exists(ex, m.objects.change_log):
        return  # switched by an earlier run (the log is dropped by the swap)
    plan = ctx.current_plan()
    s = settings or ctx.settings()
    rep = replayer(m, plan, s)
    flush = ctx.throttle is not None
    # not paced (nice_ratio): the replay's work follows the application's write rate,
    # and slowing it down only lengthens the capture and the switch's final batch
    replayed, rounds = rep.drain(ex, pause=ctx.pause, flush=flush)
    # The write guard settles its debt here, while the trigger only logs keys (its
    # cheapest mode), and the log that grew meanwhile is drained again: a rest after the
    # switch would cost the application the direct capture's second write of every row,
    # so verify's checksums and the swap follow the switch without rests.
    for _ in range(SETTLE_ROUNDS):
        if ctx.settle(between_steps=False) < 0.05:
            break
        more, batches = rep.drain(ex, pause=ctx.pause, flush=flush)
        replayed, rounds = replayed + more, rounds + batches
    final: dict[str, int] = {}
    # rendered before the lock: the lock is held only while statements run
    direct = direct_function_sql(m, plan)

    def switch(_locked_at: float) -> dict[str, object]:
        final["rows"] = rep.batch(ex, None)
        ex.run(direct)
        # the emptied log stays until the swap drops it: a DROP here would make this
        # commit wait for a WAL flush (a transaction that drops files always does)
        ctx.store.set_checkpoint({"switched": True})
        return {}

    result, attempts, _ = with_lock_retries(
        ex, f"switch to direct capture on {ctx.table}", [plan.original], switch,
        mode="SHARE ROW EXCLUSIVE", **s.lock_options())
    hold = result.get("lock_hold_ms")
    ctx.store.log("replay", "switched", rows=Observed("rows", replayed + final.get("rows", 0)),
                  duration_ms=Observed("ms", (time.perf_counter() - t0) * 1000),
                  details={"batches": Observed("count", rounds),
                           "replayed_under_lock": Observed("rows", final.get("rows", 0)),
                           "lock_hold_ms": Observed("ms", hold), "attempts": attempts})
    ctx.results.switch_lock_hold_ms = float(hold) if isinstance(hold, int | float) else None
    ctx.timed("replay", t0)
