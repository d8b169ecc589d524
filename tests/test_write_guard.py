"""The write guard's accounting (tablemig.lifecycle.write_guard), without a database: a simulated
application writes at a free rate while the migration rests and at a lower rate while it
works; the guard must keep its share, rest no longer than that needs, and never rest for
an idle application."""

from __future__ import annotations

import doctest

import pytest

from tablemig.lifecycle import write_guard
from tablemig.lifecycle.write_guard import WriteGuard


def simulate(share: float, free_rate: float, work_rate: float, *, units: int = 20,
             unit_s: float = 0.5, stop_after: int | None = None) -> tuple[WriteGuard, float, float]:
    """Units of work, each followed by the rest the guard asks for (in slices, as the
    pacer takes it). Returns the guard, the elapsed time and the writes the application
    would have made without the migration."""
    g = WriteGuard(share)
    t, writes, free = 0.0, 0.0, 0.0  # the counter is int(writes)
    g.begin(t, 0)
    for i in range(units):
        if stop_after is not None and i >= stop_after:
            free_rate = work_rate = 0.0
        t += unit_s
        writes += work_rate * unit_s
        free += free_rate * unit_s
        g.observe(t, int(writes), quiet=False)
        while (rest := g.rest_needed(t)) > 0.001:  # as the pacer: no rest under a millisecond
            dt = min(rest, 0.25)
            t += dt
            writes += free_rate * dt
            free += free_rate * dt
            g.observe(t, int(writes), quiet=True)
    return g, t, free


def test_the_docstring_example_holds() -> None:
    assert doctest.testmod(write_guard).failed == 0


@pytest.mark.parametrize("share", [0.5, 0.8, 0.9, 0.95])
@pytest.mark.parametrize("impact", [0.0, 0.3, 0.7])  # 0: the work starves the application
def test_the_application_keeps_its_share_and_the_rest_is_what_that_needs(share: float, impact: float) -> None:
    free_rate, work_s = 2000.0, 20 * 0.5
    g, elapsed, free = simulate(share, free_rate, impact * free_rate)
    kept = g.done / free
    assert kept >= share - 0.01, (kept, share)
    # what a perfect rest would be: the debt of each work second repaid at (1 - share)
    ideal_rest = work_s * max(0.0, share - impact) / (1 - share)
    rested = elapsed - work_s
    assert rested <= ideal_rest * 1.1 + g.probe + 0.3, (rested, ideal_rest)
    assert kept <= share + 0.05 or impact >= share, "rested much longer than needed"


def test_an_application_the_migration_does_not_slow_costs_only_the_probe() -> None:
    g, elapsed, _ = simulate(0.9, 1000.0, 1000.0)
    assert elapsed - 20 * 0.5 <= g.probe + 0.3
    assert g.summary()["engaged"] is True


def test_an_idle_application_costs_one_probe_per_migration() -> None:
    g, elapsed, _ = simulate(0.9, 0.0, 0.0)
    assert elapsed == pytest.approx(20 * 0.5 + g.probe)  # the probe after `probe_after` s of work
    assert g.rate == 0.0 and not g.engaged
    g, elapsed, _ = simulate(0.9, 0.0, 0.0, units=1)  # less work than `probe_after`: no probe
    assert elapsed == pytest.approx(0.5)
    # a trickle under the idle rate is noise, not a load to protect
    g, elapsed, _ = simulate(0.9, 20.0, 5.0)
    assert elapsed == pytest.approx(20 * 0.5, abs=g.probe + 0.3)


def test_rests_end_soon_after_the_application_stops_writing() -> None:
    g, elapsed, _ = simulate(0.9, 3000.0, 900.0, stop_after=10)
    busy_part = 10 * 0.5 * (1 + (0.9 - 0.3) / 0.1)  # the first ten units and their rests
    # once nothing writes, the remaining ten units do not rest more than a few seconds
    assert elapsed <= busy_part * 1.1 + 10 * 0.5 + 10, elapsed


def test_share_zero_turns_the_guard_off() -> None:
    g, elapsed, _ = simulate(0.0, 3000.0, 300.0)
    assert elapsed == pytest.approx(20 * 0.5)
    assert not g.engaged


def test_before_a_quiet_interval_the_time_counts_at_the_first_measured_rate() -> None:
    g = WriteGuard(0.9)
    g.begin(0.0, 0)
    g.observe(2.0, 400, quiet=False)  # two seconds of work at 200 writes/s
    assert g.expected == 0.0 and g.rate is None
    g.observe(2.5, 900, quiet=True)  # resting: 1000 writes/s
    assert g.rate == pytest.approx(1000.0)
    assert g.expected == pytest.approx(2500.0)  # 2.5 s at the measured free rate
    assert g.rest_needed(2.5) == pytest.approx((0.9 * 2500 - 900) / (0.1 * 1000))


def test_a_provisional_rate_is_replaced_by_the_first_settled_measurement() -> None:
    g = WriteGuard(0.9)
    g.begin(0.0, 0)
    g.observe(1.0, 2000, quiet=False)  # work: 2000 writes/s
    g.observe(1.1, 2100, quiet=True, settled=False)  # right after the unit: 1000/s, depressed
    assert g.rate == pytest.approx(1000.0) and g.provisional
    assert g.calibration_due(1.1), "a provisional rate asks for a settled measurement"
    g.observe(1.5, 2500, quiet=True, settled=False)  # still in the unit's aftermath: work
    assert g.rate == pytest.approx(1000.0)
    g.observe(1.8, 3400, quiet=True, settled=True)  # settled: 3000/s
    assert g.rate == pytest.approx(3000.0) and not g.provisional
    assert not g.calibration_due(1.8)
    assert g.calibration_due(1.8 + g.calibrate_s), "and again after calibrate_s without one"
    # the aftermath counted as work: expected grew by the rate of the time, not by what was written
    assert g.expected == pytest.approx(1000 * 1.0 + 100 + 1000 * 0.4 + 900)
