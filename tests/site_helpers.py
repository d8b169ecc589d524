"""Helpers for tests that need sites of their own: a private sandbox (with a logical
subscriber) and a standby whose replay is paused."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tablemig.sandbox.cluster import Sandbox, start_sandbox, stop_sandbox


@contextlib.contextmanager
def own_sandbox(prefix: str, *, subscriber: bool = True) -> Iterator[Sandbox]:
    """A primary, a streaming standby and (by default) a logical subscriber for one test
    module, removed afterwards."""
    root = Path("/tmp") / f"tablemig-{prefix}-{uuid.uuid4().hex[:8]}"
    sb = start_sandbox(root, subscriber=subscriber)
    try:
        yield sb
    finally:
        stop_sandbox(root)


def pause_replay(standby: Any) -> None:
    """Pause replay on `standby` and wait until it has (the pause is only requested: the
    startup process may replay on until it takes it)."""
    standby.execute("SELECT pg_wal_replay_pause()")
    t0 = time.monotonic()
    while standby.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] != "paused":
        assert time.monotonic() - t0 < 30, "replay did not pause"
        time.sleep(0.05)
