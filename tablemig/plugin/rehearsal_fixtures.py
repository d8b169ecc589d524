"""The sites of a rehearsal: registered by `tablemig.plugin.fixtures` only with `--rehearse`.

Registered after every plugin of the entry points, its fixtures take the place of those of
`tablemig.plugin.fixtures` (pytest uses the last registered of equal visibility):

* `sandbox`: the rehearsal sandbox — a throwaway primary and streaming standby, durable
  (fsync, full page writes and synchronous commit on, as a production server), loaded with the
  active site's schema and synthetic rows (`tablemig.rehearsal.prepare`). It asks for the
  `sandbox` it replaces: the embedded sandbox when no active site is given, which is then the
  source (with the plan's demo data, as a run without `--rehearse` would have);
* `active_dsn`, `passive_dsn`: the rehearsal sandbox's primary and standby.

xdist workers of one run share the rehearsal sandbox; the first prepares it. Once prepared,
`<sandbox root>/rehearsal-<run>/rehearsal.json` holds the preparation's record, with the
rehearsal's DSNs under "sandbox": an application's load can be pointed there.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..config.plan import PlanConfig
from ..pg.client_tools import server_major
from ..pg.connect import connect
from ..pg.replication import wait_for_replay
from ..rehearsal.prepare import PlanTable, prepare
from ..rehearsal.schema import rehearsal_binaries
from ..sandbox.cluster import Sandbox
from ..sandbox.shared import reap_stale, shared_sandbox
from .options import rehearsal_scale
from .run import RECORD

DURABLE = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}
PREPARED = "rehearsal.json"
REPLAY_TIMEOUT_S = 600


def source_dsn(config: pytest.Config, sandbox: Sandbox | None) -> str:
    """The active site: --active-dsn, $TABLEMIG_ACTIVE_DSN, else the embedded sandbox."""
    dsn = config.getoption("--active-dsn") or os.environ.get("TABLEMIG_ACTIVE_DSN")
    if dsn:
        return str(dsn)
    assert sandbox is not None, "no active site and no embedded sandbox"
    return sandbox.active_dsn


def _plan(config: pytest.Config) -> tuple[PlanConfig, str]:
    record = config.stash.get(RECORD, None)
    if record is None or record.plan is None:
        raise pytest.UsageError("--rehearse runs a plan module: give its path (pytest plans/PLAN.py --rehearse)")
    return record.plan, record.module


def schema_file(config: pytest.Config, plan: PlanConfig, module: str) -> Path | None:
    """--rehearse-schema, else the plan's `rehearsal_schema` (relative to the plan module)."""
    given = config.getoption("--rehearse-schema")
    if given:
        return Path(given).absolute()
    if not plan.rehearsal_schema:
        return None
    path = Path(plan.rehearsal_schema)
    mod = sys.modules.get(module)
    return path if path.is_absolute() else Path(str(getattr(mod, "__file__", "."))).parent / path


def _ensure_demo_data(dsn: str, rows: int) -> None:
    from ..sandbox.demo_data import create_demo_data

    with connect(dsn) as conn:
        # the same lock as a plan run's own demo data: xdist workers share the sandbox
        conn.execute("SELECT pg_advisory_lock(hashtext('tablemig.sandbox.demo_data'))")
        try:
            exists = conn.execute("SELECT to_regclass('public.orders') IS NOT NULL").fetchone()
            if not (exists and exists[0]):
                create_demo_data(conn, rows, family=True)
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('tablemig.sandbox.demo_data'))")


def _root_and_key(config: pytest.Config) -> tuple[Path, str]:
    root = Path(os.environ.get("TABLEMIG_SANDBOX_ROOT") or Path(tempfile.gettempdir()) / "tablemig-sandboxes")
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    worker = getattr(config, "workerinput", None)
    if worker is not None:
        return root, f"rehearsal-{worker['testrunuid'][:12]}"
    key = f"rehearsal-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    reap_stale(root, exclude=key)
    return root, key


def _prepared_once(sb: Sandbox, make: Any) -> dict[str, Any]:
    """The rehearsal's record: prepared by the first process of the run, read by the others."""
    marker = sb.root / PREPARED
    with open(sb.root / "rehearsal.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            if marker.exists():
                return dict(json.loads(marker.read_text()))
            record: dict[str, Any] = make()
            marker.write_text(json.dumps(record, default=str))
            return record
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def sandbox(request: pytest.FixtureRequest, sandbox: Sandbox | None) -> Iterator[Sandbox]:
    """The rehearsal sandbox (see the module docstring); `sandbox` here is the one it replaces."""
    config = request.config
    plan, module = _plan(config)
    source = source_dsn(config, sandbox)
    if sandbox is not None and plan.demo_rows:
        _ensure_demo_data(source, plan.demo_rows)
    with connect(source) as conn:
        major = server_major(conn.info.server_version)
    server = rehearsal_binaries(major, config.getoption("--pg-bin"))
    tables = [PlanTable(t.spec().qualified, t.spec().date_column) for t in plan.tables]
    wanted = rehearsal_scale(config)
    schema = schema_file(config, plan, module)
    root, key = _root_and_key(config)
    with shared_sandbox(root, key, pg_bin=str(server.bindir), extra_conf=DURABLE) as rehearsal:

        def make() -> dict[str, Any]:
            record = prepare(source, rehearsal.active_dsn, tables, scale=wanted, server=server,
                             schema_file=schema, pg_bin=config.getoption("--pg-bin"))
            with connect(rehearsal.active_dsn) as a, connect(rehearsal.passive_dsn) as p:
                wait_for_replay(a, p, timeout_s=REPLAY_TIMEOUT_S)  # the plan starts with a standby in step
            # where an application's load may write while the plan runs (docs/rehearsal.md)
            record["sandbox"] = {"active_dsn": rehearsal.active_dsn, "passive_dsn": rehearsal.passive_dsn}
            return record

        record = _prepared_once(rehearsal, make)
        run = config.stash.get(RECORD, None)
        if run is not None:
            run.facts["rehearsal"] = record
        yield rehearsal


@pytest.fixture(scope="session")
def active_dsn(sandbox: Sandbox) -> str:
    """The rehearsal's primary: the plan runs there, never on the active site."""
    return sandbox.active_dsn


@pytest.fixture(scope="session")
def passive_dsn(sandbox: Sandbox) -> str | None:
    """The rehearsal's standby."""
    return sandbox.passive_dsn
