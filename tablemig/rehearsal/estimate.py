"""The duration of a plan at production size, extrapolated from a rehearsal's run.

Model: each checklist step's time is either fixed (catalog reads, DDL, locks, waits,
attestations: the same at any size) or proportional to the rows it reads or writes. A step
of the second kind is multiplied by its table's factor: the rows the active site's
statistics give (`pg_class.reltuples`) over the rows the rehearsal made. Since the
rehearsal keeps the distribution of dates, the rows kept by the cutoff scale by the same
factor as the whole table. Within EX-2.2 the engine's phases are scaled apart: the bulk load,
the verification and the foreign keys' validation by the factor, the index builds by the
factor times log(n_production) / log(n_rehearsal) (a sort), and the rest (capture, replay,
swap, the engine's own overhead) kept as measured.

Limits, stated with every estimate:

* a row-bound step's fixed overhead is multiplied too: its estimate errs high, the more so the
  smaller the rehearsal (`--rehearse-rows` larger makes it tighter);
* the rehearsal's tables fit in memory; production's may not: reads from disk make the
  row-bound steps slower than estimated;
* the rehearsal has no application writing: no write-guard rests, no change log to replay, no
  lock waits, no replication lag to throttle on; production adds them;
* steps of different tables run one after another here; `-n K` runs tables in parallel;
* reltuples is itself an estimate (of the last ANALYZE or VACUUM).
"""

from __future__ import annotations

import math
from typing import Any

# what a step's time grows with; absent: fixed
ROWS = "rows of its table"
PLAN_ROWS = "rows of the plan's tables"
PHASES = "the engine's phases"
SCALING: dict[str, str] = {
    "PRE-1.1c": ROWS,  # the table compared on both sites
    "PRE-1.2d": PLAN_ROWS,  # each table's plan counts its rows
    "PRE-1.3a": ROWS, "PRE-1.3b": ROWS, "PRE-1.3d": ROWS,  # the plan counts rows on each side of the cutoff
    "PRE-2.1": PLAN_ROWS,  # pg_dump of each table
    "PRE-2.3": PLAN_ROWS,  # the backup restored and compared
    "PRE-2.4": ROWS,
    "PRE-3.1": PLAN_ROWS,
    "EX-1.3": ROWS,  # rows per month
    "EX-2.2": PHASES,
    "EX-3.2": ROWS,  # live table and archive compared on both sites
    "EX-4.1": ROWS,  # counts, anti-join, checksums
    "POST-2": ROWS,  # the live rows against their copies in the archive
}
ROW_PHASES = ("backfill", "verify", "validate_fks")
SORT_PHASES = ("index",)
LIMITS = [
    "a row-bound step's fixed overhead is multiplied with its rows: the estimate errs high for short steps; "
    "a larger rehearsal (--rehearse-rows) tightens it",
    "the rehearsal's tables fit in memory; reads from disk make production's row-bound steps slower",
    "no application writes during a rehearsal: write-guard rests, change-log replay, lock waits and "
    "replication-lag pauses come on top in production",
    "tables run one after another here; with -n K they run in parallel",
    "production's row counts are pg_class.reltuples: estimates of the last ANALYZE or VACUUM",
]
MODEL = ("t_production = t_fixed + t_rows x (rows at production size / rows in the rehearsal); "
         "index builds x factor x log(n_production)/log(n_rehearsal); see tablemig.rehearsal.estimate")


