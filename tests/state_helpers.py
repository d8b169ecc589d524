"""The migration's state row as a test reads it: present, or the test fails saying so."""

from __future__ import annotations

from tablemig.lifecycle.driver import Migration
from tablemig.lifecycle.state import State


def stored(mig: Migration) -> State:
    """The table's state row as the database holds it; fails the test when there is none."""
    return reached(mig.state())


def reached(m: State | None) -> State:
    """`m`, the state a run reached or read; fails the test when there is none."""
    assert m is not None, "the table has no migration state row"
    return m
