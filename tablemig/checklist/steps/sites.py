"""The two sites compared by plan steps (PRE-1.1c, EX-3.2): one comparison, one verdict.

`tablemig.pg.site_compare` does the comparing while the application writes; this module gives
it the steps' connections, records what it found and decides: a divergent key fails the
step, keys still in flight after the last round make it a warning.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ...lifecycle.planner import TablePlan
from ...pg.names import QualifiedName
from ...pg.reconcile import Reconciler
from ...pg.replication import LagLimit
from ...pg.site_compare import Pair, SiteDiff, compare
from ..context import StepContext


def reconciler(plan: TablePlan) -> Reconciler:
    """Row hashes over every column of the table, keyed by its key."""
    types = {c.name: c.type for c in plan.info.columns}
    return Reconciler(plan.key, [types[k] for k in plan.key], [c.name for c in plan.info.columns])


def pair(ctx: StepContext, active: psycopg.Connection[Any], passive: psycopg.Connection[Any]) -> Pair:
    """The pair, waiting for the passive site at least 60 s (longer when the plan allows more lag)."""
    limit = LagLimit.parse(ctx.plan.max_replication_lag)
    wait = max(60.0, 2 * limit.value) if limit.kind == "seconds" else 60.0
    return Pair(active, passive, logical=ctx.passive_is_logical(), timeout_s=wait)


def compare_tables(ctx: StepContext, sites: Pair, rec: Reconciler,
                   tables: dict[str, QualifiedName]) -> dict[str, SiteDiff]:
    """Compare each table on both sites; evidence `sites`, a warning for keys in flight, and
    an assertion error naming the divergent keys."""
    found = {label: compare(sites, rec, table) for label, table in tables.items()}
    ctx.evidence(sites={label: d.evidence() for label, d in found.items()},
                 method="segments, then rows, then keys, each read on the active site, then on the passive site "
                        "once it has replayed (or applied) past the active site's position after that read")
    moving = {d.table: d.in_flight for d in found.values() if d.in_flight}
    if moving:
        ctx.warn("in flight, not compared: " + ", ".join(f"{n} key(s) of {t}" for t, n in moving.items())
                 + " changed on the active site in every round (hot rows); rerun the step to compare them again")
    bad = [d for d in found.values() if not d.in_sync]
    assert not bad, ("the passive site diverges from the active site: " + "; ".join(d.problem() for d in bad)
                     + ". Fix: find what wrote to the passive site behind replication's back; resynchronise the "
                       "table there (a standby: rebuild it; a subscriber: copy the table again) and rerun")
    return found
