"""pg_dump and pg_restore for the backup (PRE-2.1) and its restore test (PRE-2.3).

A single-table dump (`pg_dump --table T`) is not restorable on its own: it lacks the
sequence a default's `nextval()` uses unless T owns it, the enum, domain and composite types
of its columns, the functions its defaults, checks and triggers call, and (on a rerun after a
crash) the `table_migration` functions of the capture trigger. So the backup is two dumps
taken in one exported snapshot: the table's (all sections) and the database's schema
(`--schema-only`). The restore test rebuilds the table from them in a scratch database:

1. the pre-data section of the schema dump (types, functions, sequences, every table empty);
2. the data section of each table's dump (rows and the sequences it owns), loaded before
   any trigger or index of the table exists;
3. the post-data items of each table's dump (key, indexes, triggers, rules, policies),
   except foreign keys to tables whose rows are not restored.

The scratch database is always dropped: on success, failure and Ctrl-C; one left by a
killed run is dropped by the next run (only when nobody is connected to it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .client_tools import ClientTools
from .connect import connect, redact

SCRATCH_PREFIX = "tablemig_restore_"
LEFTOVER_AGE_S = 60
# Object kinds of the schema dump that restoring a table never needs and that may need
# more than CREATEDB (subscriptions, event triggers, foreign servers) or touch other systems.
SKIPPED_KINDS = frozenset({"SUBSCRIPTION", "SUBSCRIPTION TABLE", "PUBLICATION", "PUBLICATION TABLE",
                           "PUBLICATION TABLES IN SCHEMA", "EVENT TRIGGER", "FOREIGN DATA WRAPPER",
                           "SERVER", "USER MAPPING", "DATABASE", "DATABASE PROPERTIES"})
RESTORE_OPTIONS = ("--no-owner", "--no-privileges", "--no-tablespaces", "--no-security-labels",
                   "--no-subscriptions", "--no-publications")
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def client_dsn(dsn: str) -> tuple[str, dict[str, str]]:
    """(`dsn` without its password, environment giving it as PGPASSWORD): a command line is
    readable by every local user (ps), the environment of a process is not."""
    params: dict[str, Any] = dict(conninfo_to_dict(dsn))
    password = params.pop("password", None)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return make_conninfo("", **params), env


def run_client(cmd: Sequence[str], *, timeout: float,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a client tool and wait for it. It never outlives this call: an exception (a
    timeout, Ctrl-C) kills it, and so does the death of this process. A pg_dump left
    running would keep its ACCESS SHARE locks, and the swap would wait for them."""
    with subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)


def with_dbname(dsn: str, dbname: str) -> str:
    """`dsn` with another database name."""
    return make_conninfo(dsn, dbname=dbname)


def _errors(stderr: str, limit: int = 8) -> list[str]:
    lines = [redact(x.strip()) for x in stderr.splitlines()
             if "error:" in x or x.lstrip().startswith(("ERROR:", "Command was:"))]
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])


def exact_pattern(schema: str, name: str) -> str:
    """A pg_dump name pattern matching exactly this table (no wildcard is special in quotes)."""
    return '"{}"."{}"'.format(schema.replace('"', '""'), name.replace('"', '""'))


def dump(tools: ClientTools, dsn: str, snapshot: str, out: Path, *, table: str | None,
         timeout: float, lock_wait: str = "60s", exclude: Sequence[str] = ()) -> None:
    """pg_dump (custom format) in `snapshot`: one table's everything, or with `table`
    None the database's schema only, without the tables `exclude` (pg_dump patterns).
    Raises AssertionError with pg_dump's errors."""
    what = [f"--table={table}"] if table else ["--schema-only", *(f"--exclude-table={p}" for p in exclude)]
    target, env = client_dsn(dsn)
    cmd = [str(tools.tool("pg_dump")), "--format=custom", f"--file={out}", f"--snapshot={snapshot}",
           f"--lock-wait-timeout={lock_wait}", *what, "--dbname", target]
    proc = run_client(cmd, timeout=timeout, env=env)
    assert proc.returncode == 0, (f"pg_dump of {table or 'the schema'} failed: "
                                  + "; ".join(_errors(proc.stderr) or [redact(proc.stderr.strip())]))


