"""The sandbox and the sites, as fixtures: `sandbox`, `active_dsn`, `passive_dsn`, `active`,
`passive` (plan modules and tests use them alike).

Without `--active-dsn` (or `TABLEMIG_ACTIVE_DSN`) the session starts an embedded sandbox:
a primary and a streaming standby on loopback, shared by every xdist worker of the run,
stopped and removed when the session ends (also after failures and Ctrl-C); when tests
failed, the server logs are copied to `<reports-dir>/sandbox-logs/` first.

With `--rehearse`, `tablemig.plugin.rehearsal_fixtures` is registered as well: its `sandbox`,
`active_dsn` and `passive_dsn` take the place of these ones.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ..pg.connect import connect
from ..sandbox.cluster import Sandbox
from ..sandbox.shared import reap_stale, shared_sandbox
from .options import option_or_env, rehearsing, reports_dir


def pytest_configure(config: pytest.Config) -> None:
    if rehearsing(config):
        from . import rehearsal_fixtures

        # registered after every entry point: its fixtures replace these ones
        config.pluginmanager.register(rehearsal_fixtures, "tablemig-rehearsal-fixtures")


def _sandbox_root(config: pytest.Config) -> tuple[Path, str]:
    """A directory the unprivileged server user can traverse (pytest's own temp dirs are
    0700 when run as root), and a key every xdist worker of this run shares."""
    root = Path(os.environ.get("TABLEMIG_SANDBOX_ROOT") or Path(tempfile.gettempdir()) / "tablemig-sandboxes")
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    worker = getattr(config, "workerinput", None)
    if worker is not None:  # xdist: every worker shares the controller's run id
        key = f"sandbox-{worker['testrunuid'][:12]}"
    else:
        key = f"sandbox-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if worker is None or worker.get("workerid") == "gw0":
        reap_stale(root, exclude=key)  # sandboxes left running by runs that were killed
    return root, key


@pytest.fixture(scope="session")
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox | None]:
    """The embedded sandbox, or None when an explicit active DSN is given."""
    config = request.config
    if option_or_env(config, "--active-dsn", "TABLEMIG_ACTIVE_DSN"):
        yield None
        return
    root, key = _sandbox_root(config)
    with shared_sandbox(root, key, pg_bin=config.getoption("--pg-bin"),
                        provider=config.getoption("--pg-provider"),
                        subscriber=config.getoption("--sandbox-subscriber")) as sb:
        try:
            yield sb
        finally:
            if request.session.testsfailed:
                _keep_logs(sb, reports_dir(config) / "sandbox-logs")


def _keep_logs(sb: Sandbox, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name, info in sb.clusters.items():
        if info.logfile.exists():
            shutil.copy(info.logfile, dest / f"{name}.log")


@pytest.fixture(scope="session")
def active_dsn(request: pytest.FixtureRequest, sandbox: Sandbox | None) -> str:
    dsn = option_or_env(request.config, "--active-dsn", "TABLEMIG_ACTIVE_DSN")
    if dsn:
        return dsn
    assert sandbox is not None
    return sandbox.active_dsn


@pytest.fixture(scope="session")
def passive_dsn(request: pytest.FixtureRequest, sandbox: Sandbox | None) -> str | None:
    """The passive site; None means single-site (explicit active DSN, no passive)."""
    dsn = option_or_env(request.config, "--passive-dsn", "TABLEMIG_PASSIVE_DSN")
    if dsn:
        return dsn
    return sandbox.passive_dsn if sandbox is not None else None


@pytest.fixture(scope="session")
def active(active_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """Autocommit connection to the active site."""
    with connect(active_dsn) as conn:
        yield conn


@pytest.fixture(scope="session")
def passive(passive_dsn: str | None) -> Iterator[psycopg.Connection[Any] | None]:
    """Autocommit connection to the passive site, or None when single-site."""
    if passive_dsn is None:
        yield None
        return
    with connect(passive_dsn) as conn:
        yield conn
