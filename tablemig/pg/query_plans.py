"""How the same queries run on the live table and on the original (EX-4.2).

One timing of one query says more about the server's load at that moment than about the
table. The evidence here:

* **index use**, deterministic: each probe query is planned on both tables with
  `enable_seqscan = off`, so the planner uses an index whenever one can serve the query. If
  the original can use an index and the live table cannot (a sequential scan remains), the
  live table lacks an index the original has: a worse plan, whatever the load.
* **shared buffers touched per row** the scans return, from `EXPLAIN (ANALYZE, BUFFERS)` of
  the natural plan (median of the repetitions): pages, not time, so load does not move it.
  Far more per row on the live table than on the original is a worse plan too.
* **timings**: every query warmed up, then repeated in rounds that alternate the tables and
  their order; medians are reported and never decide.

The probes: the count of the kept rows (`D >= C`) and, for each column that leads a valid,
non-partial index of the original, a lookup of one of its values.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .names import QualifiedName
from .sqltext import Fragment

WARMUP = 2
ROUNDS = 7
# a live table touching more than BUFFER_RATIO times the original's buffers per row, plus
# BUFFER_SLACK per row (an index level, a visibility check), has a worse plan
BUFFER_RATIO = 4.0
BUFFER_SLACK = 1.0
STATEMENT_TIMEOUT = "60s"
INDEX_SCANS = ("Index Scan", "Index Only Scan", "Bitmap Index Scan")


@dataclass
class Probe:
    """One query, run on each table with that table's own parameter."""

    label: str
    template: sql.SQL  # {t}: the table; {c}: the column, if any
    column: str | None = None
    column_type: str | None = None
    params: tuple[Any, ...] = ()

    def query(self, table: QualifiedName) -> sql.Composed:
        parts: dict[str, sql.Composable] = {"t": table.ident()}
        if self.column is not None:
            parts["c"] = sql.Identifier(self.column)
            parts["ct"] = Fragment(self.column_type or "text")
        return self.template.format(**parts)


@dataclass
class Shape:
    """What a plan does: its node types, the indexes it uses, whether a sequential scan is left."""

    nodes: list[str] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)
    seq_scan: bool = False

    @classmethod
    def of(cls, plan: dict[str, Any]) -> Shape:
        shape = cls()
        for node in _walk(plan):
            kind = str(node.get("Node Type"))
            shape.nodes.append(kind)
            if kind in INDEX_SCANS and node.get("Index Name"):
                shape.indexes.append(str(node["Index Name"]))
            shape.seq_scan = shape.seq_scan or kind == "Seq Scan"
        return shape

    @property
    def uses_index(self) -> bool:
        return bool(self.indexes)


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans") or []:
        yield from _walk(child)


def _leaf_rows(node: dict[str, Any]) -> float:
    """Rows the scans of a plan returned (what the buffers were touched for)."""
    children = node.get("Plans") or []
    if not children:
        return float(node.get("Actual Rows") or 0) * float(node.get("Actual Loops") or 1)
    return sum(_leaf_rows(c) for c in children)


@dataclass
class Measure:
    """The natural plan of a probe on one table, over the repetitions."""

    shape: Shape = field(default_factory=Shape)
    times_ms: list[float] = field(default_factory=list)
    buffers: list[int] = field(default_factory=list)
    rows: list[float] = field(default_factory=list)

    def add(self, explained: dict[str, Any]) -> None:
        plan = explained["Plan"]
        self.shape = Shape.of(plan)
        self.times_ms.append(float(explained.get("Execution Time") or 0.0))
        self.buffers.append(int(plan.get("Shared Hit Blocks") or 0) + int(plan.get("Shared Read Blocks") or 0))
        self.rows.append(_leaf_rows(plan))

    @property
    def median_ms(self) -> float:
        return round(statistics.median(self.times_ms), 3) if self.times_ms else 0.0

    @property
    def buffers_per_row(self) -> float:
        per_row = [b / max(r, 1.0) for b, r in zip(self.buffers, self.rows, strict=True)]
        return round(statistics.median(per_row), 3) if per_row else 0.0

    def summary(self) -> dict[str, Any]:
        return {"plan": self.shape.nodes, "indexes": self.shape.indexes, "median_ms": self.median_ms,
                "runs": len(self.times_ms), "buffers_per_row": self.buffers_per_row,
                "rows": statistics.median(self.rows) if self.rows else 0}


