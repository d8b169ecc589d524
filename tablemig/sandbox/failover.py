"""Failover rehearsal (EX-4.3), sandbox only: a fresh copy of the standby is promoted and
must hold the migrated table and its archive, identical and writable. The pair itself is
left alone, so the plan's later steps still have their passive site."""

from __future__ import annotations

import shutil
import time
from contextlib import suppress
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..pg.binaries import chown_to, run_tool
from ..pg.catalog import inspect_table
from ..pg.connect import connect
from ..pg.names import QualifiedName
from ..pg.probes import touch_one, unreferenced
from ..pg.reconcile import Reconciler
from ..pg.site_compare import Pair, compare
from .cluster import SOCKET_LIMIT, ClusterInfo, Sandbox, _read_state, _start, _write_state


def _reconciler(conn: psycopg.Connection[Any], table: QualifiedName) -> Reconciler:
    info = inspect_table(conn, table)
    types = {c.name: c.type for c in info.columns}
    return Reconciler(info.key_columns, [types[k] for k in info.key_columns], [c.name for c in info.columns])


def rehearse(sb: Sandbox, active_dsn: str, live: QualifiedName, archive: QualifiedName) -> dict[str, Any]:
    name = f"rehearsal{int(time.time() * 1000) % 100000}"
    base = sb.root / name
    base.mkdir(mode=0o700)
    chown_to(base, sb.run_as)
    socket_dir = str(base) if len(f"{base}/.s.PGSQL.65535") < SOCKET_LIMIT else ""
    info = ClusterInfo(name, base / "data", 0, sb.root / "logs" / f"{name}.log", socket_dir)
    active = sb.clusters["active"]
    out: dict[str, Any] = {"cluster": name}
    try:
        rc, text = run_tool([sb.pg_bin.tool("pg_basebackup"), "-h", "127.0.0.1", "-p", str(active.port),
                             "-U", "postgres", "-D", info.datadir, "-R", "-X", "stream", "-c", "fast",
                             "--no-sync"], sb.run_as, cwd=sb.root)
        assert rc == 0, f"pg_basebackup for the rehearsal failed: {text[-500:]}"
        state = _read_state(sb.root) or {}
        info = _start(sb.root, info, sb.pg_bin, sb.run_as, state)
        params = conninfo_to_dict(active_dsn)
        params.update(host="127.0.0.1", port=str(info.port))
        dsn = make_conninfo("", **params)
        # the copy is a standby of the active site until promoted: compared as one while the
        # application may write (tablemig.pg.site_compare), not by counts read at two moments
        with connect(active_dsn) as a, connect(dsn) as copy:
            pair = Pair(a, copy, logical=False)
            compared = {str(t): compare(pair, _reconciler(a, t), t) for t in (live, archive)}
        out["compared_before_promotion"] = {t: d.evidence() for t, d in compared.items()}
        t0 = time.monotonic()
        rc, text = run_tool([sb.pg_bin.tool("pg_ctl"), "-D", info.datadir, "-w", "-t", "60", "promote"],
                            sb.run_as, cwd=sb.root)
        assert rc == 0, f"promotion failed: {text[-500:]}"
        out["promote_seconds"] = round(time.monotonic() - t0, 2)
        with connect(dsn) as p:
            in_recovery = p.execute("SELECT pg_is_in_recovery()").fetchone()
            found = {str(t): p.execute(sql.SQL("SELECT count(*) FROM {}").format(t.ident())).fetchone()[0]  # type: ignore[index]
                     for t in (live, archive)}
            # a row no foreign key references: the write is the test, not the children's
            # ON DELETE actions (RESTRICT would refuse it)
            delete_one = "DELETE FROM {0} WHERE ctid IN (SELECT ctid FROM {0} r WHERE {1} ORDER BY ctid DESC LIMIT 1)"
            # (when every row is referenced, children of every row: one row written unchanged)
            with p.transaction():  # committed: the promoted copy is thrown away afterwards
                wrote = (p.execute(sql.SQL(delete_one).format(live.ident(), unreferenced(p, live, "r"))).rowcount
                         or touch_one(p, live, inspect_table(p, live).key_columns))
                wrote_archive = (p.execute(sql.SQL(delete_one).format(
                    archive.ident(), unreferenced(p, archive, "r"))).rowcount
                    or touch_one(p, archive, inspect_table(p, archive).key_columns)) == 1
        out.update(promoted=not (in_recovery and in_recovery[0]), rows_found=found,
                   intact=all(d.in_sync for d in compared.values()), writable=wrote == 1 and wrote_archive)
        return out
    finally:
        with suppress(Exception):
            run_tool([sb.pg_bin.tool("pg_ctl"), "-D", info.datadir, "-m", "immediate", "stop"], sb.run_as,
                     cwd=sb.root)
        state = _read_state(sb.root) or {}
        state.get("clusters", {}).pop(name, None)
        with suppress(Exception):
            _write_state(sb.root, state)
        shutil.rmtree(base, ignore_errors=True)
