"""The `tablemig` command line: thin adapters over the library.

Each sub-command lives in the module that does the work; that module exposes
`register(subparsers)` and sets `func` on its parser. Expected errors print an `error:` and a
`fix:` line, never a traceback; the exit codes are in `tablemig.cli.conventions` (and, for
`health`, the monitoring plugins' codes in `tablemig.cli.health`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

import psycopg

from .. import version
from ..errors import ConnectionFailed, TablemigError
from ..pg.connect import redact
from ..report import progress
from .conventions import INTERRUPTED, REFUSED, UNREACHABLE, Parser, UsageError

# Modules that contribute sub-commands, in the order `--help` lists them.
COMMAND_MODULES = [
    "tablemig.sandbox.cli",
    "tablemig.sandbox.demo_data",
    "tablemig.pg.schema",
    "tablemig.cli.commands",
    "tablemig.cli.status",
    "tablemig.cli.health",
    "tablemig.cli.newplan",
]
# Commands whose every error is "unknown" (3) to a monitoring system, not "bad input" (2),
# which it would read as CRITICAL.
UNKNOWN_ON_ERROR = {"health": 3}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tablemig", description=__doc__.splitlines()[0],
                    epilog="exit codes: 0 done, 1 a check found a problem, 2 bad input or refused (nothing "
                           "changed), 3 server unreachable or connection lost, 130 interrupted; health: 0 OK, "
                           "1 WARNING, 2 CRITICAL, 3 UNKNOWN")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    parser.set_defaults(commands=frozenset(sub.choices))
    return parser


def _command(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def _line(text: str) -> str:
    """One line (a server's message may span several), without passwords."""
    return " ".join(redact(text).split())


def _error(problem: str, fix: str) -> None:
    for h in logging.getLogger("tablemig").handlers:  # a progress bar's line ends first
        if isinstance(h, _Stderr):
            h.close_bar()
    print(f"tablemig: error: {_line(problem)}", file=sys.stderr)
    if fix:
        print(f"tablemig: fix: {_line(fix)}", file=sys.stderr)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """The current `sys.stderr` at each record (a caller may have replaced it since). On a
    terminal the backfill's progress is one bar redrawn in place (tablemig.report.progress);
    a pipe gets every record as a line."""

    bar_open = False

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr
        self.setStream(stream)
        shown = progress.figures(record)
        try:
            if shown is not None and stream.isatty():
                stream.write("\r\x1b[2K" + progress.bar(shown))
                stream.flush()
                self.bar_open = True
                return
            self.close_bar()
        except (OSError, ValueError):  # a closed stream: the record is dropped like any other
            return
        super().emit(record)

    def close_bar(self) -> None:
        """End the bar's line before anything else is written."""
        if self.bar_open:
            sys.stderr.write("\n")
            self.bar_open = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its progress (phases, rows, rate, ETA, pauses, rests) goes to stderr
    as log lines, its result to stdout."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("tablemig: %(message)s"))
    logger = logging.getLogger("tablemig")
    logger.addHandler(handler)
    level = logger.level
    if level == logging.NOTSET or level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        return _main(argv)
    finally:
        handler.close_bar()
        logger.removeHandler(handler)
        logger.setLevel(level)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        rc = args.func(args)
    except UsageError as exc:
        # arguments no sub-command knows are refused by the top parser: point to the sub-command's help
        known = command is not None and exc.command is None and command in parser.get_default("commands")
        _error(exc.problem, f"see `tablemig {command} --help`" if known else exc.fix)
        return UNKNOWN_ON_ERROR.get(exc.command or command or "", REFUSED)
    except ConnectionFailed as exc:
        _error(exc.problem, exc.fix)
        return UNREACHABLE
    except TablemigError as exc:
        _error(exc.problem, exc.fix)
        return UNKNOWN_ON_ERROR.get(command or "", REFUSED)
    except psycopg.OperationalError as exc:
        _error(f"the connection to the server was lost: {str(exc).strip()}",
               "nothing is half-done (every step commits with its checkpoint); when the server is back, "
               "rerun the same command to resume")
        return UNREACHABLE
    except psycopg.errors.InsufficientPrivilege as exc:
        _error(f"permission denied: {str(exc).strip()}",
               "connect as the table's owner or a role with the privileges the message names")
        return UNKNOWN_ON_ERROR.get(command or "", REFUSED)
    except KeyboardInterrupt:
        print("\ntablemig: interrupted; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