@contextmanager
def bounded(conn: psycopg.Connection[Any], **settings: str) -> Iterator[None]:
    """A read-only transaction under a statement_timeout (and `settings`), rolled back."""
    with conn.transaction(force_rollback=True):
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(STATEMENT_TIMEOUT)))
        for name, value in settings.items():
            conn.execute(sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        yield


def _explain(conn: psycopg.Connection[Any], probe: Probe, table: QualifiedName, params: tuple[Any, ...], *,
             analyze: bool, **settings: str) -> dict[str, Any]:
    options = sql.SQL("ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON" if analyze else "FORMAT JSON")
    query = sql.SQL("EXPLAIN ({}) ").format(options) + probe.query(table)
    try:
        with bounded(conn, **settings):
            row = conn.execute(query, params, prepare=False).fetchone()
    except psycopg.errors.QueryCanceled:
        raise AssertionError(f"{probe.label} on {table} did not finish within statement_timeout "
                             f"{STATEMENT_TIMEOUT}: {probe.query(table).as_string(conn)}") from None
    assert row is not None
    return dict(row[0][0])


def probes_for(conn: psycopg.Connection[Any], original: QualifiedName, date_column: str, date_type: str,
               cutoff: str) -> tuple[list[Probe], list[str]]:
    """The probes of the original's indexes, and the indexes that cannot be probed."""
    found: list[Probe] = [Probe(f"rows with {date_column} >= cutoff",
                                sql.SQL("SELECT count(*) FROM {t} WHERE {c} >= %s::{ct}"),
                                date_column, date_type, (cutoff,))]
    skipped: list[str] = []
    rows = conn.execute(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), i.indpred IS NULL AND i.indkey[0] <> 0"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        " WHERE i.indrelid = %s::regclass AND i.indisvalid ORDER BY i.indisprimary DESC, c.relname",
        (str(original),)).fetchall()
    seen = {date_column}
    for index, column, ctype, plain in rows:
        if not plain:
            skipped.append(f"{index} (expression or partial index)")
        elif column not in seen:
            seen.add(column)
            found.append(Probe(f"lookup by {column}", sql.SQL("SELECT * FROM {t} WHERE {c} = %s::{ct} LIMIT 100"),
                               column, ctype))
    return found, skipped


def _definitions(conn: psycopg.Connection[Any], table: QualifiedName, indexes: list[str]) -> list[str]:
    """`CREATE INDEX ...` of each index of `table` named."""
    names = list(dict.fromkeys(indexes))
    rows = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s"
                        " AND indexname = ANY(%s)", (table.schema, table.name, names)).fetchall()
    found = dict(rows)
    return [found.get(n, f"index {n}") for n in names]


def _value(conn: psycopg.Connection[Any], probe: Probe, table: QualifiedName) -> tuple[Any, ...] | None:
    """The parameters of `probe` on `table`: a value of its column found in that table."""
    if probe.params or probe.column is None:
        return probe.params
    c = sql.Identifier(probe.column)
    with bounded(conn):
        row = conn.execute(sql.SQL("SELECT {c}::text FROM {t} WHERE {c} IS NOT NULL LIMIT 1").format(
            c=c, t=table.ident())).fetchone()
    return (row[0],) if row else None


def compare(conn: psycopg.Connection[Any], live: QualifiedName, original: QualifiedName, date_column: str,
            date_type: str, cutoff: str) -> dict[str, Any]:
    """Run every probe on both tables; returns the evidence and the reasons the live table's
    plans are worse (empty: they are not)."""
    probes, skipped = probes_for(conn, original, date_column, date_type, cutoff)
    results: list[dict[str, Any]] = []
    worse: list[str] = []
    for probe in probes:
        values = _value(conn, probe, live), _value(conn, probe, original)
        if values[0] is None or values[1] is None:
            results.append({"query": probe.label, "skipped": "no value to look up in one of the tables"})
            continue
        params = {live: values[0], original: values[1]}
        forced = {t: Shape.of(_explain(conn, probe, t, params[t], analyze=False, enable_seqscan="off")["Plan"])
                  for t in (live, original)}
        measured = {live: Measure(), original: Measure()}
        for _ in range(WARMUP):
            for t in (live, original):
                _explain(conn, probe, t, params[t], analyze=True)
        for i in range(ROUNDS):  # interleaved, the order alternating: drift hits both alike
            for t in ((live, original) if i % 2 == 0 else (original, live)):
                measured[t].add(_explain(conn, probe, t, params[t], analyze=True))
        a, b = measured[live], measured[original]
        reasons = []
        if forced[original].uses_index and not forced[live].uses_index:
            used = "; ".join(_definitions(conn, original, forced[original].indexes))
            reasons.append(f"{probe.label}: the original uses {used}; {live} has no index for it (a sequential"
                           " scan remains with enable_seqscan off): create the same index on it")
        if a.buffers_per_row > BUFFER_RATIO * b.buffers_per_row + BUFFER_SLACK:
            reasons.append(f"{probe.label}: {a.buffers_per_row:g} shared buffers per row on {live} against "
                           f"{b.buffers_per_row:g} on the original (plan {' > '.join(a.shape.nodes)} against "
                           f"{' > '.join(b.shape.nodes)})")
        worse += reasons
        results.append({
            "query": probe.label, "sql": probe.query(live).as_string(conn),
            "live": a.summary(), "original": b.summary(),
            "index_use": {"live": forced[live].indexes or "none (sequential scan)",
                          "original": forced[original].indexes or "none (sequential scan)"},
            "median_ratio": round(a.median_ms / b.median_ms, 2) if b.median_ms else None,
            "verdict": "; ".join(reasons) or "plan no worse than the original's",
        })
    return {"queries": results, "not_probed": skipped, "worse": worse,
            "method": f"EXPLAIN (ANALYZE, BUFFERS) after {WARMUP} warm-up runs, {ROUNDS} interleaved rounds, "
                      "medians; index use planned with enable_seqscan off; timings reported, not judged"}
