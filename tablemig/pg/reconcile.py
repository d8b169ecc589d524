"""Segment checksums: does a table hold exactly the rows it should?

A side is a table plus an optional filter (`T` restricted to `D >= C`, or all of `N`).
Rows are split into key-range segments; per segment we compare `count(*)` and the sum of
the first 64 bits of `md5(row::text)`. Both sides are read in one REPEATABLE READ snapshot
so concurrent writes (which the capture trigger applies to both in one transaction) cannot
make them differ. A mismatching segment is narrowed to the differing keys with a full
outer join on the key inside the segment, and those rows are copied again from the source.
The connection's fixed TimeZone, DateStyle and extra_float_digits make the text of a row
identical on every site.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .names import QualifiedName
from .sqltext import Fragment
from .statements import Statements, statements

DB = psycopg.Connection[Any] | Statements


@dataclass(frozen=True)
class Side:
    table: QualifiedName
    date_column: str | None = None  # with cutoff: only rows D >= cutoff
    date_type: str = ""
    cutoff: str = ""
    negate: bool = False  # the history side: D < cutoff OR D IS NULL

    def where(self) -> tuple[sql.Composable, list[Any]]:
        if not self.date_column:
            return sql.SQL("true"), []
        d = sql.Identifier(self.date_column)
        if self.negate:
            return (sql.SQL("({d} < %s::{t} OR {d} IS NULL)").format(d=d, t=Fragment(self.date_type)),
                    [self.cutoff])
        return sql.SQL("{} >= %s::{}").format(d, Fragment(self.date_type)), [self.cutoff]


@dataclass
class Segment:
    index: int
    lo: list[str] | None
    hi: list[str] | None
    counts: dict[str, int] = field(default_factory=dict)
    sums: dict[str, str] = field(default_factory=dict)

    @property
    def match(self) -> bool:
        return len(set(self.counts.values())) <= 1 and len(set(self.sums.values())) <= 1

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"segment": self.index, "key_from": _fmt(self.lo),
                               "key_to": _fmt(self.hi)}
        for name in self.counts:
            row[f"count_{name}"] = self.counts[name]
            row[f"checksum_{name}"] = self.sums[name]
        row["match"] = self.match
        return row


def _fmt(v: list[str] | None) -> str:
    return "" if v is None else ",".join(v)


class Reconciler:
    def __init__(self, key: list[str], key_types: list[str], columns: list[str],
                 write_columns: list[str] | None = None) -> None:
        self.key, self.key_types, self.columns = key, key_types, columns
        self.write_columns = write_columns or columns  # generated columns are not written

    def key_list(self) -> sql.Composable:
        """The key columns, comma-separated: `a, b`."""
        return sql.SQL(", ").join(map(sql.Identifier, self.key))

    def key_texts(self) -> sql.Composable:
        """The key columns as text: `a::text, b::text`."""
        return sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in self.key)

    # Row hashes: hash_record_extended (PostgreSQL 14+) hashes the binary datums, several
    # times faster than md5 of the row's text; both sites of a physical pair run the same
    # binaries, so the values agree. Column types without an extended hash function (json,
    # point, ...) fall back to md5 of the text form, which the connections' fixed TimeZone,
    # DateStyle and extra_float_digits make identical everywhere.
    binary_hash: bool | None = None

    def _row_hash(self) -> sql.Composable:
        cols = sql.SQL(", ").join(map(sql.Identifier, self.columns))
        if self.binary_hash:
            return sql.SQL("lpad(to_hex(hash_record_extended(ROW({}), 0)), 16, '0')").format(cols)
        return sql.SQL("md5(ROW({})::text)").format(cols)

    def choose_hash(self, conn: DB, table: QualifiedName) -> None:
        if self.binary_hash is not None:
            return
        st = statements(conn)
        self.binary_hash = False
        if st.conn.info.server_version < 140000:
            return
        probe = sql.SQL("SELECT hash_record_extended(ROW({}), 0) FROM {} LIMIT 1").format(
            sql.SQL(", ").join(map(sql.Identifier, self.columns)), table.ident())
        try:
            # outside a transaction the probe needs none of its own (a failure changes nothing)
            with (st.transaction() if st.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
                  or not st.conn.autocommit else contextlib.nullcontext()):
                st.read(probe, reads=[str(table)])
            self.binary_hash = True
        except psycopg.Error:
            pass

    def typed(self) -> sql.Composable:
        """One placeholder per key column, cast to the column's type: `%s::bigint, %s::date`."""
        return sql.SQL(", ").join(sql.SQL("%s::{}").format(Fragment(t)) for t in self.key_types)

    def hash64(self) -> sql.Composable:
        """The first 64 bits of the row hash as a bigint: what `_sum_expr` sums per row."""
        cols = sql.SQL(", ").join(map(sql.Identifier, self.columns))
        if self.binary_hash:
            return sql.SQL("hash_record_extended(ROW({}), 0)").format(cols)
        return sql.SQL("('x' || substr({}, 1, 16))::bit(64)::bigint").format(self._row_hash())

    def key_range(self, lo: list[str] | None, hi: list[str] | None,
                  lo_open: bool = False) -> tuple[sql.Composable, list[Any]]:
        """Keys from `lo` (included, or excluded with `lo_open`) to `hi` (excluded); None: unbounded."""
        parts: list[sql.Composable] = []
        params: list[Any] = []
        if lo is not None:
            parts.append(sql.SQL("({}) {} ({})").format(self.key_list(), sql.SQL(">" if lo_open else ">="),
                                                        self.typed()))
            params.extend(lo)
        if hi is not None:
            parts.append(sql.SQL("({}) < ({})").format(self.key_list(), self.typed()))
            params.extend(hi)
        return (sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")), params

    def boundaries(self, conn: DB, side: Side, segments: int) -> list[list[str]]:
        """Keys splitting `side` into about `segments` equal parts (one ordered key scan).
        The row count only sizes the segments, so the planner's estimate does when there is one."""
        st = statements(conn)
        self.choose_hash(st, side.table)
        where, params = side.where()
        reads = [str(side.table)]
        est = st.read("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                      (str(side.table),), reads=reads, planned=[(0,)]).fetchone()
        if est and est[0] > 0 and not side.date_column:
            n = int(est[0])
        else:
            total = st.read(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
                side.table.ident(), where), params, reads=reads, planned=[(0,)]).fetchone()
            n = int(total[0]) if total else 0
        step = max(1, -(-n // max(segments, 1)))
        texts = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in self.key)
        rows = st.read(sql.SQL(
            "SELECT {texts} FROM (SELECT {key}, row_number() OVER (ORDER BY {key}) AS rn"
            " FROM {t} WHERE {w}) s WHERE rn %% %s = 1 AND rn > 1 ORDER BY rn").format(
            texts=texts, key=self.key_list(), t=side.table.ident(), w=where),
            [*params, step], reads=reads).fetchall()
        return [[str(v) for v in r] for r in rows]

    def stats_boundaries(self, conn: DB, side: Side, segments: int) -> list[list[str]] | None:
        """Like `boundaries`, from the key's `pg_stats` histogram instead of a scan of the
        key (one-column keys of an analyzed table, no filter); None when there is none (a
        dry run: the table it would have made has no statistics yet).
        Segments only localise repairs: uneven ones change no result."""
        if len(self.key) != 1 or side.date_column or segments <= 1:
            return None
        st = statements(conn)
        self.choose_hash(st, side.table)
        row = st.read("SELECT histogram_bounds::text FROM pg_stats WHERE schemaname = %s"
                      " AND tablename = %s AND attname = %s",
                      (side.table.schema, side.table.name, self.key[0]), reads=[str(side.table)]).fetchone()
        if not row or row[0] is None:
            return None
        vals = [str(r[0]) for r in st.read(sql.SQL(
            "SELECT v::text FROM (SELECT DISTINCT u.b AS v FROM unnest(%s::text::{}[]) AS u(b)) s"
            " ORDER BY s.v").format(Fragment(self.key_types[0])), (row[0],)).fetchall()]
        if len(vals) < 3:
            return None
        picked = [vals[int(i * (len(vals) - 1) / segments)] for i in range(1, segments)]
        return [[v] for v in dict.fromkeys(picked)]

    def segment_expr(self, bounds: list[list[str]]) -> tuple[sql.Composable, list[Any]]:
        """The number of the segment a row's key falls in (0 .. len(bounds)), for boundary
        keys `bounds` in ascending order."""
        if not bounds:
            return sql.SQL("0"), []
        if len(self.key) == 1:  # one binary search instead of a comparison per boundary
            return (sql.SQL("width_bucket({}, %s::{}[])").format(sql.Identifier(self.key[0]),
                                                                 Fragment(self.key_types[0])),
                    [[b[0] for b in bounds]])
        parts, params = [], []
        for b in bounds:
            parts.append(sql.SQL("(({}) >= ({}))::int").format(self.key_list(), self.typed()))
            params.extend(b)
        return sql.SQL(" + ").join(parts), params

    def _sum_expr(self) -> sql.Composable:
        """Sum of the first 64 bits of each row hash. With the binary hash that is the sum
        of hash_record_extended itself (the hex text the row hash shows is that bigint), so
        no text is built per row; the value is the same. sum(bigint) is exact (a numeric
        result, accumulated in 128 bits): faster than summing numerics."""
        return sql.SQL("coalesce(sum({}), 0)").format(self.hash64())

    def _side_sums(self, conn: Statements, side: Side, seg_expr: sql.Composable,
                   seg_params: list[Any]) -> dict[int, tuple[int, str]]:
        return self._sums(conn, [side], seg_expr, seg_params)[0]

    def _sums(self, conn: Statements, sides: list[Side], seg_expr: sql.Composable,
              seg_params: list[Any]) -> list[dict[int, tuple[int, str]]]:
        """Per-segment (count, checksum) of each side, in one statement (one snapshot)."""
        parts: list[sql.Composable] = []
        params: list[Any] = []
        for i, side in enumerate(sides):
            where, wparams = side.where()
            parts.append(sql.SQL("SELECT {i} AS side, {seg} AS seg, count(*), {sum} FROM {t} WHERE {w}"
                                 " GROUP BY 2").format(i=sql.Literal(i), seg=seg_expr, sum=self._sum_expr(),
                                                       t=side.table.ident(), w=where))
            params.extend([*seg_params, *wparams])
        out: list[dict[int, tuple[int, str]]] = [{} for _ in sides]
        # a dry run reads no table it would have made: empty on both sides, which match
        for side_no, seg, count, total in conn.read(sql.SQL(" UNION ALL ").join(parts), params,
                                                    reads=[str(s.table) for s in sides]).fetchall():
            out[side_no][int(seg)] = (int(count), str(total))
        return out

    def _sums_on_two(self, conn: Statements, peer: Statements,
                     items: list[tuple[str, Side]], seg_expr: sql.Composable, seg_params: list[Any],
                     found: dict[str, dict[int, tuple[int, str]]]) -> None:
        """The two sides at once: the first on `conn` (in a REPEATABLE READ transaction),
        the second on `peer` in the snapshot `conn` exports."""
        snap = conn.read("SELECT pg_export_snapshot()").fetchone()
        assert snap is not None
        errors: list[BaseException] = []
        with peer.transaction(isolation="REPEATABLE READ READ ONLY"):
            peer.read(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(str(snap[0]))))

            def other() -> None:
                try:
                    found[items[1][0]] = self._side_sums(peer, items[1][1], seg_expr, seg_params)
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    errors.append(exc)
            t = threading.Thread(target=other, daemon=True)
            t.start()
            found[items[0][0]] = self._side_sums(conn, items[0][1], seg_expr, seg_params)
            t.join()
        if errors:
            raise errors[0]

    def checksums(self, conn: DB, sides: dict[str, Side],
                  bounds: list[list[str]], peer: DB | None = None) -> list[Segment]:
        """Per-segment count and checksum of each side, all in one snapshot. With `peer`
        (an idle second connection) the second side is summed at the same time on it, in
        the snapshot exported by `conn` (`SET TRANSACTION SNAPSHOT`): still one snapshot."""
        segs = [Segment(i, bounds[i - 1] if i else None, bounds[i] if i < len(bounds) else None)
                for i in range(len(bounds) + 1)]
        st = statements(conn)
        for side in sides.values():
            self.choose_hash(st, side.table)
        seg_expr, seg_params = self.segment_expr(bounds)
        own_tx = st.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        items = list(sides.items())
        found: dict[str, dict[int, tuple[int, str]]] = {}
        if not (own_tx and peer is not None and len(items) == 2):
            # one statement reads every side: one snapshot, no transaction of its own
            sums = self._sums(st, [side for _, side in items], seg_expr, seg_params)
            found = {name: part for (name, _), part in zip(items, sums, strict=True)}
        else:
            with st.transaction(isolation="REPEATABLE READ READ ONLY"):
                self._sums_on_two(st, statements(peer), items, seg_expr, seg_params, found)
        for name, _ in items:
            for s in segs:
                c, h = found[name].get(s.index, (0, "0"))
                s.counts[name], s.sums[name] = c, h
        return segs

    def differing_keys(self, conn: DB, source: Side, target: Side,
                       seg: Segment, limit: int = 100_000) -> list[list[str]]:
        """Keys whose row differs (missing, extra or changed) between the sides in `seg`."""
        rng, rparams = self.key_range(seg.lo, seg.hi)
        sw, sparams = source.where()
        tw, tparams = target.where()
        texts = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in self.key)
        query = sql.SQL(
            "WITH s AS (SELECT {key}, {h} AS h FROM {st} WHERE {sw} AND {rng}),"
            " t AS (SELECT {key}, {h} AS h FROM {tt} WHERE {tw} AND {rng})"
            " SELECT {texts} FROM s FULL JOIN t USING ({key})"
            " WHERE s.h IS DISTINCT FROM t.h LIMIT %s").format(
            key=self.key_list(), h=self._row_hash(), st=source.table.ident(), sw=sw, rng=rng,
            tt=target.table.ident(), tw=tw, texts=texts)
        rows = statements(conn).read(query, [*sparams, *rparams, *tparams, *rparams, limit],
                                     reads=[str(source.table), str(target.table)]).fetchall()
        return [[str(v) for v in r] for r in rows]

    def repair(self, conn: DB, source: Side, target: Side,
               keys: list[list[str]], overriding: bool, *, in_place: list[str] | None = None) -> int:
        """Make `target` hold exactly the `source` version of each key (one transaction).
        `FOR SHARE` holds off writers of those few rows until the repair commits, so the
        repaired copy cannot itself go stale. A row is replaced (DELETE, then INSERT), or,
        with `in_place` (the columns an UPDATE may set), updated where both sides have it:
        for a table that foreign keys reference, whose DELETE would cascade into the
        children, set their keys NULL or be refused."""
        if not keys:
            return 0
        match = sql.SQL("({}) = ({})").format(self.key_list(), self.typed())
        sw, sparams = source.where()
        cols = sql.SQL(", ").join(map(sql.Identifier, self.write_columns))
        ovr = sql.SQL(" OVERRIDING SYSTEM VALUE" if overriding else "")
        insert = sql.SQL(
            "INSERT INTO {tt} ({cols}){ovr} SELECT {cols} FROM {st} WHERE {m} AND {sw}"
            " FOR SHARE").format(tt=target.table.ident(), cols=cols, ovr=ovr, st=source.table.ident(), m=match, sw=sw)
        st = statements(conn)
        with st.transaction():
            for k in keys:
                if in_place is None:
                    st.run(sql.SQL("DELETE FROM {} WHERE {}").format(target.table.ident(), match), k)
                    st.run(insert, [*k, *sparams])
                    continue
                if in_place:
                    sets = sql.SQL(", ").join(sql.SQL("{0} = s.{0}").format(sql.Identifier(c)) for c in in_place)
                    tmatch = sql.SQL("({}) = ({})").format(
                        sql.SQL(", ").join(sql.Identifier("t", c) for c in self.key), self.typed())
                    found = st.run(sql.SQL(
                        "UPDATE {tt} t SET {sets} FROM (SELECT {cols} FROM {st} WHERE {m} AND {sw} FOR SHARE) s"
                        " WHERE {tm}").format(tt=target.table.ident(), sets=sets, cols=cols,
                                              st=source.table.ident(), m=match, sw=sw, tm=tmatch),
                        [*k, *sparams, *k]).rowcount
                else:  # nothing but the key: present is equal
                    found = int(st.read(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
                        target.table.ident(), match), k).scalar() or 0)
                if found:
                    continue
                present = int(st.read(sql.SQL("SELECT count(*) FROM {} WHERE {} AND {}").format(
                    source.table.ident(), match, sw), [*k, *sparams]).scalar() or 0)
                if present:
                    st.run(insert, [*k, *sparams])
                else:  # the source has no such row: neither may the target
                    st.run(sql.SQL("DELETE FROM {} WHERE {}").format(target.table.ident(), match), k)
        return len(keys)

