"""The postponed cut-over: the swap step waits, once the new table is verified, until
`tablemig release` or the plan's deadline (`TableSpec.hold_swap`).

While it waits the capture trigger keeps the new table equal to the table's recent rows,
write by write (direct capture, from the replay's switch on), so the swap that follows is
the same short transaction as without a wait. The wait is announced in the log, shown by
`tablemig status` (`checkpoint.holding`) and can be left by `tablemig release` from any
session; a rerun after a crash waits again unless the release was given. A dry run does not
wait.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from .context import RunContext

log = logging.getLogger("tablemig.swap")
ANNOUNCE_S = 60.0  # a line in the log at most this often while waiting


def wait_for_release(ctx: RunContext, poll_s: float = 1.0) -> str | None:
    """Wait as `ctx.spec.hold_swap` says; returns why the wait ended ("released",
    "deadline") or None when there was nothing to wait for."""
    spec = ctx.spec
    if spec.hold_swap is None or ctx.ex.planning:
        return None
    deadline = spec.hold_deadline
    store = ctx.store
    if store.released_now():
        return "released"
    waiting_for = "tablemig release" + (f" or {deadline.isoformat()}" if deadline else "")
    with ctx.ex.transaction():
        store.set_checkpoint({"holding": waiting_for})
        store.log("hold", "waiting", details={"until": waiting_for})
    last = 0.0
    try:
        while True:
            if store.released_now():
                why = "released"
                break
            if deadline is not None and dt.datetime.now(dt.UTC) >= deadline:
                why = "deadline"
                break
            if time.monotonic() - last >= ANNOUNCE_S:
                log.info("%s: verified; the swap waits for %s (the new table follows every write meanwhile)",
                         ctx.table, waiting_for)
                last = time.monotonic()
            time.sleep(poll_s)
    finally:
        with ctx.ex.transaction():
            store.set_checkpoint(drop=["holding"])
    with ctx.ex.transaction():
        store.log("hold", why, details={"until": waiting_for})
    log.info("%s: %s; swapping", ctx.table, "released" if why == "released" else f"deadline {deadline} reached")
    return why
