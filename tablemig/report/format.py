"""Plain, redacted data and the formatting of values for the reports (also jinja filters).
Shared by `tablemig.report.model` and `tablemig.report.charts`; numbers and durations read
as in the steps' evidence (`tablemig.checklist.wording`)."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
from dataclasses import fields, is_dataclass
from typing import Any

from ..checklist.wording import num
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
    if isinstance(obj, dict | list | tuple | set | frozenset) or (is_dataclass(obj) and not isinstance(obj, type)):
        return _plain_container(obj, depth)
    return _plain_value(obj, depth)


def _plain_container(obj: Any, depth: int) -> Any:
    """A dict, list, tuple, set or dataclass instance, its members made plain."""
    if isinstance(obj, dict):
        return {redact(str(k)): plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v, depth + 1) for v in obj]
    if isinstance(obj, set | frozenset):
        return [plain(v, depth + 1) for v in sorted(obj, key=str)]
    return {f.name: plain(getattr(obj, f.name, None), depth + 1) for f in fields(obj)
            if not f.name.startswith("_")}


def _plain_value(obj: Any, depth: int) -> Any:
    """A value JSON lacks: dates and decimals as str(), pandas and numpy values as Python's."""
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




# -- formatting (also jinja filters) ---------------------------------------------------------
def fmt_ts(ts: Any) -> str:
    f = num(ts)
    if f is None:
        return "—" if ts in (None, "") else str(ts)
    try:
        return dt.datetime.fromtimestamp(f, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return str(ts)


def mapping(v: Any) -> dict[str, Any]:
    """`v` when it is a dict, else an empty one (run data may lack anything)."""
    return v if isinstance(v, dict) else {}


def records(v: Any) -> list[dict[str, Any]]:
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def columns(rows: list[dict[str, Any]], preferred: list[str]) -> list[str]:
    present = list(dict.fromkeys(k for r in rows for k in r))
    return [c for c in preferred if c in present] + [c for c in present if c not in preferred]
