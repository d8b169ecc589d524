"""The human text of the operational commands: a plan, what a changing command would do,
its result, the state of the migrations. Each function takes the data `--json` prints."""

from __future__ import annotations

from typing import Any

from ..checklist.wording import fmt_duration, pacing_text
from .conventions import fmt_count


def _lines(pairs: list[tuple[str, Any]]) -> str:
    width = max((len(k) for k, v in pairs if v not in (None, "", [])), default=0)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in pairs if v not in (None, "", []))


def cutoff_text(data: dict[str, Any]) -> str:
    """The cutoff as stored (UTC) and, when known, with its offset in the database's TimeZone."""
    cut = str(data.get("cutoff") or "—")
    local = data.get("cutoff_local")
    return f"{cut} ({local} in {data.get('timezone')})" if local and str(local) != cut else cut


def plan_text(p: dict[str, Any]) -> str:
    """`tablemig plan`: what the migration of one table would do, blockers first."""
    head = (f"{p['table']}: keep {fmt_count(p.get('rows_keep'))} of {fmt_count(p.get('rows_total'))} rows "
            f"({p.get('date_column')} >= the cutoff), archive {fmt_count(p.get('rows_archive'))}")
    deps = p.get("dependencies") or {}
    dep_text = ", ".join(f"{k.replace('_', ' ')}: {len(v)}" for k, v in deps.items() if v)
    body = _lines([
        ("cutoff", cutoff_text(p)),
        ("new table", p.get("new_table")),
        ("archive", f"{p.get('archive_table')} (archive mode {p.get('archive_mode')})"),
        ("backup table", p.get("backup_table")),
        ("key", ", ".join(p.get("key") or [])),
        ("size", f"{fmt_count(p.get('table_bytes'))} bytes ({fmt_count(p.get('total_bytes'))} with indexes)"),
        ("dependencies", dep_text or "none"),
        ("resumes from", p.get("resumed_state")),
    ])
    parts = [head, body]
    if p.get("blockers"):
        parts.append("blockers (the migration is refused until each is resolved):\n"
                     + "\n".join(f"  - {b}" for b in p["blockers"]))
    else:
        parts.append("blockers: none")
    if p.get("warnings"):
        parts.append("warnings:\n" + "\n".join(f"  - {w}" for w in p["warnings"]))
    return "\n".join(parts)


def migrate_intent(p: dict[str, Any], until: str) -> str:
    """What `tablemig migrate --execute` would do, from the plan."""
    steps = ["capture (trigger on the table, new table created bare)", "backfill", "index", "verify",
             "swap (one short exclusive lock)"]
    order = ["capturing", "backfilling", "indexed", "verified", "swapped"]
    todo = steps[: order.index(until) + 1] if until in order else steps
    return (f"would migrate {p['table']} up to state {until}: {', '.join(todo)}; copy "
            f"{fmt_count(p.get('rows_keep'))} rows into {p.get('new_table')}, the "
            f"{fmt_count(p.get('rows_archive'))} older rows stay in the archive {p.get('archive_table')}\n\n"
            + plan_text(p))


def migrate_result(r: dict[str, Any]) -> str:
    """`tablemig migrate --execute`: where the table stands and the figures a DBA signs."""
    timings = r.get("timings") or {}
    hold = r.get("lock_hold_ms")
    pacing = pacing_text(r.get("pacing"))
    return f"{r['table']}: {r.get('state')}\n" + _lines([
        ("cutoff", cutoff_text(r)),
        ("rows copied", fmt_count(r.get("rows_copied"))),
        ("archive", r.get("archive_table")),
        ("lock held", f"{hold} ms ({fmt_count(r.get('swap_attempts'))} attempt(s))" if hold is not None else None),
        ("timings", ", ".join(f"{k} {fmt_duration(v)}" for k, v in timings.items())),
        ("pacing", pacing),
    ])


