"""The capture trigger's own cost to the application (`--trigger-overhead`): pgbench on an
untouched copy, then on a copy with only the capture installed (`migrate --until capturing`,
no load running)."""

from __future__ import annotations

from typing import Any

from .. import pgbench
from ..proc import run_child, tail
from ..results import fmt
from ..runs import Bench, fresh_copy, migrate_cmd
from ..server import checkpoint


def run(b: Bench) -> dict[str, Any]:
    seconds = b.args.trigger_seconds
    out: dict[str, Any] = {"seconds": seconds}
    for label in ("trig_base", "trig_capture"):
        with fresh_copy(b, label) as (db, _facts):
            if label == "trig_capture":
                err = b.workdir / f"{label}.err"
                done = run_child(migrate_cmd(b.args, b.target.dsn(db), b.cut.retention, until="capturing",
                                             cutoff=b.cut.cutoff), b.workdir / f"{label}.out", err)
                if done.code != 0:
                    raise RuntimeError(f"migrate --until capturing failed:\n{tail(err)}")
                checkpoint(b.target)
            out[label], _, _ = pgbench.run(b, db, seconds, label)
    base, capture = out["trig_base"]["all"], out["trig_capture"]["all"]
    out["tps_pct"] = capture["tps"] / base["tps"] * 100 if base["tps"] and capture["tps"] else None
    return out


def report(t: dict[str, Any], b: Bench) -> None:
    base, capture = t["trig_base"]["all"], t["trig_capture"]["all"]
    print(f"\n== capture trigger alone: pgbench -c {b.args.clients} -j {b.args.threads} -T {t['seconds']}, "
          "no load running ==")
    for name, w in (("no trigger", base), ("capture trigger", capture)):
        print(f"{name:<16} {fmt(w['tps'], '.1f'):>8} tps  p50 {w['p50_ms']} ms  p99 {w['p99_ms']} ms"
              f"  worst {w['worst_ms']} ms")
    print(f"tps with the trigger / without = {fmt(t['tps_pct'], '.1f')} %")
