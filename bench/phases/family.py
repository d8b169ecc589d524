"""A family (`--family`): tablemig migrating `orders` with a child table, against the
physical limit of the same result. `--family-policy keep` (the default): the child
`refunds` references old orders, which stay live; `--family-policy follow`: the child
`lines` references orders of every age, and moves with them.

The source is the demo data's `orders` plus `refunds` (made here, once per size, in a
database of its own): `--family-children` rows, most of them referencing orders dated from
the cutoff on, and one refund for each of a share (`--family-old-share`, 1 %) of the older
orders, spread over every age. The demo data's `order_items` is dropped from that database:
the family measured is the orders and their refunds alone (docs/benchmarks.md).

Each round, on fresh copies and in alternating order as the measurement does:
`tablemig migrate ... --child public.refunds=keep` (the real CLI), whose live table holds
the orders dated from the cutoff on plus every order a refund references; then the physical
limit of that table (`physical.copy_kept_family`: one INSERT ... SELECT of the same rows
into a bare table, then its key and indexes), and the validation of the refunds' foreign
key against it (what tablemig's `validate_fks` does after the swap).

With `follow` the source's child is `lines`: `--family-children` rows (three per order by
default) spread over the orders of every age, so that the child keeps the table's share.
tablemig (`--child public.lines=follow`) leaves the orders dated from the cutoff on and the
lines referencing them live, the others in the two archives; the physical limit inserts both
tables' kept rows into bare tables (the lines by a semi-join on the kept orders), builds
each table's key and indexes and validates the bare child's key to the bare table
(`physical.copy_followed_family`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

import psycopg
from psycopg import sql

from tablemig.pg.connect import connect

from .. import physical
from ..proc import log
from ..results import fmt, median, ratio, size_label
from ..runs import ALL_STEPS, Bench, check_tablemig, fresh_copy, migrate_cmd, run_tablemig
from ..server import APP, checkpoint, copy_database, scalar, wal_lsn, wal_since
from ..source import DATE_COLUMN, described

CHILDREN = {"keep": "public.refunds", "follow": "public.lines"}
CHILD_COLUMN = "order_id"
LOAD_STEPS = ("create", "insert", "child_create", "child_insert")  # the physical limit's steps that are not indexes
MARK = "tablemig-bench family source complete"
# a multiplier prime to 10**6: `id * HASH mod 10**6` runs over every residue once per
# million consecutive ids, so a threshold picks the same share of the orders of every age
HASH = 2_654_435_761
REASONS = "ARRAY['damaged', 'late', 'wrong item', 'changed mind']"


def children_of(a: argparse.Namespace) -> int:
    """The child's rows: --family-children, else three per order."""
    return int(a.family_children) if a.family_children else 3 * a.rows


def child_of(a: argparse.Namespace) -> str:
    """The family's child table: refunds (keep) or lines (follow)."""
    return CHILDREN[a.family_policy]


def source_name(b: Bench) -> str:
    """The family's source database for this size, share and retention (the refunds
    that reference old orders depend on the cutoff)."""
    a = b.args
    months = "" if a.months == 36 else f"_m{a.months}"
    if a.family_policy == "follow":  # every order has its lines: the cutoff does not change the source
        return f"bench_famf_{a.rows}_{children_of(a)}{months}"
    return f"bench_fam_{a.rows}_{children_of(a)}_o{a.family_old_share:g}_r{b.cut.retention:g}{months}"


def migrate_command(a: argparse.Namespace, dsn: str, retention: float) -> list[str]:
    """`tablemig migrate` of the orders table, as every phase runs it, with the child's policy."""
    return [*migrate_cmd(a, dsn, retention), "--child", f"{child_of(a)}={a.family_policy}"]


