"""How the checklist's values read, in a step's evidence and in the reports: numbers,
durations, and the sentence on what the pacing did."""

from __future__ import annotations

import math
from typing import Any


def num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


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
