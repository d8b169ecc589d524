"""The data every phase starts from: a source database made once with the real
`tablemig demo-data`, copied for each measured run, and the cutoff the planner computes."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from psycopg import sql

from tablemig.pg.connect import connect
from tablemig.pg.cutoff import compute_cutoff
from tablemig.pg.names import QualifiedName

from .proc import log, run_child, tablemig_cli, tail
from .server import APP, Target, checkpoint, drop_database, scalar

TABLE = "public.orders"
DATE_COLUMN = "created_date"
SRC_MARK = "tablemig-bench source complete"


@dataclass(frozen=True)
class Cut:
    """The cutoff of a retention, as tablemig's planner computes it, and what it keeps."""

    retention: float
    total: int
    cutoff: str
    kept_rows: int
    max_id: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def source_name(rows: int, months: int) -> str:
    """The source database of `rows` orders over `months` months."""
    return f"bench_src_{rows}" + ("" if months == 36 else f"_m{months}")


def described(t: Target, db: str, mark: str) -> dict[str, Any] | None:
    """The description an earlier run left in database `db`'s comment (after `mark`) when it
    completed it, with "reused": True; None when there is none."""
    text = scalar(t.conn, "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                  (db,))
    if not (text and str(text).startswith(mark)):
        return None
    info: dict[str, Any] = json.loads(str(text)[len(mark):])
    info["reused"] = True
    return info


def ensure_source(t: Target, rows: int, workdir: Path, months: int = 36) -> dict[str, Any]:
    """The source database, made with `tablemig demo-data` then VACUUM (ANALYZE) so that
    every copy starts with hint bits, visibility map and statistics set; reused when an
    earlier run completed it (its description is kept in the database's comment)."""
    db = source_name(rows, months)
    info = described(t, db, SRC_MARK)
    if info is not None:
        log(f"reusing source database {db} ({rows:,} rows)")
        return info
    drop_database(t, db)
    t.conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    log(f"generating {rows:,} rows with `tablemig demo-data` into {db} ...")
    out, err = workdir / f"demo_data_{rows}.out", workdir / f"demo_data_{rows}.err"
    done = run_child(tablemig_cli("demo-data", "--dsn", t.dsn(db), "--rows", str(rows), "--months", str(months)),
                     out, err)
    if done.code != 0:
        raise RuntimeError(f"demo-data failed (exit {done.code}):\n{tail(err)}\n{tail(out)}")
    log(f"demo-data: {out.read_text().strip()} (wall {done.seconds:.1f} s)")
    with connect(t.dsn(db), application_name=APP) as c:
        t0 = time.perf_counter()
        c.execute("VACUUM (ANALYZE) orders")
        c.execute("VACUUM (ANALYZE) order_items")
        vacuum_s = time.perf_counter() - t0
        sizes = c.execute(
            "SELECT pg_database_size(current_database()), pg_relation_size('orders'),"
            " pg_total_relation_size('orders'), pg_total_relation_size('order_items'),"
            " (SELECT count(*) FROM orders), (SELECT count(*) FROM order_items)").fetchone()
        assert sizes is not None
    ckpt = checkpoint(t)
    info = {"database": db, "rows": int(sizes[4]), "months": months, "order_items": int(sizes[5]),
            "generate_seconds": round(done.seconds, 2), "generate_load": done.load,
            "vacuum_analyze_seconds": round(vacuum_s, 2), "checkpoint_seconds": round(ckpt, 2),
            "database_bytes": int(sizes[0]), "orders_heap_bytes": int(sizes[1]),
            "orders_total_bytes": int(sizes[2]), "order_items_total_bytes": int(sizes[3]), "reused": False}
    t.conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(db), sql.Literal(SRC_MARK + json.dumps(info))))
    log(f"source ready: {info['database_bytes'] / 2**30:.2f} GiB database, generate "
        f"{done.seconds:.1f} s, vacuum analyze {vacuum_s:.1f} s")
    return info


def cutoff(dsn: str, retention: float) -> Cut:
    """The cutoff tablemig's planner chooses for `retention` (its own `compute_cutoff`, i.e.
    `table_migration.cutoff_value`), with the rows it keeps."""
    table = QualifiedName.parse(TABLE)
    with connect(dsn, application_name=APP) as c:
        value = compute_cutoff(c, table, DATE_COLUMN, retention)
        row = c.execute(sql.SQL("SELECT count({d}), count(*) FILTER (WHERE {d} >= %s::timestamptz), max(id)"
                                " FROM {t}").format(d=sql.Identifier(DATE_COLUMN), t=table.ident()),
                        (value,)).fetchone()
        assert row is not None
    return Cut(retention, int(row[0]), value, int(row[1]), int(row[2]))