def dump_command(tools: ClientTools, dsn: str, out: Path, table: str | None) -> str:
    """The pg_dump command line, as shown in evidence (password redacted)."""
    what = f"--table={table}" if table else "--schema-only"
    return redact(f"{tools.tool('pg_dump')} --format=custom --file={out} --snapshot=<exported> "
                  f"{what} --dbname {dsn}")


@dataclass(frozen=True)
class TocEntry:
    """One line of `pg_restore --list`: `id; catalog oid kind schema tag owner`."""

    line: str
    kind: str
    schema: str
    rest: str  # the tag and the owner: both may contain spaces

    def names(self, prefix: str) -> bool:
        """Does the tag start with the words of `prefix` (e.g. "orders orders_fkey")?"""
        return self.rest == prefix or self.rest.startswith(prefix + " ")


def _kind_and_rest(fields: list[str]) -> tuple[str, list[str]]:
    # kinds are one to four words ("FK CONSTRAINT", "PUBLICATION TABLES IN SCHEMA"); the
    # longest known prefix wins, else the first word
    for n in (4, 3, 2):
        if " ".join(fields[:n]) in _MULTIWORD:
            return " ".join(fields[:n]), fields[n:]
    return fields[0], fields[1:]


_MULTIWORD = frozenset({"TABLE DATA", "FK CONSTRAINT", "SEQUENCE SET", "SEQUENCE OWNED BY",
                        "DEFAULT ACL", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA", "ROW SECURITY",
                        "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA", "EVENT TRIGGER",
                        "FOREIGN DATA WRAPPER", "FOREIGN TABLE", "USER MAPPING", "SHELL TYPE",
                        "ACCESS METHOD", "DATABASE PROPERTIES", "TABLE ATTACH", "INDEX ATTACH",
                        "STATISTICS DATA", "LARGE OBJECT", "BLOB METADATA", "SUBSCRIPTION TABLE",
                        "OPERATOR CLASS", "OPERATOR FAMILY", "TEXT SEARCH CONFIGURATION",
                        "TEXT SEARCH DICTIONARY", "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE",
                        "PROCEDURAL LANGUAGE", "TRANSFORM", "CHECK CONSTRAINT"})


def listing(tools: ClientTools, archive: Path, section: str) -> list[TocEntry]:
    """The entries of `archive` in `section` (pre-data, data, post-data)."""
    proc = run_client([str(tools.tool("pg_restore")), "--list", f"--section={section}", str(archive)],
                      timeout=600)
    assert proc.returncode == 0, f"pg_restore --list {archive} failed: {redact(proc.stderr.strip())}"
    out = []
    for line in proc.stdout.splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        head, _, rest = line.partition(";")
        fields = rest.split()[2:]  # after catalog oid and object oid
        if not head.strip().isdigit() or not fields:
            continue
        kind, more = _kind_and_rest(fields)
        out.append(TocEntry(line, kind, more[0] if more else "", " ".join(more[1:])))
    return out


@dataclass
class RestoredTable:
    """A table to restore: its dump and its foreign keys (name -> referenced table)."""

    name: str  # schema-qualified, as SQL writes it
    schema: str
    relname: str
    file: Path
    foreign_keys: dict[str, str] = field(default_factory=dict)


@dataclass
class RestoreOutcome:
    """What the restore did: steps run, schema objects that did not restore, FKs left out."""

    commands: list[str] = field(default_factory=list)
    schema_errors: list[str] = field(default_factory=list)
    skipped_foreign_keys: list[str] = field(default_factory=list)


