"""One table's migration through its states: plan, capture, backfill, index, replay, verify, swap,
prune, rollback, cleanup; the driver that runs them in order."""
