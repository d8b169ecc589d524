"""Replication facts of an active/passive pair and the lag throttle.

`max_replication_lag` is a size (`16MB`) or a duration (`30s`, `5 minutes`). The throttle
pauses batches while the passive lags more than the limit and resumes when the lag falls
below half of it (hysteresis), recording every sample for the report.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ..errors import InputError
from .connect import connect

log = logging.getLogger("tablemig.replication")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|bytes|kb|mb|gb|tb)\s*$", re.I)
_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|secs|seconds?|min|mins|minutes?|h|hours?)\s*$", re.I)
_UNITS = {"b": 1, "bytes": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}


@dataclass(frozen=True)
class LagLimit:
    kind: str  # "bytes" or "seconds"
    value: float
    text: str

    @classmethod
    def parse(cls, text: str) -> LagLimit:
        m = _SIZE.match(text)
        if m:
            return cls("bytes", float(m.group(1)) * _UNITS[m.group(2).lower()], text)
        m = _TIME.match(text)
        if m:
            unit = m.group(2).lower()
            factor = 0.001 if unit == "ms" else 60 if unit.startswith("min") else 3600 if unit.startswith("h") else 1
            return cls("seconds", float(m.group(1)) * factor, text)
        raise InputError(f"max_replication_lag {text!r} is neither a size nor a duration",
                         "give e.g. 16MB, 1GB, 30s or 5min")

    def exceeded(self, lag_bytes: float | None, lag_seconds: float | None) -> bool:
        observed = lag_bytes if self.kind == "bytes" else lag_seconds
        return observed is not None and observed > self.value

    def below_resume_mark(self, lag_bytes: float | None, lag_seconds: float | None) -> bool:
        observed = lag_bytes if self.kind == "bytes" else lag_seconds
        return observed is None or observed <= self.value / 2


def standbys(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """pg_stat_replication with lag in bytes (replay) and seconds: the standbys (and
    logical subscribers) streaming from this server. A base backup being taken
    (pg_basebackup, state `backup`) is listed there too but is no standby: see base_backups."""
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute(
            "SELECT application_name, client_addr::text, state, sync_state,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS lag_bytes,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint AS flush_lag_bytes,"
            " extract(epoch FROM replay_lag)::float AS lag_seconds, sent_lsn::text, replay_lsn::text"
            " FROM pg_stat_replication WHERE state IS DISTINCT FROM 'backup'"
            " ORDER BY application_name").fetchall())


def base_backups(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Base backups being taken from this server (pg_basebackup), for the evidence."""
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute(
            "SELECT application_name, client_addr::text, backend_start::text FROM pg_stat_replication"
            " WHERE state = 'backup' ORDER BY backend_start").fetchall())


def standbys_within(conn: psycopg.Connection[Any], limit: LagLimit, wait_s: float = 30,
                    poll_s: float = 0.5) -> tuple[list[dict[str, Any]], float]:
    """`standbys()` once none lags more than `limit`, waiting at most `wait_s`: a burst of
    WAL written by another session is not a standby that cannot keep up. Returns the last
    sample (still over the limit after `wait_s`: the caller refuses) and the seconds waited."""
    t0 = time.monotonic()
    while True:
        rows = standbys(conn)
        over = [r for r in rows if limit.exceeded(r["lag_bytes"], r["lag_seconds"])]
        waited = time.monotonic() - t0
        if not over or waited >= wait_s:
            return rows, round(waited, 1)
        time.sleep(poll_s)


def snapshot(active: psycopg.Connection[Any], passive: psycopg.Connection[Any] | None) -> dict[str, Any]:
    """The replication configuration of both sites, for the report (PRE-1.1d)."""
    settings = ("wal_level", "max_wal_senders", "max_replication_slots", "wal_keep_size",
                "synchronous_standby_names", "synchronous_commit", "hot_standby", "hot_standby_feedback",
                "max_standby_streaming_delay", "archive_mode", "archive_command", "primary_conninfo",
                "primary_slot_name", "server_version")

    def read(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        with conn.cursor(row_factory=dict_row) as cur:
            conf = {r["name"]: r["setting"] for r in cur.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(settings),)).fetchall()}
            if "primary_conninfo" in conf:
                from .connect import redact

                conf["primary_conninfo"] = redact(conf["primary_conninfo"])
            return {
                "in_recovery": cur.execute("SELECT pg_is_in_recovery() AS r").fetchone()["r"],  # type: ignore[index]
                "settings": conf,
                "slots": cur.execute("SELECT slot_name, slot_type, active, restart_lsn::text"
                                     " FROM pg_replication_slots").fetchall(),
                "publications": cur.execute("SELECT pubname, puballtables FROM pg_publication").fetchall(),
                "subscriptions": cur.execute(
                    "SELECT subname, subenabled FROM pg_subscription"
                    " WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ).fetchall(),
            }

    out = {"active": read(active), "standbys": standbys(active)}
    if passive is not None:
        out["passive"] = read(passive)
    return out


def insert_position(active: psycopg.Connection[Any]) -> str:
    """The active site's WAL insert position. It covers every commit visible to a snapshot
    taken before it is read, also commits not yet flushed (synchronous_commit = off)."""
    row = active.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def _poll(check: Callable[[str], tuple[bool, str | None]], target: str, label: str, fix: str,
          timeout_s: float) -> dict[str, Any]:
    """Poll `check(target)` -> (reached, position) until the target is reached."""
    t0 = time.monotonic()
    while True:
        done, position = check(target)
        if done:
            return {"lsn": target, label: position, "waited_s": round(time.monotonic() - t0, 3)}
        if time.monotonic() - t0 > timeout_s:
            raise InputError(f"the passive site has not {label} {target} after {timeout_s:.0f} s "
                             f"(at {position})", fix)
        time.sleep(0.05)


def _row(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...]) -> tuple[bool, str | None]:
    row = conn.execute(query, params).fetchone()
    return (bool(row[0]), row[1]) if row else (False, None)


