"""PostgreSQL helpers: connections, names, the catalog, locks, replication, client binaries, comparisons."""
