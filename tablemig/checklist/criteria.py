"""Success criteria SC-1..SC-8, evaluated from a run's step results.

One implementation serves the SC steps of a plan (single process) and the report merge
(pytest -n K, where each worker saw only its own tables).
"""

from __future__ import annotations

from typing import Any

# criterion -> (the steps whose outcome decides it, how)
CRITERIA: dict[str, tuple[list[str], str]] = {
    "SC-1": (["EX-2.3", "EX-4.3"], "after the swap, test writes went to the new table and through its triggers"),
    "SC-2": (["EX-4.1"], "the archive holds every history row: new + archive = original"),
    "SC-3": (["PRE-1.1b", "EX-3.2"], "replication lag under max_replication_lag (and under 5 minutes)"),
    "SC-4": (["EX-4.2"], "the new table's query plans no worse than the original's (index use, buffers per row)"),
    "SC-5": (["EX-4.1", "EX-3.2"], "counts and segment checksums match"),
    "SC-6": (["EX-5.1", "EX-5.2", "PRE-3.4"], "health view, health_check() and thresholds in place, no alert"),
    "SC-7": ([], "a person attests it"),
    "SC-8": ([], "a person attests it"),
}

GOOD = {"passed", "attested"}


def evaluate(criterion: str, steps: list[dict[str, Any]], mode: str) -> tuple[str, str]:
    """(status, reason) of a criterion from the step dicts of a run."""
    needed, how = CRITERIA[criterion]
    if not needed:
        return "needs-attestation", how
    relevant = [s for s in steps if s["id"] in needed]
    if mode != "execute":
        return "dry-run", f"evaluated after an execution: {how}"
    if not relevant:
        return "not-applicable", f"none of {', '.join(needed)} ran"
    def name(s: dict[str, Any]) -> str:
        return f"{s['id']}{' ' + s['table'] if s.get('table') else ''}"

    failed = [f"{name(s)}: {s['reason'] or s['status']}" for s in relevant if s["status"] == "failed"]
    if failed:
        return "failed", "; ".join(failed)
    doubtful = [f"{name(s)}: {s['reason']}" for s in relevant if s["status"] == "warning"]
    if doubtful:
        return "warning", "; ".join(doubtful)
    blocked = [name(s) for s in relevant if s["status"] not in GOOD | {"not-applicable", "warning"}]
    if blocked:
        return "blocked", "not evaluated: " + ", ".join(blocked) + " did not pass"
    if all(s["status"] == "not-applicable" for s in relevant):
        return "not-applicable", "; ".join(f"{s['id']}: {s['reason']}" for s in relevant)
    return "passed", how
