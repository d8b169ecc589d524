"""What every `tablemig` command shares: the parser (no abbreviated options, usage errors
as `error:`/`fix:` lines), the exit codes, where the DSN comes from, `--json`, and the
dry run / confirmation of the commands that change a database.

Exit codes of every command but `health` (which uses the monitoring plugins' codes, see
`tablemig.cli.health`):

* 0  done (a dry run included);
* 1  a check found a problem (`plan`: blockers that refuse the migration);
* 2  bad input or refused: nothing was changed;
* 3  the server could not be reached, or the connection was lost: rerun when it is back;
* 130 interrupted (Ctrl-C): rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from ..errors import InputError
from ..pg.connect import resolve_dsn

OK, CHECK_FAILED, REFUSED, UNREACHABLE, INTERRUPTED = 0, 1, 2, 3, 130
FIX_SEPARATOR = "\nfix: "


class UsageError(Exception):
    """A command line the parser refused; `command` is the sub-command it was for (if known)."""

    def __init__(self, problem: str, fix: str, command: str | None) -> None:
        super().__init__(problem)
        self.problem, self.fix, self.command = problem, fix, command


class Parser(argparse.ArgumentParser):
    """argparse without prefix matching (`--date-colum` is an error, not `--date-column`) and
    with usage errors raised as `UsageError`, so that `main` prints them like any other error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        problem, _, fix = message.partition(FIX_SEPARATOR)
        command = self.prog.split()[1] if len(self.prog.split()) > 1 else None
        raise UsageError(problem, fix or f"see `{self.prog} --help`", command)


def argument_error(problem: str, fix: str) -> argparse.ArgumentTypeError:
    """An error for an argument's `type` function, with its fix (shown on the `fix:` line)."""
    return argparse.ArgumentTypeError(problem + FIX_SEPARATOR + fix)


# -- where the DSN comes from ------------------------------------------------------------------
DSN_HELP = ("connection string of the active site (default: $TABLEMIG_DSN, else $TABLEMIG_ACTIVE_DSN, "
            "else libpq's PGHOST, PGPORT, PGDATABASE, PGUSER, PGSERVICE)")


def add_dsn(p: argparse.ArgumentParser, help: str = DSN_HELP) -> None:
    p.add_argument("--dsn", help=help)


def dsn_of(args: argparse.Namespace) -> str:
    """The DSN of a command: --dsn, $TABLEMIG_DSN, $TABLEMIG_ACTIVE_DSN, libpq's PG* variables."""
    dsn = resolve_dsn(getattr(args, "dsn", None), os.environ)
    if dsn is None:
        raise InputError("no database given",
                         "pass --dsn 'host=db1 dbname=shop', or set TABLEMIG_DSN, or libpq's PGHOST/PGDATABASE")
    return dsn


# -- output ----------------------------------------------------------------------------------
def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of text")


def emit(args: argparse.Namespace, data: Any, text: str | Callable[[], str]) -> None:
    """The result on stdout: JSON with --json, else the human text."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        out = text() if callable(text) else text
        if out:
            print(out)


def fmt_count(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) and not isinstance(n, bool) else ("—" if n is None else str(n))


# -- commands that change a database -----------------------------------------------------------
def add_execute(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--execute", action="store_true",
                   help=f"{what} (without it: print what would be done and change nothing)")
    p.add_argument("--yes", action="store_true",
                   help="with --execute on a terminal: do not ask for confirmation (for scripts)")


def must_describe(args: argparse.Namespace) -> bool:
    """Whether a changing command first shows what it would do: without --execute (a dry run)
    and before asking for confirmation on a terminal."""
    return not args.execute or (not args.yes and sys.stdin.isatty())


def confirmed(args: argparse.Namespace, intent: str, data: dict[str, Any]) -> bool:
    """Whether a changing command may go ahead. Without --execute: prints `intent` (with
    --json: `data`) and that nothing changed; the caller exits 0. With --execute on a
    terminal: prints `intent` and asks, unless --yes. With --execute and no terminal (a
    script, cron): goes ahead."""
    if not args.execute:
        emit(args, {"dry_run": True, "would": intent, **data},
             lambda: f"{intent}\n\ndry run: nothing changed; add --execute to apply")
        return False
    if args.yes or not sys.stdin.isatty():
        return True
    # the question goes to stderr: stdout holds only the result (--json)
    print(intent, file=sys.stderr)
    print("proceed? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if answer.strip().lower() in ("y", "yes"):
        return True
    raise InputError("not confirmed: nothing was changed", "answer y to proceed, or pass --yes with --execute")


# -- values ------------------------------------------------------------------------------------
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$")
CUTOFF_FORMATS = ("YYYY-MM-DD, 'YYYY-MM-DD HH:MM[:SS[.ffffff]]' (also with T), optionally with a UTC offset "
                  "(+02:00, -0500, Z); without an offset it is read in the database's TimeZone")


def cutoff(text: str) -> str:
    """A cutoff as the command line accepts it: an ISO 8601 date or timestamp. PostgreSQL
    would also take words such as `yesterday` or `now`, whose meaning moves with the moment
    the migration runs: refused."""
    value = text.strip()
    if _ISO.match(value):
        try:
            dt.datetime.fromisoformat(value.replace(" ", "T", 1) if "T" not in value else value)
            return value
        except ValueError:
            pass
    raise argument_error(f"--cutoff {text!r} is not an ISO 8601 date or timestamp",
                         f"give the cutoff as {CUTOFF_FORMATS}, e.g. --cutoff 2025-01-01")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argument_error(f"{text!r} is not a whole number >= 1", "e.g. 10000")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argument_error(f"--retention {text!r} is out of range: a fraction above 0 and below 1",
                             "e.g. --retention 0.1 keeps the newest 10 % of rows")
    return value
