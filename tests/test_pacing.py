"""Pacing (tablemig.lifecycle.pacing): the nice ratio (bulk work sleeps in proportion to its
duration) and the write guard (the migration rests so that the application keeps its share
of writes, and stays exact); both can be changed in migration_config while a migration runs,
and bad values are refused before anything changes.

What is asserted never depends on the machine's speed: the pacer's arithmetic is driven by
a clock and a write counter the test controls, and the real migration by an application
that the migration's work holds back whatever the machine's load."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any, TypedDict

import psycopg
import pytest
from twin import CUTOFF, create_events, diff

from tablemig.config.settings import Settings
from tablemig.config.spec import TableSpec
from tablemig.errors import InputError
from tablemig.lifecycle.driver import Migration
from tablemig.lifecycle.pacing import AFTERMATH_MAX_S, SLICE_S, WRITE_COUNTER, Pacer
from tablemig.pg.connect import connect
from tablemig.pg.schema import install_schema

ROWS = 20_000


def _spec() -> TableSpec:
    # small chunks: many units of bulk work to pace
    return TableSpec("public.events", "d", cutoff=CUTOFF.isoformat(), batch_size=1_000)


class FakeTime:
    """A clock and a sleep the test controls, and an application whose writes follow it:
    `free` writes/s while the pacer rests, `during` while the test says a unit works."""

    def __init__(self, free: float = 0.0, during: float = 0.0) -> None:
        self.now, self.writes, self.free, self.during = 1000.0, 0.0, free, during
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.writes += self.free * seconds

    def work(self, seconds: float) -> None:
        self.now += seconds
        self.writes += self.during * seconds

    def counter(self) -> int:
        return int(self.writes)


def test_pacer_sleeps_ratio_times_the_work_of_each_unit_per_thread() -> None:
    t = FakeTime()
    pacer = Pacer("host=unused", 2.0, 0.0, clock=t.clock, sleep=t.sleep)
    pacer.start()
    t.work(0.05)
    pacer()
    assert sum(t.sleeps) == pytest.approx(0.1) and pacer.slept_s == pytest.approx(0.1)
    t.sleeps.clear()
    t.work(0.4)  # a longer unit: its sleep is cut into slices, each may end the rest
    pacer()
    assert sum(t.sleeps) == pytest.approx(0.8) and max(t.sleeps) <= SLICE_S
    assert pacer.slept_s == pytest.approx(0.9)
    # a thread that has not started a unit does not sleep on another thread's clock
    t.sleeps.clear()
    th = threading.Thread(target=pacer)
    th.start()
    th.join()
    assert t.sleeps == []


def _guarded_units(share: float, free: float, during: float, units: int = 20, unit_s: float = 0.5
                   ) -> tuple[Pacer, FakeTime]:
    """`units` units of work under the write guard, driven by a controlled load and clock;
    the step settles at the end."""
    t = FakeTime(free, during)
    pacer = Pacer("host=unused", 0.0, share, clock=t.clock, sleep=t.sleep, counter=t.counter)
    pacer.start()
    for _ in range(units):
        pacer()
        t.work(unit_s)
    pacer.settle()
    return pacer, t


@pytest.mark.parametrize("share", [0.5, 0.9])
def test_the_pacer_rests_until_a_slowed_application_has_its_share(share: float) -> None:
    """The work cuts the application from 2,000 to 600 writes/s: the pacer rests between
    units until, by the counter, the application kept its share; about as long as repaying
    the debt at (1 - share) of the free rate takes, and no longer."""
    pacer, t = _guarded_units(share, 2000.0, 600.0)
    g = pacer.summary()
    assert g["engaged"] and g["app_write_rate"] == pytest.approx(2000.0, rel=0.01), g
    assert share - 0.01 <= g["app_share_kept"] <= share + 0.02, g
    work_s = 20 * 0.5
    ideal = work_s * (share - 0.3) / (1 - share)  # each work second owes (share - 0.3) of a free second
    assert ideal - 0.01 <= g["rested_s"] <= ideal * 1.1 + 1.0, (g, ideal)
    assert t.now - 1000.0 == pytest.approx(work_s + g["rested_s"])  # nothing but work and rests


def test_an_application_the_work_does_not_slow_or_an_idle_one_costs_one_probe() -> None:
    for free, during in ((2000.0, 2000.0), (0.0, 0.0)):
        pacer, _ = _guarded_units(0.9, free, during)
        g = pacer.summary()
        # at most the probe, and one rest past a unit's aftermath to measure the rate settled
        assert g["rested_s"] <= pacer.guard.probe + AFTERMATH_MAX_S + SLICE_S, g
        assert g["engaged"] is (free > 0)


def test_paced_migration_sleeps_and_stays_exact(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, ROWS)
    # the write guard off: another test's writes must not add rests to the steps' times
    with Migration(fresh_db.dsn, _spec(), progress=lambda p: None, nice_ratio=1.0,
                   app_write_share=0) as mig:
        mig.run("swapped")
        assert mig.pacer.ratio == 1.0
        # it slept after its units (how long each one took is the machine's business; the
        # proportion is tested above with a controlled clock)
        assert mig.pacer.slept_s > 0, mig.timings
    _exact(fresh_db.dsn)


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


# -- the write guard in a real migration, on a load and a time the test controls -----------

UNIT_S = 0.2  # what each unit of the migration's bulk work costs on the pacer's clock


class HoldingPacer(Pacer):
    """The migration's pacer on a FakeTime: each unit of bulk work (from a call to the next
    call, or to the step's end) takes UNIT_S of its clock, during which the simulated
    application writes nothing; while the pacer rests it writes at its free rate. The real
    migration runs on the real server; only the guard's view of time and writes is the
    test's, so what it decides does not depend on the machine's speed."""

    def __init__(self, dsn: str, t: FakeTime, share: float) -> None:
        super().__init__(dsn, 0.0, share, clock=t.clock, sleep=t.sleep, counter=t.counter)
        self.t, self.units, self.working = t, 0, False

    def _unit_ended(self) -> None:
        if self.working:
            self.t.work(UNIT_S)
            self.units += 1
        self.working = False

    def start(self, conn: psycopg.Connection[Any] | None = None, settings: Settings | None = None) -> None:
        self._unit_ended()
        super().start(conn, settings)

    def __call__(self, conn: psycopg.Connection[Any] | None = None) -> None:
        self._unit_ended()
        super().__call__(conn)
        self.working = True

    def settle(self, conn: psycopg.Connection[Any] | None = None) -> None:
        self._unit_ended()
        super().settle(conn)


def _exact(dsn: str) -> None:
    with connect(dsn) as conn:
        d = diff(conn, "events", "events_twin", f"d >= '{CUTOFF.isoformat()}'")
        assert d["only_left"] == 0 and d["only_right"] == 0 and d["left"] > 0
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (d["left"],)


def test_under_a_write_load_the_guard_rests_works_one_unit_at_a_time_and_stays_exact(fresh_db: Any) -> None:
    with fresh_db.connect() as conn:
        create_events(conn, 200_000)  # 36,000 rows kept, 1,000 a chunk: several units
    t = FakeTime(free=1000.0, during=0.0)
    with Migration(fresh_db.dsn, _spec(), progress=lambda p: None, app_write_share=0.5) as mig:
        mig.pacer.close()
        mig.pacer = pacer = HoldingPacer(fresh_db.dsn, t, 0.5)
        mig.run("swapped")
        g, paced = pacer.summary(), pacer.paced
    # the load was seen and protected: while the migration worked it wrote nothing, so the
    # guard made it work one unit at a time and rested until the application had its share
    # back (a unit of work costs as much rest at a share of 0.5), before the switch to
    # direct capture; what followed the switch (verify, the swap) rests no more
    assert pacer.units >= 3 and g["engaged"] and g["app_write_rate"] == pytest.approx(1000.0, rel=0.01), g
    assert paced, "while the application writes, one unit at a time (one index build, one verify reader)"
    assert g["app_share_kept"] == pytest.approx(0.5, abs=0.01), g
    assert g["rested_s"] == pytest.approx(pacer.units * UNIT_S, rel=0.05), (g, pacer.units)
    _exact(fresh_db.dsn)


def test_the_write_counter_moves_with_every_writing_transaction(fresh_db: Any) -> None:
    """The guard's measure: each committed writing transaction of any session moves the
    server's counter (other sessions' writes move it too: only the lower bound is ours)."""
    with fresh_db.connect() as conn, fresh_db.connect() as app:
        app.execute("CREATE TABLE app_writes (id bigserial PRIMARY KEY, v integer)")
        before = int(conn.execute(WRITE_COUNTER).fetchone()[0])
        for i in range(100):
            app.execute("INSERT INTO app_writes (v) VALUES (%s)", (i,))
        assert int(conn.execute(WRITE_COUNTER).fetchone()[0]) - before >= 100


def test_a_resting_migration_is_released_from_migration_config(fresh_db: Any) -> None:
    """A DBA sets app_write_share to 0 from psql and a resting migration goes on at once
    (the configuration is re-read while it rests). The application writes exactly 1,000
    times a second by the pacer's counter, and the pacer is given a debt it would need
    minutes to repay: only the new setting can end the rest."""
    with fresh_db.connect() as conn:
        install_schema(conn)
    began = time.monotonic()
    pacer = Pacer(fresh_db.dsn, reload_s=0.5, counter=lambda: int(1000 * (time.monotonic() - began)))
    try:
        with fresh_db.connect() as conn:
            pacer.start(conn, Settings.load(conn))
            pacer(conn)  # a unit of work starts ...
            time.sleep(0.3)  # ... runs while the application writes ...
            pacer.settle(conn)  # ... and the probe after it measures the application's free rate
            assert pacer.guard.rate is not None and pacer.guard.rate > 50, pacer.summary()
            pacer.guard.expected += 1e9  # the debt
            done = threading.Event()

            def rest() -> None:
                with fresh_db.connect() as own:
                    pacer.settle(own)
                done.set()

            th = threading.Thread(target=rest, daemon=True)
            th.start()
            assert not done.wait(1.5), "the pacer did not rest for its debt"
            deadline = time.monotonic() + 60
            while pacer.guard.rested_s == 0:  # counted while resting, not only at the end
                assert not done.is_set() and time.monotonic() < deadline, pacer.summary()
                time.sleep(0.05)
            conn.execute("UPDATE table_migration.migration_config SET config_value = '0'"
                         " WHERE config_key = 'app_write_share'")
            assert done.wait(120), "the rest did not end after app_write_share was set to 0"
            assert pacer.guard.share == 0.0
            th.join(60)
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
        r = subprocess.run([sys.executable, "-m", "tablemig.cli.main", "migrate", "--execute", "--dsn", fresh_db.dsn,
                            "--table", "events", "--date-column", "d", "--cutoff", CUTOFF.isoformat(),
                            f"{flag}={bad}"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert r.returncode == 2 and flag in r.stderr and flag_says in r.stderr, r.stderr
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT to_regclass('events_new')").fetchone()[0] is None
        install_schema(conn)
        conn.execute("UPDATE table_migration.migration_config SET config_value = %s WHERE config_key = %s",
                     (bad_config, key))
    with Migration(fresh_db.dsn, _spec(), progress=lambda p: None) as mig, \
            pytest.raises(InputError) as err:
        mig.run("swapped")
    assert key in err.value.problem and config_says in err.value.problem and "number" in (err.value.fix or "")
    with fresh_db.connect() as conn:  # read before the capture: nothing was created
        assert conn.execute("SELECT to_regclass('events_new')").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'events'::regclass"
                            " AND NOT tgisinternal").fetchone()[0] == 0


class PacingSetting(TypedDict, total=False):
    """The plan's pacing fields, one of them set per case."""
    nice_ratio: float
    app_write_share: float


@pytest.mark.parametrize(("setting", "fix_says"), [({"nice_ratio": -2}, "0"), ({"app_write_share": 1.0}, "0.9")])
def test_a_plan_with_a_bad_pacing_value_is_refused(setting: PacingSetting, fix_says: str) -> None:
    from tablemig.config.plan import PlanConfig, TableConfig

    with pytest.raises(InputError) as err:
        PlanConfig(name="p", tables=[TableConfig("public.orders", "created_date", retention=0.1)], **setting)
    assert next(iter(setting)) in err.value.problem and fix_says in (err.value.fix or "")
