"""Result files: one JSON file per bench run under bench/results/, named by its start time
and what ran (`20251204-201500_smoke_100k.json`), with the command that produced it and the
facts of the machine; `bench.summary` turns them into docs/benchmarks.md."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

TARGETS: dict[str, tuple[str, float]] = {  # name: (comparison, threshold)
    "core_over_physical": ("<=", 1.5),
    "naive_over_core": (">=", 3.0),
    "wal_tablemig_over_naive": ("<=", 0.2),
    "peak_rss_mb": ("<=", 200.0),
    "scale_core_growth_pct": ("<=", 15.0),
    "workload_capture_tps_pct": (">=", 85.0),
    "workload_swap_worst_ms": ("<=", 250.0),
    "workload_failed": ("<=", 0),
    "whole_plan_peak_rss_mb": ("<=", 200.0),
}


def size_label(rows: int) -> str:
    """100000 -> 100k, 10000000 -> 10M."""
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if rows >= div and rows % div == 0:
            return f"{rows // div}{unit}"
    return str(rows)


def result_path(stamp: str, phases: Iterable[str], rows: int) -> Path:
    """bench/results/<stamp>_<phases>_<rows>.json"""
    return RESULTS / f"{stamp}_{'+'.join(phases) or 'none'}_{size_label(rows)}.json"


def _first(path: str, prefix: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def machine_facts() -> dict[str, Any]:
    """What the figures depend on: CPUs, memory, kernel, Python."""
    mem = _first("/proc/meminfo", "MemTotal")
    return {"cpus": os.cpu_count(), "cpu_model": _first("/proc/cpuinfo", "model name"),
            "memory_gib": round(int(mem.split()[0]) / 2**20, 1) if mem else None,
            "kernel": platform.release(), "python": sys.version.split()[0], "host": platform.node()}


def engine_fingerprint() -> str:
    """Short hash of the tablemig sources (other people edit the package between runs: a
    change shows up here)."""
    import tablemig

    root = Path(tablemig.__file__).resolve().parent
    h = hashlib.sha1()
    files = sorted([*root.rglob("*.py"), *root.parent.joinpath("sql_templates").rglob("*")])
    for f in files:
        if f.is_file() and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(root.parent)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:10]


def median(xs: Iterable[float | None]) -> float | None:
    """Median of the values that are not None (None when there are none)."""
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def ratio(x: float | None, y: float | None) -> float | None:
    """x / y, None when either is unknown or y is 0."""
    return None if x is None or not y else x / y


def fmt(x: Any, spec: str = ".2f") -> str:
    """A figure, or "-" when unknown."""
    return "-" if x is None else format(x, spec)


def verdict(name: str, value: float | None) -> str:
    """MET or MISSED against TARGETS (n/a without a value)."""
    if value is None:
        return "n/a"
    op, limit = TARGETS[name]
    ok = value <= limit if op == "<=" else value >= limit
    return "MET" if ok else "MISSED"


def targets_report(values: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """Each known target's value, threshold and verdict."""
    return {k: {"value": v, "target": f"{TARGETS[k][0]} {TARGETS[k][1]}", "verdict": verdict(k, v)}
            for k, v in values.items() if k in TARGETS and v is not None}


def write(path: Path, results: dict[str, Any]) -> None:
    """The result file (its directory created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")


def load_all(directory: Path = RESULTS) -> list[tuple[Path, dict[str, Any]]]:
    """Every result file, oldest first (files that are not results are skipped)."""
    out = []
    for p in sorted(directory.glob("*.json")):
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "started" in data and "phases" in data:
            out.append((p, data))
    return out