def factors(tables: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per table of the rehearsal's record: production rows, rehearsal rows, factor."""
    out = {}
    for name, t in tables.items():
        prod, reh = t.get("source_rows"), t.get("rows")
        factor = prod / reh if prod and reh else 1.0
        out[name] = {"production_rows": prod, "rehearsal_rows": reh, "factor": round(factor, 3),
                     "plan_table": bool(t.get("plan_table"))}
    return out


def _sort_factor(f: dict[str, Any]) -> float:
    prod, reh = f.get("production_rows") or 0, f.get("rehearsal_rows") or 0
    if prod <= 2 or reh <= 2:
        return float(f["factor"])
    return float(f["factor"]) * math.log(prod) / math.log(reh)


def estimate(run: dict[str, Any], rehearsal: dict[str, Any]) -> dict[str, Any]:
    """The estimate for a run (the run.json dict) prepared as `rehearsal` (its record)."""
    fac = factors(rehearsal.get("tables") or {})
    plan = {k: v for k, v in fac.items() if v["plan_table"]}
    prod = sum(v["production_rows"] or 0 for v in plan.values())
    reh = sum(v["rehearsal_rows"] or 0 for v in plan.values())
    plan_factor = prod / reh if prod and reh else 1.0
    steps, phases = [], {}
    for s in run.get("steps") or []:
        measured = float(s.get("duration_s") or 0.0)
        kind = SCALING.get(str(s.get("id")), "")
        table = s.get("table")
        factor = 1.0
        if kind == PLAN_ROWS:
            factor = plan_factor
        elif kind == ROWS:
            factor = float(fac.get(table or "", {}).get("factor", 1.0))
        est = measured * factor
        if kind == PHASES and table in fac:
            timings = (run.get("tables") or {}).get(table, {}).get("timings") or {}
            rows_f, sort_f = float(fac[table]["factor"]), _sort_factor(fac[table])
            scaled, spent = 0.0, 0.0
            table_phases = []
            for phase in (*ROW_PHASES, *SORT_PHASES):
                t = float(timings.get(phase) or 0.0)
                f = sort_f if phase in SORT_PHASES else rows_f
                spent += t
                scaled += t * f
                table_phases.append({"phase": phase, "measured_s": round(t, 3), "factor": round(f, 3),
                                     "estimated_s": round(t * f, 3)})
            phases[table] = table_phases
            est = max(measured - spent, 0.0) + scaled
            factor = est / measured if measured else rows_f
        steps.append({"id": s.get("id"), "table": table, "status": s.get("status"), "measured_s": round(measured, 3),
                      "scales_with": kind or "fixed", "factor": round(factor, 3), "estimated_s": round(est, 3)})
    return {"model": MODEL, "limits": LIMITS, "factors": fac, "steps": steps, "phases": phases,
            "measured_s": round(sum(x["measured_s"] for x in steps), 3),
            "estimated_s": round(sum(x["estimated_s"] for x in steps), 3)}


def duration(seconds: float) -> str:
    """1.2 s, 3 min 4 s, 2 h 5 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m} min"


def summary_lines(rehearsal: dict[str, Any], est: dict[str, Any], top: int = 8) -> list[str]:
    """The rehearsal and its estimate for the terminal."""
    scale = rehearsal.get("scale") or {}
    lines = [f"source: {rehearsal.get('source')} (PostgreSQL {rehearsal.get('source_version')}); schema: "
             f"{rehearsal.get('schema_source', '?')}; scale {scale.get('fraction', 0):.6g}"]
    for name, f in est["factors"].items():
        lines.append(f"  {name}: {f['rehearsal_rows']:,} rows made for {f['production_rows'] or 0:,.0f} "
                     f"(factor {f['factor']:g}){'' if f['plan_table'] else ', referenced or referencing'}")
    for name, months in (rehearsal.get("monthly") or {}).items():
        if months:
            worst = max(abs(m["statistics_share"] - m["rehearsal_share"]) for m in months)
            lines.append(f"  {name}: {len(months)} months; largest gap between the statistics' and the "
                         f"rehearsal's monthly share: {worst * 100:.2f} points")
    lines.append(f"measured {duration(est['measured_s'])}; estimated at production size "
                 f"{duration(est['estimated_s'])} ({est['model'].split(';')[0]})")
    longest = sorted(est["steps"], key=lambda x: -x["estimated_s"])[:top]
    for x in longest:
        where = f" {x['table']}" if x["table"] else ""
        lines.append(f"  {x['id']}{where}: {duration(x['measured_s'])} -> {duration(x['estimated_s'])} "
                     f"({x['scales_with']}, x{x['factor']:g})")
    lines.append("limits: " + "; ".join(est["limits"][:3]) + " (all in rehearsal.json)")
    return lines
