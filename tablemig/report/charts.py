"""Charts and per-table measurements of the run report (used by `tablemig.report.model`).

Charts are small static PNGs (matplotlib, Agg canvas) returned as `data:` URIs. Only the
object-oriented API is used (`Figure` + `FigureCanvasAgg`), never `pyplot`: no global backend
switch in the host process and no GUI. Every chart function returns None when its data is
missing or unusable, so the report simply leaves the chart out; a chart that raises is
reported in the page instead of costing the report.

The section builders (`table_context`, `replication_context`) take the redacted, JSON-like
run data of `tablemig.report.model`.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import re
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from ..checklist.wording import fmt, pacing_text
from ..pg.connect import redact
from .format import columns, mapping, records, safe_name

WIDTH_IN, HEIGHT_IN, DPI = 7.0, 3.0, 100

KEPT = "#1f6feb"
ARCHIVED = "#a8b3bf"
CUTOFF = "#cf222e"
LINE = "#1f6feb"
RATE = "#bf8700"
LAG = "#8250df"
PAUSED = "#cf222e"
TARGET_BATCH_SECONDS = 0.5  # the backfill tunes its batches towards this batch time
KNOWN_TABLE_FACTS = {"cutoff", "cutoff_local", "timezone", "rows_total", "rows_keep", "rows_archive",
                     "distribution", "reconciliation", "throughput", "timings", "swap_log", "lock_hold_ms",
                     "swap_attempts", "state", "rows_copied", "lag_samples", "pacing"}


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _when(v: Any) -> dt.datetime | None:
    """A month or a cutoff as a naive UTC datetime (matplotlib plots naive datetimes as given)."""
    import pandas as pd  # type: ignore[import-untyped]

    if v is None or v == "":
        return None
    ts = pd.to_datetime(str(v), utc=True, errors="coerce")
    if ts is None or pd.isna(ts):
        return None
    when: dt.datetime = ts.tz_convert(None).to_pydatetime()
    return when


def _figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="y", color="#d8dee4", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=8)
    return fig, ax


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thousands(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))


def distribution_chart(rows: Sequence[dict[str, Any]], cutoff: Any, title: str) -> str | None:
    """Rows per month as stacked bars (kept / archived), the cutoff as a dashed line."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.ticker import MaxNLocator

    months, kept, archived, total = [], [], [], []
    for r in rows:
        m = _when(r.get("month"))
        if m is None:
            continue
        months.append(m)
        k, a, n = _num(r.get("kept")), _num(r.get("archived")), _num(r.get("record_count"))
        kept.append(k)
        archived.append(a)
        total.append(n if n is not None else (k or 0) + (a or 0))
    if not months:
        return None
    fig, ax = _figure()
    width = 24  # days: one bar per month with a small gap
    if all(k is not None for k in kept) and all(a is not None for a in archived):
        ax.bar(months, archived, width=width, align="edge", color=ARCHIVED, label="archived (history)")
        ax.bar(months, kept, bottom=archived, width=width, align="edge", color=KEPT, label="kept (live)")
    else:
        ax.bar(months, total, width=width, align="edge", color=KEPT, label="rows")
    cut = _when(cutoff)
    if cut is not None:
        ax.axvline(cut, color=CUTOFF, linestyle="--", linewidth=1.4, label=f"cutoff {cut:%Y-%m-%d}")
    locator = AutoDateLocator(maxticks=12)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
    _thousands(ax)
    ax.set_ylabel("rows per month", fontsize=8)
    ax.set_title(title, fontsize=10, loc="left")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return _png(fig)


