"""The cleanup step, after recorded business approval: drop what only served the migration
(the kept original in archive mode copy) and the PRE-2.1 dumps of the table. The archive
stays: it is the history."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .context import RunContext
from .structure import drop_table_sql


def run(ctx: RunContext, approved_by: str) -> list[str]:
    """Clean up (see the module docstring); returns what was dropped or removed."""
    if not approved_by.strip():
        raise InputError("cleanup needs a recorded approval", "pass --approved-by NAME")
    m = ctx.require("pruned", "cleaned")
    ex = ctx.ex
    dropped = []
    with ex.transaction():
        backup = m.objects.backup
        if m.archive_mode == "copy" and backup is not None:
            ex.run(drop_table_sql(backup))
            dropped.append(backup)
    if dropped:
        for sub in ctx.subscribers:
            sub.drop(dropped)
    with ex.transaction():
        backups = [r[0] for r in ex.read(
            "SELECT DISTINCT details->>'file' FROM table_migration.migration_log"
            " WHERE table_name = %s AND operation = 'backup'", (ctx.table,)).fetchall() if r[0]]
        removed = [] if ctx.planning else _remove_backups(backups)
        ctx.store.update(state="cleaned")
        ctx.store.log("cleanup", "done", details={"approved_by": approved_by, "dropped": [str(d) for d in dropped],
                                                  "backups_removed": removed})
    return [str(d) for d in dropped] + removed


def _remove_backups(files: list[str]) -> list[str]:
    """The PRE-2.1 dumps of this table (and their checksum files), where they are local."""
    removed = []
    for f in files:
        p = Path(f)
        if p.exists():
            p.unlink()
            removed.append(str(p))
            if not list(p.parent.glob("*.dump")):  # the last dump of that backup: its manifests too
                for extra in (p.parent / "SHA256SUMS", p.parent / "checksums.json"):
                    extra.unlink(missing_ok=True)
    return removed