def _make_lines(c: psycopg.Connection[Any], b: Bench) -> None:
    """Make `lines` (policy follow) in the family's database: the child rows spread over the
    orders of every age in turn (each order gets `rows / orders` of them, give or take one),
    loaded bare, then keyed and indexed."""
    a = b.args
    c.execute("DROP TABLE IF EXISTS order_items")
    c.execute("CREATE TABLE lines (id bigserial, order_id bigint NOT NULL, sku text, quantity integer)")
    per = -(-children_of(a) // max(b.cut.total, 1))
    c.execute("INSERT INTO lines (order_id, sku, quantity)"
              " SELECT o.id, 'SKU-' || mod(o.id + n, 997), 1 + mod(o.id + n, 3)::int"
              " FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS rn FROM orders) o"
              " CROSS JOIN generate_series(0::bigint, %s - 1) n WHERE n * %s + o.rn < %s ORDER BY o.id, n",
              (per, b.cut.total, children_of(a)))
    c.execute("ALTER TABLE lines ADD CONSTRAINT lines_pkey PRIMARY KEY (id)")
    c.execute("CREATE INDEX lines_order_id_idx ON lines (order_id)")
    c.execute("ALTER TABLE lines ADD CONSTRAINT lines_order_id_fkey FOREIGN KEY (order_id)"
              " REFERENCES orders (id) ON DELETE CASCADE")
    c.execute("VACUUM (ANALYZE) lines")


def _make_refunds(c: psycopg.Connection[Any], b: Bench) -> None:
    """Make `refunds` in the family's database (loaded bare, then keyed and indexed: cheaper
    than maintaining them per row)."""
    a, cut = b.args, b.cut
    d, reasons = sql.Identifier(DATE_COLUMN), sql.SQL(REASONS)
    c.execute("DROP TABLE IF EXISTS order_items")
    c.execute("CREATE TABLE refunds (id bigserial, order_id bigint NOT NULL, amount numeric, reason text)")
    old = c.execute(sql.SQL(
        "INSERT INTO refunds (order_id, amount, reason)"
        " SELECT o.id, round(o.amount / 2, 2), ({r})[1 + mod(o.id, 4)::int] FROM orders o"
        " WHERE o.{d} < %s::timestamptz AND mod(o.id * %s, 1000000) < %s ORDER BY o.id").format(r=reasons, d=d),
        (cut.cutoff, HASH, round(a.family_old_share * 1_000_000))).rowcount
    rest = children_of(a) - old
    if rest < 0 or (rest and not cut.kept_rows):
        raise RuntimeError(f"--family-children {children_of(a)} cannot hold the {old} refunds of old orders "
                           "plus some of the kept orders: raise it")
    # the rest over the kept orders in turn: each kept order gets `rest / kept` of them, give or take one
    per = -(-rest // max(cut.kept_rows, 1))
    c.execute(sql.SQL(
        "INSERT INTO refunds (order_id, amount, reason)"
        " SELECT o.id, round(o.amount / (2 + n), 2), ({r})[1 + mod(o.id + n, 4)::int]"
        " FROM (SELECT id, amount, row_number() OVER (ORDER BY id) - 1 AS rn FROM orders"
        "       WHERE {d} >= %s::timestamptz) o"
        " CROSS JOIN generate_series(0::bigint, %s - 1) n"
        " WHERE n * %s + o.rn < %s").format(r=reasons, d=d), (cut.cutoff, per, cut.kept_rows, rest))
    c.execute("ALTER TABLE refunds ADD CONSTRAINT refunds_pkey PRIMARY KEY (id)")
    c.execute("CREATE INDEX refunds_order_id_idx ON refunds (order_id)")
    c.execute("ALTER TABLE refunds ADD CONSTRAINT refunds_order_id_fkey FOREIGN KEY (order_id)"
              " REFERENCES orders (id) ON DELETE CASCADE")
    c.execute("VACUUM (ANALYZE) refunds")


def ensure_family_source(b: Bench) -> dict[str, Any]:
    """The family's source database: a copy of the demo source with `refunds` made in it
    (and `order_items` dropped); reused when an earlier run completed it (its description is
    kept in the database's comment)."""
    t, a = b.target, b.args
    db = source_name(b)
    found = described(t, db, MARK)
    if found is not None:
        log(f"reusing the family source {db}")
        return found
    child = child_of(a)
    name = sql.Identifier(child.split(".")[-1])
    log(f"family source {db}: the orders of {b.src} and {children_of(a):,} rows of {child} ...")
    copy_database(t, b.src, db)
    t0 = time.perf_counter()
    with connect(t.dsn(db), application_name=APP) as c:
        (_make_lines if a.family_policy == "follow" else _make_refunds)(c, b)
        row = c.execute(sql.SQL(
            "SELECT (SELECT count(*) FROM {c}),"
            " (SELECT count(*) FROM {c} r JOIN orders o ON o.id = r.order_id WHERE o.{d} < %s::timestamptz),"
            " (SELECT count(*) FROM orders WHERE {d} < %s::timestamptz),"
            " (SELECT count(*) FROM orders o WHERE o.{d} < %s::timestamptz"
            "   AND EXISTS (SELECT 1 FROM {c} r WHERE r.order_id = o.id)),"
            " pg_database_size(current_database()), pg_total_relation_size(%s)").format(
            d=sql.Identifier(DATE_COLUMN), c=name), (b.cut.cutoff,) * 3 + (child,)).fetchone()
        assert row is not None
    seconds = time.perf_counter() - t0
    checkpoint(t)
    follow = a.family_policy == "follow"
    info = {**b.source, "database": db, "demo_source": b.src, "child": child, "policy": a.family_policy,
            "child_rows": int(row[0]), "child_rows_old": int(row[1]), "old_orders": int(row[2]),
            "old_orders_referenced": int(row[3]), "old_share": None if follow else a.family_old_share,
            "cutoff": b.cut.cutoff,
            # follow: the kept orders, and the lines referencing them; keep: the kept orders plus
            # the older ones a refund references
            "live_rows_expected": b.cut.kept_rows + (0 if follow else int(row[3])),
            "child_live_rows_expected": int(row[0]) - int(row[1]) if follow else int(row[0]),
            "family_seconds": round(seconds, 2),
            "database_bytes": int(row[4]), "child_total_bytes": int(row[5]), "order_items": "dropped",
            "reused": False}
    t.conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(db), sql.Literal(MARK + json.dumps(info))))
    log(f"family source ready in {seconds:.1f} s: {info['child_rows']:,} rows of {child}, "
        f"{info['child_rows_old']:,} of them referencing {info['old_orders_referenced']:,} orders older than "
        "the cutoff")
    return info