def throughput_chart(samples: Sequence[dict[str, Any]], t0: float | None, title: str) -> str | None:
    """Cumulative rows copied over time (line) and the rate of each batch (points, right axis)."""
    points = [s for s in samples if _num(s.get("t")) is not None]
    if not points:
        return None
    points.sort(key=lambda s: float(s["t"]))
    first = points[0]
    start = t0 if t0 is not None else float(first["t"]) - (_num(first.get("batch_seconds")) or 0.0)
    xs: list[float] = []
    cumulative: list[float] = []
    rate_x: list[float] = []
    rates: list[float] = []
    running = 0.0
    for s in points:
        x = float(s["t"]) - start
        batch_rows = _num(s.get("batch_rows")) or 0.0
        secs = _num(s.get("batch_seconds"))
        running += batch_rows
        total = _num(s.get("rows"))
        if not xs:  # the copy starts at 0 rows, one batch time before the first sample
            xs.append(max(0.0, x - (secs or 0.0)))
            cumulative.append((total if total is not None else running) - batch_rows)
        xs.append(x)
        cumulative.append(total if total is not None else running)
        if secs and secs > 0 and batch_rows > 0:
            rate_x.append(x)
            rates.append(batch_rows / secs)
    fig, ax = _figure()
    ax.plot(xs, cumulative, color=LINE, marker="o", markersize=3, linewidth=1.6, label="rows copied (cumulative)")
    ax.fill_between(xs, cumulative, color=LINE, alpha=0.08)
    _thousands(ax)
    ax.set_xlabel("seconds since start of backfill", fontsize=8)
    ax.set_ylabel("rows copied", fontsize=8)
    ax.set_title(title, fontsize=10, loc="left")
    handles, labels = ax.get_legend_handles_labels()
    if rates:
        ax2 = ax.twinx()
        ax2.spines["top"].set_visible(False)
        ax2.tick_params(labelsize=8)
        ax2.scatter(rate_x, rates, color=RATE, s=16, zorder=3, label="batch rate (rows/s)")
        _thousands(ax2)
        ax2.set_ylabel("rows/s per batch", fontsize=8)
        ax2.set_ylim(bottom=0)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.set_ylim(bottom=0)
    ax.legend(handles, labels, fontsize=8, frameon=False, loc="upper left")
    return _png(fig)


def lag_chart(samples: Sequence[dict[str, Any]], t0: float | None, limit_bytes: float | None,
              title: str) -> str | None:
    """Replication lag (bytes of WAL not yet replayed) over time; paused samples in red."""
    points = [(float(s["t"]), _num(s.get("lag_bytes")), bool(s.get("paused")))
              for s in samples if _num(s.get("t")) is not None and _num(s.get("lag_bytes")) is not None]
    if not points:
        return None
    points.sort()
    start = t0 if t0 is not None else points[0][0]
    peak = max([p[1] or 0.0 for p in points] + [limit_bytes or 0.0])
    unit, div = ("MiB", 1024.0**2) if peak >= 1024**2 else ("KiB", 1024.0) if peak >= 1024 else ("bytes", 1.0)
    xs = [p[0] - start for p in points]
    ys = [(p[1] or 0.0) / div for p in points]
    fig, ax = _figure()
    ax.plot(xs, ys, color=LAG, marker="o", markersize=3, linewidth=1.4, label="replay lag")
    paused = [(x, y) for (x, y, p) in zip(xs, ys, [p[2] for p in points], strict=True) if p]
    if paused:
        ax.scatter([p[0] for p in paused], [p[1] for p in paused], color=PAUSED, s=18, zorder=3,
                   label="throttle paused")
    if limit_bytes:
        ax.axhline(limit_bytes / div, color=CUTOFF, linestyle="--", linewidth=1.2,
                   label=f"limit {limit_bytes / div:,.1f} {unit}")
    ax.set_ylim(bottom=0)
    if len(set(xs)) == 1 and xs[0] >= 0:  # one sample: a readable range instead of a negative one
        ax.set_xlim(0, max(xs[0] * 2, 1.0))
    ax.set_xlabel("seconds since start of backfill" if t0 is not None else "seconds since first sample", fontsize=8)
    ax.set_ylabel(f"lag ({unit})", fontsize=8)
    ax.set_title(title, fontsize=10, loc="left")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return _png(fig)


