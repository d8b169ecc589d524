"""The write guard's accounting: how long the migration must rest so that the application
keeps its share of writes.

The bulk work of a migration (load chunks, index builds, verify's checksums, prune batches)
takes CPU and I/O from the application. The guard keeps the application's write rate over
the migration at no less than `share` (the setting `app_write_share`, default 0.9) of the
rate the application has while the migration rests. It is pure arithmetic over two clocks,
fed by `tablemig.lifecycle.pacing.Pacer`:

- the time (seconds, monotonic);
- the server's count of finished writing transactions: `pg_snapshot_xmax(pg_current_snapshot())`
  moves past every transaction id handed out, and a transaction gets one id with its first
  write, whichever session, database or table it writes. Reading it is live (no statistics
  delay), costs a fraction of a millisecond and takes no id. Read-only transactions do not
  move it: the guard protects writes.

The accounting, over a window that starts when the migration's first paced step starts:

    rate      the application's write rate while no bulk unit runs ("quiet" intervals),
              a moving average with a time constant of `tau` seconds
    expected  the writes the application would have made had the migration not run: in
              quiet intervals what it wrote, in the others `rate` times their length
    done      the writes it made (the counter's advance; the harness's own few
              transactions are among them and are negligible)
    owed      share * expected - done: it grows only while the migration works, by
              `share * rate - actual rate` per second
    rest      owed / ((1 - share) * rate): while the migration rests, the debt shrinks by
              `(1 - share)` of what the application writes

Until a quiet interval has measured the rate, the time is kept aside and added to
`expected` at the first measurement. A quiet interval right after a unit is not yet
"settled": the unit's cost outlasts it (the pacer decides for how long), so such an interval
counts as work. Only the very first measurement may come from one, and it is provisional:
the first settled one replaces it. While the application writes, `calibration_due` asks for
a settled measurement at least every `calibrate_s` seconds (a rate measured low would
otherwise ask for rests too short to ever measure it again). An application that writes less than `idle_rate`
transactions per second has nothing to protect (and its rate would be noise): no rest.
Until a quiet interval has been seen, the guard asks for a short `probe` rest to measure
the free rate as soon as the application writes during the migration's work, and once in
any case after `probe_after` seconds of work (an application the work starved completely
would otherwise look idle); on an idle server that costs one probe per migration.

>>> g = WriteGuard(0.9)
>>> g.begin(0.0, 1000)
>>> g.observe(1.0, 1300, quiet=False)   # a unit of work: 300 writes/s meanwhile
>>> g.rest_needed(1.0) == g.probe       # the application writes, its free rate is unknown
True
>>> g.observe(1.05, 1350, quiet=True)   # resting: 1000 writes/s
>>> round(g.rest_needed(1.05), 2)       # owed 0.9 * 1050 - 350 = 595 writes, repaid at 100/s
5.95
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class WriteGuard:
    share: float  # 0 = off; must be below 1
    tau: float = 2.0  # seconds: time constant of the rate's moving average
    idle_rate: float = 50.0  # writes/s below which the application counts as idle
    probe: float = 0.05  # seconds: a first rest to measure the application's free rate
    probe_after: float = 1.0  # seconds of work after which the probe is taken anyway
    calibrate_s: float = 30.0  # seconds: at most this long without a settled measurement
    rate: float | None = None  # writes/s while the migration rests
    provisional: bool = False  # the rate comes from an interval right after a unit
    expected: float = 0.0
    rested_s: float = 0.0
    _pending_s: float = 0.0
    _start: tuple[float, int] | None = None
    _last: tuple[float, int] | None = None
    _recent_rate: float = 0.0  # writes/s over the last quiet interval or `recent_s` of work
    _work_s: float = 0.0  # time in intervals that were not quiet
    _acc: tuple[float, int] = (0.0, 0)  # work time and writes not yet in _recent_rate
    _settled_at: float = float("-inf")  # time of the last settled measurement
    recent_s: float = 0.1  # shorter spans of work are the harness's own few transactions

    @property
    def begun(self) -> bool:
        return self._start is not None

    def begin(self, t: float, count: int) -> None:
        """The window starts (the first paced step): `count` is the counter now."""
        self._start = self._last = (t, count)

    def observe(self, t: float, count: int, *, quiet: bool, settled: bool = True) -> None:
        """A reading of the counter; `quiet`: no bulk unit ran since the previous reading;
        `settled`: nor did one end shortly before it (see the module docstring)."""
        if self._last is None:
            self.begin(t, count)
            return
        t0, c0 = self._last
        dt, dc = t - t0, max(0, count - c0)
        if dt <= 0:
            return
        self._last = (t, count)
        if quiet and dt >= 0.02 and (settled or self.rate is None):  # shorter: mostly rounding
            self._learn(t, dt, dc, settled)
        if quiet and settled:
            # what the application wrote while nothing of the migration ran is, exactly, what
            # it would have written: only the other intervals need the estimated rate
            self.expected += dc
            return
        self._worked(dt, dc)

    def _learn(self, t: float, dt: float, dc: int, settled: bool) -> None:
        """A quiet interval: the application's own rate, measured."""
        r = self._recent_rate = dc / dt
        if self.rate is None:
            self.expected += r * self._pending_s
            self._pending_s = 0.0
        if self.rate is None or (self.provisional and settled):
            self.rate, self.provisional = r, not settled
        elif settled:
            self.rate += (1.0 - math.exp(-dt / self.tau)) * (r - self.rate)
        if settled:
            self._settled_at = t

    def _worked(self, dt: float, dc: int) -> None:
        """An interval in which the migration worked: the application's writes expected at its rate."""
        self._work_s += dt
        acc_dt, acc_dc = self._acc[0] + dt, self._acc[1] + dc
        if acc_dt >= self.recent_s:
            self._recent_rate, acc_dt, acc_dc = acc_dc / acc_dt, 0.0, 0
        self._acc = (acc_dt, acc_dc)
        if self.rate is None:
            self._pending_s += dt
        else:
            self.expected += self.rate * dt

    @property
    def done(self) -> int:
        if self._start is None or self._last is None:
            return 0
        return self._last[1] - self._start[1]

    def calibration_due(self, t: float) -> bool:
        """The application writes and the rate has not been measured settled lately."""
        return self.engaged and (self.provisional or t - self._settled_at >= self.calibrate_s)

    @property
    def engaged(self) -> bool:
        """The application writes enough to be protected: the migration should work one
        unit at a time (one index build, one verify reader) and rest between units."""
        return self.share > 0 and max(self.rate or 0.0, self._recent_rate) >= self.idle_rate

    def rest_needed(self, t: float) -> float:
        """Seconds to rest now (0: go on working)."""
        if self.share <= 0 or self._start is None:
            return 0.0
        if self.rate is None:
            writes = self._recent_rate >= self.idle_rate
            return self.probe if writes or self._work_s >= self.probe_after else 0.0
        if self.rate < self.idle_rate and self._recent_rate < self.idle_rate:
            return 0.0
        owed = self.share * self.expected - self.done
        if owed <= 0:
            return 0.0
        return owed / ((1.0 - self.share) * max(self.rate, self.idle_rate, 1.0))

    def summary(self) -> dict[str, Any]:
        """For the report: the share asked, the application's rate, the share it kept."""
        engaged = self.rate is not None and self.rate >= self.idle_rate
        # a share of an idle application's few writes (or of the harness's own) means nothing
        kept = self.done / self.expected if engaged and self.expected > 0 else None
        return {"app_write_share": self.share,
                "app_write_rate": None if self.rate is None else round(self.rate, 1),
                "app_writes": self.done, "app_writes_expected": round(self.expected),
                "app_share_kept": None if kept is None else round(kept, 3),
                "rested_s": round(self.rested_s, 3), "engaged": engaged}
