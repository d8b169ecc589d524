"""The `tablemig` command line: thin adapters over the library.

Each sub-command lives in the module that does the work; that module exposes
`register(subparsers)` and sets `func` on its parser. Errors print the problem and the fix
and exit 2; nothing is ever half-done by the CLI itself.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import psycopg

from ..errors import TablemigError
from ..pg.connect import redact

# Modules that contribute sub-commands, in the order `--help` lists them.
COMMAND_MODULES = [
    "tablemig.sandbox.cli",
    "tablemig.sandbox.demo_data",
    "tablemig.pg.schema",
    "tablemig.cli.commands",
    "tablemig.cli.newplan",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tablemig", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except TablemigError as exc:
        print(file=sys.stderr)  # end a progress line
        print(f"tablemig: error: {redact(exc.problem)}", file=sys.stderr)
        if exc.fix:
            print(f"tablemig: fix: {exc.fix}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:
        print(f"tablemig: error: the connection to the server was lost: {redact(str(exc)).strip()}",
              file=sys.stderr)
        print("tablemig: fix: nothing is half-done (every step commits with its checkpoint); when the "
              "server is back, rerun the same command to resume", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("tablemig: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
