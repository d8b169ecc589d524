"""SQL that builds the new table's structure and its row-sync triggers.

Index and constraint definitions are taken from the catalog (`pg_get_indexdef`, ...) and
re-issued for the new table under temporary names; the swap gives them back the original
names. Every statement is returned as `psycopg.sql` so the dry run can print it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from psycopg import sql

from ..errors import InputError
from ..pg.catalog import Index, TableInfo
from ..pg.names import QualifiedName
from ..pg.sqltext import Fragment
from ..pg.templating import render
from .objects import GUARD_TRIGGER, REFUSE_TRUNCATE, temp_index_name

_RELOPTION = re.compile(r"^([a-z_][a-z0-9_.]*)=(.*)$")


def index_sql(info: TableInfo, index: Index, target: QualifiedName, name: str, *,
              concurrently: bool) -> sql.Composed:
    head, rest = index.body(info.quoted)
    return sql.Composed([
        Fragment(head + "INDEX " + ("CONCURRENTLY " if concurrently else "")),
        sql.Identifier(name), sql.SQL(" ON "), target.ident(), Fragment(" " + rest)])


def _options(options: list[str] | tuple[str, ...], what: str) -> list[sql.Composable]:
    """`name=value` option strings (reloptions, attoptions) as `name = 'value'` items."""
    parts: list[sql.Composable] = []
    for opt in options:
        m = _RELOPTION.match(opt)
        if not m:
            raise InputError(f"unexpected option {opt!r} on {what}",
                             "report it; tablemig copies storage and column options to the new table")
        parts.append(sql.SQL("{}={}").format(sql.SQL(m.group(1)), sql.Literal(m.group(2))))
    return parts


def storage_options_sql(options: Sequence[str], what: str) -> sql.Composable:
    """` WITH (name='value', ...)` for a table's storage options as the catalog has them
    (`reloptions`), or nothing without any."""
    if not options:
        return sql.SQL("")
    return sql.SQL(" WITH ({})").format(sql.SQL(", ").join(_options(list(options), what)))


def _reloptions(info: TableInfo) -> sql.Composable:
    return storage_options_sql(info.reloptions, str(info.name))


def _placement(info: TableInfo) -> tuple[sql.Composable, sql.Composable]:
    """USING (a table access method other than heap) and TABLESPACE (other than the
    database's default) as the original has them: LIKE copies neither."""
    using = (sql.SQL(" USING {}").format(sql.Identifier(info.access_method))
             if info.access_method and info.access_method != "heap" else sql.SQL(""))
    space = (sql.SQL(" TABLESPACE {}").format(sql.Identifier(info.tablespace))
             if info.tablespace else sql.SQL(""))
    return using, space


def create_table_sql(info: TableInfo, target: QualifiedName, current_user: str,
                     tag: str = "n", *, with_key: bool = True, without_fks: Sequence[str] = (),
                     partition_by: str | None = None) -> list[sql.Composable]:
    """CREATE the new (or archive-copy) table: same columns, defaults, identity, generated
    columns, CHECK constraints, comments, storage, extended statistics, column statistics
    targets and options, replica identity FULL / NOTHING; the key; outgoing FKs with their
    comments. `with_key=False` leaves the table bare (no key): the engine loads it first and
    builds the key and indexes afterwards (`key_constraint_sql`, `index_properties_sql`).
    `without_fks`: outgoing foreign keys left out (a `follow` child's key to the table,
    tablemig.lifecycle.follow; adding and dropping it would lock the table it references).
    `partition_by`: the table is created partitioned so (a `follow` child that is
    partitioned, tablemig.lifecycle.follow_partitions)."""
    using, space = _placement(info)
    parted = sql.SQL(" PARTITION BY {}").format(Fragment(partition_by)) if partition_by else sql.SQL("")
    stmts: list[sql.Composable] = [sql.SQL(
        "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING GENERATED"
        " INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING COMMENTS INCLUDING CONSTRAINTS"
        " INCLUDING STATISTICS){}{}{}{}").format(target.ident(), info.name.ident(), parted, using,
                                                  _reloptions(info), space)]
    # LIKE ... INCLUDING CONSTRAINTS makes a NOT VALID check valid on the copy, where the
    # rows it never checked would fail the load: such checks come back NOT VALID in the
    # swap (not_valid_checks_sql)
    for name, _ in not_valid_checks(info):
        stmts.append(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(target.ident(), sql.Identifier(name)))
    if info.owner != current_user:
        stmts.append(sql.SQL("ALTER TABLE {} OWNER TO {}").format(
            target.ident(), sql.Identifier(info.owner)))
    if info.replica_identity in ("f", "n"):  # an index identity needs the index: index_properties_sql
        stmts.append(sql.SQL("ALTER TABLE {} REPLICA IDENTITY {}").format(
            target.ident(), sql.SQL("FULL" if info.replica_identity == "f" else "NOTHING")))
    stmts.extend(column_properties_sql(info, target))
    if with_key:
        key = key_index(info)
        stmts.append(index_sql(info, key, target, temp_index_name(key, tag), concurrently=False))
        stmts.extend(key_constraint_sql(key, target, tag))
        stmts.extend(index_properties_sql(key, target, tag))
    comments = {c.name: c.comment for c in info.constraints if c.type == "f"}
    for name, definition, _ in info.outgoing_fks:
        if name in without_fks:
            continue
        body = definition if definition.endswith(" NOT VALID") else definition + " NOT VALID"
        stmts.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            target.ident(), sql.Identifier(name), Fragment(body)))
        if comments.get(name) is not None:
            stmts.append(sql.SQL("COMMENT ON CONSTRAINT {} ON {} IS {}").format(
                sql.Identifier(name), target.ident(), sql.Literal(comments[name])))
    return stmts


