"""The CI smoke (`--smoke`): tablemig's core against the physical limit, judged on work that
load cannot change.

Each pair: on a fresh copy, `tablemig plan` then `tablemig migrate` (the real CLI); on
another, the physical limit (`physical.copy_kept`). The work of each (`workstats.Work`:
rows and blocks of the data tables, WAL) comes from the server's cumulative statistics once
its sessions have ended; the core's is the migrate's less the plan's (the plan, which counts
the rows on each side of the cutoff, runs inside `migrate` too). The verdict takes, per
measure, the median over the pairs of core / physical, and fails above LIMITS: the same
statements on the same data do the same work however busy the machine is, so the margin
needs to absorb no noise, only a deliberate change of what tablemig does. The plan's own
rows read are judged per row of the table.

The wall-time ratio (core seconds / physical seconds) is reported, and fails the smoke only
above `--smoke-limit` (10): far beyond what load makes of it, it catches a migration that
waits instead of working (a rest, a retry loop), which reads nothing."""

from __future__ import annotations

import statistics
from typing import Any

from .. import workstats
from ..proc import log, run_child, tail
from ..results import fmt, median, ratio
from ..runs import Bench, check_physical, check_tablemig, fresh_copy, measured, plan_cmd, run_physical, run_tablemig
from ..server import boost, checkpoint, scalar

# Median over the pairs of core / physical (plan: rows read per row of the table) above
# which the smoke fails. Calibrated at --rows 100000 --retention 0.1, where the pairs measure
# 2.548, 1.067, 1.067 and 2.210 with no spread (WAL: a few hundred bytes), loaded or not: one
# more pass over the 10,000 kept rows of one table makes rows_read 2.80; see
# docs/benchmarks.md for the regressions each limit was shown to catch.
LIMITS = {"rows_read": 2.7, "blocks": 1.12, "wal_bytes": 1.15, "plan_rows_read": 2.5}


def _tablemig(b: Bench, label: str) -> dict[str, Any]:
    t = b.target
    with fresh_copy(b, label) as (db, facts):
        before = workstats.read(t, db)
        err = b.workdir / f"{label}.plan.err"
        done = run_child(plan_cmd(t.dsn(db), b.cut.retention), b.workdir / f"{label}.plan.out", err)
        if done.code != 0:
            raise RuntimeError(f"tablemig plan failed (exit {done.code}):\n{tail(err)}")
        plan, _ = workstats.since(t, db, before)
        checkpoint(t)  # the migrate's WAL then holds its own full-page images, as the plan's did
        before = workstats.read(t, db)
        res = run_tablemig(b, db, label)
        whole, _ = workstats.since(t, db, before)
        check_tablemig(b, db, res)
    res.update(facts, plan_wall_s=round(done.seconds, 3), work={"plan": plan.as_dict(), "migrate": whole.as_dict(),
                                                                "core": (whole - plan).as_dict()})
    return res


def _physical(b: Bench, label: str) -> dict[str, Any]:
    t = b.target
    with fresh_copy(b, label) as (db, facts):
        before = workstats.read(t, db)
        res = run_physical(b, db)
        work, _ = workstats.since(t, db, before)
        check_physical(b, db, res)
    res.update(facts, work=work.as_dict())
    return res


def _spread(xs: list[float]) -> dict[str, float | None]:
    return {"median": median(xs), "min": min(xs, default=None), "max": max(xs, default=None),
            "stdev": statistics.pstdev(xs) if xs else None}


def run(b: Bench) -> dict[str, Any]:
    a = b.args
    scheduling = boost(b.target.sandbox) if b.target.sandbox is not None and not a.no_boost else ""
    log(f"scheduling of this process and the primary: {scheduling or 'unchanged'}")
    if scalar(b.target.conn, "SHOW autovacuum") != "off":
        log("WARNING: autovacuum is on: its reads and WAL may add to the work measured")
    for i in range(1, a.warmup + 1):  # not counted: first runs pay for cold caches and processes
        measured(b, "tablemig", f"warmup_tablemig_{i}")
        measured(b, "physical", f"warmup_physical_{i}")
    pairs = []
    for i in range(1, a.repeat + 1):
        pair = pair_of(_tablemig(b, f"smoke_tablemig_{i}"), _physical(b, f"smoke_physical_{i}"), b.cut.total)
        log(f"pair {i}: " + ", ".join(f"{k} {fmt(v)}" for k, v in pair["ratios"].items()))
        pairs.append(pair)
    return judge(pairs, a.smoke_limit, scheduling)