def _check_family(b: Bench, db: str, res: dict[str, Any]) -> None:
    """What tablemig left: the engine's state (`check_tablemig`), then the live table
    against the family's expectation, the swap record (keep: the rows kept for the
    children; follow: the child's live and archived rows) and the child's foreign key,
    re-pointed to the live table and validated (follow: the live child's rows and archive too)."""
    check_tablemig(b, db, res)
    expected = int(b.source["live_rows_expected"])
    child = str(b.source["child"])
    name = sql.Identifier(child.split(".")[-1])
    with connect(b.target.dsn(db), application_name=APP) as c:
        rec = c.execute("SELECT swap_record -> 'retained', swap_record -> 'follow' FROM table_migration.migration_state"
                        ).fetchone()
        old_live = scalar(c, sql.SQL("SELECT count(*) FROM orders WHERE {} < %s::timestamptz").format(
            sql.Identifier(DATE_COLUMN)), (b.cut.cutoff,))
        fks = c.execute("SELECT confrelid::regclass::text, convalidated FROM pg_constraint"
                        " WHERE conrelid = %s::regclass AND contype = 'f'", (child,)).fetchall()
        child_live = int(scalar(c, sql.SQL("SELECT count(*) FROM {}").format(name)))
    retained = (rec[0] if rec else None) or {}
    followed = ((rec[1] if rec else None) or [{}])[0]
    fk_ok = [(str(f[0]), bool(f[1])) for f in fks] == [("orders", True)]
    old_expected = 0 if b.source.get("policy") == "follow" else int(b.source["old_orders_referenced"])
    child_ok = child_live == int(b.source.get("child_live_rows_expected") or child_live)
    res.update(retained=retained, followed=followed, old_rows_live=int(old_live), rows_expected=expected,
               child_rows_live=child_live, fk_ok=fk_ok,
               ok=res["rows_after"] == expected and int(old_live) == old_expected and fk_ok and child_ok)


