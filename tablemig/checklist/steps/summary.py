"""Success criteria, notes and observations, emergency contacts (SC-1..8, NOTES, CONTACTS)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from ..context import StepContext
from ..criteria import evaluate
from ..figures import backfill_figures, batch_text, recommendation
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
        facts = dict(run.facts)
        if run.migration is not None:
            facts.setdefault("throughput", run.migration.backfill_samples)
            facts.setdefault("timings", dict(run.migration.timings))
        # the figures the report shows, from the one computation of them
        fig = backfill_figures(facts, next((t.batch_size for t in ctx.plan.tables if str(t.qualified) == name), None))
        if fig:
            perf.append(f"{name}: {batch_text(fig)}")
            advice = recommendation(fig)
            if advice:
                recs.append(f"{name}: {advice}")
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


# what a plan template or an example leaves in a contact: "[Name]", an empty field, an
# address at a domain reserved for documentation (RFC 2606)
_BRACKETED = re.compile(r"^\s*\[[^\]]*\]\s*$")
_RESERVED = re.compile(r"@(?:[\w.-]+\.)?(?:example\.(?:com|net|org)|example|test|invalid|localhost)\s*$", re.I)


def placeholders(contact: dict[str, Any]) -> list[str]:
    """The fields of a contact that are placeholders, not a way to reach someone."""
    found = []
    for field in ("name", "phone", "email"):
        value = str(contact.get(field) or "")
        if not value.strip() or _BRACKETED.match(value) or (field == "email" and _RESERVED.search(value)):
            found.append(f"{field} {value.strip()!r}" if value.strip() else f"{field} empty")
    return found


def emergency_contacts(ctx: StepContext) -> None:
    contacts = [c.__dict__ for c in ctx.plan.contacts]
    ctx.evidence(contacts=contacts)
    if not contacts:
        ctx.warn("no emergency contacts in the plan")
        return
    unreachable = [f"{c.get('role') or 'contact'}: {', '.join(found)}" for c in contacts if (found := placeholders(c))]
    if unreachable:
        ctx.evidence(placeholders=unreachable)
        ctx.warn(f"{len(unreachable)} of {len(contacts)} emergency contacts are placeholders, not people who can "
                 f"be reached: {'; '.join(unreachable)}; put real names, phones and e-mail addresses in the "
                 "plan's contacts")
