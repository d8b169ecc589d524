"""The bench's command line: `python -m bench [options]` (from the repository root).

Phases (each in bench/phases/; results in one JSON file per run under bench/results/,
summarised into docs/benchmarks.md by `python -m bench.summary`):

  (default)           tablemig's core against the physical limit and the naive DELETE +
                      VACUUM FULL, alternating on fresh copies (`--repeat`, `--skip`)
  --scale-test        also the same kept rows out of twice the total
  --smoke             the CI smoke: work measures of the core against the physical limit
  --whole-plan        the whole checklist plan (pytest PLAN --execute) per --plan-retention,
                      each step next to its physical limit, and the plan's peak RSS
  --workload          pgbench writing during a migration, against baselines
  --family            a parent with a child table, policy `keep` (refunds of old orders) or, with
                      `--family-policy follow`, `follow` (lines of orders of every age): tablemig
                      against the physical limit of the same live tables
  --trigger-overhead  pgbench with only the capture trigger installed
  --explain, --profile  diagnostics of the bulk load and of the statements

Every phase runs on a durable sandbox the bench starts (fsync, full_page_writes and
synchronous_commit on), or on `--reuse-dsn`; the data comes from `tablemig demo-data`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .phases import diagnostics, family, measure, smoke, trigger, whole_plan, workload
from .proc import loadavg, log, stop_children
from .results import RESULTS, engine_fingerprint, machine_facts, result_path, targets_report, write
from .runs import Bench
from .server import open_target, server_settings
from .source import cutoff, ensure_source

EXAMPLES = """examples (from the repository root):
  .venv/bin/python -m bench --rows 100000 --smoke --repeat 5 --shared-buffers 256MB   # the CI smoke
  .venv/bin/python -m bench                                  # 10M rows, keep 10 %: core vs physical vs naive
  .venv/bin/python -m bench --whole-plan --skip-measure      # the whole plan at 10M keeping 1M and 5M
  .venv/bin/python -m bench --repeat 3 --scale-test          # also 20M rows with the same 1M kept
  .venv/bin/python -m bench --workload --workload-seconds 200 --migration-delay 20
  .venv/bin/python -m bench --trigger-overhead --explain --profile
  .venv/bin/python -m bench --family --rows 1000000 --repeat 3   # orders + 3M refunds, child policy keep
  .venv/bin/python -m bench --family --family-policy follow      # 10M orders + 30M lines, child policy follow
  .venv/bin/python -m bench --keep-sandbox --sandbox-dir /tmp/tmb
  .venv/bin/python -m bench --reuse-dsn 'host=127.0.0.1 port=5432 dbname=tablemig user=postgres'
  .venv/bin/python -m bench.summary                          # rewrite docs/benchmarks.md from bench/results/
