"""Helpers for the backup, restore-test and lock tests: a plan of a few checklist steps run
as a subprocess, private clusters of a chosen PostgreSQL version, bounded waits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tablemig.sandbox.cluster import Sandbox, start_sandbox

T = TypeVar("T")
V15 = Path("/usr/lib/postgresql/15/bin")

PLAN = '''"""A plan of a few checklist steps (written by a test)."""
from tablemig.config.plan import PlanConfig, TableConfig, step
from tablemig.checklist.registry import STEPS
from tablemig.plugin.steps import StepContext

PLAN = PlanConfig(name="backup_plan", tables=[TableConfig({table!r}, date_column={date!r}, retention=0.5)],
                  backup_dir="backups")
'''
STEP = '''

@step({id!r})
def test_{fn}(ctx: StepContext) -> None:
    STEPS[{id!r}](ctx)
'''


def write_plan(folder: Path, table: str, date_column: str,
               steps: tuple[str, ...] = ("PRE-2.1", "PRE-2.3", "PRE-2.4")) -> Path:
    """A plan module in `folder` with only `steps` for `table`."""
    folder.mkdir(parents=True, exist_ok=True)
    text = PLAN.format(table=table, date=date_column) + "".join(
        STEP.format(id=s, fn=s.lower().replace("-", "_").replace(".", "_")) for s in steps)
    plan = folder / "backup_plan.py"
    plan.write_text(text)
    return plan


def run_plan(plan: Path, dsn: str, *extra: str, env: dict[str, str] | None = None,
             timeout: float = 600) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, Any]]]:
    """Run the plan (single site) from its folder; (process, {step id: step record})."""
    reports = plan.parent / "reports"
    shutil.rmtree(reports, ignore_errors=True)
    cmd = [sys.executable, "-m", "pytest", str(plan), "-q", "-p", "no:cacheprovider", "--active-dsn", dsn,
           "--reports-dir", str(reports), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=plan.parent,
                          env=env)
    found = sorted(reports.glob("*/latest/run.json"))
    run = json.loads(found[-1].read_text()) if found else {"steps": []}
    return proc, {s["id"]: s for s in run["steps"]}


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 180, every: float = 0.2) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout:.0f} s")
        time.sleep(every)


@contextmanager
def private_cluster(pg_bin: str | None = None, **conf: str) -> Iterator[Sandbox]:
    """A primary (and its standby) of our own, with `conf` settings; stopped and removed on
    exit. Under /tmp: the server user must traverse the path."""
    root = Path(tempfile.gettempdir()) / f"tablemig-test-{uuid.uuid4().hex[:12]}"
    sb = start_sandbox(root, pg_bin=pg_bin, extra_conf=conf)
    try:
        yield sb
    finally:
        sb.stop()


def env_with(**changes: str | None) -> dict[str, str]:
    """os.environ with `changes` (None removes a variable)."""
    env = dict(os.environ)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env
