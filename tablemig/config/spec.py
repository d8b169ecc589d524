"""What a DBA declares for one table: the input of planning."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from ..errors import InputError
from ..pg.names import QualifiedName
from .settings import BATCH_SIZE, WORKERS

ARCHIVE_MODES = ("rename", "copy")
# what happens to the rows of a table whose foreign key references the migrated table (a
# child): see docs/families.md
CHILD_POLICIES = ("refuse", "keep", "follow")


@dataclass(frozen=True)
class TableSpec:
    """One table of a plan.

    `retention` is the fraction of rows (by `date_column`) kept live; `cutoff` an explicit
    timestamp instead. Names default to `<table>_new` and `<table>_archive_<YYYYMMDD>`.
    `children`: the policy for each table whose foreign key references this one, by name
    (`{"public.order_items": "keep"}`); a child not named is refused when rows of it
    reference rows to be archived (docs/families.md).
    """

    table: str
    date_column: str
    retention: float | None = None
    cutoff: str | None = None
    new_table: str | None = None
    archive_table: str | None = None
    archive_mode: str = "rename"
    batch_size: int = BATCH_SIZE  # rows per unit of bulk work (a load chunk holds about this many)
    key: tuple[str, ...] | None = None
    workers: int = WORKERS
    extra: dict[str, str] = field(default_factory=dict)
    children: dict[str, str] = field(default_factory=dict)
    # postponed cut-over: "release" (the swap waits for `tablemig release`) or an ISO 8601
    # timestamp (it waits until then, or a release); None swaps as soon as verified
    hold_swap: str | None = None

    def __post_init__(self) -> None:
        if (self.retention is None) == (self.cutoff is None):
            raise InputError(f"table {self.table}: give exactly one of retention or cutoff",
                             "e.g. retention=0.1 (keep the newest 10 %) or cutoff='2024-01-01'")
        if self.retention is not None and not 0 < float(self.retention) < 1:
            raise InputError(f"retention {self.retention} for {self.table} is out of range",
                             "give a fraction strictly between 0 and 1, e.g. 0.1 keeps 10 %")
        if self.archive_mode not in ARCHIVE_MODES:
            raise InputError(f"archive mode {self.archive_mode!r} is unknown",
                             f"use one of {', '.join(ARCHIVE_MODES)}")
        if self.batch_size < 1:
            raise InputError(f"batch size {self.batch_size} must be positive", f"e.g. {BATCH_SIZE}")
        if self.workers < 1:
            raise InputError(f"workers {self.workers} must be at least 1", "e.g. 1 or 2")
        if not self.date_column or "\x00" in self.date_column:
            raise InputError("date column is empty", "name the column that dates each row")
        _ = self.qualified  # parse now: bad names fail before anything connects
        _ = self.child_policies
        _ = self.hold_deadline

    @property
    def hold_deadline(self) -> dt.datetime | None:
        """The postponed cut-over's deadline (None: none, or only `tablemig release`)."""
        if self.hold_swap is None or self.hold_swap == "release":
            return None
        try:
            when = dt.datetime.fromisoformat(self.hold_swap)
        except ValueError:
            raise InputError(f"table {self.table}: hold_swap {self.hold_swap!r} is neither 'release' nor a timestamp",
                             "give hold_swap='release' (wait for `tablemig release`) or an ISO 8601 timestamp "
                             "such as '2026-12-06T02:00+00:00' (swap then, or on an earlier release)") from None
        return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)

    @property
    def child_policies(self) -> dict[QualifiedName, str]:
        """`children` by parsed name; every policy checked (InputError)."""
        out: dict[QualifiedName, str] = {}
        for name, policy in self.children.items():
            child = QualifiedName.parse(name)
            if policy not in CHILD_POLICIES:
                raise InputError(f"table {self.table}: child policy {policy!r} for {name} is unknown",
                                 f"use one of {', '.join(CHILD_POLICIES)} (docs/families.md)")
            if child in out:
                raise InputError(f"table {self.table}: child {name} is named twice in children",
                                 "name each child table once")
            out[child] = policy
        return out

    def child_policy(self, child: QualifiedName) -> str:
        """The policy for one child table ("refuse" when the plan does not name it)."""
        return self.child_policies.get(child, "refuse")

    @property
    def qualified(self) -> QualifiedName:
        return QualifiedName.parse(self.table)
