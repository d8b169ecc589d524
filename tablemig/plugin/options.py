"""The command-line options of a plan run, refused before anything runs when they do not
make sense (`--rollback` without `--execute`, a malformed `--attest`), and the header line
that says which mode and which site a run uses.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from ..checklist.items import ITEMS
from ..config.plan import Attestation
from ..errors import InputError
from ..pg.connect import redact
from ..rehearsal.prepare import DEFAULT_ROWS, Scale

EXECUTE_HELP = "apply the plan (without it, a plan module is a dry run that changes nothing)"
REHEARSAL_MARK = ("REHEARSAL on a clone of the active site's schema with synthetic rows "
                  "(the active site was only read)")
REHEARSE_ONLY = ("--rehearse-rows", "--rehearse-fraction", "--rehearse-schema")


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
    g.addoption("--sandbox", action="store_true",
                help="with --execute and no --active-dsn: execute on a throwaway embedded sandbox on purpose "
                     "(without it such a run is refused: it would not touch your database)")
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
    g.addoption("--rehearse", action="store_true",
                help="run the plan with --execute on a throwaway sandbox holding the active site's schema and "
                     "synthetic rows shaped by its statistics; report it as a rehearsal with the duration "
                     "estimated at production size (the active site is only read)")
    g.addoption("--rehearse-rows", type=int, default=None, metavar="N",
                help=f"with --rehearse: rows of the largest plan table in the rehearsal (default {DEFAULT_ROWS}); "
                     "every table is scaled by the same fraction")
    g.addoption("--rehearse-fraction", type=float, default=None, metavar="F",
                help="with --rehearse: the share of every table's rows to make instead (e.g. 0.001)")
    g.addoption("--rehearse-schema", default=None, metavar="FILE",
                help="with --rehearse: load this schema (plain SQL or a pg_dump archive) instead of dumping "
                     "the active site's (a plan may name one as rehearsal_schema)")


def rehearsing(config: pytest.Config) -> bool:
    """Whether this run is a rehearsal (`--rehearse`)."""
    return bool(config.getoption("--rehearse", default=False))


def rehearsal_scale(config: pytest.Config) -> Scale:
    """The rehearsal's size, from --rehearse-rows or --rehearse-fraction."""
    return Scale(rows=config.getoption("--rehearse-rows"), fraction=config.getoption("--rehearse-fraction"))


@pytest.hookimpl(tryfirst=True)  # --rehearse sets --execute before any plugin reads it
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tablemig_step(id): a checklist step of a plan")
    _check_rehearsal(config)
    if config.getoption("--rollback") and not config.getoption("--execute"):
        raise pytest.UsageError("--rollback needs --execute (a dry run never changes anything)")
    cli_attestations(config)  # a malformed --attest is a usage error before anything runs
    # a rehearsal executes on its own sandbox, said as such everywhere (tablemig.rehearsal)
    if (config.getoption("--execute") and not config.getoption("--sandbox") and not rehearsing(config)
            and not option_or_env(config, "--active-dsn", "TABLEMIG_ACTIVE_DSN")):
        raise pytest.UsageError(
            "error: --execute without --active-dsn (or TABLEMIG_ACTIVE_DSN) would execute the plan on an "
            "embedded sandbox, not on your database\n"
            "fix: give --active-dsn (and --passive-dsn), or add --sandbox to execute on a throwaway sandbox "
            "on purpose")


def executes_on_sandbox(config: pytest.Config) -> bool:
    """The run changes an embedded sandbox, not a database of the user's."""
    return (bool(config.getoption("--execute")) and not rehearsing(config)
            and not option_or_env(config, "--active-dsn", "TABLEMIG_ACTIVE_DSN"))


def _check_rehearsal(config: pytest.Config) -> None:
    if not rehearsing(config):
        extra = [o for o in REHEARSE_ONLY if config.getoption(o) is not None]
        if extra:
            raise pytest.UsageError(f"{', '.join(extra)} need --rehearse")
        return
    try:
        rehearsal_scale(config)
    except InputError as exc:
        raise pytest.UsageError(f"--rehearse: {exc.problem} ({exc.fix})") from None
    config.option.execute = True  # on the rehearsal's own sandbox, never on the active site


def option_or_env(config: pytest.Config, option: str, env: str) -> str | None:
    """The option's value, else the environment variable's, else None."""
    value = config.getoption(option)
    return str(value) if value else os.environ.get(env) or None


def reports_dir(config: pytest.Config) -> Path:
    """Where run reports go: `--reports-dir`, else `reports/` under pytest's rootdir."""
    chosen = config.getoption("--reports-dir", default=None)
    return Path(chosen) if chosen else Path(str(config.rootpath)) / "reports"


def cli_attestations(config: pytest.Config) -> dict[str, Attestation]:
    """The attestations given with `--attest ID=NAME`, dated now."""
    out = {}
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for raw in config.getoption("--attest", default=[]) or []:
        item, sep, who = raw.partition("=")
        if not sep or not who.strip() or item not in ITEMS:
            raise pytest.UsageError(f"--attest {raw!r}: expected ID=NAME with a checklist id "
                                    "(e.g. --attest PRE-3.2=alice)")
        out[item] = Attestation(who.strip(), now, "given on the command line")
    return out


def pytest_report_header(config: pytest.Config) -> list[str]:
    dsn = option_or_env(config, "--active-dsn", "TABLEMIG_ACTIVE_DSN")
    if rehearsing(config):
        source = redact(dsn) if dsn else "embedded sandbox with the plan's demo data"
        return [f"tablemig: {REHEARSAL_MARK}; the plan runs with --execute on a throwaway sandbox; "
                f"source (only read): {source}"]
    mode = "EXECUTE" if config.getoption("--execute") else "dry run"
    site = redact(dsn) if dsn else "embedded sandbox (primary + streaming standby)"
    if executes_on_sandbox(config):
        site = "EMBEDDED SANDBOX (throwaway servers with demo data), not your database"
    return [f"tablemig: {mode}; active site: {site}"]
