"""Operational settings of a migration, read from `table_migration.migration_config`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg


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

    def swap_options(self) -> dict[str, Any]:
        """The keyword arguments of `swap.swap` and `swap.swap_back`."""
        return {"lock_timeout": self.lock_timeout, "attempts": self.swap_max_attempts,
                "statement_timeout": self.swap_statement_timeout,
                "long_xact_seconds": self.long_transaction_seconds}

    @classmethod
    def load(cls, conn: psycopg.Connection[Any], **overrides: Any) -> Settings:
        rows = dict(conn.execute("SELECT config_key, config_value FROM"
                                 " table_migration.migration_config").fetchall())
        s = cls(lock_timeout=rows.get("lock_timeout", cls.lock_timeout),
                swap_max_attempts=int(rows.get("swap_max_attempts", cls.swap_max_attempts)),
                swap_statement_timeout=rows.get("swap_statement_timeout",
                                                cls.swap_statement_timeout),
                long_transaction_seconds=float(rows.get("long_transaction_seconds", 60)),
                batch_target_seconds=float(rows.get("batch_target_seconds", 0.5)),
                verify_segments=int(rows.get("verify_segments", 16)),
                index_workers=int(rows.get("index_workers", cls.index_workers)),
                replay_batch=int(rows.get("replay_batch", cls.replay_batch)),
                switch_below=int(rows.get("switch_below", cls.switch_below)))
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s