def _tablemig(b: Bench, label: str) -> dict[str, Any]:
    with fresh_copy(b, label) as (db, facts):
        log(f"{label}: copy {facts['copy_seconds']:.1f} s, load {facts['loadavg_before']:.2f}; tablemig ...")
        res = run_tablemig(b, db, label, migrate_command(b.args, b.target.dsn(db), b.cut.retention))
        _check_family(b, db, res)
    res.update(facts, rows_total=b.cut.total)
    return res


def _physical(b: Bench, label: str) -> dict[str, Any]:
    t = b.target
    with fresh_copy(b, label) as (db, facts):
        log(f"{label}: copy {facts['copy_seconds']:.1f} s, load {facts['loadavg_before']:.2f}; physical ...")
        with connect(t.dsn(db), application_name="tablemig-bench-physical") as c:
            start = wal_lsn(t)
            t0 = time.perf_counter()
            child = str(b.source["child"])
            if b.source.get("policy") == "follow":  # both tables; the key validated inside
                steps = physical.copy_followed_family(c, b.cut, child, CHILD_COLUMN)
                validate = steps.pop("child_validate_fk")
                elapsed = time.perf_counter() - t0 - validate
            else:
                steps = physical.copy_kept_family(c, b.cut, child, CHILD_COLUMN)
                elapsed = time.perf_counter() - t0
            wal = wal_since(t, start)
            if b.source.get("policy") != "follow":
                validate = physical.validate_child_fk(c, child, CHILD_COLUMN)
            rows = int(scalar(c, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(physical.BARE))))
    expected = int(b.source["live_rows_expected"])
    return {"method": "physical", "elapsed_s": round(elapsed, 4), "wal_bytes": wal, "steps": steps,
            "validate_fk_s": validate, "rows_after": rows, "rows_expected": expected, "ok": rows == expected,
            **facts, "rows_total": b.cut.total}


