"""A migration plan, declared at the top of a plan module, and the `step` decorator.

    PLAN = PlanConfig(
        name="orders_migration",
        tables=[TableConfig("public.orders", date_column="created_date", retention=0.10)],
        ...
    )

    @step("EX-1.1")
    def test_deploy_framework(ctx: StepContext) -> None: ...

Each test function is one checklist item (its id and text come from `checklist.py`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from ..checklist.items import ITEMS
from ..errors import InputError
from ..pg.query_timeout import parse_timeout
from .settings import Fixed
from .spec import TableSpec

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class TableConfig(TableSpec):
    """One table of a plan: a `TableSpec` (validated when the plan module is imported)."""

    def spec(self) -> TableSpec:
        return self


@dataclass(frozen=True)
class Contact:
    role: str
    name: str
    phone: str = ""
    email: str = ""
    escalation: str = ""


@dataclass(frozen=True)
class Attestation:
    by: str
    at: str = ""  # ISO timestamp; filled with "now" when given on the command line
    note: str = ""


@dataclass(frozen=True)
class Window:
    """Maintenance window, in the plan's time zone (UTC unless `tz` says otherwise)."""

    start: str  # ISO timestamp
    end: str

    def bounds(self) -> tuple[dt.datetime, dt.datetime]:
        s, e = dt.datetime.fromisoformat(self.start), dt.datetime.fromisoformat(self.end)
        if s.tzinfo is None:
            s = s.replace(tzinfo=dt.UTC)
        if e.tzinfo is None:
            e = e.replace(tzinfo=dt.UTC)
        if e <= s:
            raise InputError(f"maintenance window ends ({self.end}) before it starts ({self.start})",
                             "give start < end as ISO timestamps")
        return s, e


@dataclass(frozen=True)
class PlanConfig:
    name: str
    tables: list[TableConfig]
    demo_rows: int = 0  # on the embedded sandbox only: demo orders to create before the plan runs
    window: Window | None = None
    max_replication_lag: str = "16MB"
    # pace the bulk work (tablemig.lifecycle.pacing); None: migration_config's nice_ratio, re-read live
    nice_ratio: float | None = None
    # the write guard (tablemig.lifecycle.pacing): the share of the application's write rate to keep;
    # None: migration_config's app_write_share (0.9), re-read live; 0: off
    app_write_share: float | None = None
    thresholds: dict[str, str] = field(default_factory=dict)
    notifiers: list[dict[str, str]] = field(default_factory=list)
    contacts: list[Contact] = field(default_factory=list)
    attestations: dict[str, Attestation] = field(default_factory=dict)
    require_attestations: bool = False
    # No --passive-dsn at all: run single-site (replication items "not applicable"). False
    # makes a missing passive site an error.
    allow_single_site: bool = True
    # A passive site that is configured but unreachable fails the pre-checks, unless this says
    # the migration may go ahead without it (the items that need it are "not applicable").
    allow_passive_down: bool = False
    backup_dir: str = "backups"
    declared_free_bytes: int | None = None  # free space of a remote server's data directory
    # statement_timeout of every query the steps check with (counts, checksums, the two sites'
    # comparison); a query cancelled by it fails its step and names itself. '0': no limit
    validation_timeout: str = "30min"

    def __post_init__(self) -> None:
        if not self.tables:
            raise InputError(f"plan {self.name} lists no tables", "add at least one TableConfig")
        names = [t.spec().qualified for t in self.tables]
        if len(set(names)) != len(names):
            raise InputError(f"plan {self.name} lists a table twice", "list each table once")
        self.fixed()  # the pacing values, checked as migration_config's and the command line's are
        object.__setattr__(self, "validation_timeout", parse_timeout(self.validation_timeout))
        for item in self.attestations:
            if item not in ITEMS:
                raise InputError(f"attestation for unknown checklist item {item!r}",
                                 "use an id from the checklist, e.g. PRE-3.2")


    def fixed(self) -> Fixed:
        """The settings this plan fixes for its run (the others follow migration_config)."""
        return Fixed({"nice_ratio": self.nice_ratio, "app_write_share": self.app_write_share},
                     source=f"plan {self.name}:")


def step(item_id: str) -> Callable[[F], F]:
    """Mark a test function as the checklist item `item_id`."""
    if item_id not in ITEMS:
        raise InputError(f"unknown checklist item {item_id!r}", "use an id from tablemig.checklist.items")

    def wrap(fn: F) -> F:
        marked = pytest.mark.tablemig_step(item_id)(fn)
        return marked  # type: ignore[no-any-return]

    return wrap
