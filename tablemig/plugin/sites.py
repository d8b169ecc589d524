"""The pytest plugin (registered by entry point): options, the sandbox and site fixtures.

Without `--active-dsn` (or `TABLEMIG_ACTIVE_DSN`) the session starts an embedded sandbox:
a primary and a streaming standby on loopback, shared by every xdist worker of the run,
stopped and removed when the session ends (also after failures and Ctrl-C); when tests
failed, the server logs are copied to `<reports-dir>/sandbox-logs/` first.
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

from ..pg.connect import connect, redact
from ..sandbox.cluster import Sandbox
from ..sandbox.shared import reap_stale, shared_sandbox

EXECUTE_HELP = "apply the plan (without it, a plan module is a dry run that changes nothing)"


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("tablemig", "tablemig migration plans")
    g.addoption("--execute", action="store_true", help=EXECUTE_HELP)
    g.addoption("--rollback", action="store_true",
                help="with --execute: run the rollback steps (RB-1) after the migration")
    g.addoption("--active-dsn", default=None,
                help="active site (default: $TABLEMIG_ACTIVE_DSN, else an embedded sandbox)")
    g.addoption("--passive-dsn", default=None,
                help="passive site (default: $TABLEMIG_PASSIVE_DSN; none with an explicit "
                     "--active-dsn means single-site)")
    g.addoption("--reports-dir", default=None, help="where run reports go (default: reports/)")
    g.addoption("--pg-bin", default=None,
                help="PostgreSQL binaries: the sandbox's server, and the first choice of client tools "
                     "(pg_dump, pg_restore) when at least as new as the server")
    g.addoption("--pg-provider", default="embedded", choices=["embedded", "docker"],
                help="how the sandbox gets its servers")
    g.addoption("--sandbox-subscriber", action="store_true",
                help="the sandbox also starts a logical-replication subscriber cluster")
    g.addoption("--attest", action="append", default=[], metavar="ID=NAME",
                help="record that NAME confirmed the human checklist item ID")
    g.addoption("--require-attestations", action="store_true",
                help="with --execute, an unattested human item fails and blocks later steps")
    g.addoption("--table", action="append", default=[], metavar="NAME",
                help="only these tables of the plan (as SQL writes them: public.orders)")


def _option_or_env(config: pytest.Config, option: str, env: str) -> str | None:
    value = config.getoption(option)
    return value if value else os.environ.get(env) or None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tablemig_step(id): a checklist step of a plan")
    if config.getoption("--rollback") and not config.getoption("--execute"):
        raise pytest.UsageError("--rollback needs --execute (a dry run never changes anything)")


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
    if _option_or_env(config, "--active-dsn", "TABLEMIG_ACTIVE_DSN"):
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


def reports_dir(config: pytest.Config) -> Path:
    chosen = config.getoption("--reports-dir", default=None)
    return Path(chosen) if chosen else Path(str(config.rootpath)) / "reports"


@pytest.fixture(scope="session")
def active_dsn(request: pytest.FixtureRequest, sandbox: Sandbox | None) -> str:
    dsn = _option_or_env(request.config, "--active-dsn", "TABLEMIG_ACTIVE_DSN")
    if dsn:
        return dsn
    assert sandbox is not None
    return sandbox.active_dsn


@pytest.fixture(scope="session")
def passive_dsn(request: pytest.FixtureRequest, sandbox: Sandbox | None) -> str | None:
    """The passive site; None means single-site (explicit active DSN, no passive)."""
    dsn = _option_or_env(request.config, "--passive-dsn", "TABLEMIG_PASSIVE_DSN")
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


def pytest_report_header(config: pytest.Config) -> list[str]:
    dsn = _option_or_env(config, "--active-dsn", "TABLEMIG_ACTIVE_DSN")
    mode = "EXECUTE" if config.getoption("--execute") else "dry run"
    site = redact(dsn) if dsn else "embedded sandbox (primary + streaming standby)"
    return [f"tablemig: {mode}; active site: {site}"]
