"""Logical replication: a subscriber's copy of the table follows the migration.

DDL does not travel through logical replication, and the subscriber's apply worker finds
its target table by the *name* the publisher sends. So tablemig does on the subscriber
what it does on the active site, in an order that never lets a change reach a table that
does not exist there or land on the wrong one.

Attach (`attach`, after N's key and indexes are built and before the change-log replay;
idempotent, rerun after any crash). Before that N has no key, and a table without replica
identity cannot publish the replay's updates and deletes; nothing else writes N then (the
capture trigger only logs keys), so nothing is published too early.
  1. the subscriber gets the `table_migration` schema and the new table N' (same structure
     as its own T', with the key and every secondary index, under the temporary names the
     active site uses, so the swap renames them the same way);
  2. on the active site N is added to every publication that lists T (explicit table
     lists only; publications FOR ALL TABLES / TABLES IN SCHEMA, row filters and column
     lists are refused: their effect on N cannot be mirrored exactly);
  3. `ALTER SUBSCRIPTION ... REFRESH PUBLICATION WITH (copy_data = true)`: deliberate. N
     already holds the bulk-loaded rows, which no change stream carries, and the apply
     worker ignores changes to a table the subscription does not know yet; the table sync
     copies N as it is and then streams from its own consistent point, so nothing is missed
     and nothing doubles (N' is empty when the sync starts). tablemig waits until N' is in
     state `r` (ready); the replay's writes then reach N' as ordinary changes.
  Replica identity: N gets T's (the key by default, FULL copied); a table without one is
  refused, because its updates and deletes cannot be published.
  Refusals are checked (`link`) before the capture changes anything.

Swap (`prepare_swap`/`finish_swap`, called by `tablemig.lifecycle.swap`):
  1. the active site takes its locks (no more writes to T or N can commit) and does its
     renames, uncommitted;
  2. barrier: tablemig commits a tiny write of its own on the active site and waits until
     the subscriber's apply worker has received WAL past it. The apply worker handles the
     stream in order, so every change committed before the locks is then applied on the
     subscriber, to the tables under their old names;
  3. the subscriber makes the same exchange (T' -> archive name, N' -> T, index names,
     FKs, views, grants, triggers) in a transaction that it PREPAREs (two-phase commit):
     the renames are durable but invisible, and their locks are held;
  4. the active site commits; then the subscriber does COMMIT PREPARED (ROLLBACK PREPARED
     if the active site's commit failed). Changes committed after the swap carry the new
     names; the apply worker waits on the prepared transaction's locks and then resolves
     the names against the committed renames.
  A crash between 3 and 4 leaves the prepared transaction holding its locks: the
  subscriber applies nothing (rather than something to the wrong table) until the next
  tablemig run resolves it from the active site's state (`resolve`): swapped -> commit,
  otherwise -> rollback. `max_prepared_transactions` must be > 0 on the subscriber.

Rollback before the swap and cleanup drop the table on the active site first, then (after
a barrier, so no change for it is still in flight) on the subscriber.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..errors import InputError, TablemigError
from ..pg import autovacuum
from ..pg.catalog import TableInfo, inspect_table
from ..pg.connect import connect, redact
from ..pg.names import QualifiedName
from ..pg.replication import wait_for_apply
from ..pg.schema import install_schema
from ..pg.statements import Statements, statements
from . import follow_after
from .exchange import exchange, exchange_back, repointed, validate_foreign_keys
from .executor import Executor, Mode, Observed, Recorder
from .objects import temp_index_name
from .state import State
from .structure import (
    create_table_sql,
    drop_table_sql,
    index_properties_sql,
    index_sql,
    key_constraint_sql,
    secondary_indexes,
)


class BarrierTimeout(TablemigError):
    """The subscriber did not catch up in time."""


@dataclass(frozen=True)
class Link:
    """How the subscriber receives the table: its subscription and the publications."""

    subscription: str
    publications: list[str]
    slot: str


class Subscriber:
    """One logical subscriber of the active site (a `tablemig.lifecycle.swap.SwapPeer`)."""

    def __init__(self, dsn: str, publisher_dsn: str, *, mode: Mode = "execute", recorder: Recorder | None = None,
                 barrier_timeout_s: float = 30.0) -> None:
        self.dsn, self.publisher_dsn = dsn, publisher_dsn
        self.conn = connect(dsn, application_name="tablemig-subscriber")
        self.ex = Executor(self.conn, mode=mode, recorder=recorder or Recorder(), site="subscriber",
                           connection="subscriber")
        self.barrier_timeout_s = barrier_timeout_s
        self.name = redact(dsn)
        self._link: Link | None = None
        # the `follow` children's (child, new table, archive), parents first, set by the swap
        # step once their new tables are attached here (tablemig.lifecycle.follow)
        self.children: list[tuple[QualifiedName, QualifiedName, QualifiedName]] = []

    def close(self) -> None:
        self.conn.close()

    # -- discovery and refusals -----------------------------------------------------------
    def link(self, publisher: Statements | psycopg.Connection[Any], table: QualifiedName) -> Link:
        """The one subscription here that receives `table` from this publisher (the active
        site); refuses what tablemig cannot keep exact."""
        if self._link is not None:
            return self._link
        ex, pub = self.ex, statements(publisher)
        name, pubs, slot = _subscription(ex, pub, table)
        _check_two_phase(ex)
        listed = _listing_publications(pub, table, name, pubs)
        _check_replica_identity(pub, table)
        self._link = Link(name, sorted(listed), slot)
        self.name = f"subscription {name}"
        return self._link

    def check(self, pub: Statements | psycopg.Connection[Any], table: QualifiedName) -> dict[str, Any]:
        """Read-only: the link and the subscriber's state, for the dry run and evidence."""
        link = self.link(pub, table)
        # schema-qualified always (regclass::text leaves out a schema on the search path)
        states: dict[str, str] = dict(self.ex.read(
            "SELECT format('%%I.%%I', n.nspname, c.relname), r.srsubstate FROM pg_subscription_rel r"
            " JOIN pg_subscription s ON s.oid = r.srsubid JOIN pg_class c ON c.oid = r.srrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE s.subname = %s",
            (link.subscription,)).fetchall())
        return {"subscription": link.subscription, "publications": link.publications,
                "slot": link.slot, "table_states": states}

    # -- capture --------------------------------------------------------------------------
    def attach(self, pub: Executor, m: State) -> dict[str, Any]:
        """Steps 1-3 of the capture (module docstring); idempotent."""
        t = m.live
        link = self.link(pub, t)
        install_schema(self.ex)
        targets = m.new_tables()
        info = inspect_table(self.ex, t, list(m.key))
        for target, tag in targets:
            self._create_copy(info, target, tag)
        for target, _ in targets:
            self._publish(pub, link.publications, target)
        self._refresh([target for target, _ in targets])
        waited = self.wait_ready([t for t, _ in targets])
        self._control(m, "logical: new table created here, published, subscription refreshed (copy_data = true)")
        return {"subscription": link.subscription, "publications": link.publications,
                "tables": [str(t) for t, _ in targets], "ready_after_s": Observed("s", waited)}

    def attach_child(self, pub: Executor, child: QualifiedName, new: QualifiedName, without_fk: str) -> float:
        """The new table of a `follow` child (tablemig.lifecycle.follow), as `attach` does the
        table's: created here (without its key to the table: the swap adds it), published,
        the subscription refreshed; the child must come through the table's subscription.
        Returns the seconds waited for the table sync."""
        listed = self.child_publications(pub, child)
        self._create_copy(inspect_table(self.ex, child), new, "n", without_fks=[without_fk])
        for pubname in listed:
            self._publish(pub, [pubname], new)
        self._refresh([new])
        return self.wait_ready([new])

    def child_publications(self, pub: Statements | psycopg.Connection[Any], child: QualifiedName) -> list[str]:
        """The publications through which this subscriber receives a `follow` child: the
        table's subscription's (refused otherwise, before anything changes)."""
        assert self._link is not None
        if statements(pub).read("SELECT relkind FROM pg_class WHERE oid = %s::regclass", (str(child),)).scalar() == "p":
            raise InputError(f"{child} is partitioned: the child policy follow cannot swap a partitioned child on "
                             "a logical subscriber in this version", f"give {child} the policy keep, or migrate "
                             "without the subscriber and copy its tables afterwards")
        try:
            name, pubs, _ = _subscription(self.ex, statements(pub), child)
        except InputError as exc:
            raise InputError(f"{exc.problem}; the child policy follow swaps {child} with the table on the "
                             "subscriber too", f"publish {child} in a publication of subscription "
                             f"{self._link.subscription} (and refresh it), or give {child} the policy keep") from None
        if name != self._link.subscription:
            raise InputError(f"the subscriber receives {child} through subscription {name}, and the table "
                             f"through {self._link.subscription}: a following child is swapped with the table "
                             "in one transaction there", f"publish {child} in a publication of "
                             f"{self._link.subscription}, or give it the policy keep")
        return _listing_publications(statements(pub), child, name, pubs)

    def _create_copy(self, info: TableInfo, target: QualifiedName, tag: str, *,
                     without_fks: list[str] | None = None) -> None:
        """The new table here: the structure of `info` (this site's table), its key and
        indexes under the names the active site's copy has (the swap renames them the same way)."""
        ex = self.ex
        if self._exists(target):
            return
        user = ex.scalar("SELECT current_user")
        with ex.transaction():
            for stmt in create_table_sql(info, target, str(user or ""), tag=tag, without_fks=without_fks or []):
                ex.run(stmt)
            for idx in secondary_indexes(info):
                ex.run(index_sql(info, idx, target, temp_index_name(idx, tag), concurrently=False))
                for stmt in [*key_constraint_sql(idx, target, tag), *index_properties_sql(idx, target, tag)]:
                    ex.run(stmt)
        ex.creates(str(target))

    def _publish(self, pub: Executor, publications: list[str], target: QualifiedName) -> None:
        """`target` added to each publication on the active site (once)."""
        for pubname in publications:
            member = pub.read("SELECT 1 FROM pg_publication_tables WHERE pubname = %s AND"
                              " schemaname = %s AND tablename = %s", (pubname, target.schema, target.name),
                              reads=[_member(pubname, target)], planned=[(1,)]).fetchone()
            if not member:
                pub.run(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(sql.Identifier(pubname), target.ident()))
                pub.creates(_member(pubname, target))

    def _refresh(self, targets: list[QualifiedName]) -> None:
        """The subscription refreshed when a target is not in it yet (copy_data = true)."""
        assert self._link is not None
        if any(self._sub_state(target) is None for target in targets):
            self.ex.run(sql.SQL("ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = true)")
                        .format(sql.Identifier(self._link.subscription)))
            self.ex.creates(*(_subscribed(target) for target in targets))

    def wait_ready(self, tables: list[QualifiedName]) -> float:
        """Until the table sync of `tables` is done (state r); polled, not recorded."""
        t0 = time.monotonic()
        while True:
            states = {str(t): self._sub_state(t, poll=True) for t in tables}
            if all(s == "r" for s in states.values()):
                return round(time.monotonic() - t0, 3)
            if time.monotonic() - t0 > self.barrier_timeout_s * 4:
                raise TablemigError(f"the subscriber's table sync has not finished: {states}",
                                    "read the subscriber's log (table sync worker errors?) and rerun")
            time.sleep(0.1)

    def _exists(self, table: QualifiedName, *, poll: bool = False) -> bool:
        read = self.ex.probe if poll else self.ex.read
        return bool(read("SELECT to_regclass(%s) IS NOT NULL", (str(table),), reads=[str(table)],
                         planned=[(True,)]).scalar())

    def _sub_state(self, table: QualifiedName, *, poll: bool = False) -> str | None:
        if self._link is None or not self._exists(table, poll=poll):
            return None
        read = self.ex.probe if poll else self.ex.read
        # a dry run's table is ready once its dry run refreshed the subscription
        row = read("SELECT r.srsubstate FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid"
                   " WHERE s.subname = %s AND r.srrelid = %s::regclass", (self._link.subscription, str(table)),
                   reads=[str(table)],
                   planned=lambda: [("r",)] if self.ex.created(_subscribed(table)) else []).fetchone()
        return str(row[0]) if row else None

    def _control(self, m: State, note: str) -> None:
        self.ex.run(
            "INSERT INTO table_migration.replication_control (table_name, replication_enabled, notes)"
            " VALUES (%s, false, %s) ON CONFLICT (table_name) DO UPDATE SET notes = EXCLUDED.notes,"
            " replication_enabled = false", (m.table, note))

    # -- barrier --------------------------------------------------------------------------
    def barrier(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Commit a write on the active site, then wait until the apply worker has received
        WAL past it: everything committed on the active site before is applied here."""
        timeout = timeout_s or self.barrier_timeout_s
        assert self._link is not None
        with connect(self.publisher_dsn, application_name="tablemig-barrier") as c:
            pub = Executor(c, mode=self.ex.mode, recorder=self.ex.recorder, connection="barrier")
            pub.run("SET synchronous_commit = on")
            # A write with synchronous commit flushes all WAL up to it, also the commits of
            # transactions that ended before the active site's locks were taken.
            wrote = pub.run("UPDATE table_migration.replication_control SET notes = notes").rowcount != 0
            target = str(pub.scalar("SELECT pg_current_wal_flush_lsn()::text" if wrote
                                    else "SELECT pg_current_wal_insert_lsn()::text") or "0/0")
        t0 = time.monotonic()
        while True:  # polled, not recorded
            got = self.ex.probe(
                "SELECT received_lsn >= %s::pg_lsn, received_lsn::text FROM pg_stat_subscription"
                " WHERE subname = %s AND relid IS NULL", (target, self._link.subscription)).fetchone()
            if got and got[0]:
                return {"lsn": Observed("lsn", target), "received": Observed("lsn", got[1]),
                        "waited_s": Observed("s", round(time.monotonic() - t0, 3))}
            if time.monotonic() - t0 > timeout:
                raise BarrierTimeout(
                    f"the subscriber has not received {target} after {timeout:.0f} s "
                    f"(apply worker of subscription {self._link.subscription} at "
                    f"{got[1] if got else 'not running'}); nothing was swapped or dropped there",
                    "check pg_stat_subscription and the log on the subscriber (apply errors? subscription "
                    "disabled?), then rerun: the migration resumes")
            time.sleep(0.01)

    # -- swap (tablemig.lifecycle.swap.SwapPeer) ------------------------------------------
    def prepare_swap(self, m: State, *, back: bool) -> dict[str, Any]:
        """Steps 2-3 of the swap (module docstring), inside the active site's locks."""
        t, n = m.live, m.new
        outgoing = m.old_table if back else m.objects.outgoing
        try:
            waited = self.barrier()
        except BarrierTimeout as exc:  # the active site rolls back and retries later
            raise psycopg.errors.LockNotAvailable(exc.problem) from None
        gid = m.objects.swap_gid(back)
        self._finish(gid, commit=False)  # a leftover of an earlier failed attempt
        ex = self.ex
        # This runs under the active site's locks: an autovacuum here is not waited for
        autovacuum.clear(ex, [t, n, outgoing], f"swap on the subscriber {self.name}")
        # a transaction ended by PREPARE TRANSACTION: its statements are changes (a dry run
        # opens none)
        ex.run("BEGIN")
        try:
            ex.run("SET LOCAL lock_timeout = '2s'")
            info = inspect_table(ex, t, list(m.key))
            if back:
                peer = m.swap_record.peer(self.name)
                exchange_back(ex, info, t, n, outgoing, peer)
                for child in follow_after.followed(peer):  # before the new table they referenced goes
                    follow_after.swap_back(ex, child)
                ex.run(drop_table_sql(n, if_exists=False))
                record: dict[str, Any] = {}
            else:
                # the children's own tables, current and before any exchange (as on the active site)
                infos = [(c, inspect_table(ex, c[0])) for c in self.children]
                followed: list[dict[str, Any]] = []
                record = exchange(ex, info, t, n, outgoing,
                                  after_rename=lambda: followed.extend(follow_after.exchange_children(ex, infos)))
                record["foreign_keys"] = [{"table": str(fk.table), "name": fk.name} for fk in info.incoming_fks] + [
                    {"table": fk["table"], "name": fk["name"]} for fk in record.pop("self_foreign_keys", [])] + [
                    fk for f in followed for fk in f.pop("foreign_keys")]
                if followed:
                    record["follow"] = followed
            ex.run(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
            ex.creates(_prepared(gid))
        except BaseException:
            if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                ex.run("ROLLBACK")
            raise
        return record | {"barrier": waited, "gid": gid}

    def finish_swap(self, m: State, *, back: bool, committed: bool) -> None:
        self._finish(m.objects.swap_gid(back), commit=committed)
        if committed:
            self._control(m, "logical: swapped back" if back else "logical: swapped with the active site")

    def _finish(self, gid: str, *, commit: bool) -> bool:
        row = self.ex.read("SELECT 1 FROM pg_prepared_xacts WHERE gid = %s AND database = current_database()",
                           (gid,), reads=[_prepared(gid)], planned=[(1,)]).fetchone()
        if not row:
            return False
        verb = "COMMIT PREPARED {}" if commit else "ROLLBACK PREPARED {}"
        self.ex.run(sql.SQL(verb).format(sql.Literal(gid)))
        self.ex.drops(_prepared(gid))
        return True

    def resolve(self, m: State | None) -> list[str]:
        """After a crash: settle prepared swaps from the active site's recorded state."""
        if m is None:
            return []
        done = []
        swapped = m.state in ("swapped", "pruned", "cleaned")
        for back, commit in ((False, swapped), (True, m.state == "rolled_back")):
            gid = m.objects.swap_gid(back)
            if self._finish(gid, commit=commit):
                done.append(f"{'committed' if commit else 'rolled back'} {gid}")
        return done

    def validate_foreign_keys(self, m: State) -> list[str]:
        """VALIDATE the subscriber's own re-pointed foreign keys (idempotent), once it has
        applied everything the active site committed: the swap's own transaction carries
        rows to the live table (those kept for `keep` children, tablemig.lifecycle.retain),
        which the subscriber applies only after its renames are committed."""
        peer = m.swap_record.peer(self.name)
        todo = [fk for fk in peer.get("foreign_keys", []) if self.ex.read(
            "SELECT NOT convalidated FROM pg_constraint WHERE conrelid = %s::regclass AND conname = %s",
            (fk["table"], fk["name"]), reads=[repointed(fk["table"], fk["name"])],
            planned=[(True,)]).fetchone() in ((True,),)]
        if todo and not self.ex.planning:
            with connect(self.publisher_dsn, application_name="tablemig-barrier") as pub:
                wait_for_apply(pub, self.ex.conn, timeout_s=self.barrier_timeout_s)
        return validate_foreign_keys(self.ex, todo)

    # -- removal --------------------------------------------------------------------------
    def drop(self, tables: list[QualifiedName]) -> list[str]:
        """Drop tables the active site has dropped (after a barrier: no change in flight)."""
        present = [t for t in tables if self._exists(t)]
        if not present:
            return []
        if self._link is not None:
            self.barrier()
        for t in present:
            self.ex.run(drop_table_sql(t))
            self.ex.drops(str(t))
        return [str(t) for t in present]


def _member(publication: str, table: QualifiedName) -> str:
    """A dry run's name for `table` in `publication`."""
    return f"{table}#published-in:{publication}"


def _subscribed(table: QualifiedName) -> str:
    """A dry run's name for a subscriber's table refreshed into its subscription."""
    return f"{table}#subscribed"


def _prepared(gid: str) -> str:
    """A dry run's name for a prepared transaction."""
    return f"prepared-transaction:{gid}"


def is_logical_subscriber(dsn: str) -> bool:
    """A writable server with a subscription: the passive site of a logical pair."""
    with connect(dsn) as c:
        row = c.execute("SELECT NOT pg_is_in_recovery() AND EXISTS (SELECT 1 FROM pg_subscription"
                        " WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()))"
                        ).fetchone()
    return bool(row and row[0])



def _subscription(ex: Executor, pub: Statements, table: QualifiedName) -> tuple[str, list[str], str]:
    """The one enabled subscription of the subscriber that receives `table` through a slot
    on the publisher: its name, publications and slot."""
    local = ex.read("SELECT to_regclass(%s)::oid", (str(table),)).fetchone()
    if not local or local[0] is None:
        raise InputError(f"the subscriber has no table {table}",
                         "create it there (same structure) and subscribe to it, or remove the "
                         "subscriber from the plan")
    subs = ex.read(
        "SELECT s.subname, s.subpublications, s.subslotname, s.subenabled"
        "  FROM pg_subscription s JOIN pg_subscription_rel r ON r.srsubid = s.oid"
        " WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        "   AND r.srrelid = %s", (local[0],)).fetchall()
    mine = []
    for name, pubs, slot, enabled in subs:
        row = pub.read("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND"
                       " database = current_database() AND slot_type = 'logical'",
                       (slot,)).fetchone()
        if row:
            mine.append((name, list(pubs), slot, enabled))
    if len(mine) != 1:
        raise InputError(f"{len(mine)} subscriptions on the subscriber receive {table} from the active "
                         f"site (found {[s[0] for s in subs]})",
                         "the subscriber must receive the table through exactly one subscription "
                         "whose slot is on the active site")
    name, pubs, slot, enabled = mine[0]
    if not enabled:
        raise InputError(f"subscription {name} is disabled",
                         f"ALTER SUBSCRIPTION {name} ENABLE, let it catch up, and rerun")
    return name, pubs, slot


def _check_two_phase(ex: Executor) -> None:
    prepared = ex.read("SELECT current_setting('max_prepared_transactions')::int").fetchone()
    if not prepared or prepared[0] < 1:
        raise InputError("max_prepared_transactions is 0 on the subscriber: the swap commits there with "
                         "two-phase commit so that a crash can never apply changes to the wrong table",
                         "set max_prepared_transactions = 10 on the subscriber and restart it")


def _listing_publications(pub: Statements, table: QualifiedName, name: str, pubs: list[str]) -> list[str]:
    """The publications of the subscription that list `table` explicitly, whole, with every
    change; refuses one that publishes it otherwise."""
    rows = pub.read("""
        SELECT p.pubname, p.puballtables, p.pubinsert AND p.pubupdate AND p.pubdelete,
               r.oid IS NOT NULL, to_jsonb(r) ->> 'prqual', to_jsonb(r) ->> 'prattrs'
          FROM pg_publication p
          LEFT JOIN pg_publication_rel r ON r.prpubid = p.oid AND r.prrelid = %s::regclass
         WHERE p.pubname = ANY(%s)""", (str(table), pubs)).fetchall()
    listed = []
    for pubname, alltables, dml, explicit, qual, attrs in rows:
        if alltables or not explicit:
            _refuse_implicit(pub, table, pubname)
            continue
        if qual or attrs:
            raise InputError(f"publication {pubname} publishes {table} with a row filter or column list",
                             "publish the whole table while it is migrated")
        if not dml:
            raise InputError(f"publication {pubname} does not publish insert, update and delete",
                             f"ALTER PUBLICATION {pubname} SET (publish = 'insert, update, delete')")
        listed.append(pubname)
    if not listed:
        raise InputError(f"no publication of subscription {name} lists {table}",
                         f"ALTER PUBLICATION ... ADD TABLE {table}")
    return listed


def _refuse_implicit(pub: Statements, table: QualifiedName, pubname: str) -> None:
    """A publication that covers `table` without listing it (FOR ALL TABLES, TABLES IN SCHEMA)."""
    covers = pub.read("SELECT 1 FROM pg_publication_tables WHERE pubname = %s AND"
                      " schemaname = %s AND tablename = %s",
                      (pubname, table.schema, table.name)).fetchone()
    if covers:
        raise InputError(f"publication {pubname} publishes {table} FOR ALL TABLES or TABLES IN "
                         "SCHEMA: it would publish tablemig's own tables and the new table "
                         "before the subscriber has them",
                         f"list the tables explicitly (CREATE PUBLICATION ... FOR TABLE {table}, ...)")


def _check_replica_identity(pub: Statements, table: QualifiedName) -> None:
    ident = pub.read("SELECT relreplident FROM pg_class WHERE oid = %s::regclass",
                     (str(table),)).fetchone()
    if ident and ident[0] == "n":
        raise InputError(f"{table} has REPLICA IDENTITY NOTHING: its updates and deletes cannot be "
                         "published", f"ALTER TABLE {table} REPLICA IDENTITY DEFAULT")


__all__ = ["BarrierTimeout", "Link", "Subscriber", "is_logical_subscriber"]
