"""The backfill's progress as a bar, for a terminal (a pipe or a log file gets the log line).

The copy logs one record per progress step (tablemig.lifecycle.copying.ProgressLog) with
its figures attached (`record.progress`); a handler writing to a terminal redraws one line
with this bar instead of adding a line per record.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

WIDTH = 30


def figures(record: logging.LogRecord) -> Mapping[str, Any] | None:
    """The progress figures a record carries (None: an ordinary record)."""
    value = getattr(record, "progress", None)
    return value if isinstance(value, Mapping) else None


def bar(p: Mapping[str, Any], width: int = WIDTH) -> str:
    """`public.orders [#########.....] 45% 123,456/270,000 rows, 12,345 rows/s, ETA 12 s`."""
    rows, expected = int(p.get("rows") or 0), int(p.get("expected") or 0)
    share = min(rows / expected, 1.0) if expected else 0.0
    filled = round(share * width)
    head = f"{p.get('table', '')} [{'#' * filled}{'.' * (width - filled)}] {share:4.0%}"
    return (f"{head} {rows:,}/{expected:,} rows, {float(p.get('rate') or 0):,.0f} rows/s, "
            f"ETA {float(p.get('eta') or 0):,.0f} s")