def pair_of(tm: dict[str, Any], ph: dict[str, Any], table_rows: int) -> dict[str, Any]:
    """A tablemig run and the physical run after it, with the ratios the verdict judges."""
    core, plan, phys = tm["work"]["core"], tm["work"]["plan"], ph["work"]
    return {"tablemig": tm, "physical": ph, "ratios": {
        **{k: ratio(core[k], phys[k]) for k in workstats.JUDGED},
        "plan_rows_read": ratio(plan["rows_read"], table_rows),
        "wall": ratio(tm["core_s"], ph["elapsed_s"])}}


def judge(pairs: list[dict[str, Any]], wall_limit: float, scheduling: str = "") -> dict[str, Any]:
    """Medians, spreads and the verdict of the pairs."""
    ratios: dict[str, Any] = {}
    for k in (*LIMITS, "wall"):
        xs = [p["ratios"][k] for p in pairs if p["ratios"][k] is not None]
        limit = LIMITS.get(k, wall_limit)
        spread = _spread(xs)
        ratios[k] = {**spread, "limit": limit, "ok": spread["median"] is not None and spread["median"] <= limit}
    measures: dict[str, Any] = {}
    for side, path in (("core", ("tablemig", "core")), ("plan", ("tablemig", "plan")), ("physical", ("physical",))):
        works = []
        for p in pairs:
            w: Any = p[path[0]]["work"]
            works.append(w[path[1]] if len(path) > 1 else w)
        measures[side] = {f: _spread([float(w[f]) for w in works]) for f in workstats.Work.__dataclass_fields__}
    measures["seconds"] = {"core": _spread([p["tablemig"]["core_s"] for p in pairs]),
                           "migrate_wall": _spread([p["tablemig"]["wall_s"] for p in pairs]),
                           "physical": _spread([p["physical"]["elapsed_s"] for p in pairs])}
    failed = [k for k, r in ratios.items() if not r["ok"]]
    rows_ok = all(p["tablemig"]["ok"] and p["physical"]["ok"] for p in pairs)
    if not rows_ok:
        failed.append("rows kept")
    return {"pairs": pairs, "ratios": ratios, "measures": measures, "scheduling": scheduling,
            "failed": failed, "verdict": "FAIL" if failed else "PASS", "rows_ok": rows_ok}


def report(res: dict[str, Any], b: Bench) -> None:
    print(f"\n== smoke: {b.cut.total:,} rows keeping {b.cut.kept_rows:,}, {len(res['pairs'])} pairs "
          f"(tablemig plan + migrate, physical limit), scheduling {res['scheduling'] or 'unchanged'} ==")
    print(f"{'measure':<16}{'core':>14}{'physical':>14}{'ratio (median)':>16}{'min-max':>16}{'limit':>8}")
    for k in ("rows_read", "blocks", "wal_bytes"):
        r = res["ratios"][k]
        print(f"{k:<16}{res['measures']['core'][k]['median']:>14,.0f}{res['measures']['physical'][k]['median']:>14,.0f}"
              f"{fmt(r['median'], '.3f'):>16}{fmt(r['min'], '.3f') + '-' + fmt(r['max'], '.3f'):>16}{r['limit']:>8}"
              f"  {'ok' if r['ok'] else 'OVER'}")
    r = res["ratios"]["plan_rows_read"]
    print(f"{'plan rows read':<16}{res['measures']['plan']['rows_read']['median']:>14,.0f}{b.cut.total:>14,}"
          f"{fmt(r['median'], '.3f'):>16}{fmt(r['min'], '.3f') + '-' + fmt(r['max'], '.3f'):>16}{r['limit']:>8}"
          f"  {'ok' if r['ok'] else 'OVER'}  (per row of the table)")
    s, w = res["measures"]["seconds"], res["ratios"]["wall"]
    print(f"{'wall time s':<16}{s['core']['median']:>14.3f}{s['physical']['median']:>14.3f}"
          f"{fmt(w['median'], '.2f'):>16}"
          f"{fmt(w['min'], '.2f') + '-' + fmt(w['max'], '.2f'):>16}{w['limit']:>8}  {'ok' if w['ok'] else 'OVER'}"
          "  (reported; fails only above the limit)")
    print(f"SMOKE {res['verdict']}" + (f": over the limit: {', '.join(res['failed'])}" if res["failed"] else "")
          + ("" if res["rows_ok"] else " (a run kept another number of rows than the cutoff keeps)"))
