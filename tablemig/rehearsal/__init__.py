"""Rehearsal: the plan run on a clone of the active site's schema filled with synthetic rows.

Nothing here imports pytest; the plugin (`tablemig.plugin.rehearse`) only wires it in.

* `schema`: the active site's schema (`pg_dump --schema-only`, or a schema file) loaded into
  the rehearsal database, with the roles it names;
* `catalog`: the structure of the tables to fill (read from the rehearsal database) and the
  statistics of the active site (`pg_class.reltuples`, `pg_stats`: never a row);
* `kinds`, `distribution`: a column's values as its statistics describe them, at any scale;
* `checks`: simple CHECK constraints repaired before a row is sent;
* `synthetic`: rows of a table (types, NULLs, unique keys, foreign keys, physical order);
* `load`: COPY into the rehearsal database, rows the server rejects found and redrawn;
* `prepare`: the whole preparation, and the scale;
* `estimate`: the duration at production size extrapolated from a rehearsal's run.
"""
