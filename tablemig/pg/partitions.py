"""The partitions of a partitioned table, read from the catalog: what a copy of the table
partitioned the same way needs (the partition key, each partition's bound, sub-partitioning,
owner, grants, storage options and comment), and what a partition has of its own that such a
copy would not carry (an index or a trigger of one partition only, a rule, a policy, a foreign
table as a partition)."""

from __future__ import annotations

from dataclasses import dataclass

from .names import QualifiedName
from .schema import SCHEMA
from .statements import Statements


@dataclass(frozen=True)
class Partition:
    """One partition below a partitioned table (at any depth)."""

    name: QualifiedName
    parent: QualifiedName  # the partitioned table it is a partition of
    bound: str  # "FOR VALUES ..." or "DEFAULT", as pg_get_expr prints it
    partition_by: str | None  # "RANGE (at)" for a partition that is partitioned in turn
    owner: str
    reloptions: tuple[str, ...]
    grants: tuple[tuple[str, str, bool], ...]  # (grantee, privilege, grantable), its owner's left out
    comment: str | None


_TREE = """
SELECT n.nspname, c.relname, pn.nspname, p.relname, pg_get_expr(c.relpartbound, c.oid),
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END, pg_get_userbyid(c.relowner),
       coalesce(c.reloptions, '{}'),
       ARRAY(SELECT ARRAY[CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
                          a.privilege_type, a.is_grantable::text]
               FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner ORDER BY 1),
       obj_description(c.oid, 'pg_class')
  FROM pg_partition_tree(%s::regclass) t
  JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_class p ON p.oid = t.parentrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
 WHERE t.level > 0
 ORDER BY t.level, n.nspname, c.relname
"""


def partition_key(st: Statements, table: QualifiedName) -> str:
    """The table's PARTITION BY clause, without the keywords: `RANGE (at)`."""
    return str(st.read("SELECT pg_get_partkeydef(%s::regclass)", (str(table),)).scalar())


def partition_tree(st: Statements, table: QualifiedName) -> list[Partition]:
    """Every partition below `table`, each after the partition it belongs to."""
    return [Partition(QualifiedName(r[0], r[1]), QualifiedName(r[2], r[3]), str(r[4]), r[5], str(r[6]),
                      tuple(r[7]), tuple((g, p, grantable == "true") for g, p, grantable in r[8]), r[9])
            for r in st.read(_TREE, (str(table),)).fetchall()]


def partition_names(st: Statements, table: QualifiedName, *, reads: tuple[str, ...] = (),
                    planned: list[QualifiedName] | None = None) -> list[QualifiedName]:
    """The names of the partitions below `table`, in name order (`reads`/`planned`: for a
    table a dry run only records the creation of, tablemig.pg.statements)."""
    rows = st.read("SELECT n.nspname, c.relname FROM pg_partition_tree(%s::regclass) t"
                   " JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace"
                   " WHERE t.level > 0 ORDER BY 1, 2", (str(table),), reads=reads,
                   planned=[(p.schema, p.name) for p in planned or []]).fetchall()
    return [QualifiedName(str(r[0]), str(r[1])) for r in rows]


_OWN = """
WITH t AS (SELECT p.relid, c.relkind, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name
             FROM pg_partition_tree(%(t)s::regclass) p JOIN pg_class c ON c.oid = p.relid
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.level > 0)
SELECT format('index %%s of the partition %%s', quote_ident(ic.relname), t.name)
  FROM t JOIN pg_index i ON i.indrelid = t.relid JOIN pg_class ic ON ic.oid = i.indexrelid
 WHERE NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)
UNION ALL
SELECT format('trigger %%s of the partition %%s', quote_ident(g.tgname), t.name)
  FROM t JOIN pg_trigger g ON g.tgrelid = t.relid
 WHERE NOT g.tgisinternal AND g.tgparentid = 0
   AND NOT EXISTS (SELECT 1 FROM pg_proc f JOIN pg_namespace fn ON fn.oid = f.pronamespace
                    WHERE f.oid = g.tgfoid AND fn.nspname = %(tool)s)
UNION ALL
SELECT format('rule %%s of the partition %%s', quote_ident(r.rulename), t.name)
  FROM t JOIN pg_rewrite r ON r.ev_class = t.relid
UNION ALL
SELECT format('row security policy %%s of the partition %%s', quote_ident(p.polname), t.name)
  FROM t JOIN pg_policy p ON p.polrelid = t.relid
UNION ALL
SELECT format('the partition %%s, a foreign table', t.name) FROM t WHERE t.relkind = 'f'
"""


def partition_own_objects(st: Statements, table: QualifiedName) -> list[str]:
    """What partitions of `table` have of their own, which a copy partitioned the same way
    would not have: an index or a trigger not made from one of the table's, a rule, a row
    security policy; and foreign tables among the partitions. tablemig's own triggers (their
    function in its schema) are not counted."""
    return [str(r[0]) for r in st.read(_OWN, {"t": str(table), "tool": SCHEMA}).fetchall()]


def attached_indexes(st: Statements, partition: QualifiedName, *, reads: tuple[str, ...] = ()) -> dict[str, str]:
    """The indexes of `partition` made from an index of the table it belongs to: the name of
    that index -> the partition's index's name (`reads`: as for partition_names)."""
    rows = st.read("SELECT pc.relname, ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid"
                   " JOIN pg_inherits h ON h.inhrelid = i.indexrelid JOIN pg_class pc ON pc.oid = h.inhparent"
                   " WHERE i.indrelid = %s::regclass", (str(partition),), reads=reads, planned=[]).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def _one_name(st: Statements, query: str, table: QualifiedName) -> QualifiedName | None:
    row = st.read(query, (str(table),)).fetchone()
    return QualifiedName(str(row[0]), str(row[1])) if row else None


def default_partition(st: Statements, table: QualifiedName) -> QualifiedName | None:
    """The DEFAULT partition of the partitioned `table`, if it has one."""
    return _one_name(st, "SELECT n.nspname, c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                         " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE i.inhparent = %s::regclass"
                         " AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'", table)


def partition_parent(st: Statements, partition: QualifiedName) -> QualifiedName | None:
    """The table `partition` is a partition of (None: it is none's, or does not exist)."""
    return _one_name(st, "SELECT n.nspname, c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhparent"
                         " JOIN pg_namespace n ON n.oid = c.relnamespace"
                         " WHERE i.inhrelid = to_regclass(%s)", partition)


def inherited_foreign_keys(st: Statements, partition: QualifiedName) -> list[str]:
    """The foreign keys `partition` has from the table it is a partition of (which become its
    own when it is detached)."""
    return [str(r[0]) for r in st.read("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass"
                                       " AND contype = 'f' AND conparentid <> 0", (str(partition),)).fetchall()]
