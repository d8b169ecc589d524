"""A migration plan, declared at the top of a plan module, and the decorators of what a DBA
adds to the checklist's items.

    PLAN = PlanConfig(
        name="orders_migration",
        tables=[TableConfig("public.orders", date_column="created_date", retention=0.10)],
        ...
    )

    @after("EX-4.1")                      # optional: a check of your own after an item
    def no_order_lost(ctx: StepContext) -> None: ...

The pytest plugin runs every checklist item for such a module (`tablemig.plugin.collection`).
The long form, one `@step(ID)` test function per item the module runs, is still accepted.
The decorators only record; the plugin checks their item ids when it collects the module.
See docs/plans.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import InputError
from ..pg.query_timeout import parse_timeout
from .settings import Fixed
from .spec import TableSpec

F = TypeVar("F", bound=Callable[..., Any])
# a DBA's function: called with the item's `tablemig.checklist.context.StepContext`
Check = Callable[[Any], None]
C = TypeVar("C", bound=Check)

# attributes the decorators set on a function, read by the plugin
ITEM = "tablemig_item"  # long form: the checklist item the test function carries out
ADDITIONS = "tablemig_additions"  # the function's @after / @replace, as Addition objects


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
    # on the embedded sandbox only: demo orders to create before the plan runs (with
    # order_items and order_returns, tablemig.sandbox.demo_data)
    demo_rows: int = 0
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
    # the applications that use the tables, as the DBA knows them (PRE-1.3c lists them next
    # to the sessions connected and the statements pg_stat_statements recorded)
    applications: list[str] = field(default_factory=list)
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
    # `--rehearse`: the schema to load (plain SQL or a pg_dump archive; relative to the plan
    # module) instead of dumping the active site's
    rehearsal_schema: str | None = None

    def __post_init__(self) -> None:
        if not self.tables:
            raise InputError(f"plan {self.name} lists no tables", "add at least one TableConfig")
        names = [t.spec().qualified for t in self.tables]
        if len(set(names)) != len(names):
            raise InputError(f"plan {self.name} lists a table twice", "list each table once")
        self.fixed()  # the pacing values, checked as migration_config's and the command line's are
        object.__setattr__(self, "validation_timeout", parse_timeout(self.validation_timeout))

    def fixed(self) -> Fixed:
        """The settings this plan fixes for its run (the others follow migration_config)."""
        return Fixed({"nice_ratio": self.nice_ratio, "app_write_share": self.app_write_share},
                     source=f"plan {self.name}:")


@dataclass(frozen=True)
class Addition:
    """What a DBA adds to one checklist item: `after` (a check run after the item's step, in
    the same test) or `replace` (a function that carries out the item instead of the step)."""

    kind: str  # "after" or "replace"
    item_id: str
    function: Check

    @property
    def where(self) -> str:
        """`no_order_lost (orders_migration.py:31)`: for messages and the evidence."""
        code = getattr(self.function, "__code__", None)
        name = getattr(self.function, "__qualname__", repr(self.function))
        return f"{name} ({Path(code.co_filename).name}:{code.co_firstlineno})" if code else name


def after(item_id: str) -> Callable[[C], C]:
    """Run the decorated function after the checklist item `item_id` (per table for a
    per-table item), with the item's `ctx`. A failed assertion fails the item, which blocks
    the later steps like any failure; `ctx.evidence(...)` adds to the item's evidence."""
    return _addition("after", item_id)


def replace(item_id: str) -> Callable[[C], C]:
    """Carry out the checklist item `item_id` with the decorated function instead of the
    library's step (`tablemig.checklist.registry.STEPS[item_id]`, which it may still call)."""
    return _addition("replace", item_id)


def _addition(kind: str, item_id: str) -> Callable[[C], C]:
    def wrap(fn: C) -> C:
        _refuse_hiding(fn)
        setattr(fn, ADDITIONS, [*getattr(fn, ADDITIONS, []), Addition(kind, item_id, fn)])
        setattr(fn, "__test__", False)  # noqa: B010 - never collected as a test of its own, whatever its name
        return fn

    return wrap


def _refuse_hiding(fn: Check) -> None:
    """A second decorated function of the same name would silently hide the first one."""
    name = getattr(fn, "__name__", "")
    earlier = getattr(fn, "__globals__", {}).get(name)
    if earlier is None or earlier is fn or not getattr(earlier, ADDITIONS, None):
        return
    code, earlier_code = getattr(fn, "__code__", None), getattr(earlier, "__code__", None)
    if code and earlier_code and (code.co_filename, code.co_firstlineno) == (
            earlier_code.co_filename, earlier_code.co_firstlineno):
        return  # the same definition, run again (the module reloaded)
    raise InputError(f"{getattr(fn, '__module__', '')} has two functions named {name} with @after or @replace: "
                     "the second would hide the first", "give each function its own name")


def step(item_id: str) -> Callable[[F], F]:
    """Long form: mark a test function as the checklist item `item_id`. A module with such
    functions runs only those items (see docs/plans.md)."""

    def wrap(fn: F) -> F:
        setattr(fn, ITEM, item_id)
        return fn

    return wrap
