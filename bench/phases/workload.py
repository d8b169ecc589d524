"""pgbench writing while tablemig migrates (`--workload`): a baseline on an untouched copy,
the same load during a migration of another copy (started `--migration-delay` s in), and a
second baseline (the machine's speed drifts between minutes). The target: the throughput
from the capture's install to the swap against the two baselines over the same seconds
after pgbench's start; also the worst latency around the swap, failures, and what the
write guard measured and rested."""

from __future__ import annotations

import json
import math
import subprocess
import time
from typing import Any

from .. import pgbench
from ..pgbench import Txns, overlapping_worst, window
from ..proc import log, run_child, tail
from ..results import engine_fingerprint, fmt, verdict
from ..runs import CORE_STEPS, PACING_KEYS, Bench, fresh_copy, migrate_cmd, migration_events, num


def _seconds(b: Bench, est_migration_s: float | None) -> int:
    a = b.args
    if a.workload_seconds:
        return int(a.workload_seconds)
    # ~26 s unloaded at 10M rows on 2 cores; under load it may take twice as long, and the
    # write guard (on unless --app-write-share 0) rests several times its work
    est = est_migration_s if est_migration_s else 10 + b.cut.total * 2.5e-6
    factor = 3 if a.app_write_share == 0 else 10
    return int(math.ceil(a.migration_delay + est * factor + 15))


def _baseline(b: Bench, label: str, seconds: int) -> tuple[dict[str, Any], Txns]:
    """pgbench alone on an untouched copy."""
    with fresh_copy(b, label) as (db, _facts):
        res, txns, _ = pgbench.run(b, db, seconds, label)
    log(f"{label}: {res['all']['tps']} tps, worst {res['all']['worst_ms']} ms")
    return res, txns


def run(b: Bench, est_migration_s: float | None) -> dict[str, Any]:
    a = b.args
    seconds = _seconds(b, est_migration_s)
    log(f"workload: pgbench -c {a.clients} -j {a.threads} -T {seconds} (a baseline, a run with a "
        f"migration starting after {a.migration_delay} s, another baseline)")
    base, base_txns = _baseline(b, "wl_base", seconds)
    with fresh_copy(b, "wl_mig") as (db, _facts):
        def migrate(p: subprocess.Popen[bytes]) -> dict[str, Any]:
            time.sleep(a.migration_delay)
            if p.poll() is not None:
                raise RuntimeError("pgbench ended before the migration started")
            out, err = b.workdir / "wl_migrate.out", b.workdir / "wl_migrate.err"
            fp = engine_fingerprint()
            started = time.time()
            fixed = b.cut.cutoff if a.workload_cutoff == "fixed" else None
            done = run_child(migrate_cmd(a, b.target.dsn(db), b.cut.retention, cutoff=fixed), out, err)
            ended = time.time()
            if done.code != 0:
                raise RuntimeError(f"tablemig migrate under load failed (exit {done.code}):\n{tail(err)}")
            if p.poll() is not None:
                log("WARNING: pgbench ended before the migration finished; raise --workload-seconds")
            res = json.loads(out.read_text())
            return {"started_at": started, "ended_at": ended, "wall_s": round(done.seconds, 3),
                    "peak_rss_mb": round(done.peak_rss_mb, 1), "timings": res.get("timings"),
                    "nice_ratio": res.get("nice_ratio"), "nice_slept_s": res.get("nice_slept_s"),
                    "pacing": {k: res.get(k) for k in PACING_KEYS}, "lock_hold_ms": num(res.get("lock_hold_ms")),
                    "swap_attempts": res.get("swap_attempts"), "pgbench_running_at_end": p.poll() is None,
                    "engine": fp}

        mig, txns, m = pgbench.run(b, db, seconds, "wl_mig", during=migrate)
        events = migration_events(b.target.dsn(db))
    base2, base2_txns = _baseline(b, "wl_base_after", seconds)
    return analyse(a.migration_delay, seconds, (base, base_txns), (base2, base2_txns), mig, txns, m, events)


