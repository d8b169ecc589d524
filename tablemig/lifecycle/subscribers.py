"""The logical subscribers of a run (tablemig.lifecycle.logical): attached once the new
table has its key, and prepared swaps a crash left behind settled."""

from __future__ import annotations

from .context import RunContext


def attach(ctx: RunContext) -> None:
    """Logical subscribers get N once it has its key (before the replay: its updates and
    deletes need a replica identity); idempotent."""
    if not ctx.subscribers:
        return
    m = ctx.state()
    if m is None:
        return
    for sub in ctx.subscribers:
        done = sub.attach(ctx.ex, m)
        with ctx.ex.transaction():
            ctx.store.log("replay", "subscriber attached", details=done)


def resolve(ctx: RunContext) -> list[str]:
    """Settle a swap left prepared on a subscriber by a crash."""
    if not ctx.subscribers:
        return []
    m = ctx.state()
    done: list[str] = []
    for sub in ctx.subscribers:
        if m is not None:
            sub.link(ctx.ex, m.live)
            done += sub.resolve(m)
    if done:
        with ctx.ex.transaction():
            ctx.store.log("swap", "subscriber resolved", details={"done": done})
    return done
