"""Rerunning a plan on a table whose migration is under way: what is already done and what
remains, by the state recorded in `table_migration.migration_state`.

Steps that change something skip what is done and say so in their evidence
(`resumed: already <state>`); read-only steps run as usual, against the tables that hold
the rows in that state (after the swap the live table is the new one and the original is
the archive).
"""

from __future__ import annotations

AFTER_SWAP = ("swapped", "pruned")

# what a run with --execute does, in order, and how much of it each state says is done
_WORK = ["create the new table and the capture trigger",
         "load the kept rows (a resumed load copies only the chunks not done yet)",
         "build the key and the indexes of the new table",
         "replay the logged changes, switch to direct capture and verify the checksums",
         "swap the tables",
         "validate the re-pointed foreign keys and run the checks after the swap"]
_DONE = {"capturing": 1, "backfilling": 1, "indexed": 3, "verified": 4, "swapped": 5, "pruned": 5}


def remaining(state: str | None) -> list[str]:
    """The work a run with --execute still does for a table in `state` (None: not started)."""
    return _WORK[_DONE.get(state or "", 0):]


def note(state: str) -> str:
    """The evidence of a step that skips work an earlier run did."""
    return f"resumed: already {state}"