def column_properties_sql(info: TableInfo, target: QualifiedName) -> list[sql.Composable]:
    """Per-column statistics targets and attribute options (n_distinct, ...): LIKE copies
    neither. Set before the load, so the new table's ANALYZE already uses them."""
    stmts: list[sql.Composable] = []
    for c in info.columns:
        if c.statistics is not None:
            stmts.append(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STATISTICS {}").format(
                target.ident(), sql.Identifier(c.name), sql.Literal(c.statistics)))
        if c.options:
            stmts.append(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET ({})").format(
                target.ident(), sql.Identifier(c.name),
                sql.SQL(", ").join(_options(c.options, f"column {c.name} of {info.name}"))))
    return stmts


def index_properties_sql(index: Index, target: QualifiedName, tag: str = "n") -> list[sql.Composable]:
    """What an index built for the new table lacks besides its definition: its comment and
    its constraint's, CLUSTER ON, REPLICA IDENTITY USING INDEX. Catalog-only statements,
    run once the index (and its constraint) exists; they follow the index through the
    swap's renames."""
    tmp = temp_index_name(index, tag)
    stmts: list[sql.Composable] = []
    if index.comment is not None:
        stmts.append(sql.SQL("COMMENT ON INDEX {} IS {}").format(
            sql.Identifier(target.schema, tmp), sql.Literal(index.comment)))
    if index.constraint and index.constraint_comment is not None and index.constraint_type in ("p", "u"):
        stmts.append(sql.SQL("COMMENT ON CONSTRAINT {} ON {} IS {}").format(
            sql.Identifier(tmp), target.ident(), sql.Literal(index.constraint_comment)))
    if index.clustered:
        stmts.append(sql.SQL("ALTER TABLE {} CLUSTER ON {}").format(target.ident(), sql.Identifier(tmp)))
    if index.replica_identity:
        stmts.append(sql.SQL("ALTER TABLE {} REPLICA IDENTITY USING INDEX {}").format(
            target.ident(), sql.Identifier(tmp)))
    return stmts


def not_valid_checks(info: TableInfo) -> list[tuple[str, str]]:
    """The table's CHECK constraints added NOT VALID: (name, definition)."""
    return [(name, d) for name, d in info.check_constraints if d.endswith(" NOT VALID")]