def run(b: Bench) -> dict[str, Any]:
    """The family's source, warm-up rounds (`--warmup`, not counted), then `--repeat`
    rounds of tablemig and the physical limit, each on a fresh copy."""
    fam = dataclasses.replace(b, source=ensure_family_source(b))
    for i in range(1, b.args.warmup + 1):  # first runs pay for cold caches and processes
        _tablemig(fam, f"family_warmup_tablemig_{i}")
        _physical(fam, f"family_warmup_physical_{i}")
    runs: list[dict[str, Any]] = []
    for i in range(1, b.args.repeat + 1):
        for one, method in ((_tablemig, "tablemig"), (_physical, "physical")):
            res = one(fam, f"family_{method}_{i}")
            log(f"family round {i}: {method} {res['elapsed_s']:.2f} s, load {res['loadavg_before']:.2f}"
                + ("" if res["ok"] else "  ROWS OR KEY NOT AS EXPECTED"))
            runs.append(res)
    return {"source": fam.source, "child": fam.source["child"], "policy": b.args.family_policy, "runs": runs,
            "summary": summarize(runs)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds, the ratio tablemig core / physical limit (of the medians,
    and the median of each round's pair), the rows kept for the children."""
    tm = [r for r in runs if r["method"] == "tablemig"]
    ph = [r for r in runs if r["method"] == "physical"]
    s: dict[str, Any] = {
        "rounds": len(tm),
        "tablemig_core_s": median(r["core_s"] for r in tm),
        "tablemig_wall_s": median(r["wall_s"] for r in tm),
        "tablemig_wal_bytes": median(r["wal_bytes"] for r in tm),
        "tablemig_lock_hold_ms": median(r["lock_hold_ms"] for r in tm),
        "peak_rss_mb": max([r["peak_rss_mb"] for r in tm], default=None),
        "timings_median": {k: median(r["timings"].get(k) for r in tm)
                           for k in ("plan", *ALL_STEPS)},
        "physical_s": median(r["elapsed_s"] for r in ph),
        # (follow: both tables' inserts, and both tables' keys and indexes)
        "physical_insert_s": median(r["steps"]["insert"] + r["steps"].get("child_insert", 0) for r in ph),
        "physical_indexes_s": median(sum(v for k, v in r["steps"].items() if k not in LOAD_STEPS) for r in ph),
        "physical_wal_bytes": median(r["wal_bytes"] for r in ph),
        "physical_validate_fk_s": median(r["validate_fk_s"] for r in ph),
        "retained": {k: median(r["retained"].get(k) for r in tm)
                     for k in sorted({k for r in tm for k in r["retained"]})},
        # follow: the child's rows and the work of its new table (the swap record's entry)
        "followed": {k: median(r["followed"].get(k) for r in tm)
                     for k in ("rows_live", "rows_archived", "rows_loaded", "replayed_before_lock",
                               "replayed_under_lock", "prepare_ms", "load_ms", "index_ms", "replay_ms",
                               "verify_ms", "under_lock_ms")
                     if any(k in r.get("followed", {}) for r in tm)},
        "live_rows": median(r["rows_after"] for r in tm),
        "live_rows_expected": tm[0]["rows_expected"] if tm else None,
        "loadavg": [x for r in runs for x in (r["loadavg_before"], r.get("loadavg_after"))],
        "all_ok": all(r["ok"] for r in runs),
        "cutoff_matches": all(r.get("cutoff_matches", True) for r in tm),
    }
    s["core_over_physical"] = ratio(s["tablemig_core_s"], s["physical_s"])
    s["core_over_physical_paired"] = median(ratio(t["core_s"], p["elapsed_s"]) for t, p in zip(tm, ph, strict=False))
    s["validate_fks_over_physical"] = ratio(s["timings_median"].get("validate_fks"), s["physical_validate_fk_s"])
    return s


def report(res: dict[str, Any], _b: Bench) -> None:
    src, s = res["source"], res["summary"]
    print(f"\n== family: {src['rows']:,} orders ({size_label(src['rows'])}), {src['child_rows']:,} rows of "
          f"{res['child']} (policy {res['policy']}); {src['old_orders_referenced']:,} orders older than the "
          "cutoff referenced; "
          f"live table {src['live_rows_expected']:,} rows expected; {s['rounds']} rounds ==")
    print(f"{'run':<26}{'elapsed s':>10}{'wall s':>9}{'live rows':>12}{'load':>6}  steps (s)")
    for r in res["runs"]:
        steps = r.get("timings") or r.get("steps") or {}
        print(f"{r['label']:<26}{r['elapsed_s']:>10.2f}{fmt(r.get('wall_s')):>9}{r['rows_after']:>12,}"
              f"{r['loadavg_before']:>6.1f}  " + " ".join(f"{k}={v:g}" for k, v in steps.items())
              + ("" if r["ok"] else "  NOT AS EXPECTED"))
    print(f"tablemig core {fmt(s['tablemig_core_s'])} s (swap, with the rows kept for the children, "
          f"{fmt(s['timings_median'].get('swap'))} s; lock {fmt(s['tablemig_lock_hold_ms'], '.1f')} ms), physical "
          f"limit {fmt(s['physical_s'])} s (insert {fmt(s['physical_insert_s'])}, indexes "
          f"{fmt(s['physical_indexes_s'])}): core / physical {fmt(s['core_over_physical'])} (median of pairs "
          f"{fmt(s['core_over_physical_paired'])})")
    print(f"foreign key validation: tablemig {fmt(s['timings_median'].get('validate_fks'))} s, physical "
          f"{fmt(s['physical_validate_fk_s'])} s; retained (medians): "
          + ", ".join(f"{k} {v:,.0f}" for k, v in s["retained"].items() if v is not None)
          + ("; followed (medians): " + ", ".join(f"{k} {v:,.0f}" for k, v in s["followed"].items()
                                                  if v is not None) if s.get("followed") else ""))
    if not s["all_ok"] or not s["cutoff_matches"]:
        print("WARNING: a run kept other rows than expected, left the key unvalidated or used another cutoff")
