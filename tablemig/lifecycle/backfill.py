"""The backfill step: bulk load T[D >= C] into the bare new table N (and, in archive mode
copy, the rest into the history copy H) in a few large chunks (tablemig.lifecycle.chunks).
Rows changed meanwhile are logged by the capture trigger and corrected by the replay."""

from __future__ import annotations

from .chunks import ChunkLoader
from .context import RunContext
from .copying import CopyJob
from .executor import Observed
from .planner import TablePlan
from .replay import log_exists
from .state import State, StateStore


def jobs(m: State, plan: TablePlan) -> list[tuple[str, CopyJob, int | None]]:
    """(checkpoint key, job, rows expected) of each load: the recent rows into N and, in
    archive mode copy, the history into H."""
    info = plan.info
    types = {c.name: c.type for c in info.columns}
    recent = CopyJob(plan.original, m.new, plan.columns, plan.order_columns,
                     [types[c] for c in plan.order_columns], plan.date_column,
                     plan.date_type, m.cutoff.text, plan.overriding, plan.key)
    out: list[tuple[str, CopyJob, int | None]] = [("backfill", recent, plan.keep_rows)]
    if m.archive_mode == "copy":
        out.append(("backfill_history", CopyJob(
            plan.original, m.archive, plan.columns, plan.key, [types[c] for c in plan.key],
            plan.date_column, plan.date_type, m.cutoff.text, plan.overriding, plan.key,
            history=True), plan.archive_rows))
    return out


def split_column(plan: TablePlan, job: CopyJob) -> tuple[str, str]:
    """The column the load's chunks split (the date column when an index leads with it),
    with its type."""
    types = {c.name: c.type for c in plan.info.columns}
    split = plan.date_column if plan.order_by_date and not job.history else plan.key[0]
    return split, plan.date_type if split == plan.date_column else types[split]


def require_change_log(ctx: RunContext, m: State, doing: str) -> None:
    """Before the replay the change log must exist: a migration captured by an older
    tablemig (trigger writing N directly, N with its key) cannot be resumed here."""
    from ..errors import TablemigError

    log = m.objects.change_log
    if not log_exists(ctx.ex, log):
        raise TablemigError(f"{ctx.table}: the change log {log} is missing while {doing}",
                            "the migration was started by another tablemig version; roll it back"
                            " (tablemig rollback) and start again")


def run(ctx: RunContext) -> None:
    """Load every chunk not loaded yet (a rerun resumes at the chunks not done)."""
    t0 = ctx.begin("backfill")
    m = ctx.require("capturing", "backfilling")
    require_change_log(ctx, m, "loading")
    moved: list[bool] = [] if m.state == "capturing" else [True]

    def advance(store: StateStore) -> None:
        store.update(state="backfilling")
        moved.append(True)

    plan = ctx.current_plan()
    ctx.pacer.start(ctx.conn, ctx.settings())
    for i, (key, job, expected) in enumerate(jobs(m, plan)):
        if i:  # the checkpoint as the job before left it
            m = ctx.state() or m
        split, split_type = split_column(plan, job)
        loader = ChunkLoader(ctx.ex, ctx.dsn, job, ctx.table, key, split=split, split_type=split_type,
                             batch_size=max(m.batch_size, 1), workers=ctx.spec.workers,
                             throttle=ctx.throttle, progress=ctx.progress, expected_rows=expected,
                             pace=ctx.pacer)
        # the state moves on in the transaction that saves the first chunk plan
        stats = loader.run(ctx.store, m.checkpoint.job(key), on_plan=None if moved else advance)
        if not moved:  # the plan was saved by an earlier run
            with ctx.ex.transaction():
                advance(ctx.store)
        ctx.results.backfill_samples.extend(stats.samples)
        ctx.store.log(key, "done", rows=Observed("rows", stats.rows), duration_ms=Observed("ms", stats.seconds * 1000),
                      details={"batches": stats.batches, "workers": ctx.spec.workers, "split": split})
    ctx.timed("backfill", t0)
