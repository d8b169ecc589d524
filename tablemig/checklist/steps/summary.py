"""Success criteria, notes and observations, emergency contacts (SC-1..8, NOTES, CONTACTS)."""

from __future__ import annotations

import datetime as dt
import statistics

import pytest

from ..context import StepContext
from ..criteria import evaluate
from ..record import result_dict
from ..wording import pacing_text


def success_criterion(ctx: StepContext) -> None:
    if getattr(ctx.request.config, "workerinput", None) is not None:
        ctx.defer("evaluated when the workers' results are merged (pytest -n)")
        return
    steps = [result_dict(r) for r in ctx.record.results if r is not ctx.result]
    status, reason = evaluate(ctx.item.id, steps, "execute" if ctx.execute else "dry-run")
    ctx.evidence(criterion=ctx.item.text, verdict=status, basis=reason)
    if status == "needs-attestation":
        ctx.attest()
    elif status == "dry-run":
        ctx.dry_run(reason)
    elif status == "not-applicable":
        ctx.not_applicable(reason)
    elif status == "warning":
        ctx.warn(reason)
    elif status == "blocked":
        ctx.result.status, ctx.result.reason = "blocked", reason
        pytest.skip(reason)
    else:
        assert status == "passed", reason


def notes_and_observations(ctx: StepContext) -> None:
    r = ctx.record
    started = dt.datetime.fromtimestamp(r.started, dt.UTC)
    issues = [f"{s.id} {s.table or ''}: {s.status} — {s.reason}" for s in r.results
              if s.status in ("failed", "blocked", "warning", "needs-attestation")]
    perf, recs = [], []
    for name, run in r.tables.items():
        t = run.facts.get("timings") or (run.migration.timings if run.migration else {})
        if t:
            perf.append(f"{name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()))
        samples = [s for s in run.facts.get("throughput", []) if s.get("batch_seconds")]
        if run.migration is not None and not samples:
            samples = run.migration.backfill_samples
        if samples:
            secs = statistics.median(s["batch_seconds"] for s in samples)
            size = statistics.median(s["batch_size"] for s in samples)
            rate = size / secs if secs else 0
            perf.append(f"{name}: median batch {size:.0f} rows in {secs:.3f} s ({rate:,.0f} rows/s)")
            if secs < 0.1 or secs > 2:
                recs.append(f"{name}: a batch size of about {int(rate * 0.5):,} rows would take ~0.5 s per batch")
        pacing = pacing_text(run.facts.get("pacing") or (run.migration.pacer.summary() if run.migration else None))
        if pacing:
            perf.append(f"{name}: {pacing}")
        if run.facts.get("lock_hold_ms") is not None:
            perf.append(f"{name}: swap lock held {run.facts['lock_hold_ms']} ms in {run.facts.get('swap_attempts')} "
                        "attempt(s)")
    if not recs:
        recs.append("keep the batch size; rerun the dry run before each window")
    ctx.evidence(migration_date=started.date().isoformat(), executed_by=r.facts.get("executed_by"),
                 duration_s=round(dt.datetime.now(dt.UTC).timestamp() - r.started, 1),
                 issues_encountered=issues or ["none"], performance_observations=perf,
                 recommendations=recs)


def emergency_contacts(ctx: StepContext) -> None:
    contacts = [c.__dict__ for c in ctx.plan.contacts]
    ctx.evidence(contacts=contacts)
    if not contacts:
        ctx.warn("no emergency contacts in the plan")