def wait_for_replay(active: psycopg.Connection[Any], passive: psycopg.Connection[Any],
                    timeout_s: float = 60, target: str | None = None) -> dict[str, Any]:
    """Wait until the standby has replayed `target` (default: the active's current WAL
    insert position). Replayed commits are visible to the standby's next snapshot."""
    return _poll(lambda t: _row(passive, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn,"
                                         " pg_last_wal_replay_lsn()::text", (t,)),
                 target or insert_position(active), "replayed",
                 "check pg_stat_replication on the active and the standby's log; is replay paused?", timeout_s)


def subscription_slots(active: psycopg.Connection[Any], subscriber: psycopg.Connection[Any],
                       table: str | None = None) -> list[str]:
    """The replication slots on the active site of the subscriber's enabled subscriptions
    (those that receive `table`, when given)."""
    names = [r[0] for r in subscriber.execute(
        "SELECT s.subslotname FROM pg_subscription s WHERE s.subenabled AND s.subslotname IS NOT NULL"
        "   AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        "   AND (%s::text IS NULL OR EXISTS (SELECT 1 FROM pg_subscription_rel r"
        "        WHERE r.srsubid = s.oid AND r.srrelid = to_regclass(%s::text)))",
        (table, table)).fetchall()]
    slots = [r[0] for r in active.execute(
        "SELECT slot_name FROM pg_replication_slots WHERE slot_name = ANY(%s) AND slot_type = 'logical'"
        " AND database = current_database() ORDER BY 1", (names,)).fetchall()]
    if not slots:
        raise InputError(f"no enabled subscription on the subscriber receives {table or 'tables'} through a slot "
                         "on the active site", "check pg_subscription on the subscriber (disabled? "
                         "subscribed to another server?) and pg_replication_slots on the active site")
    return slots


def wait_for_apply(active: psycopg.Connection[Any], subscriber: psycopg.Connection[Any],
                   timeout_s: float = 60, target: str | None = None, table: str | None = None) -> dict[str, Any]:
    """Wait until the subscriber has applied `target` (default: the active's current WAL
    insert position): its subscriptions' slots on the active site have a confirmed flush
    position past it. The apply worker confirms a position only once every transaction
    before it is applied and its local commit flushed; `received_lsn` of
    pg_stat_subscription moves as a change arrives, before it is applied."""
    slots = subscription_slots(active, subscriber, table)
    return _poll(lambda t: _row(active, "SELECT coalesce(bool_and(confirmed_flush_lsn >= %s::pg_lsn), false),"
                                        " min(confirmed_flush_lsn)::text FROM pg_replication_slots"
                                        " WHERE slot_name = ANY(%s)", (t, slots)),
                 target or insert_position(active), "applied",
                 f"check pg_stat_subscription and the log on the subscriber (apply errors? worker running?) "
                 f"and slot(s) {', '.join(slots)} in pg_replication_slots on the active site", timeout_s)


@dataclass
class LagThrottle:
    """Callable between batches: waits while the passive lags more than the limit."""

    dsn: str
    limit: LagLimit
    poll_s: float = 0.2
    samples: list[dict[str, Any]] = field(default_factory=list)
    pauses: list[dict[str, Any]] = field(default_factory=list)
    _conn: psycopg.Connection[Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _lag(self) -> tuple[float | None, float | None]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn, application_name="tablemig-throttle")
        rows = standbys(self._conn)
        if not rows:
            return None, None
        worst = max(rows, key=lambda r: r["lag_bytes"] or 0)
        return worst["lag_bytes"], worst["lag_seconds"]

    def __call__(self) -> None:
        with self._lock:  # one worker measures at a time; the others wait with it
            lag_b, lag_s = self._lag()
            self.samples.append({"t": time.time(), "lag_bytes": lag_b, "lag_seconds": lag_s, "paused": False})
            if not self.limit.exceeded(lag_b, lag_s):
                return
            started = time.time()
            log.warning("passive lags %s bytes / %s s > %s: pausing the copy", lag_b, lag_s, self.limit.text)
            while not self.limit.below_resume_mark(lag_b, lag_s):
                time.sleep(self.poll_s)
                lag_b, lag_s = self._lag()
                self.samples.append({"t": time.time(), "lag_bytes": lag_b, "lag_seconds": lag_s, "paused": True})
            self.pauses.append({"start": started, "end": time.time()})
            log.info("passive lag %s bytes after %.1f s: resuming the copy", lag_b, time.time() - started)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
