"""Charts of the run report: small static PNGs (matplotlib, Agg canvas) as `data:` URIs.

Only the object-oriented API is used (`Figure` + `FigureCanvasAgg`), never `pyplot`: no global
backend switch in the host process and no GUI. Every function returns None when its data
is missing or unusable, so the report simply leaves the chart out.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
from collections.abc import Sequence
from typing import Any

WIDTH_IN, HEIGHT_IN, DPI = 7.0, 3.0, 100

KEPT = "#1f6feb"
ARCHIVED = "#a8b3bf"
CUTOFF = "#cf222e"
LINE = "#1f6feb"
RATE = "#bf8700"
LAG = "#8250df"
PAUSED = "#cf222e"


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
    import pandas as pd

    if v is None or v == "":
        return None
    ts = pd.to_datetime(str(v), utc=True, errors="coerce")
    if ts is None or pd.isna(ts):
        return None
    return ts.tz_convert(None).to_pydatetime()


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
    locator = AutoDateLocator(maxticks=12)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
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
    ax.set_xlabel("seconds since start of backfill", fontsize=8)
    ax.set_ylabel(f"lag ({unit})", fontsize=8)
    ax.set_title(title, fontsize=10, loc="left")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return _png(fig)
