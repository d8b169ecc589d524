"""After the swap: prune, rollback from any state (including the restore after prune), and
cleanup. A mixin of `tablemig.lifecycle.driver.Migration`, which provides the connection, the state
row and the step plumbing used here."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from ..config.settings import Settings
from ..errors import InputError, TablemigError
from ..pg.locking import with_lock_retries
from ..pg.names import QualifiedName
from ..pg.sqltext import Fragment
from . import state
from .backfill import CopyJob, wait_while_paused
from .batch_copy import BatchCopier
from .failures import records_failure
from .families import disarm_sql, family_log_name, references
from .planner import TablePlan, plan_after_swap
from .step_host import StepHost
from .structure import (
    change_log_name,
    deferrable_constraints,
    deferrable_key,
    drop_trigger_sql,
    sync_function_sql,
    trigger_sql,
    truncate_guard_sql,
)
from .swap import (
    CAPTURE_TRIGGER,
    GUARD_TRIGGER,
    MIRROR_TRIGGER,
    PRUNE_TRIGGER,
    SwapResult,
    swap_back,
    validate_foreign_keys,
)


class AfterSwap(StepHost):
    """Prune, rollback and cleanup steps of a migration."""

    swap_result: SwapResult | None

    @records_failure("prune")
    def prune(self, batch_size: int | None = None) -> int:
        """Delete from the archive the rows that live in T; from here T and A are disjoint.

        The mirror trigger is first replaced, in one transaction, by a prune guard (deletes
        reach the archive; keys that exist in the archive are refused), the copies are
        deleted in batches, then the guard is dropped and the state becomes `pruned`.
        Resumable; a rollback during or after it goes through `rollback()`'s restore path."""
        t0 = self._begin("prune")
        m = self._require("swapped", "pruned")
        if m["state"] == "pruned":
            return 0
        s = self._settings()
        self.pacer.start(self.conn, s)
        t = QualifiedName(m["schema_name"], m["original_name"])
        a = state.old_table(m)
        plan = self._plan or self.plan_for_state(m)
        info = plan.info
        mirror = QualifiedName("table_migration", f"mirror_{m['table_oid']}")
        guard = QualifiedName("table_migration", f"prune_{m['table_oid']}")
        copy_mode = m["archive_mode"] == "copy"
        if not (m["checkpoint"] or {}).get("prune_started") and not copy_mode:
            # the archive's foreign keys to itself: archived rows may reference rows that are
            # live now, whose copies the prune deletes; dropped (rollback adds them back)
            self_fks = _self_references(self.conn, a)

            def start(_locked_at: float) -> dict[str, Any]:
                for name, _ in self_fks:
                    self.ex.run(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(a.ident(), sql.Identifier(name)))
                self.ex.run(drop_trigger_sql(t, MIRROR_TRIGGER))
                self.ex.run(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(mirror.ident()))
                self.ex.run(sync_function_sql(info, guard, "prune", a, search_path=plan.search_path))
                for stmt in trigger_sql(t, PRUNE_TRIGGER, guard):
                    self.ex.run(stmt)
                self.conn.execute("UPDATE table_migration.migration_state SET checkpoint = checkpoint ||"
                                  " jsonb_build_object('prune_started', true, 'archive_self_fks', %s::jsonb)"
                                  " WHERE table_name = %s", (_json([list(f) for f in self_fks]), self.table))
                state.log(self.conn, self.table, "prune", "started")
                return {}
            with_lock_retries(self.conn, f"prune of {t}", [t], start, mode="SHARE ROW EXCLUSIVE",
                              **s.lock_options())
            m = self._state() or m
        deleted = 0 if copy_mode else self._delete_archived_copies(m, t, a, batch_size or m["batch_size"])

        def finish(_locked_at: float) -> dict[str, Any]:
            for trg in (PRUNE_TRIGGER, MIRROR_TRIGGER, GUARD_TRIGGER):
                self.ex.run(drop_trigger_sql(t, trg))
            for fn in (guard, mirror):
                self.ex.run(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(fn.ident()))
            state.update(self.conn, self.table, state="pruned")
            self.conn.execute(sql.SQL(
                "UPDATE table_migration.migration_state SET checkpoint = checkpoint || jsonb_build_object("
                "'archive_rows_at_prune', (SELECT count(*) FROM {})) WHERE table_name = %s").format(a.ident()),
                (self.table,))
            state.log(self.conn, self.table, "prune", "done", rows=deleted)
            return {}
        with_lock_retries(self.conn, f"prune of {t}", [t], finish, mode="SHARE ROW EXCLUSIVE",
                          **s.lock_options())
        self._timed("prune", t0)
        return deleted

    def _delete_archived_copies(self, m: dict[str, Any], t: QualifiedName, a: QualifiedName,
                                batch: int) -> int:
        key = [sql.Identifier(k) for k in m["key_columns"]]
        klist = sql.SQL(", ").join(key)
        texts = sql.SQL(", ").join(sql.SQL("src.{}::text").format(k) for k in key)
        src_order = sql.SQL(", ").join(sql.SQL("src.{}").format(k) for k in key)
        match = sql.SQL(" AND ").join(sql.SQL("a.{0} = b.{0}").format(k) for k in key)
        last = (m["checkpoint"] or {}).get("prune_last")
        total = 0
        typed = sql.SQL(", ").join(sql.SQL("%s::{}").format(Fragment(self._type_of(t, k)))
                                   for k in m["key_columns"])
        above = sql.SQL("({}) > ({})").format(klist, typed)
        upto = sql.SQL("({}) <= ({})").format(klist, typed)
        while True:
            wait_while_paused(self.conn, self.table)
            if self.throttle:
                self.throttle()
            self.pacer(self.conn)
            with self.conn.transaction():
                bound = self.conn.execute(sql.SQL(  # ORDER BY the typed columns, not the ::text outputs
                    "SELECT {} FROM {} AS src WHERE {} ORDER BY {} OFFSET %s LIMIT 1").format(
                    texts, t.ident(), above if last else sql.SQL("true"), src_order),
                    [*(last or []), batch - 1]).fetchone()
                upper = [str(v) for v in bound] if bound else None
                conds = ([above] if last else []) + ([upto] if upper else [])
                where = sql.SQL(" AND ").join(conds) if conds else sql.SQL("true")
                cur = self.conn.execute(sql.SQL(
                    "DELETE FROM {a} a USING (SELECT {k} FROM {t} WHERE {w}) b WHERE {m}").format(
                    a=a.ident(), k=klist, t=t.ident(), w=where, m=match),
                    [*(last or []), *(upper or [])])
                total += max(cur.rowcount, 0)
                last = upper or last
                self.conn.execute(
                    "UPDATE table_migration.migration_state SET checkpoint = checkpoint ||"
                    " jsonb_build_object('prune_last', %s::jsonb, 'prune_done', %s),"
                    " updated_at = now() WHERE table_name = %s",
                    (_json(last), bound is None, self.table))
            if bound is None:
                break
        return total

    def _type_of(self, table: QualifiedName, column: str) -> str:
        row = self.conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attname = %s", (str(table), column)).fetchone()
        assert row is not None
        return str(row[0])

    @records_failure("rollback")
    def rollback(self) -> str:
        """Undo the migration from whatever state it is in; returns what was done."""
        m = self._state()
        if not m or m["state"] in ("rolled_back",):
            return "nothing to roll back"
        if m["state"] == "cleaned":
            raise InputError(f"{self.table} was cleaned up after approval; the original is gone",
                             "restore from the backup (RB-3 full rollback)")
        self._lock(int(m["table_oid"]))
        self.resolve_subscribers()
        m = self._state() or m
        s = self._settings()
        t = QualifiedName(m["schema_name"], m["original_name"])
        if m["state"] == "pruned" or (m["checkpoint"] or {}).get("prune_started"):
            self._unprune(m, s)
            m = self._state() or m
        if m["state"] == "swapped":
            for sub in self.subscribers:
                sub.barrier()
            self.swap_result = swap_back(self.ex, m, peers=self.subscribers, **s.swap_options())
            validate_foreign_keys(self.ex, self.swap_result.record.get("foreign_keys", []))
            return "swapped back"
        new = QualifiedName(m["schema_name"], m["new_name"])
        # an orphan check armed by a swap step that did not finish (tablemig.lifecycle.families)
        armed = self.conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                                  (str(family_log_name(int(m["table_oid"]))),)).fetchone()
        refs = references(self.conn, int(m["table_oid"])) if armed and armed[0] else []

        def drop(_locked_at: float) -> dict[str, Any]:
            for stmt in disarm_sql(refs, int(m["table_oid"])):
                self.ex.run(stmt)
            self.ex.run(drop_trigger_sql(t, CAPTURE_TRIGGER))
            self.ex.run(drop_trigger_sql(t, GUARD_TRIGGER))
            self.ex.run(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
                QualifiedName("table_migration", f"capture_{m['table_oid']}").ident()))
            self.ex.run(sql.SQL("DROP TABLE IF EXISTS {}").format(
                change_log_name(int(m["table_oid"])).ident()))
            self.ex.run(sql.SQL("DROP TABLE IF EXISTS {}").format(new.ident()))
            if m["archive_mode"] == "copy":
                self.ex.run(sql.SQL("DROP TABLE IF EXISTS {}").format(
                    QualifiedName(m["schema_name"], m["archive_name"]).ident()))
            state.advance(self.conn, self.table, "rollback", "capture removed", state="rolled_back")
            return {}

        children = sorted({r.child for r in refs if not r.self_ref})
        with_lock_retries(self.conn, f"rollback of {t}", [t, *children], drop, **s.lock_options())
        dropped = [new] + ([state.old_table(m)] if m["archive_mode"] == "copy" else [])
        for sub in self.subscribers:  # after the active site: no change for them is in flight
            sub.drop(dropped)
        return "capture removed, new table dropped"

    def _unprune(self, m: dict[str, Any], s: Settings) -> None:
        """After prune: finish the prune, refuse on key collisions, mirror again and copy
        T's rows back into A; A is then complete and the swap can be undone."""
        t = QualifiedName(m["schema_name"], m["original_name"])
        a = state.old_table(m)
        if m["archive_mode"] == "copy":
            raise TablemigError(
                f"{t} was pruned in archive mode copy: the original stopped following the live table",
                f"restore by hand: the original (complete up to the prune) is {a}; rows written since are "
                f"in {t}; or restore from the PRE-2.1 backup (RB-3)")
        if m["state"] != "pruned":
            self.prune()  # an interrupted prune is finished first: then A holds history only
        key = sql.SQL(", ").join(map(sql.Identifier, m["key_columns"]))
        clash = self.conn.execute(sql.SQL(
            "SELECT {k} FROM {t} JOIN {a} USING ({k}) LIMIT 10").format(
            k=key, t=t.ident(), a=a.ident())).fetchall() if m["archive_mode"] == "rename" else []
        if clash:
            raise TablemigError(
                f"cannot roll back {t}: keys written after the prune also exist in the archive "
                f"{a} (e.g. {clash[:3]}); the original's key cannot hold both",
                "decide which row wins for each such key, delete the other, then rerun rollback")
        plan = self._plan or self.plan_for_state(m)
        info = plan.info
        fn = QualifiedName("table_migration", f"mirror_{m['table_oid']}")
        # the archive's deferrable constraints under the names the swap gave them
        archived = {orig: arch for orig, arch, _, _ in (m["swap_record"] or {}).get("indexes", [])}
        defer = [QualifiedName(a.schema, archived[i.name]) for i in deferrable_constraints(info)
                 if i.name in archived]

        def mirror(_locked_at: float) -> dict[str, Any]:
            self.ex.run(sync_function_sql(info, fn, "mirror", a, search_path=plan.search_path, defer=defer))
            for stmt in trigger_sql(t, MIRROR_TRIGGER, fn):
                self.ex.run(stmt)
            self.ex.run(truncate_guard_sql(t))
            return {}

        with_lock_retries(self.conn, f"restore mirror on {t}", [t], mirror, mode="SHARE ROW EXCLUSIVE",
                          **s.lock_options())
        if m["archive_mode"] == "rename":
            types = {c.name: c.type for c in info.columns}
            # no verify pass follows this copy, so it locks the rows it reads: a writer
            # changing one of them waits for the batch, then the mirror trigger sees the copy
            job = CopyJob(t, a, plan.columns, list(m["key_columns"]),
                          [types[k] for k in m["key_columns"]], None, "", "", plan.overriding,
                          list(m["key_columns"]), lock_rows=True, no_arbiter=deferrable_key(info))
            with self.conn.transaction():
                self.conn.execute(
                    "UPDATE table_migration.migration_state SET checkpoint = checkpoint - 'unprune'"
                    " WHERE table_name = %s", (self.table,))
            BatchCopier(self.dsn, job, self.table, "unprune", batch_size=m["batch_size"],
                        throttle=self.throttle, progress=self.progress, pace=self.pacer).run(self.conn, {})
        # the archive's foreign keys to itself, dropped by the prune: complete again, it
        # satisfies them (added NOT VALID, then validated without blocking writes)
        fks = [(n, d) for n, d in ((self._state() or m)["checkpoint"] or {}).get("archive_self_fks", [])
               if (n, d) not in _self_references(self.conn, a)]

        def restore(_locked_at: float) -> dict[str, Any]:
            for name, definition in fks:
                self.ex.run(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
                    a.ident(), sql.Identifier(name), Fragment(definition.removesuffix(" NOT VALID"))))
            state.update(self.conn, self.table, state="swapped")
            self.conn.execute("UPDATE table_migration.migration_state SET checkpoint = checkpoint"
                              " - 'prune_started' - 'prune_last' - 'prune_done' - 'archive_self_fks'"
                              " WHERE table_name = %s", (self.table,))
            state.log(self.conn, self.table, "rollback", "archive made complete again")
            return {}

        with_lock_retries(self.conn, f"restore of {a}", [a], restore, mode="SHARE ROW EXCLUSIVE",
                          **s.lock_options())
        for name, definition in fks:
            if not definition.endswith(" NOT VALID"):
                self.ex.run(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(a.ident(), sql.Identifier(name)))

    def plan_for_state(self, m: dict[str, Any]) -> TablePlan:
        """A plan for the live table as it is after the swap, without counting rows."""
        return plan_after_swap(self.conn, self.spec, m, count=False)

    @records_failure("cleanup")
    def cleanup(self, approved_by: str) -> list[str]:
        """After recorded business approval: drop what only served the migration (the
        kept original in copy mode). The archive stays: it is the history."""
        if not approved_by.strip():
            raise InputError("cleanup needs a recorded approval", "pass --approved-by NAME")
        m = self._require("pruned", "cleaned")
        dropped: list[str] = []
        with self.conn.transaction():
            if m["archive_mode"] == "copy" and m["backup_name"]:
                b = QualifiedName(m["schema_name"], m["backup_name"])
                self.ex.run(sql.SQL("DROP TABLE IF EXISTS {}").format(b.ident()))
                dropped.append(str(b))
        if dropped:
            for sub in self.subscribers:
                sub.drop([QualifiedName.parse(d) for d in dropped])
        with self.conn.transaction():
            backups = [r[0] for r in self.conn.execute(
                "SELECT DISTINCT details->>'file' FROM table_migration.migration_log"
                " WHERE table_name = %s AND operation = 'backup'", (self.table,)).fetchall() if r[0]]
            removed = _remove_backups(backups)
            state.update(self.conn, self.table, state="cleaned")
            state.log(self.conn, self.table, "cleanup", "done",
                      details={"approved_by": approved_by, "dropped": dropped, "backups_removed": removed})
        return dropped + removed


def _self_references(conn: Any, table: QualifiedName) -> list[tuple[str, str]]:
    """(name, definition) of `table`'s foreign keys to itself, the definitions
    schema-qualified (read with an empty search_path)."""
    with conn.transaction():
        conn.execute("SET LOCAL search_path = ''")
        rows = conn.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                            " WHERE conrelid = %s::regclass AND contype = 'f' AND confrelid = conrelid"
                            " ORDER BY conname", (str(table),)).fetchall()
    return [(r[0], r[1]) for r in rows]


def _remove_backups(files: list[str]) -> list[str]:
    """The PRE-2.1 dumps of this table (and their checksum files), where they are local."""
    from pathlib import Path

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


def _json(value: Any) -> str:
    import json

    return json.dumps(value)
