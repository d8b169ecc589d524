"""What every `tablemig` command shares: bad input answered with an `error:` and a `fix:`
line and a documented exit status (never a traceback), no abbreviated options, `--version`,
`--json`, where the DSN comes from, and `migrate`/`prune`/`rollback` changing nothing
without `--execute` (or a confirmation on a terminal)."""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import subprocess
import sys
import time
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict
from snapshots import snapshot

from tablemig import version
from tablemig.cli.main import build_parser
from tablemig.errors import InputError
from tablemig.pg.connect import resolve_dsn
from tablemig.sandbox.demo_data import create_demo_data

SPEC = ["--table", "public.orders", "--date-column", "created_date"]
CLEAN = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "TABLEMIG_"))}


def tablemig(*args: str, env: dict[str, str] | None = None, stdin: Any = subprocess.DEVNULL
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tablemig.cli.main", *args], capture_output=True, text=True,
                          timeout=300, stdin=stdin, env=CLEAN if env is None else env)


# (id, arguments ({dsn}: a database without the tablemig schema), exit status, words of the
# error line, words of the fix line)
BAD_INPUT: list[tuple[str, list[str], int, str, str]] = [
    ("abbreviated option", ["plan", "--dsn", "{dsn}", *SPEC, "--date-colum", "d", "--retention", "0.1"], 2,
     "unrecognized arguments: --date-colum", "tablemig plan --help"),
    ("abbreviated option, not required", ["plan", "--dsn", "{dsn}", *SPEC, "--retention", "0.1", "--batch", "5"], 2,
     "unrecognized arguments: --batch", "--help"),
    ("cutoff as a word", ["migrate", "--dsn", "{dsn}", *SPEC, "--cutoff", "yesterday"], 2,
     "--cutoff 'yesterday' is not an ISO 8601 date or timestamp", "YYYY-MM-DD"),
    ("cutoff not a date", ["plan", "--dsn", "{dsn}", *SPEC, "--cutoff", "2024-13-45"], 2,
     "is not an ISO 8601 date", "e.g. --cutoff 2025-01-01"),
    ("retention out of range", ["plan", "--dsn", "{dsn}", *SPEC, "--retention", "1.5"], 2,
     "out of range", "--retention 0.1"),
    ("batch size zero", ["migrate", "--dsn", "{dsn}", *SPEC, "--retention", "0.1", "--batch-size", "0"], 2,
     "'0' is not a whole number >= 1", "10000"),
    ("malformed DSN", ["status", "--dsn", "host=db1 dbname"], 2, "is malformed", "key=value pairs"),
    ("malformed DSN, migrate", ["migrate", "--dsn", "postgresql://a@b:5432/db?bogus", *SPEC, "--retention", "0.1"],
     2, "is malformed", "postgresql://app@db1:5432/shop"),
    ("malformed DSN, health", ["health", "--dsn", "host=db1 dbname"], 3, "is malformed", "key=value pairs"),
    ("no database given", ["status"], 2, "no database given", "TABLEMIG_DSN"),
    ("no database given, health", ["health"], 3, "no database given", "--dsn"),
    ("health without the schema", ["health", "--dsn", "{dsn}"], 3, "no tablemig schema in this database",
     "tablemig install-schema"),
    ("health, unknown format", ["health", "--dsn", "{dsn}", "--format", "xml"], 3, "invalid choice: 'xml'",
     "tablemig health --help"),
    ("pause without the schema", ["pause", "--dsn", "{dsn}", "--table", "public.orders"], 2,
     "no tablemig schema in this database", "check --dsn"),
    ("prune without the schema", ["prune", "--dsn", "{dsn}", "--table", "public.orders"], 2,
     "no tablemig schema in this database", "check --dsn"),
    ("server unreachable", ["status", "--dsn", "host=127.0.0.1 port=1 dbname=x password=S3cret connect_timeout=2"],
     3, "cannot connect to", "is the server running"),
    ("unknown command", ["migrat", "--dsn", "{dsn}"], 2, "invalid choice: 'migrat'", "tablemig --help"),
]


