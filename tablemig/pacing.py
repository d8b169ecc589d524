"""Pacing of the bulk work: the nice ratio.

On a busy server the migration's bulk work takes CPU and I/O from the application.
`nice_ratio` bounds that share: after each unit of bulk work (a load chunk, an index
build, a prune batch) the worker sleeps `nice_ratio` times as long as the unit took. With
0 (the default) nothing sleeps; with 1 the migration works at most half the time; with 4,
a fifth of the time. Those steps take `1 + nice_ratio` times as long. Not paced: the
replay of the change log (its work follows the application's write rate; slowing it down
would only lengthen the capture and the switch's final batch under its lock), verify and the swap.

The ratio comes from `table_migration.migration_config` (key `nice_ratio`) or the
command line, and is re-read from the configuration table every few seconds: a DBA can
slow a running migration down (or speed it up) with

    UPDATE table_migration.migration_config SET config_value = '3' WHERE config_key = 'nice_ratio';

A command-line value stays fixed for the run.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from .db import connect
from .errors import InputError
from .settings import Settings


class NicePacer:
    """Callable between units of bulk work (thread-safe: each thread times its own units)."""

    def __init__(self, dsn: str, ratio: float = 0.0, *, fixed: bool = False,
                 reload_s: float = 5.0) -> None:
        self.dsn = dsn
        self.ratio = max(0.0, ratio)
        self.fixed = fixed  # given on the command line: not re-read
        self.reload_s = reload_s
        self.slept_s = 0.0
        self._loaded = time.monotonic()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    def start(self, ratio: float | None = None) -> None:
        """A step begins: its first unit is timed from now (with the configured ratio)."""
        if ratio is not None and not self.fixed:
            self.ratio = max(0.0, ratio)
            self._loaded = time.monotonic()
        self._local.since = time.monotonic()

    def _reload(self) -> None:
        with self._lock:
            if self.fixed or time.monotonic() - self._loaded < self.reload_s:
                return
            self._loaded = time.monotonic()
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(self.dsn, application_name="tablemig-pacer")
                self.ratio = Settings.load(self._conn).nice_ratio
            except (psycopg.Error, InputError):
                pass  # keep the ratio in force (a bad value is refused when the next step starts)

    def __call__(self) -> None:
        now = time.monotonic()
        since = getattr(self._local, "since", None)
        self._reload()
        if since is not None and self.ratio > 0:
            pause = self.ratio * (now - since)
            time.sleep(pause)
            with self._lock:
                self.slept_s += pause
        self._local.since = time.monotonic()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
