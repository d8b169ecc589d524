"""pgbench as the application: bench/pgbench_orders.sql (70 % INSERT of a new order, 30 %
UPDATE of one of the newest), per-transaction logs, and windows over them."""

from __future__ import annotations

import glob
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from .proc import forget, log, start_child, stop_children, tail
from .runs import Bench

SCRIPT = Path(__file__).resolve().parent / "pgbench_orders.sql"

Txns = list[tuple[float, float | None]]  # (end epoch, latency s or None when failed), sorted by end


def command(b: Bench, db: str, seconds: int, prefix: Path) -> list[str]:
    """The pgbench command line (the server's own pgbench)."""
    a, cut = b.args, b.cut
    p = conninfo_to_dict(b.target.dsn(db))
    span = max(1, min(100_000, cut.kept_rows // 10))
    cmd = [str(b.target.pg_bin.tool("pgbench")), "-n", "-f", str(SCRIPT), "-c", str(a.clients),
           "-j", str(a.threads), "-T", str(seconds), f"--max-tries={a.max_tries}", "--failures-detailed", "-l",
           f"--log-prefix={prefix}", "-P", "5", "-M", a.query_mode, "-D", f"maxid={cut.max_id}",
           "-D", f"span={span}"]
    if a.rate:
        cmd += ["-R", str(a.rate)]
    for flag, key in (("-h", "host"), ("-p", "port"), ("-U", "user")):
        if p.get(key):
            cmd += [flag, str(p[key])]
    return [*cmd, db]


def read_log(prefix: Path) -> Txns:
    """Every transaction of pgbench's per-client logs."""
    txns: Txns = []
    for path in glob.glob(f"{prefix}.*"):
        with open(path) as fh:
            for line in fh:
                f = line.split()
                if len(f) < 6:
                    continue
                end = int(f[4]) + int(f[5]) / 1e6
                txns.append((end, int(f[2]) / 1e6 if f[2].isdigit() else None))
    txns.sort()
    return txns


_LABELS = (("processed", "number of transactions actually processed:"), ("failed", "number of failed transactions:"),
           ("serialization_failures", "number of serialization failures:"),
           ("deadlock_failures", "number of deadlock failures:"), ("retried", "number of transactions retried:"),
           ("tps", "tps ="))


def parse_output(text: str) -> dict[str, Any]:
    """pgbench's summary lines."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        line = line.strip()
        for key, label in _LABELS:
            if line.startswith(label):
                tok = line[len(label):].split()[0]
                try:
                    out[key] = float(tok) if key == "tps" else int(tok.split("/")[0])
                except ValueError:
                    out[key] = tok
    return out


def window(txns: Txns, a: float, b: float) -> dict[str, Any]:
    """Transactions ending in [a, b]: count, tps, worst, p99 and p50 latency (ms)."""
    lats = sorted(lat for end, lat in txns if a <= end <= b and lat is not None)
    n = len(lats)
    return {"from": a, "to": b, "seconds": round(b - a, 3), "committed": n,
            "tps": round(n / (b - a), 1) if b > a else None,
            "worst_ms": round(lats[-1] * 1000, 1) if lats else None,
            "p99_ms": round(lats[min(n - 1, int(n * 0.99))] * 1000, 1) if lats else None,
            "p50_ms": round(lats[n // 2] * 1000, 1) if lats else None}


def overlapping_worst(txns: Txns, a: float, b: float) -> float | None:
    """Worst latency (ms) of the transactions whose [start, end] overlaps [a, b]."""
    worst = None
    for end, lat in txns:
        if lat is not None and end >= a and end - lat <= b:
            worst = lat if worst is None else max(worst, lat)
    return None if worst is None else round(worst * 1000, 1)


def per_second(txns: Txns, t0: float) -> list[list[float]]:
    """[second, committed, worst ms, failed] per second since t0."""
    buckets: dict[int, list[float]] = {}
    for end, lat in txns:
        bucket = buckets.setdefault(int(end - t0), [0, 0.0, 0])
        if lat is None:
            bucket[2] += 1
        else:
            bucket[0] += 1
            bucket[1] = max(bucket[1], lat * 1000)
    return [[s, *buckets[s]] for s in sorted(buckets)]


def run(b: Bench, db: str, seconds: int, label: str,
        during: Callable[[subprocess.Popen[bytes]], Any] | None = None) -> tuple[dict[str, Any], Txns, Any]:
    """pgbench on `db` for `seconds`; `during(p)` runs meanwhile (its result is returned).
    Returns the figures, the transactions and what `during` returned."""
    prefix = b.workdir / f"pgbench_{label}"
    for old in glob.glob(f"{prefix}.*"):
        os.unlink(old)
    out, err = b.workdir / f"{label}.pgbench.out", b.workdir / f"{label}.pgbench.err"
    cmd = command(b, db, seconds, prefix)
    t_start = time.time()
    p = start_child(cmd, out, err)
    extra = None
    try:
        if during:
            extra = during(p)
        rc = p.wait()
    finally:
        if p.poll() is None:
            stop_children()
        forget(p)
    t_end = time.time()
    stderr = err.read_text(errors="replace")
    aborted = [ln for ln in stderr.splitlines() if "aborted" in ln]
    txns = read_log(prefix)
    if not b.args.keep_logs:
        for f in glob.glob(f"{prefix}.*"):
            os.unlink(f)
    res = {"label": label, "exit_code": rc, "seconds": seconds, "started_at": t_start, "ended_at": t_end,
           "pgbench": parse_output(out.read_text(errors="replace")), "aborted_lines": aborted[:20],
           "aborted_clients": len(aborted), "failed_in_log": sum(1 for _, lat in txns if lat is None),
           "all": window(txns, t_start + 1, min(t_end, t_start + seconds)), "per_second": per_second(txns, t_start),
           "command": " ".join(cmd)}
    if rc != 0:
        log(f"pgbench {label} exited {rc}: {tail(err, 5)}")
    return res, txns, extra