def analyse(delay: float, seconds: int, before: tuple[dict[str, Any], Txns], after: tuple[dict[str, Any], Txns],
            mig: dict[str, Any], txns: Txns, m: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Windows of the migration run by phase, against the baselines."""
    base, base_txns = before
    base2, base2_txns = after
    ev: dict[str, float] = {f"{e['operation']}:{e['status']}": e["at"] for e in events}
    t_cap_start: float = m["started_at"]
    t_cap_done: float | None = ev.get("capture:installed")
    t_backfill, t_index, t_verify = ev.get("backfill:done"), ev.get("index:done"), ev.get("verify:match")
    t_switch, t_swap_end = ev.get("replay:switched"), ev.get("swap:done")
    switch_ev = next((e for e in events if e["operation"] == "replay" and e["status"] == "switched"), None)
    switch_hold_ms = ((switch_ev or {}).get("details") or {}).get("lock_hold_ms")
    hold = (m.get("lock_hold_ms") or 0) / 1000
    t_swap_start: float | None = t_swap_end - hold if t_swap_end else None
    phases: dict[str, Any] = {}
    if t_swap_start and t_swap_end:
        # from the capture trigger's install (the plan before it only reads) to the swap
        phases["capture_to_swap"] = window(txns, t_cap_done or t_cap_start, t_swap_start)
        phases["start_to_swap"] = window(txns, t_cap_start, t_swap_start)
        phases["before_migration"] = window(txns, mig["started_at"] + 1, t_cap_start)
        # the same run's own baseline: the seconds before the migration starts (after a warm-up)
        phases["before_migration_warm"] = window(txns, mig["started_at"] + min(5.0, delay / 2), t_cap_start)
        phases["after_swap"] = window(txns, t_swap_end + 1, mig["ended_at"])
    for name, (x, y) in {"plan+capture": (t_cap_start, t_cap_done), "backfill": (t_cap_done, t_backfill),
                         "index": (t_backfill, t_index), "replay": (t_index, t_switch),
                         "verify": (t_switch or t_index, t_verify), "swap": (t_verify, t_swap_end)}.items():
        if x and y:
            phases[name] = window(txns, x, y)
    both = [x for x in (base["all"]["tps"], base2["all"]["tps"]) if x]
    base_tps = round(sum(both) / len(both), 1) if both else None
    cap_tps = phases.get("capture_to_swap", {}).get("tps")

    def same_seconds(run: dict[str, Any], run_txns: Txns) -> dict[str, Any]:
        """A baseline over the seconds after its start that the capture-to-swap window spans
        in the migration run (tps drifts as the table grows and after the checkpoint)."""
        if not t_swap_start:
            return {}
        return window(run_txns, run["started_at"] + ((t_cap_done or t_cap_start) - mig["started_at"]),
                      run["started_at"] + (t_swap_start - mig["started_at"]))

    same_before, same_after = same_seconds(base, base_txns), same_seconds(base2, base2_txns)
    pair = [float(x["tps"]) for x in (same_before, same_after) if x.get("tps")]
    same_tps = round(sum(pair) / len(pair), 1) if pair else None
    warm = phases.get("before_migration_warm", {}).get("tps")
    failed = (mig["pgbench"].get("failed") or 0) + mig["aborted_clients"] + mig["failed_in_log"]
    summary = {
        "seconds": seconds, "baseline_tps": base_tps,
        "baseline_worst_ms": base["all"]["worst_ms"], "baseline_p99_ms": base["all"]["p99_ms"],
        "migration_run_tps": mig["all"]["tps"], "capture_to_swap_tps": cap_tps,
        # the target: capture-to-swap tps against the two baselines over the same seconds
        "workload_capture_tps_pct": None if not same_tps or cap_tps is None else cap_tps / same_tps * 100,
        "capture_tps_pct_whole_baselines": None if not base_tps or cap_tps is None else cap_tps / base_tps * 100,
        "baseline_before_tps": base["all"]["tps"], "baseline_after_tps": base2["all"]["tps"],
        "baseline_same_window_tps": same_tps, "baseline_same_window_before_tps": same_before.get("tps"),
        "baseline_same_window_after_tps": same_after.get("tps"), "same_run_before_tps": warm,
        "capture_tps_pct_same_run": None if not warm or cap_tps is None else cap_tps / warm * 100,
        "worst_ms_overall": mig["all"]["worst_ms"], "p99_ms_overall": mig["all"]["p99_ms"],
        "workload_swap_worst_ms": overlapping_worst(txns, t_swap_start - 1, t_swap_end + 1)
        if t_swap_start and t_swap_end else None,
        "capture_install_worst_ms": overlapping_worst(txns, t_cap_done - 1, t_cap_done + 1) if t_cap_done else None,
        # the switch to direct capture holds SHARE ROW EXCLUSIVE on the table: a second stall
        "switch_worst_ms": overlapping_worst(txns, t_switch - 1, t_switch + 1) if t_switch else None,
        "switch_lock_hold_ms": switch_hold_ms,
        "baseline_failed": sum(int(x["pgbench"].get("failed") or 0) + int(x["aborted_clients"]) for x in (base, base2)),
        "workload_failed": failed, "migration_failed_pgbench": mig["pgbench"].get("failed"),
        "aborted_clients": mig["aborted_clients"],
        "swap_covered": bool(t_swap_end and t_swap_end + 1 < mig["ended_at"]),
        "lock_hold_ms": m.get("lock_hold_ms"), "swap_attempts": m.get("swap_attempts"),
        "migration_wall_s": m["wall_s"], "migration_timings": m["timings"], "nice_ratio": m.get("nice_ratio"),
        "nice_slept_s": m.get("nice_slept_s"), "pacing": m.get("pacing"),
        "migration_core_s": round(sum((m["timings"] or {}).get(k, 0) for k in CORE_STEPS), 3),
    }
    return {"summary": summary, "phases": phases, "baseline": base, "baseline_after": base2, "migration_run": mig,
            "migration": m, "events": events,
            "timestamps": {"capture_start": t_cap_start, "capture_installed": t_cap_done, "backfill_done": t_backfill,
                           "index_done": t_index, "replay_switched": t_switch, "verify_done": t_verify,
                           "swap_start": t_swap_start, "swap_done": t_swap_end}}


def target_values(res: dict[str, Any]) -> dict[str, float | None]:
    s = res["summary"]
    return {k: s.get(k) for k in ("workload_capture_tps_pct", "workload_swap_worst_ms", "workload_failed")}


def report(w: dict[str, Any], b: Bench) -> None:
    a, s = b.args, w["summary"]
    print(f"\n== workload: pgbench -c {a.clients} -j {a.threads} -T {s['seconds']} --max-tries={a.max_tries} "
          f"-M {a.query_mode}" + (f" -R {a.rate}" if a.rate else "")
          + " (70 % INSERT / 30 % UPDATE of recent orders) ==")
    if a.rate:
        print("(with -R every latency includes pgbench's schedule lag: once the server falls behind the rate, "
              "transactions wait behind earlier ones; a lock stall shows as the swap's lock hold)")
    for title, key in (("baseline before", "baseline"), ("baseline after ", "baseline_after")):
        x = w[key]
        print(f"{title} (no migration): {x['all']['committed']:,} txns, {fmt(x['all']['tps'], '.1f')} tps, p50 "
              f"{x['all']['p50_ms']} ms, p99 {x['all']['p99_ms']} ms, worst {x['all']['worst_ms']} ms "
              f"(pgbench's own tps {x['pgbench'].get('tps')})")
    mr = w["migration_run"]
    print(f"with migration:                {mr['all']['committed']:,} txns, {fmt(s['migration_run_tps'], '.1f')}"
          f" tps, p50 {mr['all']['p50_ms']} ms, p99 {mr['all']['p99_ms']} ms, worst {mr['all']['worst_ms']} ms "
          f"(pgbench's own tps {mr['pgbench'].get('tps')})")
    print(f"migration under load: wall {s['migration_wall_s']:.1f} s, core {s['migration_core_s']:.1f} s, "
          f"timings {s['migration_timings']}, swap lock {s['lock_hold_ms']} ms, attempts {s['swap_attempts']}; "
          f"nice ratio {s.get('nice_ratio')} (slept {s.get('nice_slept_s')} s)")
    g = s.get("pacing") or {}
    if g.get("app_write_share"):
        print(f"write guard: keep {g['app_write_share']:g} of the application's writes; its free rate "
              f"{fmt(g.get('app_write_rate'), ',.0f')}/s, kept {fmt(g.get('app_share_kept'), '.3f')} by the "
              f"guard's own count ({g.get('app_writes')} of {g.get('app_writes_expected')} expected), rested "
              f"{fmt(g.get('rested_s'), '.1f')} s")
    else:
        print("write guard: off")
    print(f"{'window':<18}{'seconds':>9}{'txns':>9}{'tps':>9}{'p50 ms':>9}{'p99 ms':>9}{'worst ms':>10}")
    for name in ("before_migration", "plan+capture", "backfill", "index", "replay", "verify", "swap",
                 "start_to_swap", "capture_to_swap", "after_swap"):
        ph = w["phases"].get(name)
        if ph:
            print(f"{name:<18}{ph['seconds']:>9.1f}{ph['committed']:>9,}{fmt(ph['tps'], '.1f'):>9}"
                  f"{fmt(ph['p50_ms'], '.1f'):>9}{fmt(ph['p99_ms'], '.1f'):>9}{fmt(ph['worst_ms'], '.1f'):>10}")
    print(f"tps capture->swap / baselines over the same seconds = {fmt(s['workload_capture_tps_pct'], '.1f'):>5} %  "
          f"target >= 85 %  {verdict('workload_capture_tps_pct', s['workload_capture_tps_pct'])}")
    print(f"  (capture->swap {fmt(s['capture_to_swap_tps'], '.1f')} tps; the baselines over the same seconds after "
          f"pgbench's start: {fmt(s['baseline_same_window_before_tps'], '.1f')} before, "
          f"{fmt(s['baseline_same_window_after_tps'], '.1f')} after; against the baselines' whole runs "
          f"{fmt(s['capture_tps_pct_whole_baselines'], '.1f')} %; against this run's own {a.migration_delay:g} s "
          f"before the migration ({fmt(s['same_run_before_tps'], '.1f')} tps) "
          f"{fmt(s['capture_tps_pct_same_run'], '.1f')} %)")
    print(f"worst latency within +-1 s of swap = {fmt(s['workload_swap_worst_ms'], '.1f')} ms  target <= 250 ms  "
          f"{verdict('workload_swap_worst_ms', s['workload_swap_worst_ms'])}")
    print(f"worst latency overall = {fmt(s['worst_ms_overall'], '.1f')} ms; around capture install (+-1 s) = "
          f"{fmt(s['capture_install_worst_ms'], '.1f')} ms; around the switch to direct capture (+-1 s) = "
          f"{fmt(s['switch_worst_ms'], '.1f')} ms (its lock held {fmt(s['switch_lock_hold_ms'], '.1f')} ms)")
    print(f"failed transactions = {s['workload_failed']} (pgbench failed {s['migration_failed_pgbench']}, aborted "
          f"clients {s['aborted_clients']})  target 0  {verdict('workload_failed', s['workload_failed'])}")
    if not s["swap_covered"]:
        print("WARNING: pgbench did not run until 1 s after the swap; raise --workload-seconds")