exit status: 0 done (targets missed are reported, not fatal, unless --strict); 1 smoke FAIL or
--strict target missed; 2 error; 130 interrupted."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--rows", type=int, default=10_000_000,
                   help="orders rows in the source table (default 10000000, ~1.4 GiB)")
    g.add_argument("--months", type=int, default=36, help="months of history for demo-data (default 36)")
    g.add_argument("--retention", type=float, default=0.1,
                   help="fraction kept by the measurement and the smoke (default 0.1)")
    g = p.add_argument_group("measurement")
    g.add_argument("--repeat", type=int, default=1,
                   help="rounds of the measurement, or pairs of the smoke (default 1)")
    g.add_argument("--batch-size", type=int, default=50_000,
                   help="tablemig --batch-size (initial; the engine adapts it; default 50000)")
    g.add_argument("--workers", type=int, default=1, help="tablemig --workers (default 1)")
    g.add_argument("--nice-ratio", type=float, help="tablemig --nice-ratio: pace the bulk work (default: none)")
    g.add_argument("--app-write-share", type=float,
                   help="tablemig --app-write-share: the write guard's share (default: tablemig's, 0.9; 0: off)")
    g.add_argument("--skip", action="append", default=[], choices=list(measure.METHODS),
                   help="leave a method out of the measurement (repeatable)")
    g.add_argument("--measure", action="store_true",
                   help="run the measurement even with another phase (it runs alone by default)")
    g.add_argument("--skip-measure", action="store_true", help="never run the measurement")
    g.add_argument("--warmup", type=int, default=None,
                   help="unmeasured rounds of tablemig and physical first (default 1 with --smoke, else 0)")
    g.add_argument("--strict", action="store_true", help="exit 1 when any target is missed")
    g.add_argument("--note", default="", help="a remark stored with the results (e.g. what else ran)")
    g = p.add_argument_group("smoke")
    g.add_argument("--smoke", action="store_true",
                   help="CI smoke: exit 1 when tablemig's core does more work than the limits allow")
    g.add_argument("--smoke-limit", type=float, default=10.0,
                   help="catastrophic bound on the core / physical wall-time ratio (default 10)")
    g.add_argument("--no-boost", action="store_true",
                   help="leave scheduling alone (by default the smoke runs at real-time priority if permitted)")
    g = p.add_argument_group("whole plan")
    g.add_argument("--whole-plan", action="store_true",
                   help="run the whole plan (pytest PLAN --execute) per --plan-retention")
    g.add_argument("--plan-retention", type=float, action="append",
                   help="retention of a whole-plan run (repeatable; default 0.1 and 0.5)")
    g.add_argument("--plan-max-lag", help="the plan's max_replication_lag (default: new-plan's)")
    g = p.add_argument_group("scale test")
    g.add_argument("--scale-test", action="store_true",
                   help="also migrate 2x rows over 2x months with retention/2 (same kept rows)")
    g = p.add_argument_group("family (child policies keep and follow)")
    g.add_argument("--family", action="store_true",
                   help="orders with a child table: tablemig against the physical limit")
    g.add_argument("--family-policy", choices=["keep", "follow"], default="keep",
                   help="keep: refunds of old orders keep them live (default); follow: lines of orders of every "
                        "age move with them")
    g.add_argument("--family-children", type=int,
                   help="the child's rows (default 3x --rows); keep: most referencing orders dated from the "
                        "cutoff on; follow: over the orders of every age")
    g.add_argument("--family-old-share", type=float, default=0.01,
                   help="share of the orders before the cutoff that one refund references (default 0.01)")
    g = p.add_argument_group("workload (pgbench)")
    g.add_argument("--workload", action="store_true", help="pgbench baseline, then pgbench during a migration")
    g.add_argument("--workload-seconds", type=int, default=0,
                   help="pgbench -T for each run (default: delay + 10x the expected migration + 15 s)")
    g.add_argument("--clients", type=int, default=4, help="pgbench -c (default 4)")
    g.add_argument("--threads", type=int, default=2, help="pgbench -j (default 2)")
    g.add_argument("--max-tries", type=int, default=10, help="pgbench --max-tries (default 10)")
    g.add_argument("--rate", type=float, default=0, help="pgbench -R target tps (default 0 = as fast as possible)")
    g.add_argument("--query-mode", default="simple", choices=["simple", "extended", "prepared"],
                   help="pgbench -M (default simple)")
    g.add_argument("--workload-cutoff", choices=["fixed", "retention"], default="fixed",
                   help="fixed (default): migrate with --cutoff = the cutoff computed before pgbench starts; "
                        "retention: --retention like the measurement")
    g.add_argument("--trigger-overhead", action="store_true",
                   help="pgbench without and with only the capture trigger installed (no load running)")
    g.add_argument("--trigger-seconds", type=int, default=40, help="pgbench -T of each --trigger-overhead run")
    g.add_argument("--migration-delay", type=float, default=2.0,
                   help="seconds between pgbench's start and the migration's (default 2)")
    g = p.add_argument_group("diagnostics")
    g.add_argument("--explain", action="store_true", help="EXPLAIN (ANALYZE, BUFFERS) of bulk-load chunks")
    g.add_argument("--profile", action="store_true", help="one in-process migration with statement timings")
    g = p.add_argument_group("server")
    g.add_argument("--reuse-dsn", help="use this server instead of starting a sandbox (needs CREATEDB; "
                                       "settings are recorded, not changed)")
    g.add_argument("--reuse-standby-dsn", help="its streaming standby (the whole plan's passive site)")
    g.add_argument("--sandbox-dir", help="sandbox root (default /tmp/tablemig-bench-<pid>)")
    g.add_argument("--keep-sandbox", action="store_true", help="leave the sandbox running at the end")
    g.add_argument("--shared-buffers", default="2GB", help="sandbox shared_buffers (default 2GB)")
    g.add_argument("--autovacuum", choices=["on", "off"],
                   help="sandbox autovacuum (default off with --smoke: a vacuum would add to the work "
                        "measured; else on)")
    g.add_argument("--keep-copies", action="store_true", help="do not drop the per-run databases")
    g.add_argument("--keep-logs", action="store_true", help="keep pgbench logs and the whole plan's backups")
    g.add_argument("--out", help="result JSON path (default bench/results/<time>_<phases>_<rows>.json)")
    a = p.parse_args(argv)
    if a.repeat < 1 or a.rows < 1000 or not 0 < a.retention < 1:
        p.error("need --repeat >= 1, --rows >= 1000 and 0 < --retention < 1")
    a.plan_retention = a.plan_retention or [0.1, 0.5]
    if not all(0 < r < 1 for r in a.plan_retention):
        p.error("need 0 < --plan-retention < 1")
    if not 0 <= a.family_old_share <= 1 or (a.family_children is not None and a.family_children < 1):
        p.error("need 0 <= --family-old-share <= 1 and --family-children >= 1")
    if a.warmup is None:
        a.warmup = 1 if a.smoke else 0
    if a.autovacuum is None:
        a.autovacuum = "off" if a.smoke else "on"
    return a