def not_valid_checks_sql(info: TableInfo, target: QualifiedName) -> list[sql.Composable]:
    """Add the table's NOT VALID checks to `target` as they are (NOT VALID: no scan)."""
    return [sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(target.ident(), sql.Identifier(name),
                                                                  Fragment(d))
            for name, d in not_valid_checks(info)]


def key_index(info: TableInfo) -> Index:
    """The index of the table's key (primary key, or the unique index serving as key)."""
    return next(i for i in info.indexes if i.is_key)


def key_constraint_sql(index: Index, target: QualifiedName, tag: str = "n") -> list[sql.Composable]:
    """Attach a built unique index of `target` as its PRIMARY KEY / UNIQUE constraint, with
    the original's deferrability."""
    tmp = temp_index_name(index, tag)
    kind = {"p": "PRIMARY KEY", "u": "UNIQUE"}.get(index.constraint_type or "")
    if not kind:
        return []
    timing = (" DEFERRABLE INITIALLY DEFERRED" if index.deferred else
              " DEFERRABLE" if index.deferrable else "")
    return [sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} USING INDEX {}{}").format(
        target.ident(), sql.Identifier(tmp), sql.SQL(kind), sql.Identifier(tmp), sql.SQL(timing))]


def partitioned_key_sql(index: Index, target: QualifiedName, tag: str = "n") -> list[sql.Composable]:
    """A PRIMARY KEY / UNIQUE constraint of a partitioned `target` with its index (named as
    `key_constraint_sql` names it): a partitioned table cannot attach an index built before
    (ADD CONSTRAINT ... USING INDEX), so the constraint builds it, on every partition."""
    tmp = temp_index_name(index, tag)
    kind = {"p": "PRIMARY KEY", "u": "UNIQUE"}[index.constraint_type or ""]
    timing = (" DEFERRABLE INITIALLY DEFERRED" if index.deferred else
              " DEFERRABLE" if index.deferrable else "")
    return [sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} ({}){}").format(
        target.ident(), sql.Identifier(tmp), sql.SQL(kind), sql.SQL(", ").join(map(sql.Identifier, index.columns)),
        sql.SQL(timing))]


def grant_sql(target: QualifiedName, acl: Sequence[tuple[str, str, bool]], kind: str = "TABLE") -> list[sql.Composable]:
    """GRANT each (grantee, privilege, grantable) of `acl` on `target`."""
    return [sql.SQL("GRANT {} ON {} {} TO {}{}").format(
        Fragment(priv), sql.SQL(kind), target.ident(),
        sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee),
        sql.SQL(" WITH GRANT OPTION" if grantable else "")) for grantee, priv, grantable in acl]


def deferrable_key(info: TableInfo) -> bool:
    """True when `ON CONFLICT (key)` cannot be used on a copy of the table: a unique index
    that such a clause would infer as its arbiter (plain, no predicate, on exactly the key
    columns) backs a deferrable constraint, which PostgreSQL refuses as an arbiter."""
    key = set(info.key_columns)
    return any(i.unique and not i.immediate and i.arbiter_shape and set(i.columns) == key
               for i in info.indexes)


def change_id_column(key: Sequence[str]) -> str:
    """The change log's own id column: `change_id`, or `change_id_<n>` when a key column
    has that name (the log's other columns are the key columns)."""
    name, n = "change_id", 0
    while name in key:
        n += 1
        name = f"change_id_{n}"
    return name


def change_log_sql(info: TableInfo, log: QualifiedName) -> sql.Composable:
    """The change log: a serial id and the key columns (WAL-logged: a crash keeps it)."""
    types = {c.name: c.type for c in info.columns}
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(k), Fragment(types[k]))
                             for k in info.key_columns)
    return sql.SQL("CREATE TABLE {} ({} bigserial PRIMARY KEY, {})").format(
        log.ident(), sql.Identifier(change_id_column(info.key_columns)), cols)


def secondary_indexes(info: TableInfo) -> list[Index]:
    """Indexes built on the new table after the backfill (all valid ones but the key)."""
    return [i for i in info.indexes if not i.is_key and i.valid and i.constraint_type != "x"]


