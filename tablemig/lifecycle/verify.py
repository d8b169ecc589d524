"""The verify step: segment checksums of T[D >= C] against N (and, in archive mode copy, of
the history against H); differing rows are repaired from T. It first runs the replay and
the switch to direct capture (tablemig.lifecycle.replay), so that from here on the trigger
keeps N equal and both sides can be read in one snapshot."""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..config.settings import Settings
from ..errors import TablemigError
from ..pg.connect import connect
from ..pg.reconcile import Reconciler, Segment, Side
from . import analyze, replay
from .context import RunContext
from .executor import Executor, Observed
from .planner import TablePlan
from .state import State


@dataclass
class VerifyResult:
    segments: list[Segment]
    repaired: int
    rounds: int
    history_segments: list[Segment] = field(default_factory=list)

    @property
    def match(self) -> bool:
        return all(s.match for s in self.segments + self.history_segments)


def reconciler(plan: TablePlan) -> Reconciler:
    """Row hashes over every column; repairs write the writable ones."""
    types = {c.name: c.type for c in plan.info.columns}
    return Reconciler(plan.key, [types[k] for k in plan.key], [c.name for c in plan.info.columns], plan.columns)


def _compare(ctx: RunContext, m: State, s: Settings, max_rounds: int,
             peer: Executor | None) -> tuple[int, list[list[Segment]]]:
    """Checksums of each (source, target) pair, repairing differing rows for up to
    `max_rounds` rounds; returns the rows repaired and each pair's last segments."""
    plan = ctx.current_plan()
    rec = reconciler(plan)
    ex = ctx.ex
    src = Side(plan.original, plan.date_column, plan.date_type, m.cutoff.text)
    dst = Side(m.new)
    pairs = [(src, dst)]
    if m.archive_mode == "copy":
        pairs.append((Side(plan.original, plan.date_column, plan.date_type, m.cutoff.text, negate=True),
                      Side(m.archive)))
    repaired, results = 0, []
    for source, target in pairs:
        # a small table is one segment (a repair joins it whole, cheaply); a large one is
        # cut at its key's histogram when it has one (no scan of the key)
        rows = plan.keep_rows if target is dst else plan.archive_rows
        bounds = ([] if (rows or 0) < ctx.segment_min_rows else
                  rec.stats_boundaries(ex, target, s.verify_segments)
                  or rec.boundaries(ex, target, s.verify_segments))
        segs: list[Segment] = []
        for round_ in range(1, max_rounds + 1):
            segs = rec.checksums(ex, {"original": source, "new": target}, bounds, peer=peer)
            bad = [x for x in segs if not x.match]
            if not bad:
                break
            for seg in bad:
                keys = rec.differing_keys(ex, source, target, seg)
                repaired += rec.repair(ex, source, target, keys, plan.overriding)
            if round_ == max_rounds:
                segs = rec.checksums(ex, {"original": source, "new": target}, bounds, peer=peer)
        results.append(segs)
    return repaired, results


def run(ctx: RunContext, max_rounds: int = 3) -> VerifyResult:
    """Segment checksums of T[D >= C] against N; differing rows are repaired from T.
    First replays the change log and switches to direct capture (`replay.run`), so that
    from here on the trigger keeps N equal and both sides can be read in one snapshot.
    On a large table the two sides are summed at once on two connections sharing one
    snapshot; a small or paced one reads both with one statement on one connection."""
    m0 = ctx.require("indexed", "verified")
    s = ctx.settings()
    small = ctx.small(m0, ctx.current_plan())
    analysis = analyze.of(ctx)
    # normally done by the index step; done here when the indexes were built by an
    # earlier run
    if not small:
        analysis.in_background(ctx, m0)
    elif not analysis.done:
        analysis.now(ctx.ex, m0)
    # the write guard: the application gets its share back before the replay (and during
    # it, see replay.run)
    ctx.settle()
    # the second reader's connection opens while the replay runs; a small table, and a
    # paced migration (nice_ratio, or the write guard while the application writes), are
    # read by one statement on one connection
    with contextlib.ExitStack() as stack:
        pending: Future[psycopg.Connection[Any]] | None = None
        if not small and not ctx.pacer.paced:
            opening = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tablemig-verify")
            pending = opening.submit(connect, ctx.dsn, application_name="tablemig-verify")
            opening.shutdown(wait=False)
            stack.callback(_close_when_open, pending)
        try:
            replay.run(ctx, s)
            t0 = ctx.begin("verify")
            peer = ctx.ex.fork(pending.result(), "verify") if pending else None
            repaired, results = _compare(ctx, m0, s, max_rounds, peer)
        except BaseException:
            with contextlib.suppress(BaseException):  # the first error is the one reported
                analysis.join()
            raise
    analysis.join()
    result = VerifyResult(results[0], repaired, len(results), results[1] if len(results) > 1 else [])
    ctx.results.verify = result
    if not result.match:
        ctx.store.log("verify", "mismatch", rows=Observed("rows", repaired))
        raise TablemigError(f"verify of {ctx.table}: segments still differ after {max_rounds} repair rounds",
                            "check for writes bypassing the trigger (session_replication_role = replica?) and "
                            "rerun")
    ctx.store.advance("verify", "match", rows=Observed("rows", repaired), state="verified",
                      details={"segments": len(result.segments), "repaired_rows": Observed("rows", repaired)})
    ctx.timed("verify", t0)
    return result


def _close_when_open(pending: Future[psycopg.Connection[Any]]) -> None:
    """Close the connection `pending` opens (it may still be opening; one that failed to
    open has nothing to close)."""
    with contextlib.suppress(Exception):
        pending.result().close()
