"""Connections opened ahead of need, and reused.

Opening a PostgreSQL connection costs a few milliseconds (a backend is forked,
authenticates). The migration's helper connections (the background ANALYZE, index builds
side by side, the second reader of verify) are opened on background threads while the
step before them runs and are handed back after use, so that on a small table opening
them costs nothing on the critical path. (A fresh backend's first statements are still
slower than a warm one's: its caches are cold; small tables therefore use helpers only
where the work overlaps the main connection's.) A connection that failed to open, or has
been ended while idle, is replaced when it is taken: the error, if any, surfaces there.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from .db import connect


class SpareConnections:
    """A small pool: `count` autocommit connections to `dsn`, each opened on its own
    thread; `take` one, `give` it back when done (or close it)."""

    def __init__(self, dsn: str, count: int, *, application_name: str = "tablemig-worker") -> None:
        self.dsn = dsn
        self.application_name = application_name
        self._ready: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [threading.Thread(target=self._open, daemon=True) for _ in range(count)]
        for t in self._threads:
            t.start()

    def _open(self) -> None:
        try:
            conn = connect(self.dsn, application_name=self.application_name)
        except Exception:  # noqa: BLE001 - take() opens one in the foreground and reports why
            return
        with self._lock:
            if not self._closed:
                self._ready.append(conn)
                return
        conn.close()

    def take(self, application_name: str | None = None) -> psycopg.Connection[Any]:
        """A connection of one's own until it is given back: a spare one when there is
        one, else a new one."""
        for t in self._threads:
            t.join()
        with self._lock:
            conn = self._ready.pop() if self._ready else None
        if conn is not None and not conn.closed:
            try:  # also proves the connection still works (an idle one can have been ended)
                conn.execute("SELECT set_config('application_name', %s, false)",
                             (application_name or self.application_name,))
                return conn
            except psycopg.OperationalError:
                conn.close()
        return connect(self.dsn, application_name=application_name or self.application_name)

    def give(self, conn: psycopg.Connection[Any]) -> None:
        """Hand a connection back for the next `take` (one left in a transaction, or
        broken, is closed instead)."""
        idle = not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with self._lock:
            if idle and not self._closed:
                self._ready.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, []
        for conn in ready:
            conn.close()