def prune_intent(m: dict[str, Any], batch_size: int | None) -> str:
    """What `tablemig prune --execute` would do in the migration's current state."""
    table, archive = m["table_name"], f"{m['schema_name']}.{m['archive_name']}"
    if m["state"] == "pruned":
        return f"{table} is already pruned: nothing to do"
    if m["archive_mode"] == "copy":
        return (f"would drop the mirror trigger that keeps the original (the backup table) following {table} "
                f"(archive mode copy: the archive {archive} holds history only); state swapped -> pruned")
    return (f"would remove, in {archive}, the copies of the rows that live in {table} now "
            f"({m['date_column']} >= {m['cutoff']}: about {fmt_count(m.get('rows_copied'))} rows, the rows kept "
            f"at the swap), in batches of {fmt_count(batch_size or m.get('batch_size'))}, then drop the mirror "
            f"trigger; from then {table} and {archive} are disjoint (rollback stays possible: it copies the "
            "live rows back first); state swapped -> pruned")


def rollback_intent(m: dict[str, Any]) -> str:
    """What `tablemig rollback --execute` would do in the migration's current state."""
    table, state = m["table_name"], m["state"]
    archive = f"{m['schema_name']}.{m['archive_name']}"
    new = f"{m['schema_name']}.{m['new_name']}"
    if state == "rolled_back":
        return f"{table} is already rolled back: nothing to do"
    if state == "pruned" or (m.get("checkpoint") or {}).get("prune_started"):
        return (f"would make the archive {archive} complete again (mirror trigger, then the live rows copied "
                f"back under a lock; refused, naming the keys, if rows written after the prune collide with "
                f"archived keys), then swap back: {table} becomes the original again; state {state} -> "
                "rolled_back")
    if state == "swapped":
        return (f"would swap back in one short transaction: the archive {archive} (kept current by the mirror "
                f"trigger, so no write since the swap is lost) becomes {table} again; state swapped -> "
                "rolled_back")
    extra = f" and the archive {archive} (archive mode copy)" if m["archive_mode"] == "copy" else ""
    return (f"would drop the capture trigger on {table}, its change log and the new table {new}{extra}; "
            f"{table} itself is unchanged; state {state} -> rolled_back")


def status_text(rows: list[dict[str, Any]]) -> str:
    """`tablemig status`: one block per table."""
    if not rows:
        return "no migration in this database"
    blocks = []
    for r in rows:
        total, done = r.get("rows_to_copy"), r.get("rows_copied")
        progress = (f"{fmt_count(done)} of {fmt_count(total)}" + (f" ({done / total:.0%})" if total else "")
                    if total is not None else fmt_count(done))
        paused = str(r.get("paused")).lower() == "true"
        rate = r.get("rows_per_second")
        holding = f" (SWAP WAITS for {r['holding']})" if r.get("holding") else ""
        blocks.append(f"{r['table_name']}: {r['state']}{' (PAUSED: tablemig resume)' if paused else ''}{holding}\n"
                      + _lines([
            ("phase", r.get("phase")),
            ("rate", f"{fmt_count(rate)} rows/s" if rate is not None else None),
            ("ETA", fmt_duration(r["eta_seconds"]) if r.get("eta_seconds") is not None else None),
            ("passive lag", f"{fmt_count(r['passive_lag_bytes'])} bytes"
             if r.get("passive_lag_bytes") is not None else None),
            ("cutoff", r.get("cutoff")),
            ("new table", r.get("new_name")),
            ("archive", r.get("archive_name")),
            ("rows copied", progress),
            ("change log", f"{fmt_count(r['change_log_backlog'])} keys to replay"
             if r.get("change_log_backlog") is not None else None),
            ("lock held", f"{r['lock_hold_ms']} ms ({r.get('swap_attempts')} attempt(s))"
             if r.get("lock_hold_ms") is not None else None),
            ("updated", r.get("updated_at")),
            ("last error", r.get("last_error")),
        ]))
    return "\n\n".join(blocks)
