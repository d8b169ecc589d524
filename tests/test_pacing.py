"""The nice ratio (tablemig.pacing): bulk work sleeps in proportion to its duration, the
ratio can be changed in migration_config while a migration runs, and bad values are
refused before anything changes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from twin import CUTOFF, create_events, diff

from tablemig.engine import Migration
from tablemig.errors import InputError
from tablemig.pacing import NicePacer
from tablemig.schema import install_schema
from tablemig.spec import TableSpec

ROWS = 20_000


def _spec() -> TableSpec:
    # small chunks: many units of bulk work to pace
    return TableSpec("public.events", "d", cutoff=CUTOFF.isoformat(), batch_size=1_000)


def test_pacer_sleeps_ratio_times_the_work_of_each_unit_per_thread() -> None:
    pacer = NicePacer("host=unused", 2.0, fixed=True)
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
    with Migration(fresh_db.dsn, _spec(), progress=lambda p: None, nice_ratio=1.0) as mig:
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
    pacer = NicePacer(fresh_db.dsn, 0.0, reload_s=0.0)
    try:
        pacer.start()
        pacer()
        assert pacer.ratio == 3.0
        with fresh_db.connect() as conn:
            conn.execute("UPDATE table_migration.migration_config SET config_value = '0'"
                         " WHERE config_key = 'nice_ratio'")
        pacer()
        assert pacer.ratio == 0.0
    finally:
        pacer.close()
    fixed = NicePacer(fresh_db.dsn, 0.5, fixed=True, reload_s=0.0)
    fixed.start(7.0)  # a command-line ratio is not replaced by the configuration
    fixed()
    assert fixed.ratio == 0.5


def test_bad_nice_ratios_are_refused_before_anything_changes(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, 2_000)
    r = subprocess.run([sys.executable, "-m", "tablemig.cli", "migrate", "--dsn", fresh_db.dsn,
                        "--table", "events", "--date-column", "d", "--cutoff", CUTOFF.isoformat(),
                        "--nice-ratio", "-1"], capture_output=True, text=True)
    assert r.returncode == 2 and "--nice-ratio" in r.stderr and "number >= 0" in r.stderr
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT to_regclass('events_new')").fetchone()[0] is None
        install_schema(conn)
        conn.execute("UPDATE table_migration.migration_config SET config_value = 'fast'"
                     " WHERE config_key = 'nice_ratio'")
    with Migration(fresh_db.dsn, _spec(), progress=lambda p: None) as mig, \
            pytest.raises(InputError) as err:
        mig.run("swapped")
    assert "nice_ratio" in err.value.problem and "number" in (err.value.fix or "")
    with fresh_db.connect() as conn:  # read before the capture: nothing was created
        assert conn.execute("SELECT to_regclass('events_new')").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'events'::regclass"
                            " AND NOT tgisinternal").fetchone()[0] == 0


def test_a_plan_with_a_negative_nice_ratio_is_refused() -> None:
    from tablemig.plan import PlanConfig, TableConfig

    with pytest.raises(InputError) as err:
        PlanConfig(name="p", tables=[TableConfig("public.orders", "created_date", retention=0.1)],
                   nice_ratio=-2)
    assert "nice_ratio" in err.value.problem and "0" in (err.value.fix or "")
