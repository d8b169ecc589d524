"""Operational settings of a migration: each one defined once, validated once.

A setting's default is its seed in `table_migration.migration_config`
(`tablemig.pg.schema.CONFIG_SEED`); its meaning and what a valid value is are defined here,
in `KNOBS`. The same definition checks a value wherever it comes from: a row of
`migration_config` (re-read while a migration runs), a plan (`PlanConfig`), the command
line, or a test. Values a plan or the command line give are *fixed* for the run
(`Fixed`): they win over `migration_config`, and `Fixed.apply` is the one place that
decides it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

import psycopg

from ..errors import InputError
from ..pg.autovacuum import AutovacuumPolicy
from ..pg.schema import CONFIG_SEED, SCHEMA
from ..pg.statements import Statements, statements


@dataclass(frozen=True)
class Knob:
    """What a valid value of one setting is."""

    kind: type[int] | type[float] | type[str] | type[bool]
    below: float | None = None  # exclusive upper bound of a number
    at_least: int = 0  # values below are raised to this (a count of workers, of rows)
    what: str = ""  # a valid value, in words (for messages)

    def describe(self) -> str:
        if self.what:
            return self.what
        if self.kind is bool:
            return "on or off"
        if self.below is not None:
            return f"a number from 0 to below {self.below:g}"
        if self.kind is int:
            return "a non-negative integer"
        if self.kind is float:
            return "a non-negative number (a number >= 0)"
        return "a text"

    def parse(self, raw: Any) -> Any:
        """The value of `raw` (text of migration_config or the command line, or a Python
        value); ValueError when it is not valid."""
        if self.kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("on", "true", "yes", "1"):
                return True
            if text in ("off", "false", "no", "0"):
                return False
            raise ValueError(raw)
        if self.kind is str:
            return str(raw)
        if isinstance(raw, bool):
            raise ValueError(raw)
        value: float = int(raw) if self.kind is int else float(raw)  # ValueError: not a number
        if not value >= 0 or (self.below is not None and not value < self.below):
            raise ValueError(raw)
        return max(value, self.at_least)


KNOBS: Mapping[str, Knob] = MappingProxyType({
    "lock_timeout": Knob(str),
    "swap_max_attempts": Knob(int),
    "swap_statement_timeout": Knob(str),
    "long_transaction_seconds": Knob(float),
    "batch_target_seconds": Knob(float),
    "verify_segments": Knob(int),
    "index_workers": Knob(int, at_least=1),
    "replay_batch": Knob(int, at_least=1),
    "switch_below": Knob(int),
    "nice_ratio": Knob(float, what="a non-negative number (a number >= 0, e.g. 1 to work at most half the time)"),
    "app_write_share": Knob(float, below=1.0, what="a number from 0 to below 1 (e.g. 0.9 keeps 90 % of the "
                                                   "application's writes; 0: no write guard)"),
    "autovacuum_cancel": Knob(bool),
    "autovacuum_lock_wait": Knob(str),
    "autovacuum_wraparound_wait": Knob(float),
})

SEED: Mapping[str, str] = MappingProxyType({key: value for key, value, _ in CONFIG_SEED})
CONFIG_TABLE = "table_migration.migration_config"
# a table's own settings (`TableSpec`): their defaults are migration_config's seed too
BATCH_SIZE = int(SEED["batch_size"])  # rows per unit of bulk work: a load chunk, a prune batch
WORKERS = int(SEED["backfill_workers"])  # connections loading one table at once


def default(key: str) -> Any:
    """The default of a setting: its seed in migration_config, parsed."""
    return KNOBS[key].parse(SEED[key])


def check(key: str, value: Any, source: str) -> Any:
    """`value` of setting `key` as the setting's type, or InputError naming `source` (a plan,
    the command line, migration_config) and a valid value."""
    knob = KNOBS.get(key)
    if knob is None:
        raise InputError(f"{source}: unknown setting {key!r}", f"use one of {', '.join(KNOBS)}")
    try:
        return knob.parse(value)
    except (ValueError, TypeError):
        where = f" in {CONFIG_TABLE} (config_key '{key}')" if source == CONFIG_TABLE else ""
        raise InputError(f"{source} {key} = {value!r} is not {knob.describe()}",
                         f"give {knob.describe()}, such as {SEED[key]} (the default){where}") from None


def argument(key: str) -> Callable[[str], Any]:
    """An argparse `type` for the command-line option of setting `key`."""
    import argparse

    def parse(text: str) -> Any:
        try:
            return KNOBS[key].parse(text)
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {KNOBS[key].describe()}") from None

    return parse


@dataclass
class Settings:
    """Operational settings: from `table_migration.migration_config`, with the values fixed
    for the run applied (`Fixed`)."""

    lock_timeout: str = default("lock_timeout")
    swap_max_attempts: int = default("swap_max_attempts")
    swap_statement_timeout: str = default("swap_statement_timeout")
    long_transaction_seconds: float = default("long_transaction_seconds")
    batch_target_seconds: float = default("batch_target_seconds")
    verify_segments: int = default("verify_segments")
    index_workers: int = default("index_workers")  # connections building N's indexes at once (large tables)
    replay_batch: int = default("replay_batch")  # change-log rows per replay transaction
    switch_below: int = default("switch_below")  # switch to direct capture once a replay batch finds fewer
    nice_ratio: float = default("nice_ratio")  # sleep this many times each bulk unit's duration (pacing)
    app_write_share: float = default("app_write_share")  # the write guard: keep this share of the app's writes
    # an autovacuum worker holding a lock a step needs (tablemig.pg.autovacuum)
    autovacuum_cancel: bool = default("autovacuum_cancel")
    autovacuum_lock_wait: str = default("autovacuum_lock_wait")
    autovacuum_wraparound_wait: float = default("autovacuum_wraparound_wait")

    def autovacuum_policy(self) -> AutovacuumPolicy:
        """What the lock helper does about autovacuum workers (tablemig.pg.autovacuum)."""
        return AutovacuumPolicy(self.autovacuum_cancel, self.autovacuum_lock_wait,
                                self.autovacuum_wraparound_wait)

    def swap_options(self) -> dict[str, Any]:
        """The keyword arguments of the swap and the swap back (tablemig.lifecycle.swap)."""
        return {"lock_timeout": self.lock_timeout, "attempts": self.swap_max_attempts,
                "statement_timeout": self.swap_statement_timeout,
                "long_xact_seconds": self.long_transaction_seconds,
                "autovacuum_policy": self.autovacuum_policy()}

    def lock_options(self) -> dict[str, Any]:
        """The keyword arguments of `locking.with_lock_retries` these settings decide."""
        return {"lock_timeout": self.lock_timeout, "attempts": self.swap_max_attempts,
                "long_xact_seconds": self.long_transaction_seconds,
                "autovacuum_policy": self.autovacuum_policy()}

    @classmethod
    def from_rows(cls, rows: Mapping[str, str], fixed: Fixed | None = None) -> Settings:
        """The settings of migration_config's rows {key: value}; a bad value is refused,
        naming its key. `fixed` values win."""
        values = {f.name: check(f.name, rows[f.name], CONFIG_TABLE)
                  for f in fields(cls) if rows.get(f.name) is not None}
        return (fixed or Fixed()).apply(cls(**values))

    @classmethod
    def load(cls, conn: psycopg.Connection[Any] | Statements, fixed: Fixed | None = None) -> Settings:
        """The settings of `migration_config` (installed; in a dry run that installs it, its
        seed), with `fixed` applied."""
        st = statements(conn)
        rows: dict[str, str] = dict(st.read("SELECT config_key, config_value FROM table_migration.migration_config",
                            reads=[SCHEMA], planned=lambda: list(SEED.items())).fetchall())
        s = cls.from_rows(rows, fixed)
        if s.autovacuum_lock_wait != SEED["autovacuum_lock_wait"]:
            _check_duration(st, "autovacuum_lock_wait", s.autovacuum_lock_wait)
        return s

    @classmethod
    def current(cls, conn: psycopg.Connection[Any]) -> Settings:
        """The settings of `migration_config`, or the defaults before the schema is installed."""
        row = conn.execute("SELECT to_regclass('table_migration.migration_config') IS NOT NULL").fetchone()
        return cls.load(conn) if row and row[0] else cls()


@dataclass(frozen=True)
class Fixed:
    """Settings fixed for one run (by a plan, the command line or a test): checked when
    given, applied over migration_config's values whenever those are read. A setting not
    given (None) follows migration_config, re-read while the migration runs."""

    values: Mapping[str, Any] = field(default_factory=dict)
    source: str = "the run's settings"

    def __post_init__(self) -> None:
        checked = {k: check(k, v, self.source) for k, v in self.values.items() if v is not None}
        object.__setattr__(self, "values", MappingProxyType(checked))

    def get(self, key: str) -> Any:
        """The fixed value of `key`, or None (it follows migration_config)."""
        return self.values.get(key)

    def apply(self, settings: Settings) -> Settings:
        """`settings` with the fixed values in place of migration_config's."""
        return replace(settings, **self.values)


def _check_duration(st: Statements, key: str, value: str) -> None:
    """Refuse a value the server would not take as a lock_timeout, naming the key."""
    try:
        with st.transaction(force_rollback=True):
            st.run("SELECT set_config('lock_timeout', %s, true)", (value,))
    except psycopg.errors.DataError as exc:
        raise InputError(f"table_migration.migration_config {key} = {value!r} is not a duration: "
                         f"{exc.diag.message_primary}",
                         f"set it to a duration such as '2s' (config_key '{key}')") from None
