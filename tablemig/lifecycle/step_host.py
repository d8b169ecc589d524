"""What the step mixins of `tablemig.lifecycle.driver.Migration` (index build, verification, after
the swap) rely on: declared here once for readers and type checkers, provided by
`Migration` itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from ..config.settings import Settings
from ..config.spec import TableSpec
from .backfill import Progress, Throttle
from .executor import Executor, Recorder
from .pacing import Pacer
from .planner import TablePlan


class StepHost:
    """The connection, the settings and the step plumbing of one table's migration."""

    dsn: str
    spec: TableSpec
    conn: psycopg.Connection[Any]
    ex: Executor
    recorder: Recorder
    throttle: Throttle | None
    pacer: Pacer
    progress: Progress | None
    parallel_min_rows: int
    segment_min_rows: int
    _plan: TablePlan | None
    plan: Callable[[], TablePlan]
    _require: Callable[..., dict[str, Any]]
    _settings: Callable[[], Settings]
    _state: Callable[[], dict[str, Any] | None]
    _lock: Callable[[int], None]
    _timed: Callable[[str, float], None]
    _begin: Callable[[str], float]
    _settle: Callable[..., float]
    _small: Callable[[dict[str, Any], TablePlan], bool]

    @property
    def table(self) -> str:
        """The table as SQL writes it (Migration's property)."""
        raise NotImplementedError
