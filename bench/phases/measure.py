"""tablemig's core against the physical limit and the naive DELETE + VACUUM FULL, each on
a fresh copy of the source, in alternating order so that slow drifts of the machine hit
every method alike (`--repeat R`; `--scale-test` adds the same at twice the rows)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..proc import log
from ..results import fmt, median, ratio, verdict
from ..runs import ALL_STEPS, Bench, measured
from ..source import cutoff, ensure_source

METHODS = ("tablemig", "physical", "naive")


def run(b: Bench) -> dict[str, Any]:
    """Warm-up rounds (`--warmup`, not counted), then `--repeat` rounds of every method."""
    order = [m for m in METHODS if m not in b.args.skip]
    for i in range(1, b.args.warmup + 1):  # first runs pay for cold caches and processes
        for method in order:
            if method != "naive":
                measured(b, method, f"warmup_{method}_{i}")
    runs = [measured(b, method, f"{method}_{i}") for i in range(1, b.args.repeat + 1) for method in order]
    return {"runs": runs, "summary": summarize(runs)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per method and the ratios the targets judge."""
    tm, ph, nv = ([r for r in runs if r["method"] == m] for m in METHODS)
    s: dict[str, Any] = {
        "tablemig_core_s": median(r["core_s"] for r in tm),
        "tablemig_wall_s": median(r["wall_s"] for r in tm),
        "tablemig_wal_bytes": median(r["wal_bytes"] for r in tm),
        "tablemig_lock_hold_ms": median(r["lock_hold_ms"] for r in tm),
        "peak_rss_mb": max([r["peak_rss_mb"] for r in tm], default=None),
        "physical_s": median(r["elapsed_s"] for r in ph),
        "physical_wal_bytes": median(r["wal_bytes"] for r in ph),
        "naive_s": median(r["elapsed_s"] for r in nv),
        "naive_wal_bytes": median(r["wal_bytes"] for r in nv),
        "naive_lock_hold_ms": median(r["lock_hold_ms"] for r in nv),
        "timings_median": {k: median(r["timings"].get(k) for r in tm) for k in ALL_STEPS},
        "tablemig_core_min_s": min([r["core_s"] for r in tm], default=None),
        "physical_min_s": min([r["elapsed_s"] for r in ph], default=None),
        "naive_min_s": min([r["elapsed_s"] for r in nv], default=None),
    }
    s["core_over_physical_min"] = ratio(s["tablemig_core_min_s"], s["physical_min_s"])
    s["core_over_physical"] = ratio(s["tablemig_core_s"], s["physical_s"])
    # each tablemig run against the physical run right after it: the machine's slow drifts
    # (another VM, the page cache) hit both alike and cancel out
    s["core_over_physical_paired"] = median(ratio(t["core_s"], p["elapsed_s"]) for t, p in zip(tm, ph, strict=False))
    s["naive_over_core"] = ratio(s["naive_s"], s["tablemig_core_s"])
    s["wal_tablemig_over_naive"] = ratio(s["tablemig_wal_bytes"], s["naive_wal_bytes"])
    s["all_rows_ok"] = all(r.get("ok") for r in runs)
    s["cutoff_matches"] = all(r.get("cutoff_matches", True) for r in runs)
    return s


def target_values(res: dict[str, Any]) -> dict[str, float | None]:
    s = res["summary"]
    return {k: s.get(k) for k in ("core_over_physical", "naive_over_core", "wal_tablemig_over_naive",
                                  "peak_rss_mb")}


def print_runs(title: str, runs: list[dict[str, Any]]) -> None:
    print(f"\n== {title} ==")
    head = (f"{'run':<16}{'method':<10}{'rows':>11}{'elapsed s':>10}{'wall s':>9}{'WAL MiB':>9}"
            f"{'lock ms':>9}{'RSS MB':>8}{'load':>6}  steps (s)")
    print(head)
    print("-" * len(head))
    for r in runs:
        steps = r.get("timings") or r.get("steps") or {}
        steps_s = " ".join(f"{k}={v:g}" for k, v in steps.items())
        print(f"{r['label']:<16}{r['method']:<10}{r['rows_total']:>11,}{r['elapsed_s']:>10.2f}"
              f"{fmt(r.get('wall_s')):>9}{r['wal_bytes'] / 2**20:>9.0f}"
              f"{fmt(r.get('lock_hold_ms'), '.1f'):>9}{fmt(r.get('peak_rss_mb'), '.0f'):>8}"
              f"{fmt(r.get('loadavg_before'), '.1f'):>6}  {steps_s}" + ("" if r.get("ok") else "  ROWS MISMATCH"))
    print("(elapsed = tablemig core capture+backfill+index+replay+verify+swap; physical/naive total;"
          " wall = whole CLI process; naive lock = VACUUM FULL; load = 1-min load average before the run)")
    engines = {r["engine"] for r in runs if r.get("engine")}
    if len(engines) > 1:
        print(f"WARNING: the tablemig sources changed between runs (fingerprints {sorted(engines)})")


