"""Operational settings of a migration, read from `table_migration.migration_config`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from ..errors import InputError
from ..pg.autovacuum import AutovacuumPolicy


@dataclass
class Settings:
    """Operational settings: from `table_migration.migration_config`, overridable."""

    lock_timeout: str = "200ms"
    swap_max_attempts: int = 10
    swap_statement_timeout: str = "30s"
    long_transaction_seconds: float = 60
    batch_target_seconds: float = 0.5
    verify_segments: int = 16
    index_workers: int = 3  # connections building N's indexes at once (large tables only)
    replay_batch: int = 10_000  # change-log rows per replay transaction
    switch_below: int = 1_000  # switch to direct capture once a replay batch finds fewer
    nice_ratio: float = 0.0  # sleep this many times each bulk unit's duration (tablemig.lifecycle.pacing)
    app_write_share: float = 0.9  # the write guard: keep this share of the application's writes
    # an autovacuum worker holding a lock a step needs (tablemig.pg.autovacuum)
    autovacuum_cancel: bool = True
    autovacuum_lock_wait: str = "2s"
    autovacuum_wraparound_wait: float = 600.0

    def autovacuum_policy(self) -> AutovacuumPolicy:
        """What the lock helper does about autovacuum workers (tablemig.pg.autovacuum)."""
        return AutovacuumPolicy(self.autovacuum_cancel, self.autovacuum_lock_wait,
                                self.autovacuum_wraparound_wait)

    def swap_options(self) -> dict[str, Any]:
        """The keyword arguments of `swap.swap` and `swap.swap_back`."""
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
    def load(cls, conn: psycopg.Connection[Any], **overrides: Any) -> Settings:
        rows = dict(conn.execute("SELECT config_key, config_value FROM"
                                 " table_migration.migration_config").fetchall())

        def num(key: str, kind: type[int] | type[float], default: float,
                below: float | None = None) -> Any:
            raw = rows.get(key)
            if raw is None:
                return default
            try:
                value = kind(raw)
            except ValueError:
                value = -1
            if not value >= 0 or (below is not None and not value < below):
                what = f"a number from 0 to below {below:g}" if below is not None else \
                    f"a non-negative {kind.__name__}"
                raise InputError(f"table_migration.migration_config {key} = {raw!r} is not {what}",
                                 f"set it to a number such as {default} in table_migration.migration_config"
                                 f" (config_key '{key}')")
            return value

        s = cls(lock_timeout=rows.get("lock_timeout", cls.lock_timeout),
                swap_max_attempts=num("swap_max_attempts", int, cls.swap_max_attempts),
                swap_statement_timeout=rows.get("swap_statement_timeout",
                                                cls.swap_statement_timeout),
                long_transaction_seconds=num("long_transaction_seconds", float, 60),
                batch_target_seconds=num("batch_target_seconds", float, 0.5),
                verify_segments=num("verify_segments", int, 16),
                index_workers=max(1, num("index_workers", int, cls.index_workers)),
                replay_batch=max(1, num("replay_batch", int, cls.replay_batch)),
                switch_below=num("switch_below", int, cls.switch_below),
                nice_ratio=num("nice_ratio", float, cls.nice_ratio),
                app_write_share=num("app_write_share", float, cls.app_write_share, below=1.0),
                autovacuum_cancel=_flag(rows, "autovacuum_cancel", cls.autovacuum_cancel),
                autovacuum_lock_wait=rows.get("autovacuum_lock_wait", cls.autovacuum_lock_wait),
                autovacuum_wraparound_wait=num("autovacuum_wraparound_wait", float,
                                               cls.autovacuum_wraparound_wait))
        if s.autovacuum_lock_wait != cls.autovacuum_lock_wait:
            _check_duration(conn, "autovacuum_lock_wait", s.autovacuum_lock_wait)
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s

    @classmethod
    def current(cls, conn: psycopg.Connection[Any]) -> Settings:
        """The settings of `migration_config`, or the defaults before the schema is installed."""
        row = conn.execute("SELECT to_regclass('table_migration.migration_config') IS NOT NULL").fetchone()
        return cls.load(conn) if row and row[0] else cls()


def _check_duration(conn: psycopg.Connection[Any], key: str, value: str) -> None:
    """Refuse a value the server would not take as a lock_timeout, naming the key."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (value,))
    except psycopg.errors.DataError as exc:
        raise InputError(f"table_migration.migration_config {key} = {value!r} is not a duration: "
                         f"{exc.diag.message_primary}",
                         f"set it to a duration such as '2s' (config_key '{key}')") from None


def _flag(rows: dict[str, str], key: str, default: bool) -> bool:
    raw = rows.get(key)
    if raw is None:
        return default
    if raw.strip().lower() in ("on", "true", "yes", "1"):
        return True
    if raw.strip().lower() in ("off", "false", "no", "0"):
        return False
    raise InputError(f"table_migration.migration_config {key} = {raw!r} is not on or off",
                     f"set it to 'on' or 'off' in table_migration.migration_config (config_key '{key}')")
