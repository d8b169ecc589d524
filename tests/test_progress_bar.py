"""The backfill's progress: on a terminal one bar redrawn in place, through a pipe one log
line per step (tablemig.report.progress). The terminal is a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from typing import Any

from twin import CUTOFF, create_events

from tablemig.report.progress import bar

ROWS = 30_000


def _migrate(db: Any, table: str) -> list[str]:
    return [sys.executable, "-m", "tablemig.cli.main", "migrate", "--execute", "--yes", "--dsn", db.dsn,
            "--table", f"public.{table}", "--date-column", "d", "--cutoff", CUTOFF.isoformat(), "--batch-size", "200",
            "--nice-ratio", "1"]


def _on_a_terminal(cmd: list[str]) -> tuple[int, str]:
    """Run `cmd` with its stderr on a pseudo-terminal; (exit status, what the terminal got)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=300), b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_one_bar_and_a_pipe_gets_lines(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, ROWS, table="on_tty")
        create_events(conn, ROWS, table="on_pipe")
    rc, seen = _on_a_terminal(_migrate(fresh_db, "on_tty"))
    assert rc == 0, seen[-3000:]
    draws = seen.count("\r\x1b[2K")
    assert draws >= 2, seen[-3000:]  # the first step and the last, at least
    assert "public.on_tty [" in seen and "100%" in seen and "rows/s, ETA" in seen, seen[-3000:]
    assert "rows/s, batch" not in seen  # no progress line: the bar instead
    after = seen[seen.rindex("\r\x1b[2K") + 1:]
    assert after.index("\n") < after.index("tablemig: "), after[:500]  # the bar's line ends first
    assert "swap: done in" in seen or "swapped" in seen  # the log goes on, on lines of its own
    piped = subprocess.run(_migrate(fresh_db, "on_pipe"), capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stderr and "rows/s, batch" in piped.stderr, piped.stderr[-3000:]


def test_the_bar() -> None:
    shown = bar({"table": "public.orders", "rows": 45, "expected": 100, "rate": 1234.5, "eta": 12.4}, width=10)
    assert shown == "public.orders [####......]  45% 45/100 rows, 1,234 rows/s, ETA 12 s"
    assert bar({"table": "t", "rows": 0, "expected": 0}, width=4).startswith("t [....]   0%")