def _restore(tools: ClientTools, dsn: str, archive: Path, entries: list[TocEntry] | None, *,
             section: str | None, exit_on_error: bool, outcome: RestoreOutcome) -> list[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".list", encoding="utf-8") as lst:
        cmd = [str(tools.tool("pg_restore")), *RESTORE_OPTIONS]
        if entries is not None:
            lst.write("".join(e.line + "\n" for e in entries))
            lst.flush()
            cmd.append(f"--use-list={lst.name}")
        if section:
            cmd.append(f"--section={section}")
        if exit_on_error:
            cmd.append("--exit-on-error")
        target, env = client_dsn(dsn)
        cmd += ["--dbname", target, str(archive)]
        outcome.commands.append(redact(" ".join(cmd)))
        proc = run_client(cmd, timeout=24 * 3600, env=env)
    if proc.returncode != 0:
        return _errors(proc.stderr) or [redact(proc.stderr.strip()) or f"exit status {proc.returncode}"]
    return []


def restore(tools: ClientTools, dsn: str, schema_file: Path, tables: list[RestoredTable]) -> RestoreOutcome:
    """Rebuild `tables` from the backup in the (empty) database `dsn`; see the module
    docstring. Objects of the schema that fail to restore are collected (another table's
    extension may need a superuser); a table whose rows or post-data items fail raises
    AssertionError naming pg_restore's errors and those of the schema."""
    outcome = RestoreOutcome()
    pre = [e for e in listing(tools, schema_file, "pre-data") if e.kind not in SKIPPED_KINDS]
    outcome.schema_errors = _restore(tools, dsn, schema_file, pre, section=None, exit_on_error=False,
                                     outcome=outcome)
    context = (f"; objects of the schema that did not restore first: {outcome.schema_errors}"
               if outcome.schema_errors else "")
    for t in tables:
        failed = _restore(tools, dsn, t.file, None, section="data", exit_on_error=True, outcome=outcome)
        assert not failed, f"restoring the rows of {t.name} failed: {failed}{context}"
    restored = {t.name for t in tables}
    for t in tables:
        post = []
        for e in listing(tools, t.file, "post-data"):
            if e.kind == "FK CONSTRAINT":
                # the longest name first: "fk" must not claim the entry of "fk two"
                name = next((n for n in sorted(t.foreign_keys, key=len, reverse=True)
                             if e.schema == t.schema and e.names(f"{t.relname} {n}")), e.rest)
                if t.foreign_keys.get(name) not in restored:
                    outcome.skipped_foreign_keys.append(f"{t.name}: {name}")
                    continue
            if e.kind not in SKIPPED_KINDS:
                post.append(e)
        if post:
            failed = _restore(tools, dsn, t.file, post, section=None, exit_on_error=True, outcome=outcome)
            assert not failed, f"restoring the keys, indexes and triggers of {t.name} failed: {failed}{context}"
    return outcome


def _created_at(name: str) -> float | None:
    stamp = name.removeprefix(SCRATCH_PREFIX).split("_", 1)[0]
    return float(stamp) if stamp.isdigit() else None


def drop_leftovers(conn: Any) -> list[str]:
    """Drop scratch databases of earlier runs that nobody uses (a killed run's). One in use
    (a concurrent restore test keeps a connection open to its own) is left alone, and so is
    one younger than a minute: its creator may not have connected yet."""
    rows = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)"
                        " AND pg_has_role(datdba, 'USAGE')", (SCRATCH_PREFIX,)).fetchall()
    dropped = []
    for (name,) in rows:
        born = _created_at(name)
        if born is not None and time.time() - born < LEFTOVER_AGE_S:
            continue
        with suppress(errors.ObjectInUse, errors.InsufficientPrivilege):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            dropped.append(name)
    return dropped


@contextmanager
def scratch_database(dsn: str) -> Iterator[tuple[str, str]]:
    """(name, dsn) of a new empty database on `dsn`'s server, dropped on exit whatever
    happens. A connection to it stays open meanwhile: it marks the database as in use."""
    name = f"{SCRATCH_PREFIX}{int(time.time())}_{uuid.uuid4().hex[:8]}"
    with connect(dsn) as admin:
        drop_leftovers(admin)
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        scratch = with_dbname(dsn, name)
        with connect(scratch, application_name="tablemig restore test"):
            yield name, scratch
    finally:
        # a fresh connection: an interrupt may have left any earlier one mid-statement
        with connect(dsn) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
