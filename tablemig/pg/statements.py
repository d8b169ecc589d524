"""How the PostgreSQL helpers run statements: through a `Statements` object.

A migration runs every statement through its executor (`tablemig.lifecycle.executor`),
which records each one and, in a dry run, runs the reads a plan needs and only records the
changes. The helpers of this package (catalog inspection, locking, checksums, the schema)
take any `Statements`; a plain connection is wrapped in `Direct`, which runs everything as
given and records nothing (checks of the checklist, the sandbox, tests).

Two kinds of statement:

* `run`: a change, or anything else a dry run must not do (DDL, DML, a lock, a session
  setting). `planned` is the result a dry run assumes (for `RETURNING` or a function's
  value).
* `read`: a read. A dry run runs it, unless it reads objects only the dry run "created"
  (`reads` names them; see `Statements.created`): then it is recorded, not run, and
  returns `planned` — what a quiet database would answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import psycopg
from psycopg import sql

Query = sql.Composable | str
Row = tuple[Any, ...]
Rows = list[Row]
Planned = Rows | Callable[[], Rows] | None


@dataclass
class Result:
    """The rows and row count of one statement (of the last of several sent as one)."""

    rows: Rows = field(default_factory=list)
    rowcount: int = -1
    columns: list[str] = field(default_factory=list)
    # every result set, for a text of several statements (the last is `rows`)
    sets: list[tuple[list[str], Rows]] = field(default_factory=list)

    def fetchone(self) -> Row | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> Rows:
        return self.rows

    def scalar(self) -> Any:
        """The first value of the first row (None without rows)."""
        return self.rows[0][0] if self.rows and self.rows[0] else None

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]

    def result_set(self, first_column: str) -> list[dict[str, Any]]:
        """The rows (as dicts) of the result set whose first column is `first_column`."""
        for columns, rows in self.sets:
            if columns[:1] == [first_column]:
                return [dict(zip(columns, r, strict=True)) for r in rows]
        raise LookupError(first_column)

    @classmethod
    def of(cls, cur: psycopg.Cursor[Any]) -> Result:
        """Everything `cur` returned (every result set of a text of several statements)."""
        sets: list[tuple[list[str], Rows]] = []
        rowcount = cur.rowcount
        while True:
            if cur.description is not None:
                sets.append(([d.name for d in cur.description],
                             [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in cur.fetchall()]))
            rowcount = cur.rowcount
            if not cur.nextset():
                break
        columns, rows = sets[-1] if sets else ([], [])
        return cls(rows, rowcount, columns, sets)


def planned_rows(planned: Planned) -> Rows:
    if planned is None:
        return []
    return planned() if callable(planned) else planned


@runtime_checkable
class Statements(Protocol):
    """Runs statements on one connection (see the module docstring)."""

    conn: psycopg.Connection[Any]

    @property
    def planning(self) -> bool:
        """A dry run: changes are recorded, not run."""
        ...

    def run(self, query: Query, params: Any = None, *, planned: Planned = None) -> Result: ...

    def read(self, query: Query, params: Any = None, *, reads: Sequence[str] = (),
             planned: Planned = None) -> Result: ...

    def transaction(self, *, force_rollback: bool = False,
                    isolation: str | None = None) -> AbstractContextManager[None]:
        """A transaction (a savepoint inside one); `isolation`, e.g. "REPEATABLE READ"."""
        ...

    def batched(self) -> AbstractContextManager[None]: ...

    def pipeline(self) -> AbstractContextManager[None]: ...

    def created(self, *names: str) -> bool:
        """Does a dry run hold any of `names` (objects, or `schema.` prefixes) as created
        by itself? Always False when not planning."""
        ...

    def creates(self, *names: str) -> None:
        """A dry run records that it would create `names` (see `created`)."""
        ...

    def drops(self, *names: str) -> None:
        """A dry run records that it would drop `names` (see `created`)."""
        ...


class Direct:
    """`Statements` on a connection: everything runs as given, nothing is recorded."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    @property
    def planning(self) -> bool:
        return False

    def _execute(self, query: Query, params: Any) -> Result:
        # with parameters, the composed statement itself: a "%" in a name stays one
        # (tablemig.pg.sqltext); without, its text (there "%" means "%")
        if params is None and isinstance(query, sql.Composable):
            query = query.as_string(self.conn)
        return Result.of(self.conn.execute(query, params))  # type: ignore[arg-type]

    def run(self, query: Query, params: Any = None, *, planned: Planned = None) -> Result:
        return self._execute(query, params)

    def read(self, query: Query, params: Any = None, *, reads: Sequence[str] = (),
             planned: Planned = None) -> Result:
        return self._execute(query, params)

    def transaction(self, *, force_rollback: bool = False,
                    isolation: str | None = None) -> AbstractContextManager[None]:
        return _transaction(self.conn, force_rollback, isolation)

    @contextmanager
    def batched(self) -> Iterator[None]:
        yield

    @contextmanager
    def pipeline(self) -> Iterator[None]:
        with self.conn.pipeline():
            yield

    def created(self, *names: str) -> bool:
        return False

    def creates(self, *names: str) -> None:
        return None

    def drops(self, *names: str) -> None:
        return None


@contextmanager
def _transaction(conn: psycopg.Connection[Any], force_rollback: bool, isolation: str | None) -> Iterator[None]:
    with conn.transaction(force_rollback=force_rollback):
        if isolation:
            conn.execute(sql.SQL("SET TRANSACTION ISOLATION LEVEL {}").format(sql.SQL(isolation)))
        yield


def statements(target: psycopg.Connection[Any] | Statements) -> Statements:
    """`target` as `Statements` (a connection is wrapped in `Direct`)."""
    if isinstance(target, psycopg.Connection):
        return Direct(target)
    return target