# -- per-table and replication sections ----------------------------------------------------
def _limit_bytes(steps: list[dict[str, Any]], facts: dict[str, Any]) -> float | None:
    """The replication lag limit in bytes, if a step or the throttle recorded one as a size."""
    thr = facts.get("throttle")
    if isinstance(thr, dict) and isinstance(thr.get("limit"), dict) and thr["limit"].get("kind") == "bytes":
        return _num(thr["limit"].get("value"))
    units = {"b": 1, "bytes": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
    for s in steps:
        text = s["evidence"].get("max_replication_lag")
        m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(b|bytes|kb|mb|gb|tb)\s*$", str(text or ""), re.I)
        if m:
            return float(m.group(1)) * units[m.group(2).lower()]
    return None


def lag_samples(source: dict[str, Any], table: str | None = None) -> list[dict[str, Any]]:
    v = source.get("lag_samples")
    if isinstance(v, dict) and table is not None:
        v = v.get(table)
    if isinstance(v, list) and v:
        return [x for x in v if isinstance(x, dict)]
    thr = source.get("throttle")
    if isinstance(thr, dict) and isinstance(thr.get("samples"), list):
        return [x for x in thr["samples"] if isinstance(x, dict)]
    return []


def reconciliation(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Segments with count and checksum per side; `match` recomputed when a row lacks it."""
    sides: list[str] = []
    for r in rows:
        for k in r:
            if k.startswith("count_") and k[6:] not in sides:
                sides.append(k[6:])
    out = []
    for r in rows:
        counts = [r.get(f"count_{s}") for s in sides]
        sums = [r.get(f"checksum_{s}") for s in sides]
        match = r.get("match")
        if not isinstance(match, bool):
            match = len(set(map(str, counts))) <= 1 and len(set(map(str, sums))) <= 1
        out.append({"segment": r.get("segment"), "key_from": r.get("key_from"), "key_to": r.get("key_to"),
                    "cells": [(r.get(f"count_{s}"), r.get(f"checksum_{s}")) for s in sides], "match": match})
    return {"sides": sides, "rows": out, "mismatches": sum(1 for r in out if not r["match"])}


def batch_recommendation(samples: list[dict[str, Any]], configured: Any = None) -> dict[str, Any] | None:
    """Median batch time of the backfill and, when it is far from the 0.5 s target (outside
    0.5x..2x), the batch size that would reach it at the measured rate."""
    full = [(b, secs) for s in samples
            if (b := _num(s.get("batch_rows"))) and b > 0 and (secs := _num(s.get("batch_seconds"))) and secs > 0]
    if not full:
        return None
    median_s = statistics.median(secs for _, secs in full)
    rate = statistics.median(b / secs for b, secs in full)
    sizes = [size for s in samples if (size := _num(s.get("batch_size")))]
    size = _num(configured) or (statistics.median(sizes) if sizes else statistics.median(b for b, _ in full))
    suggested = rate * TARGET_BATCH_SECONDS
    if suggested >= 10:
        digits = len(str(int(suggested))) - 2
        suggested = round(suggested, -digits)
    far = not (TARGET_BATCH_SECONDS / 2 <= median_s <= TARGET_BATCH_SECONDS * 2)
    return {"median_seconds": median_s, "rows_per_second": rate, "batch_size": size, "batches": len(full),
            "suggested": int(max(suggested, 1)), "far": far}


def table_context(name: str, facts: dict[str, Any], steps: list[dict[str, Any]],
                  configured_batch: Any, run_facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the report shows for one table: key figures, charts, reconciliation, swap."""

    charts = sys.modules[__name__]
    ctx: dict[str, Any] = {"name": name, "safe": safe_name(name), "chart_errors": []}

    def chart(label: str, fn: Any, *args: Any) -> str | None:
        try:
            drawn: str | None = fn(*args)
            return drawn
        except Exception as exc:  # noqa: BLE001 - a chart must never cost the report
            ctx["chart_errors"].append(f"{label}: {type(exc).__name__}: {redact(str(exc))}")
            return None

    kpis = []
    for key, label, unit in (("cutoff", "Cutoff", ""), ("rows_total", "Rows total", ""),
                             ("rows_keep", "Rows kept (live)", ""), ("rows_archive", "Rows archived", ""),
                             ("state", "Migration state", ""), ("rows_copied", "Rows copied", ""),
                             ("swap_attempts", "Swap attempts", ""), ("lock_hold_ms", "Lock hold", " ms")):
        if facts.get(key) not in (None, ""):
            kpis.append({"label": label, "value": fmt(facts[key]) + unit, "key": key})
        if key == "cutoff" and facts.get("cutoff_local"):  # with its offset in the database's time zone
            kpis.append({"label": f"Cutoff ({facts.get('timezone')})", "value": str(facts["cutoff_local"]),
                         "key": "cutoff_local"})
    timings = mapping(facts.get("timings"))
    copied, backfill_s = _num(facts.get("rows_copied")), _num(timings.get("backfill"))
    if copied and backfill_s:
        kpis.append({"label": "Backfill rate", "value": f"{fmt(round(copied / backfill_s))} rows/s",
                     "key": "rate"})
    ctx["kpis"] = kpis
    ctx["timings"] = timings

    dist = records(facts.get("distribution"))
    ctx["distribution"] = dist
    ctx["distribution_columns"] = columns(dist, ["month", "record_count", "kept", "archived", "percentage"])
    ctx["distribution_chart"] = chart("cutoff distribution", charts.distribution_chart, dist, facts.get("cutoff"),
                                      f"{name}: rows per month") if dist else None

    ctx["reconciliation"] = reconciliation(records(facts.get("reconciliation")))

    throughput = records(facts.get("throughput"))
    lag = lag_samples(facts)
    ctx["lag_from_run"] = not lag
    lag = lag or lag_samples({"lag_samples": (run_facts or {}).get("lag_samples")}, name)
    ctx["lag_from_run"] = bool(lag) and ctx["lag_from_run"]
    t_first = [t - (_num(s.get("batch_seconds")) or 0) for s in throughput[:1] if (t := _num(s.get("t"))) is not None]
    starts = [t for t in t_first + [_num(s.get("t")) for s in lag[:1]] if t is not None]
    t0 = min(starts) if starts else None
    ctx["throughput"] = throughput
    ctx["throughput_chart"] = chart("throughput", charts.throughput_chart, throughput, t0,
                                    f"{name}: backfill progress") if throughput else None
    ctx["lag"] = lag
    ctx["lag_chart"] = chart("replication lag", charts.lag_chart, lag, t0, _limit_bytes(steps, facts),
                             f"{name}: replication lag during the backfill") if lag else None
    ctx["batch"] = batch_recommendation(throughput, configured_batch)
    ctx["swap_log"] = records(facts.get("swap_log"))
    ctx["swap_columns"] = columns(ctx["swap_log"], ["attempt", "outcome", "wait_ms", "hold_ms", "blockers"])
    ctx["lock_hold_ms"] = facts.get("lock_hold_ms")
    ctx["rows_copied"] = facts.get("rows_copied")
    ctx["swap_attempts"] = facts.get("swap_attempts")
    ctx["pacing"] = pacing_text(facts.get("pacing"))
    ctx["other"] = {k: v for k, v in facts.items() if k not in KNOWN_TABLE_FACTS}
    return ctx


def replication_context(facts: dict[str, Any], steps: list[dict[str, Any]],
                        lag_shown: bool = False) -> dict[str, Any] | None:
    """The replication snapshot (PRE-1.1d) as a settings table per site, and the run-wide lag
    samples unless a table section already charts them (`lag_shown`)."""
    snap = facts.get("replication")
    raw = facts.get("lag_samples")
    lag = lag_samples({"lag_samples": raw}) if isinstance(raw, list) and not lag_shown else []
    if not isinstance(snap, dict) and not lag:
        return None
    ctx: dict[str, Any] = {"settings": [], "sites": [], "other": {}, "lag_chart": None, "error": None}
    if isinstance(snap, dict):
        sites = [s for s in ("active", "passive") if isinstance(snap.get(s), dict)]
        names: list[str] = []
        for s in sites:
            settings = snap[s].get("settings")
            if isinstance(settings, dict):
                names += [n for n in settings if n not in names]
        ctx["sites"] = sites
        ctx["settings"] = [{"name": n, "values": [(snap[s].get("settings") or {}).get(n) for s in sites]}
                           for n in sorted(names)]
        for s in sites:
            rest = {k: v for k, v in snap[s].items() if k != "settings"}
            if rest:
                ctx["other"][f"{s} site"] = rest
        ctx["other"].update({k: v for k, v in snap.items() if k not in sites})
    if lag:
        try:
            ctx["lag_chart"] = lag_chart(lag, None, _limit_bytes(steps, facts), "replication lag")
        except Exception as exc:  # noqa: BLE001 - a chart must never cost the report
            ctx["error"] = f"{type(exc).__name__}: {redact(str(exc))}"
    return ctx