def report(res: dict[str, Any], b: Bench) -> None:
    a = b.args
    runs = res["runs"]
    copies = [r["copy_seconds"] for r in runs]
    print(f"per-run database copy (not measured): {min(copies):.1f}-{max(copies):.1f} s")
    print_runs(f"measurement: {b.cut.total:,} rows, retention {a.retention}, batch size {a.batch_size}, "
               f"workers {a.workers}, repeat {a.repeat}", runs)
    for r in runs:
        if r["method"] == "tablemig":
            print(f"  {r['label']}: {r['batches']} batches, rows copied {r['rows_copied']:,}; "
                  f"last progress: {r['last_progress']}")
    s = res["summary"]
    print("\n== ratios (medians over repeats) ==")
    for key, label, target, spec in (
            ("core_over_physical", "tablemig core / physical limit", "<= 1.5", ".2f"),
            ("naive_over_core", "naive / tablemig core", ">= 3", ".2f"),
            ("wal_tablemig_over_naive", "tablemig WAL / naive WAL", "<= 0.2", ".3f"),
            ("peak_rss_mb", "tablemig peak RSS (MB)", "<= 200", ".0f")):
        print(f"{label:<34} = {fmt(s[key], spec):>8}   target {target:<18} {verdict(key, s[key])}")
    print(f"(median of the per-pair ratios: {fmt(s['core_over_physical_paired'])}; best runs: tablemig core "
          f"{fmt(s['tablemig_core_min_s'])} s / physical {fmt(s['physical_min_s'])} s = "
          f"{fmt(s['core_over_physical_min'])})")
    print(f"tablemig core {fmt(s['tablemig_core_s'])} s (wall {fmt(s['tablemig_wall_s'])} s), physical "
          f"{fmt(s['physical_s'])} s, naive {fmt(s['naive_s'])} s; swap lock {fmt(s['tablemig_lock_hold_ms'], '.1f')}"
          f" ms vs naive lock {fmt(s['naive_lock_hold_ms'], '.0f')} ms")
    if not s["all_rows_ok"] or not s["cutoff_matches"]:
        print("WARNING: a run kept a different number of rows or used another cutoff")


def run_scale(b: Bench, base_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The same kept rows out of twice the total: 2N rows over twice the months with half
    the retention (the kept rows span the same days at the same density, so order_items,
    which covers the last 30 days, still references kept orders only), alternating tablemig
    and the physical limit. The core's growth is the target."""
    a = b.args
    src2 = ensure_source(b.target, a.rows * 2, b.workdir, months=a.months * 2)
    cut2 = cutoff(b.target.dsn(src2["database"]), a.retention / 2)
    b2 = dataclasses.replace(b, source=src2, cut=cut2)
    log(f"scale: {cut2.total:,} rows, retention {cut2.retention}: keeps {cut2.kept_rows:,} rows")
    runs = []
    for i in range(1, a.repeat + 1):
        runs.append(measured(b2, "tablemig", f"tablemig_2x_{i}"))
        runs.append(measured(b2, "physical", f"physical_2x_{i}"))
    base_tm = [r for r in base_runs if r["method"] == "tablemig"]
    tm2 = [r for r in runs if r["method"] == "tablemig"]
    core1, core2 = median(r["core_s"] for r in base_tm), median(r["core_s"] for r in tm2)
    ph1 = median(r["elapsed_s"] for r in base_runs if r["method"] == "physical")
    ph2 = median(r["elapsed_s"] for r in runs if r["method"] == "physical")
    return {"source": src2, "cutoff": cut2.as_dict(), "runs": runs, "core_1x_s": core1, "core_2x_s": core2,
            "scale_core_growth_pct": None if not core1 or core2 is None else (core2 / core1 - 1) * 100,
            "physical_1x_s": ph1, "physical_2x_s": ph2,
            "physical_growth_pct": None if not ph1 or ph2 is None else (ph2 / ph1 - 1) * 100,
            "peak_rss_1x_mb": max([r["peak_rss_mb"] for r in base_tm], default=None),
            "peak_rss_2x_mb": max([r["peak_rss_mb"] for r in tm2], default=None),
            "steps_1x_2x": {k: (median(r["timings"].get(k) for r in base_tm), median(r["timings"].get(k) for r in tm2))
                            for k in ALL_STEPS}}


def report_scale(sc: dict[str, Any], b: Bench) -> None:
    print_runs(f"scale test: {sc['cutoff']['total']:,} rows, the same {sc['cutoff']['kept_rows']:,} kept rows",
               sc["runs"])
    g = sc["scale_core_growth_pct"]
    print(f"\ntablemig core {fmt(sc['core_1x_s'])} s at {b.cut.total:,} rows -> {fmt(sc['core_2x_s'])} s at "
          f"{sc['cutoff']['total']:,}: growth {fmt(g, '+.1f')} %   target <= 15 %   "
          f"{verdict('scale_core_growth_pct', g)}")
    print(f"physical limit {fmt(sc['physical_1x_s'])} s -> {fmt(sc['physical_2x_s'])} s (growth "
          f"{fmt(sc['physical_growth_pct'], '+.1f')} %); peak RSS {fmt(sc['peak_rss_1x_mb'], '.0f')} MB -> "
          f"{fmt(sc['peak_rss_2x_mb'], '.0f')} MB")
    print("per step (1x -> 2x): " + ", ".join(f"{k} {fmt(v[0])}->{fmt(v[1])}" for k, v in sc["steps_1x_2x"].items()))
