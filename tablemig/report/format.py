"""Plain, redacted data and the formatting of values for the reports (also jinja filters).
Shared by `tablemig.report.model` and `tablemig.report.charts`."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
from dataclasses import fields, is_dataclass
from typing import Any

from ..pg.connect import redact


# -- plain, redacted data ------------------------------------------------------------------
def plain(obj: Any, depth: int = 0) -> Any:
    """JSON-like copy of `obj` (dicts, lists, str, numbers, bools, None), every string redacted.

    Objects a step left in the facts are shown by their public dataclass fields or their str();
    dates, decimals and other values JSON lacks become str() as in run.json; NaN becomes None."""
    if depth > 24:
        return redact(str(obj))[:2000]
    if obj is None or isinstance(obj, bool | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, bytes | bytearray):
        return redact(bytes(obj).decode("utf-8", "replace"))
    if isinstance(obj, dict):
        return {redact(str(k)): plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v, depth + 1) for v in obj]
    if isinstance(obj, set | frozenset):
        return [plain(v, depth + 1) for v in sorted(obj, key=str)]
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name, None), depth + 1) for f in fields(obj)
                if not f.name.startswith("_")}
    if isinstance(obj, dt.datetime | dt.date | dt.time | dt.timedelta | decimal.Decimal):
        return str(obj)  # as run.json has them (json.dumps default=str): exact, no float rounding
    kind = type(obj).__name__
    if kind == "DataFrame" and hasattr(obj, "to_dict"):
        return plain(obj.to_dict("records"), depth + 1)
    if kind == "Series" and hasattr(obj, "to_dict"):
        return plain(obj.to_dict(), depth + 1)
    if type(obj).__module__.split(".")[0] == "numpy" and hasattr(obj, "item"):
        return plain(obj.item(), depth + 1)
    return redact(str(obj))


def safe_name(table: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "_", table)


def num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# -- formatting (also jinja filters) ---------------------------------------------------------
def fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e15:
            return f"{v:,.0f}"
        if abs(v) >= 1000:
            return f"{v:,.1f}"
        if abs(v) >= 1:
            return f"{v:.3f}".rstrip("0").rstrip(".")
        return f"{v:.4g}"
    return str(v)


def fmt_ts(ts: Any) -> str:
    f = num(ts)
    if f is None:
        return "—" if ts in (None, "") else str(ts)
    try:
        return dt.datetime.fromtimestamp(f, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return str(ts)


def fmt_duration(seconds: Any) -> str:
    s = num(seconds)
    if s is None:
        return "—"
    if s < 1:
        return f"{s * 1000:.0f} ms" if s >= 0.001 else ("0 ms" if s <= 0 else "< 1 ms")
    if s < 60:
        return f"{s:.2f} s"
    minutes, sec = divmod(s, 60)
    if minutes < 60:
        return f"{int(minutes)} min {sec:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min"


def records(v: Any) -> list[dict[str, Any]]:
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def columns(rows: list[dict[str, Any]], preferred: list[str]) -> list[str]:
    present = list(dict.fromkeys(k for r in rows for k in r))
    return [c for c in preferred if c in present] + [c for c in present if c not in preferred]


def pacing_text(p: Any) -> str | None:
    """One sentence, without its final period, on what the write guard and the nice ratio
    did (`Pacer.summary()`)."""
    if not isinstance(p, dict):
        return None
    parts = []
    share, rate, kept = num(p.get("app_write_share")), num(p.get("app_write_rate")), num(p.get("app_share_kept"))
    if not share:
        parts.append("write guard off")
    elif not p.get("engaged"):
        parts.append(f"write guard at {share:.0%}: the application wrote too little to need it"
                     + (f" ({fmt(round(rate))} writes/s)" if rate is not None else ""))
    else:
        parts.append(f"write guard at {share:.0%}: the application wrote {fmt(round(rate or 0))}/s while the"
                     f" migration rested and kept {kept:.1%} of that rate over the migration"
                     f" ({fmt(p.get('app_writes'))} of {fmt(p.get('app_writes_expected'))} writes)"
                     if kept is not None else f"write guard at {share:.0%}")
    rested, nice, slept = num(p.get("rested_s")), num(p.get("nice_ratio")), num(p.get("nice_slept_s"))
    if rested:
        parts.append(f"the migration rested {fmt_duration(rested)} for it" if p.get("engaged")
                     else f"its probe took {fmt_duration(rested)}")
    if nice:
        parts.append(f"nice ratio {nice:g}: slept {fmt_duration(slept or 0)}")
    return "; ".join(parts)
