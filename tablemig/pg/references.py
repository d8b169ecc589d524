"""The foreign keys that reference a table, read from the catalog once for every user: the
planner and the swap's orphan check (tablemig.lifecycle.families), and the probes that must
leave referenced rows alone (tablemig.pg.probes)."""

from __future__ import annotations

from dataclasses import dataclass

from .names import QualifiedName
from .statements import Statements


@dataclass(frozen=True)
class Reference:
    """A foreign key referencing the table (from another table, or from itself)."""

    name: str
    child: QualifiedName  # the referencing table (the table itself for a self-reference)
    child_oid: int
    child_columns: tuple[str, ...]
    parent_columns: tuple[str, ...]  # the table's referenced columns, in the same order
    self_ref: bool
    partitioned: bool  # the referencing table is partitioned
    indexed: bool  # an index leads with the referencing columns

    def label(self) -> str:
        return f"{self.child}.{self.name}"


_REFERENCES = """
SELECT con.conname, n.nspname, c.relname, c.oid, c.relkind = 'p', con.conrelid = con.confrelid,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
               JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
               JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o),
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = con.conrelid
                  AND (i.indkey::int2[])[0:cardinality(con.conkey) - 1] @> con.conkey
                  AND (i.indkey::int2[])[0:cardinality(con.conkey) - 1] <@ con.conkey)
  FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE con.confrelid = %s AND con.contype = 'f' AND con.conparentid = 0
 ORDER BY n.nspname, c.relname, con.conname
"""


def references(st: Statements, table_oid: int) -> list[Reference]:
    """Every foreign key referencing the table (a partitioned table's once)."""
    return [Reference(r[0], QualifiedName(r[1], r[2]), int(r[3]), tuple(r[6]), tuple(r[7]), bool(r[5]),
                      bool(r[4]), bool(r[8]))
            for r in st.read(_REFERENCES, (table_oid,)).fetchall()]
