"""Deterministic measures of work: rows and blocks of the tables a run touched, and the WAL
it wrote. Unlike a timing, another process on the machine cannot change them: the same
statements on the same data touch the same rows and buffers however long they wait for a
CPU. They come from PostgreSQL's cumulative statistics, which a backend writes out when it
ends, so they are read once every session of the run has left (`server.sessions_gone`), on
a server whose autovacuum is off (a vacuum would add its own reads and WAL)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from tablemig.pg.connect import connect

from .server import APP, Target, lsn_diff, sessions_gone, wal_lsn

BOOKKEEPING_SCHEMA = "table_migration"
JUDGED = ("rows_read", "blocks", "wal_bytes")

_TABLES = """
SELECT t.relid, t.schemaname = %s,
       coalesce(t.seq_tup_read, 0) + coalesce(t.idx_tup_fetch, 0),
       coalesce((SELECT sum(i.idx_tup_read) FROM pg_stat_user_indexes i WHERE i.relid = t.relid), 0),
       coalesce(t.n_tup_ins, 0) + coalesce(t.n_tup_upd, 0) + coalesce(t.n_tup_del, 0),
       coalesce(s.heap_blks_read, 0) + coalesce(s.heap_blks_hit, 0) + coalesce(s.idx_blks_read, 0)
       + coalesce(s.idx_blks_hit, 0) + coalesce(s.toast_blks_read, 0) + coalesce(s.toast_blks_hit, 0)
       + coalesce(s.tidx_blks_read, 0) + coalesce(s.tidx_blks_hit, 0)
FROM pg_stat_user_tables t JOIN pg_statio_user_tables s USING (relid)
"""
_DATABASE = ("SELECT blks_hit + blks_read, temp_bytes FROM pg_stat_database WHERE datname = current_database()")


@dataclass(frozen=True)
class Work:
    """What a run did. The first three are judged by the smoke; the rest are reported.

    rows_read: rows of the data tables returned by sequential scans and fetched through
        indexes (pg_stat_user_tables.seq_tup_read + idx_tup_fetch; index builds scan
        their table too);
    blocks: shared buffers of the data tables, their indexes and TOAST, hit or read;
    wal_bytes: WAL written by the whole cluster meanwhile;
    index_entries: index entries read (index-only scans fetch no row);
    rows_written: rows inserted, updated and deleted in the data tables;
    bookkeeping_blocks: the same as `blocks` for tablemig's own schema (a change log
        dropped by the swap takes its counts with it);
    database_blocks: every shared buffer of the database, catalogs included (the
        catalog's share depends on caches and is not judged);
    temp_bytes: bytes spilled to temporary files.
    """

    rows_read: int = 0
    blocks: int = 0
    wal_bytes: int = 0
    index_entries: int = 0
    rows_written: int = 0
    bookkeeping_blocks: int = 0
    database_blocks: int = 0
    temp_bytes: int = 0

    def __sub__(self, other: Work) -> Work:
        return Work(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(Work)})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Counters:
    """The cumulative statistics of one database at one moment, per table."""

    lsn: str
    tables: dict[int, tuple[bool, int, int, int, int]]
    database: tuple[int, int]


def read(t: Target, db: str) -> Counters:
    """The counters of `db` once every other session has left it."""
    sessions_gone(t, db)
    lsn = wal_lsn(t)
    with connect(t.dsn(db), application_name=APP) as c:
        rows = c.execute(_TABLES, (BOOKKEEPING_SCHEMA,)).fetchall()
        dbrow = c.execute(_DATABASE).fetchone()
    assert dbrow is not None
    tables = {int(r[0]): (bool(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows}
    return Counters(lsn, tables, (int(dbrow[0]), int(dbrow[1])))


def since(t: Target, db: str, before: Counters) -> tuple[Work, Counters]:
    """The work done in `db` since `before` (tables dropped meanwhile are not counted), and
    the counters now."""
    now = read(t, db)
    wal = lsn_diff(t, now.lsn, before.lsn)
    rows = blocks = entries = written = book = 0
    for relid, (bookkeeping, r, e, w, b) in now.tables.items():
        _, r0, e0, w0, b0 = before.tables.get(relid, (bookkeeping, 0, 0, 0, 0))
        if bookkeeping:
            book += b - b0
            continue
        rows, entries, written, blocks = rows + r - r0, entries + e - e0, written + w - w0, blocks + b - b0
    return Work(rows_read=rows, blocks=blocks, wal_bytes=wal, index_entries=entries, rows_written=written,
                bookkeeping_blocks=book, database_blocks=now.database[0] - before.database[0],
                temp_bytes=now.database[1] - before.database[1]), now
