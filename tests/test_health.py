"""`tablemig health` for monitoring: a standby whose replay is paused past
`max_replication_lag` is CRITICAL (exit 2) in every format until it has caught up (exit 0);
the Prometheus output is read by prometheus_client's own parser.

The standby's replay is paused on a private sandbox: pausing the shared one would stall every
other test waiting for replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tablemig.pg.connect import connect
from tablemig.pg.replication import wait_for_replay
from tablemig.pg.schema import install_schema
from tablemig.sandbox.cluster import Sandbox, start_sandbox, stop_sandbox
from tablemig.sandbox.demo_data import create_demo_data

LIMIT = "1MB"
CLEAN = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "TABLEMIG_"))}


@pytest.fixture(scope="module")
def pair() -> Iterator[Sandbox]:
    root = Path("/tmp") / f"tablemig-health-{uuid.uuid4().hex[:8]}"
    sb = start_sandbox(root)
    try:
        with connect(sb.active_dsn) as conn:
            install_schema(conn)
            conn.execute("UPDATE table_migration.migration_config SET config_value = %s"
                         " WHERE config_key = 'max_replication_lag'", (LIMIT,))
        yield sb
    finally:
        stop_sandbox(root)


def health(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tablemig.cli.main", "health", "--dsn", sb.active_dsn, *args],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=CLEAN)


def metrics(text: str) -> dict[str, Any]:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, f in families.items():
        assert name.startswith("tablemig_"), name
        assert f.documentation and f.type == "gauge", (name, f.documentation, f.type)
    # every family has its HELP and TYPE lines (the parser would also accept samples without them)
    for name in families:
        assert f"# HELP {name} " in text and f"# TYPE {name} gauge" in text, name
    return families


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    found = [s.value for s in families[name].samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, families[name].samples)
    return float(found[0])


def caught_up(sb: Sandbox) -> None:
    with connect(sb.active_dsn) as a, connect(sb.passive_dsn) as p:
        wait_for_replay(a, p, timeout_s=120)


def test_health_is_critical_while_the_standby_lags_past_the_limit(pair: Sandbox) -> None:
    caught_up(pair)
    ok = health(pair)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("TABLEMIG OK - ")
    with connect(pair.passive_dsn) as standby:
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            deadline = time.monotonic() + 30
            while standby.execute("SELECT pg_get_wal_replay_pause_state()").fetchone() != ("paused",):
                assert time.monotonic() < deadline, "replay did not pause"
                time.sleep(0.05)
            with connect(pair.active_dsn) as a:
                # about 3.5 MB of WAL, committed durably: it is behind the standby when health looks
                a.execute("SET synchronous_commit = on")
                a.execute("CREATE TABLE IF NOT EXISTS lag_burst (x int, pad text)")
                a.execute("INSERT INTO lag_burst SELECT g, repeat('x', 100) FROM generate_series(1, 25000) g")
                behind = a.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)"
                                   " FROM pg_stat_replication").fetchone()
                assert behind is not None and behind[0] > 1024 ** 2, behind

            text = health(pair)
            assert text.returncode == 2, text.stdout + text.stderr
            first = text.stdout.splitlines()[0]
            assert first.startswith("TABLEMIG CRITICAL - replication_lag: ") and f"max_replication_lag {LIMIT}" in first
            assert "| 'lag_bytes_active_passive'=" in first and ";;1048576;0;" in first  # performance data

            as_json = health(pair, "--format", "json")
            assert as_json.returncode == 2
            doc = json.loads(as_json.stdout)
            assert (doc["status"], doc["code"]) == ("CRITICAL", 2)
            lag = [c for c in doc["sites"][0]["checks"] if c["check_name"] == "replication_lag"]
            assert [c["status"] for c in lag] == ["alert"]

            prom = health(pair, "--format", "prometheus", "--passive-dsn", pair.passive_dsn)
            assert prom.returncode == 2 and prom.stderr == "", prom.stderr
            families = metrics(prom.stdout)
            assert sample(families, "tablemig_health_up") == 1
            assert sample(families, "tablemig_health_status") == 2
            assert sample(families, "tablemig_health_check_status", site="active", check="replication_lag") == 2
            # the standby sees it too: WAL received and not replayed
            assert sample(families, "tablemig_health_check_status", site="passive", check="replication_lag") == 2
            assert sample(families, "tablemig_replication_lag_limit_bytes") == 1024 ** 2
            assert sample(families, "tablemig_replication_lag_bytes", site="active", standby="passive") > 1024 ** 2
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
    caught_up(pair)
    again = health(pair, "--format", "prometheus")
    assert again.returncode == 0, again.stdout
    families = metrics(again.stdout)
    assert sample(families, "tablemig_health_status") == 0
    assert sample(families, "tablemig_replication_lag_seconds", site="active", standby="passive") == 0


def test_health_of_a_migration_and_of_an_unreadable_database(pair: Sandbox) -> None:
    with connect(pair.active_dsn) as conn:
        create_demo_data(conn, 2_000)
    cli = [sys.executable, "-m", "tablemig.cli.main"]
    spec = ["--dsn", pair.active_dsn, "--table", "public.orders"]
    started = subprocess.run([*cli, "migrate", "--execute", *spec, "--date-column", "created_date", "--retention",
                              "0.1", "--until", "capturing"], capture_output=True, text=True, timeout=300, env=CLEAN)
    assert started.returncode == 0, started.stderr
    try:
        subprocess.run([*cli, "pause", *spec], check=True, capture_output=True, timeout=120, env=CLEAN)
        proc = health(pair, "--format", "prometheus")
        families = metrics(proc.stdout)
        assert sample(families, "tablemig_migration_info", table="public.orders", state="capturing") == 1
        assert sample(families, "tablemig_migration_rows_copied", table="public.orders") == 0
        assert sample(families, "tablemig_migration_rows_to_copy", table="public.orders") == 200
        assert sample(families, "tablemig_migration_paused", table="public.orders") == 1
        assert sample(families, "tablemig_health_check_status", site="active", check="migration_state",
                      table="public.orders") == 0
    finally:
        subprocess.run([*cli, "rollback", "--execute", *spec], check=True, capture_output=True, timeout=300,
                       env=CLEAN)
    # a database without the schema: UNKNOWN, and a scrape still gets the verdict
    with connect(pair.active_dsn) as conn:
        conn.execute("CREATE DATABASE no_schema")
    empty = pair.active_dsn.replace("dbname=tablemig", "dbname=no_schema")
    assert empty != pair.active_dsn
    proc = subprocess.run([sys.executable, "-m", "tablemig.cli.main", "health", "--dsn", empty, "--format",
                           "prometheus"], capture_output=True, text=True, timeout=120, env=CLEAN)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert "tablemig: error: no tablemig schema in this database" in proc.stderr and "tablemig: fix:" in proc.stderr
    families = metrics(proc.stdout)
    assert sample(families, "tablemig_health_up") == 0 and sample(families, "tablemig_health_status") == 3