@dataclass(frozen=True)
class Phase:
    """A phase: whether it runs, how, what it adds to the targets, how it is printed."""

    name: str
    selected: Callable[[argparse.Namespace], bool]
    run: Callable[[Bench, dict[str, Any]], dict[str, Any]]
    report: Callable[[dict[str, Any], Bench], None]
    targets: Callable[[dict[str, Any]], dict[str, float | None]] = lambda _r: {}


def _others(a: argparse.Namespace) -> bool:
    return bool(a.smoke or a.whole_plan or a.workload or a.trigger_overhead or a.explain or a.profile
                or a.family)


def _estimate(results: dict[str, Any]) -> float | None:
    runs = (results.get("measure") or {}).get("runs") or []
    walls = sorted(r["wall_s"] for r in runs if r["method"] == "tablemig")
    return walls[len(walls) // 2] if walls else None


PHASES = (
    Phase("measure", lambda a: not a.skip_measure and (not _others(a) or a.measure or a.scale_test),
          lambda b, _r: measure.run(b), measure.report, measure.target_values),
    Phase("scale", lambda a: a.scale_test,
          lambda b, r: measure.run_scale(b, (r.get("measure") or {}).get("runs", [])), measure.report_scale,
          lambda r: {"scale_core_growth_pct": r.get("scale_core_growth_pct")}),
    Phase("smoke", lambda a: a.smoke, lambda b, _r: smoke.run(b), smoke.report),
    Phase("whole_plan", lambda a: a.whole_plan, lambda b, _r: whole_plan.run(b), whole_plan.report,
          whole_plan.target_values),
    Phase("workload", lambda a: a.workload, lambda b, r: workload.run(b, _estimate(r)), workload.report,
          workload.target_values),
    Phase("family", lambda a: a.family, lambda b, _r: family.run(b), family.report),
    Phase("trigger", lambda a: a.trigger_overhead, lambda b, _r: trigger.run(b), trigger.report),
    Phase("explain", lambda a: a.explain, lambda b, _r: diagnostics.explain(b), diagnostics.report_explain),
    Phase("profile", lambda a: a.profile, lambda b, _r: diagnostics.profile(b), diagnostics.report_profile),
)


def command_line(argv: list[str]) -> str:
    """The command that produced a result, as one runs it from the repository root."""
    return " ".join([".venv/bin/python -m bench", *map(shlex.quote, argv)])


def _print_source(results: dict[str, Any]) -> None:
    src, cut = results["source"], results["cutoff"]
    how = ("source reused" if src.get("reused") else
           f"generated by `tablemig demo-data` in {src['generate_seconds']:.1f} s + VACUUM ANALYZE "
           f"{src['vacuum_analyze_seconds']:.1f} s")
    print(f"\n== data: {src['rows']:,} orders ({src['database_bytes'] / 2**30:.2f} GiB database, orders "
          f"{src['orders_total_bytes'] / 2**30:.2f} GiB with indexes); {how}; cutoff {cut['cutoff']} keeps "
          f"{cut['kept_rows']:,} rows ==")
    st = results["server"]["settings"]
    print("server: " + ", ".join(f"{k}={v}" for k, v in st.items()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    phases = [ph for ph in PHASES if ph.selected(a)]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = RESULTS / f"{stamp}_work"
    workdir.mkdir(parents=True, exist_ok=True)
    out_path = Path(a.out) if a.out else result_path(stamp, [ph.name for ph in phases], a.rows)

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    results: dict[str, Any] = {"started": stamp, "argv": argv, "command": command_line(argv), "note": a.note,
                               "phases": [ph.name for ph in phases], "options": vars(a).copy(),
                               "machine": machine_facts(), "loadavg_at_start": loadavg(),
                               "engine_fingerprint_at_start": engine_fingerprint()}
    server: dict[str, Any] = {}
    results["server"] = server
    t_total = time.perf_counter()
    failed = True
    b: Bench | None = None
    try:
        with open_target(reuse_dsn=a.reuse_dsn, reuse_standby_dsn=a.reuse_standby_dsn, sandbox_dir=a.sandbox_dir,
                         shared_buffers=a.shared_buffers, autovacuum=a.autovacuum == "on", keep=a.keep_sandbox,
                         facts=server) as target:
            server["settings"] = server_settings(target)
            results["source"] = ensure_source(target, a.rows, workdir, months=a.months)
            cut = cutoff(target.dsn(results["source"]["database"]), a.retention)
            results["cutoff"] = cut.as_dict()
            log(f"cutoff {cut.cutoff}: keep {cut.kept_rows:,} of {cut.total:,} rows")
            b = Bench(target, a, workdir, results["source"], cut)
            for ph in phases:
                results[ph.name] = ph.run(b, results)
        failed = False
    except KeyboardInterrupt:
        log("interrupted")
        results["error"] = "interrupted"
    except Exception as exc:  # noqa: BLE001 - reported, and the sandbox still stopped
        traceback.print_exc()
        results["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        stop_children()
        _finish(results, phases, t_total, out_path)
    if failed or b is None:
        log(f"failed; partial results in {out_path}")
        return 130 if results.get("error") == "interrupted" else 2
    _print_source(results)
    for ph in phases:
        ph.report(results[ph.name], b)
    print(f"\nresults: {out_path} (total {results['total_seconds']:.0f} s)")
    return _exit_status(a, results)


def _finish(results: dict[str, Any], phases: list[Phase], t_total: float, out_path: Path) -> None:
    """The run's totals and the targets of the phases that ran, written to `out_path`."""
    results["total_seconds"] = round(time.perf_counter() - t_total, 1)
    results["loadavg_at_end"] = loadavg()
    values: dict[str, float | None] = {}
    for ph in phases:
        if ph.name in results:
            values.update(ph.targets(results[ph.name]))
    results["targets"] = targets_report(values)
    write(out_path, results)


def _exit_status(a: argparse.Namespace, results: dict[str, Any]) -> int:
    """1 when the smoke failed, or with --strict when a target was missed; else 0."""
    if a.smoke and results["smoke"]["verdict"] != "PASS":
        return 1
    if a.strict and any(t["verdict"] == "MISSED" for t in results["targets"].values()):
        return 1
    return 0


def entry() -> None:
    """`python -m bench`: exit status as documented in the help."""
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - an error before the results could be written
        traceback.print_exc()
        sys.exit(2)
