"""The end of a plan run in the terminal: the verdict, what happened to each table, the step
counts (the same as in junit.xml and report.html), and where the report is; a dry run lists
what it would do."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..checklist.outcome import NOT_RUN, verdict
from ..checklist.wording import fmt
from .format import mapping
from .model import STATUS_LABELS, table_outcomes

# the order the counts are listed in (the report's order of badges)
COUNT_ORDER = ("passed", "attested", "warning", "needs-attestation", "not-applicable", "dry-run", "deferred",
               "blocked", "failed", "interrupted", "not-run")


def step_counts(run: dict[str, Any]) -> dict[str, int]:
    """How many steps ended in each status (the steps that did not run apart, as `not-run`)."""
    counts = Counter(str(s.get("status")) for s in run.get("steps") or [] if isinstance(s, dict))
    known = [k for k in COUNT_ORDER if counts.get(k)]
    return {k: counts[k] for k in known + sorted(set(counts) - set(COUNT_ORDER))}


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {STATUS_LABELS.get(k, k).lower()}" for k, n in counts.items())


def _table_line(o: dict[str, Any], mode: str) -> str:
    parts = [f"{o['name']}: {o['state']}"]
    if o.get("follows"):  # a `follow` child (docs/families.md)
        parts.append(f"follows {o['follows']}")
    if o["cutoff"] not in (None, ""):
        parts.append(f"cutoff {o['cutoff']}")
    if o["rows_keep"] is not None or o["rows_archive"] is not None:
        verb = ("would keep", "would archive") if mode == "dry-run" else ("kept", "archived")
        kept, archived, extra = o["rows_keep"], o["rows_archive"], o.get("rows_kept_for_children")
        note = ""
        if o.get("kept_for") and extra and kept is not None and archived is not None:  # docs/families.md
            kept, archived = kept + extra, archived - extra
            note = f" ({fmt(extra)} of them referenced by {', '.join(o['kept_for'])})"
        parts.append(f"{verb[0]} {fmt(kept)} rows{note}, {verb[1]} {fmt(archived)}")
    if o["archive"]:
        parts.append(f"archive {o['archive']}")
    if o["lock_hold_ms"] is not None:
        parts.append(f"lock held {fmt(o['lock_hold_ms'])} ms")
    return "; ".join(parts)


def summary_lines(run: dict[str, Any], out: Path | None = None) -> list[str]:
    """The run's end in lines of text, without a prefix."""
    steps = [s for s in run.get("steps") or [] if isinstance(s, dict) and s.get("id")]
    rows: list[dict[str, Any]] = [{"id": str(s["id"]), "table": s.get("table") or None, "status": str(s.get("status")),
             "evidence": mapping(s.get("evidence")), "reason": s.get("reason") or ""} for s in steps]
    mode = str(run.get("mode") or "unknown")
    names = list(dict.fromkeys([*mapping(run.get("tables")), *(str(r["table"]) for r in rows if r["table"])]))
    lines = [f"verdict: {verdict(run).upper()} ({mode})"]
    lines += [_table_line(o, mode) for o in table_outcomes(names, mapping(run.get("tables")), rows, mode)]
    lines.append(f"steps: {counts_text(step_counts(run))}")
    if mode == "dry-run":
        would = [r for r in rows if r["status"] == "dry-run" and r["reason"]]
        if would:
            lines.append("planned (dry run; --execute does it):")
            lines += [f"  {r['id']}{' ' + r['table'] if r['table'] else ''}: {r['reason']}" for r in would]
    pending = [r for r in rows if r["status"] == "needs-attestation"]
    if pending:
        lines.append("sign-offs pending: " + ", ".join(r["id"] for r in pending))
    not_run = sum(1 for r in rows if r["status"] == NOT_RUN)
    if not_run:
        lines.append(f"{not_run} checklist steps did not run")
    if out is not None:
        lines.append(f"report: {out / 'report.html'}")
    return lines
