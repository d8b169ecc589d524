"""Throwaway PostgreSQL clusters (primary + standby) for tests and demos: `tablemig sandbox`.

`start` prints the DSNs; with `--json` exactly one JSON object of DSNs on stdout, so
scripts can capture it (everything else goes to stderr).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cli.conventions import INTERRUPTED, REFUSED, Parser, UsageError, add_json, emit
from ..errors import InputError, TablemigError
from ..pg.connect import redact
from .cluster import PROVIDERS, start_sandbox, stop_sandbox


def _settings(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects KEY=VALUE, got {pair!r}", "e.g. --set fsync=on")
        out[key.strip()] = value.strip()
    return out


def cmd_start(args: argparse.Namespace) -> int:
    """Start a sandbox and print its DSNs as JSON."""
    t0 = time.monotonic()
    sb = start_sandbox(Path(args.dir), subscriber=args.subscriber, pg_bin=args.pg_bin,
                       provider=args.pg_provider, extra_conf=_settings(args.set or []))
    print(f"tablemig: sandbox at {sb.root} (PostgreSQL {sb.pg_bin.version} from "
          f"{sb.pg_bin.source}) started in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    dsns = sb.as_dict()
    emit(args, dsns, lambda: "\n".join(f"{site}: {dsn}" for site, dsn in dsns.items()))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop and remove a sandbox; does nothing if there is none."""
    stop_sandbox(Path(args.dir), keep_logs=args.keep_logs)
    emit(args, {"stopped": args.dir, "logs_kept": args.keep_logs},
         f"sandbox at {args.dir} stopped and removed{' (logs kept)' if args.keep_logs else ''}")
    return 0


def register(subparsers: Any) -> None:
    """Add the `sandbox` command (with `start` and `stop`) to the tablemig CLI."""
    p = subparsers.add_parser("sandbox", help="start/stop throwaway PostgreSQL clusters",
                              description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="sandbox_command", required=True, metavar="ACTION")

    start = sub.add_parser("start", help="start a primary + streaming standby; print DSNs")
    start.add_argument("--dir", required=True, help="directory to hold the clusters")
    start.add_argument("--subscriber", action="store_true",
                       help="also start a separate cluster for logical-replication tests")
    start.add_argument("--pg-bin", help="PostgreSQL bin directory (default: search)")
    start.add_argument("--pg-provider", choices=PROVIDERS, default="embedded",
                       help="where the servers run (default: embedded local processes)")
    start.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="postgresql.conf setting for every cluster (repeatable)")
    add_json(start)
    start.set_defaults(func=cmd_start)

    stop = sub.add_parser("stop", help="stop the sandbox and remove its directories")
    stop.add_argument("--dir", required=True, help="directory given to start")
    stop.add_argument("--keep-logs", action="store_true", help="keep DIR/logs/*.log")
    add_json(stop)
    stop.set_defaults(func=cmd_stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Run only the sandbox command, e.g. `python -m tablemig.sandbox.cli start --dir D`."""
    parser = Parser(prog="tablemig")
    register(parser.add_subparsers(dest="command", required=True, parser_class=Parser))
    try:
        args = parser.parse_args(["sandbox", *(sys.argv[1:] if argv is None else argv)])
        return int(args.func(args) or 0)
    except (TablemigError, UsageError) as exc:
        print(f"tablemig: error: {redact(exc.problem)}", file=sys.stderr)
        if exc.fix:
            print(f"tablemig: fix: {exc.fix}", file=sys.stderr)
        return REFUSED
    except KeyboardInterrupt:
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