@pytest.mark.parametrize(("args", "status", "problem", "fix"), [c[1:] for c in BAD_INPUT],
                         ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_an_error_and_a_fix_never_a_traceback(module_db: Any, args: list[str], status: int,
                                                            problem: str, fix: str) -> None:
    proc = tablemig(*(a.replace("{dsn}", module_db.dsn) for a in args))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr and "S3cret" not in proc.stderr, proc.stderr
    assert lines[0].startswith("tablemig: error: ") and problem in lines[0], proc.stderr
    assert len(lines) == 2 and lines[1].startswith("tablemig: fix: ") and fix in lines[1], proc.stderr
    assert proc.stdout == "", proc.stdout
    with module_db.connect() as conn:  # nothing was installed by any of them
        assert conn.execute("SELECT to_regnamespace('table_migration')").fetchone() == (None,)


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = [parser]
    for action in parser._actions:  # noqa: SLF001 - argparse exposes sub-parsers only this way
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in dict.fromkeys(action.choices.values()):
                out += _parsers(sub)
    return out


def test_every_command_refuses_abbreviations_and_has_json() -> None:
    parsers = _parsers(build_parser())
    assert len(parsers) > 15
    assert [p.prog for p in parsers if p.allow_abbrev] == []
    leaves = [p for p in parsers if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]  # noqa: SLF001
    assert [p.prog for p in leaves if "--json" not in p._option_string_actions] == []  # noqa: SLF001


def test_version() -> None:
    proc = tablemig("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"tablemig {version()}"
    assert version().count(".") >= 2


def test_dsn_precedence() -> None:
    env = {"TABLEMIG_DSN": "host=from-tablemig-dsn", "TABLEMIG_ACTIVE_DSN": "host=from-active",
           "PGHOST": "from-pghost", "PGDATABASE": "shop"}
    assert resolve_dsn("host=explicit", env) == "host=explicit"
    assert resolve_dsn(None, env) == "host=from-tablemig-dsn"
    assert resolve_dsn("", {**env, "TABLEMIG_DSN": " "}) == "host=from-active"
    libpq = resolve_dsn(None, {"PGHOST": "db1", "PGPORT": "5433", "PGDATABASE": "shop", "PGUSER": "app",
                               "PGPASSWORD": "secret"})
    assert libpq is not None and conninfo_to_dict(libpq) == {"host": "db1", "port": "5433", "dbname": "shop",
                                                             "user": "app"}  # libpq reads PGPASSWORD itself
    assert resolve_dsn(None, {"PGPASSWORD": "secret"}) is None
    assert resolve_dsn(None, {}) is None
    with pytest.raises(InputError, match="is malformed"):
        resolve_dsn(None, {"TABLEMIG_DSN": "host=x dbname"})


def test_the_dsn_from_the_environment(module_db: Any) -> None:
    params = conninfo_to_dict(module_db.dsn)
    libpq = {"PGHOST": str(params["host"]), "PGPORT": str(params["port"]), "PGDATABASE": str(params["dbname"]),
             "PGUSER": str(params.get("user", "postgres"))}
    for env in ({"TABLEMIG_DSN": module_db.dsn}, {"TABLEMIG_ACTIVE_DSN": module_db.dsn}, libpq,
                {"TABLEMIG_DSN": module_db.dsn, "PGHOST": "127.0.0.1", "PGPORT": "1"}):
        proc = tablemig("status", "--json", env={**CLEAN, **env})
        assert proc.returncode == 0 and json.loads(proc.stdout) == [], (env, proc.stderr)
    # --dsn wins over the environment
    proc = tablemig("status", "--dsn", module_db.dsn, env={**CLEAN, "TABLEMIG_DSN": "host=127.0.0.1 port=1"})
    assert proc.returncode == 0 and "no migration was started here" in proc.stdout, proc.stderr


@pytest.fixture
def demo(fresh_db: Any) -> Any:
    with fresh_db.connect() as conn:
        create_demo_data(conn, 2_000)
    return fresh_db


def test_changing_commands_change_nothing_without_execute(demo: Any) -> None:
    spec = ["--dsn", demo.dsn, *SPEC, "--retention", "0.1"]
    with demo.connect() as conn:
        before = snapshot(conn, ("orders",))
        dry = tablemig("migrate", *spec)
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.startswith("would migrate public.orders up to state swapped"), dry.stdout
        assert "keep 200 of 2,000 rows" in dry.stdout and "dry run: nothing changed; add --execute" in dry.stdout
        as_json = json.loads(tablemig("migrate", "--json", *spec).stdout)
        assert as_json["dry_run"] is True and as_json["rows_keep"] == 200
        assert snapshot(conn, ("orders",)) == before  # not even the schema was installed

        done = tablemig("migrate", "--execute", "--json", *spec)
        assert done.returncode == 0 and json.loads(done.stdout)["state"] == "swapped", done.stderr
        after_swap = snapshot(conn, ("orders",))
        for command, words in (("prune", "would remove, in public.orders_archive_"),
                               ("rollback", "would swap back in one short transaction")):
            proc = tablemig(command, "--dsn", demo.dsn, "--table", "public.orders")
            assert proc.returncode == 0 and proc.stdout.startswith(words), proc.stdout + proc.stderr
            assert "dry run: nothing changed" in proc.stdout
            assert snapshot(conn, ("orders",)) == after_swap
            assert conn.execute("SELECT state FROM table_migration.migration_state").fetchone() == ("swapped",)
        # a dry run on a table already migrated says where it stands
        proc = tablemig("migrate", *spec)
        assert proc.returncode == 0 and "resumes from  swapped" in proc.stdout, proc.stdout


def _on_a_terminal(args: list[str], answer: bytes | None) -> tuple[int, str, str]:
    """Run the CLI with a terminal as its stdin; type `answer` when it asks."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "tablemig.cli.main", *args], stdin=slave,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLEAN)
        os.close(slave)
        if answer is not None:
            stderr = proc.stderr
            assert stderr is not None  # stderr=PIPE
            deadline = time.monotonic() + 120
            err = ""
            while "proceed? [y/N]" not in err:  # stderr is a pipe: read what it said so far
                assert time.monotonic() < deadline and proc.poll() is None, err
                ready, _, _ = select.select([stderr], [], [], 1)
                if ready:
                    err += os.read(stderr.fileno(), 4096).decode()
            os.write(master, answer)
            out, rest = proc.communicate(timeout=300)
            return proc.returncode, out, err + rest
        out, err = proc.communicate(timeout=300)
        return proc.returncode, out, err
    finally:
        os.close(master)


def test_execute_on_a_terminal_asks_first(demo: Any) -> None:
    spec = ["--dsn", demo.dsn, *SPEC, "--retention", "0.1"]
    with demo.connect() as conn:
        before = snapshot(conn, ("orders",))
        rc, out, err = _on_a_terminal(["migrate", "--execute", *spec], b"n\n")
        assert rc == 2 and "would migrate public.orders" in err, err
        assert "tablemig: error: not confirmed: nothing was changed" in err and out == ""
        assert snapshot(conn, ("orders",)) == before
        rc, out, err = _on_a_terminal(["migrate", "--execute", "--json", *spec], b"y\n")
        assert rc == 0 and json.loads(out)["state"] == "swapped", err
        # --yes: no question on a terminal
        rc, out, err = _on_a_terminal(["rollback", "--execute", "--yes", "--dsn", demo.dsn, "--table",
                                       "public.orders"], None)
        assert rc == 0 and out.startswith("rollback: swapped back") and "proceed?" not in err, err
        assert snapshot(conn, ("orders",))["data"] == before["data"]


def test_a_plan_never_executes_on_a_sandbox_by_accident(tmp_path: Any) -> None:
    """`--execute` without `--active-dsn` (or TABLEMIG_ACTIVE_DSN) is refused before any server
    starts: it would change a throwaway sandbox, not the user's database. `--sandbox` asks
    for that on purpose, and such a run says so in its header."""
    from pathlib import Path

    plan = Path(__file__).resolve().parent.parent / "plans" / "orders_migration.py"
    cmd = [sys.executable, "-m", "pytest", str(plan), "-q", "-p", "no:cacheprovider", "--reports-dir",
           str(tmp_path / "reports")]
    refused = subprocess.run([*cmd, "--execute"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                             env=CLEAN)
    assert refused.returncode == pytest.ExitCode.USAGE_ERROR, refused.stdout + refused.stderr
    assert "error: --execute without --active-dsn (or TABLEMIG_ACTIVE_DSN)" in refused.stderr
    assert "fix: give --active-dsn (and --passive-dsn), or add --sandbox" in refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout
    assert not (tmp_path / "reports").exists()  # nothing ran
    # the header of a run on purpose (collect only: no server is needed to read it)
    header = subprocess.run([c for c in cmd if c != "-q"] + ["--execute", "--sandbox", "--collect-only"],
                            capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, env=CLEAN)
    assert "active site: EMBEDDED SANDBOX" in header.stdout, header.stdout + header.stderr
