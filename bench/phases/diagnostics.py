"""Diagnostics: `--explain` shows EXPLAIN (ANALYZE, BUFFERS) of a first and a middle chunk
of the bulk load (on a copy with only the capture installed, rolled back); `--profile` runs
one migration in this process with a statement recorder and lists the backfill chunks and
the slowest recorded statements per step."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from tablemig.config.spec import TableSpec
from tablemig.lifecycle import state
from tablemig.lifecycle.backfill import CopyJob, chunk_sql, plan_chunks
from tablemig.lifecycle.driver import Migration
from tablemig.lifecycle.executor import Recorder
from tablemig.pg.names import QualifiedName

from ..proc import run_child, tail
from ..runs import Bench, fresh_copy, migrate_cmd
from ..server import checkpoint
from ..source import DATE_COLUMN, TABLE


def explain(b: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with fresh_copy(b, "explain") as (db, _facts):
        dsn = b.target.dsn(db)
        err = b.workdir / "explain.err"
        done = run_child(migrate_cmd(b.args, dsn, b.cut.retention, until="capturing"), b.workdir / "explain.out", err)
        if done.code != 0:
            raise RuntimeError(f"migrate --until capturing failed:\n{tail(err)}")
        spec = TableSpec(TABLE, DATE_COLUMN, retention=b.cut.retention, batch_size=b.args.batch_size)
        with Migration(dsn, spec) as mig:
            plan = mig.plan()
            m = state.load(mig.conn, mig.table)
            assert m is not None
            types = {col.name: col.type for col in plan.info.columns}
            # the recent rows' job, as the backfill builds it
            job = CopyJob(plan.original, QualifiedName(m["schema_name"], m["new_name"]), plan.columns,
                          plan.order_columns, [types[c] for c in plan.order_columns], plan.date_column,
                          plan.date_type, m["cutoff"], plan.overriding, plan.key)
            c = mig.conn
            split = DATE_COLUMN if plan.order_by_date else plan.key[0]
            split_type = plan.date_type if plan.order_by_date else types[split]
            chunks = plan_chunks(c, job, split, split_type, b.cut.kept_rows, b.args.batch_size)
            for name, ch in (("first_chunk", chunks[0]), ("middle_chunk", chunks[len(chunks) // 2])):
                params = [job.cutoff, *([ch.lo] if ch.lo is not None else []), *([ch.hi] if ch.hi is not None else [])]
                q = chunk_sql(job, split, split_type, ch.lo is not None, ch.hi is not None)
                with c.transaction(force_rollback=True):
                    rows = c.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS) {}").format(q), params).fetchall()
                out[name] = {"copy": {"sql": q.as_string(c), "params": params, "plan": [r[0] for r in rows]}}
    return out


def report_explain(ex: dict[str, Any], _b: Bench) -> None:
    for chunk, plans in ex.items():
        for qname, p in plans.items():
            print(f"\n== EXPLAIN {chunk} / {qname} ==\n{p['sql']}\n  params {p['params']}")
            print("\n".join("  " + line for line in p["plan"]))


def profile(b: Bench) -> dict[str, Any]:
    with fresh_copy(b, "profile") as (db, _facts):
        checkpoint(b.target)
        rec = Recorder()
        spec = TableSpec(TABLE, DATE_COLUMN, retention=b.cut.retention, batch_size=b.args.batch_size,
                         workers=b.args.workers)
        with Migration(b.target.dsn(db), spec, recorder=rec, progress=lambda _p: None) as mig:
            # the steps of Migration.run("swapped"), labelled for the recorder
            for step, fn in (("capture", mig.capture), ("backfill", mig.backfill), ("index", mig.build_indexes),
                             ("replay", mig.replay), ("verify", mig.verify), ("swap", mig.swap),
                             ("validate_fks", mig.validate_foreign_keys)):
                rec.step = step
                fn()
            timings = dict(mig.timings)
            samples = mig.backfill_samples
    top = sorted(rec.statements, key=lambda s: -s.duration_ms)[:25]
    return {"timings": timings,
            "batches": [{"rows": s["batch_rows"], "seconds": round(s["batch_seconds"], 3), "size": s["batch_size"]}
                        for s in samples],
            "slowest": [{"step": s.step, "ms": round(s.duration_ms, 1), "rows": s.rows,
                         "sql": " ".join(s.sql.split())[:300]} for s in top]}


def report_profile(p: dict[str, Any], _b: Bench) -> None:
    print(f"\n== profile (in-process run) timings {p['timings']} ==")
    batches = p["batches"]
    if batches:
        print(f"backfill: {len(batches)} batches; sizes {[x['size'] for x in batches][:12]}...; seconds "
              f"{[x['seconds'] for x in batches][:12]}...")
    for s in p["slowest"]:
        print(f"{s['ms']:>10.1f} ms  {s['step']:<10} rows={s['rows']}  {s['sql'][:200]}")
