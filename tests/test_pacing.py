"""Pacing (tablemig.pacing) against a real server: the nice ratio (bulk work sleeps in
proportion to its duration) and the write guard (under a real pgbench write load the
migration rests so that the load keeps its share, and stays exact); both can be changed in
migration_config while a migration runs, and bad values are refused before anything
changes."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twin import CUTOFF, create_events, diff

from tablemig.db import connect
from tablemig.engine import Migration
from tablemig.errors import InputError
from tablemig.pacing import Pacer
from tablemig.pgbin import find_pg_bin
from tablemig.schema import install_schema
from tablemig.settings import Settings
from tablemig.spec import TableSpec

ROWS = 20_000


def _spec() -> TableSpec:
    # small chunks: many units of bulk work to pace
    return TableSpec("public.events", "d", cutoff=CUTOFF.isoformat(), batch_size=1_000)


def test_pacer_sleeps_ratio_times_the_work_of_each_unit_per_thread() -> None:
    pacer = Pacer("host=unused", 2.0, 0.0)
    pacer.start()
    time.sleep(0.05)  # a unit of work
    t0 = time.monotonic()
    pacer()
    slept = time.monotonic() - t0
    assert 0.09 <= slept <= 0.3, slept
    assert pacer.slept_s == pytest.approx(slept, abs=0.02)
    # a thread that has not started a unit does not sleep on another thread's clock
    other: list[float] = []

    def fresh() -> None:
        t = time.monotonic()
        pacer()
        other.append(time.monotonic() - t)

    th = threading.Thread(target=fresh)
    th.start()
    th.join()
    assert other[0] < 0.02


def test_paced_migration_sleeps_and_stays_exact(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, ROWS)
    # the write guard off: another test's writes must not add rests to the steps' times
    with Migration(fresh_db.dsn, _spec(), progress=lambda p: None, nice_ratio=1.0,
                   app_write_share=0) as mig:
        mig.run("swapped")
        busy = sum(mig.timings[k] for k in ("backfill", "index", "replay"))
        assert mig.pacer.ratio == 1.0
        # it slept about as long as its paced steps worked (half of their time)
        assert mig.pacer.slept_s > 0.2 * busy, (mig.pacer.slept_s, mig.timings)
    with fresh_db.connect() as conn:
        d = diff(conn, "events", "events_twin", f"d >= '{CUTOFF.isoformat()}'")
        assert d["only_left"] == 0 and d["only_right"] == 0 and d["left"] > 0
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == d["left"]


def test_the_ratio_is_reread_from_migration_config_while_running(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        install_schema(conn)
        conn.execute("UPDATE table_migration.migration_config SET config_value = '3'"
                     " WHERE config_key = 'nice_ratio'")
        conn.execute("UPDATE table_migration.migration_config SET config_value = '0.5'"
                     " WHERE config_key = 'app_write_share'")
    pacer = Pacer(fresh_db.dsn, reload_s=0.0)
    try:
        pacer.start()
        pacer()
        assert (pacer.ratio, pacer.guard.share) == (3.0, 0.5)
        with fresh_db.connect() as conn:
            conn.execute("UPDATE table_migration.migration_config SET config_value = '0'"
                         " WHERE config_key IN ('nice_ratio', 'app_write_share')")
        pacer()
        assert (pacer.ratio, pacer.guard.share) == (0.0, 0.0)
    finally:
        pacer.close()
    fixed = Pacer(fresh_db.dsn, 0.5, 0.8, reload_s=0.0)
    # values from the command line or the plan are not replaced by the configuration
    fixed.start(None, Settings(nice_ratio=7.0, app_write_share=0.1))
    fixed()
    assert (fixed.ratio, fixed.guard.share) == (0.5, 0.8)
    fixed.close()


# -- the write guard under a real write load -----------------------------------------------

APP_SCRIPT = "INSERT INTO app_writes (v) VALUES (:client_id);\n"


@contextlib.contextmanager
def write_load(dsn: str, tmp_path: Path, clients: int = 4) -> Iterator[subprocess.Popen[bytes]]:
    """pgbench writing as fast as it can into a table of its own (not the migrated one),
    as another application on the same server would; stopped on exit."""
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS app_writes (id bigserial PRIMARY KEY, v integer)")
    script = tmp_path / "app.sql"
    script.write_text(APP_SCRIPT)
    cmd = [str(find_pg_bin().tool("pgbench")), "-n", "-f", str(script), "-c", str(clients),
           "-T", "600", dsn]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with connect(dsn) as conn:  # writing before the migration starts
            deadline = time.monotonic() + 30
            while conn.execute("SELECT count(*) FROM app_writes").fetchone()[0] < 100:  # type: ignore[index]
                assert p.poll() is None, p.stderr.read() if p.stderr else p.returncode
                assert time.monotonic() < deadline, "pgbench wrote nothing in 30 s"
                time.sleep(0.05)
        yield p
    finally:
        p.terminate()
        p.wait(timeout=30)


def _exact(dsn: str) -> None:
    with connect(dsn) as conn:
        d = diff(conn, "events", "events_twin", f"d >= '{CUTOFF.isoformat()}'")
        assert d["only_left"] == 0 and d["only_right"] == 0 and d["left"] > 0
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == d["left"]  # type: ignore[index]


def test_under_a_write_load_the_guard_rests_works_one_unit_at_a_time_and_stays_exact(
        fresh_db: Any, tmp_path: Path) -> None:
    with fresh_db.connect() as conn:
        # enough bulk work (36,000 rows kept, 1,000 a chunk) to measure the load: the guard
        # ignores less than 0.1 s of work
        create_events(conn, 200_000)
    with write_load(fresh_db.dsn, tmp_path), \
            Migration(fresh_db.dsn, _spec(), progress=lambda p: None, app_write_share=0.9) as mig:
        mig.run("swapped")
        g = mig.pacer.summary()
    # the load was seen and protected: the guard rested, and by its own count (the
    # server's transaction counter) the load kept its share up to the swap
    assert g["engaged"] and g["app_write_rate"] > 50 and g["rested_s"] > 0, g
    assert g["app_share_kept"] >= 0.88, g
    with fresh_db.connect() as conn:
        parallel = conn.execute("SELECT details->>'parallel' FROM table_migration.migration_log"
                                " WHERE operation = 'index' AND status = 'done'").fetchone()
    assert parallel == ("1",), "while the application writes, one index is built at a time"
    _exact(fresh_db.dsn)


def test_a_resting_migration_is_released_from_migration_config(fresh_db: Any, tmp_path: Path) -> None:
    """A DBA sets app_write_share to 0 from psql and a resting migration goes on at once
    (the configuration is re-read while it rests). The pacer is given a debt it would need
    minutes to repay (the accounting that makes real debts is tested in test_write_guard)."""
    with fresh_db.connect() as conn:
        install_schema(conn)
    with write_load(fresh_db.dsn, tmp_path), fresh_db.connect() as conn:
        pacer = Pacer(fresh_db.dsn, reload_s=0.5)
        try:
            pacer.start(conn, Settings.load(conn))
            pacer(conn)  # a unit of work starts ...
            time.sleep(0.3)  # ... runs while the load writes ...
            pacer.settle(conn)  # ... and the probe after it measures the load's free rate
            assert pacer.guard.rate is not None and pacer.guard.rate > 50, pacer.summary()
            pacer.guard.expected += 1e9  # the debt
            done = threading.Event()

            def rest() -> None:
                with fresh_db.connect() as own:
                    pacer.settle(own)
                done.set()

            t0 = time.monotonic()
            th = threading.Thread(target=rest, daemon=True)
            th.start()
            assert not done.wait(1.5), "the pacer did not rest for its debt"
            conn.execute("UPDATE table_migration.migration_config SET config_value = '0'"
                         " WHERE config_key = 'app_write_share'")
            assert done.wait(10), "the rest did not end after app_write_share was set to 0"
            assert pacer.guard.share == 0.0
            assert 1.5 <= time.monotonic() - t0 < 5, "released within the re-read interval"
            assert pacer.guard.rested_s >= 1.5, pacer.summary()  # counted while resting
        finally:
            pacer.close()


@pytest.mark.parametrize(("key", "flag", "bad_flags", "flag_says", "bad_config", "config_says"), [
    ("nice_ratio", "--nice-ratio", ["-1"], "number >= 0", "fast", "non-negative"),
    ("app_write_share", "--app-write-share", ["1", "-0.1", "most"], "below 1", "1.5", "below 1"),
])
def test_bad_pacing_values_are_refused_before_anything_changes(
        fresh_db: Any, key: str, flag: str, bad_flags: list[str], flag_says: str, bad_config: str,
        config_says: str) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, 2_000)
    for bad in bad_flags:
        r = subprocess.run([sys.executable, "-m", "tablemig.cli", "migrate", "--dsn", fresh_db.dsn,
                            "--table", "events", "--date-column", "d", "--cutoff", CUTOFF.isoformat(),
                            f"{flag}={bad}"], capture_output=True, text=True)
        assert r.returncode == 2 and flag in r.stderr and flag_says in r.stderr, r.stderr
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT to_regclass('events_new')").fetchone()[0] is None  # type: ignore[index]
        install_schema(conn)
        conn.execute("UPDATE table_migration.migration_config SET config_value = %s WHERE config_key = %s",
                     (bad_config, key))
    with Migration(fresh_db.dsn, _spec(), progress=lambda p: None) as mig, \
            pytest.raises(InputError) as err:
        mig.run("swapped")
    assert key in err.value.problem and config_says in err.value.problem and "number" in (err.value.fix or "")
    with fresh_db.connect() as conn:  # read before the capture: nothing was created
        assert conn.execute("SELECT to_regclass('events_new')").fetchone()[0] is None  # type: ignore[index]
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'events'::regclass"
                            " AND NOT tgisinternal").fetchone()[0] == 0  # type: ignore[index]


@pytest.mark.parametrize(("setting", "fix_says"), [({"nice_ratio": -2}, "0"), ({"app_write_share": 1.0}, "0.9")])
def test_a_plan_with_a_bad_pacing_value_is_refused(setting: dict[str, float], fix_says: str) -> None:
    from tablemig.plan import PlanConfig, TableConfig

    with pytest.raises(InputError) as err:
        PlanConfig(name="p", tables=[TableConfig("public.orders", "created_date", retention=0.1)], **setting)
    assert next(iter(setting)) in err.value.problem and fix_says in (err.value.fix or "")