def sync_function_sql(info: TableInfo, function: QualifiedName, mode: str,
                      recent: QualifiedName, history: QualifiedName | None = None, *,
                      date_column: str = "", date_type: str = "", cutoff: str = "",
                      search_path: Sequence[str] = (), family: QualifiedName | None = None,
                      source: QualifiedName | None = None,
                      self_refs: Sequence[tuple[Sequence[str], Sequence[str]]] = (),
                      self_refs_kept: bool = False,
                      defer: list[QualifiedName] | None = None) -> sql.SQL:
    """The row-sync trigger function (see sql_templates/row_sync_function.sql.j2). In mode
    "log", `recent` is the change log table. `search_path`: the schemas the table's own
    expressions need, between pg_catalog and pg_temp (tablemig.pg.search_path). Mode
    "capture" with `family`: also the family log of the orphan check (tablemig.lifecycle.families),
    with `self_refs` (referencing, referenced columns) looked up in `source`; with
    `self_refs_kept` (the policy keep for the table itself, tablemig.lifecycle.retain), the
    rows every write referenced before and after it. `defer`: the
    deferrable PRIMARY KEY / UNIQUE constraints of the tables the function writes
    (`deferred_names`): checked at commit, so a statement that passes through a transient
    duplicate (UPDATE t SET id = id + 1 under a DEFERRABLE key) is mirrored row by row
    without failing half-way."""
    writable = info.writable_columns
    key = info.key_columns
    always = {c.name for c in writable if c.identity == "a"}
    upsert_columns = [c.name for c in writable if c.name not in key and c.name not in always]
    update_columns = [c.name for c in writable if c.name not in always]
    text = render("row_sync_function.sql.j2", function=(function.schema, function.name),
                  mode=mode, recent=(recent.schema, recent.name),
                  history=(history.schema, history.name) if history else None,
                  columns=[c.name for c in writable], key=key, update_columns=update_columns,
                  always=[c.name for c in writable if c.name in always],
                  upsert_columns=upsert_columns,
                  overriding=bool(always), date_column=date_column, date_type=date_type,
                  cutoff=cutoff, exact_rows=deferrable_key(info),
                  defer=[(d.schema, d.name) for d in defer or []], search_path=list(search_path),
                  family=(family.schema, family.name) if family else None,
                  source=(source.schema, source.name) if source else None,
                  self_refs=[{"child": list(c), "parent": list(p)} for c, p in self_refs],
                  self_refs_kept=self_refs_kept)
    return sql.SQL(text)  # rendered with the quoting filters


def trigger_sql(table: QualifiedName, trigger: str, function: QualifiedName) -> list[sql.Composable]:
    """The row trigger `trigger` on `table` calling `function` (capture, mirror, prune)."""
    return [
        sql.SQL("CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW"
                " EXECUTE FUNCTION {}()").format(sql.Identifier(trigger), table.ident(),
                                                 function.ident()),
    ]


def drop_function_sql(function: QualifiedName) -> sql.Composable:
    return sql.SQL("DROP FUNCTION IF EXISTS {}()").format(function.ident())


def drop_table_sql(table: QualifiedName, *, if_exists: bool = True) -> sql.Composable:
    return sql.SQL("DROP TABLE {}{}").format(sql.SQL("IF EXISTS " if if_exists else ""), table.ident())


def truncate_guard_sql(table: QualifiedName) -> sql.Composable:
    """The statement trigger refusing TRUNCATE (row triggers never see one)."""
    return sql.SQL("CREATE TRIGGER {} BEFORE TRUNCATE ON {} FOR EACH STATEMENT"
                   " EXECUTE FUNCTION {}()").format(sql.Identifier(GUARD_TRIGGER), table.ident(),
                                                    REFUSE_TRUNCATE.ident())


def drop_trigger_sql(table: QualifiedName, trigger: str) -> sql.Composable:
    """DROP TRIGGER IF EXISTS."""
    return sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger),
                                                             table.ident())
