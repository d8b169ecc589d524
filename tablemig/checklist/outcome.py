"""The verdict of a plan run as a whole, from its step results.

A run that did not finish must never look passed. A step starts as `running`; only its
end turns that into an outcome. When the session ends with a step still `running` (Ctrl-C,
a termination signal, `pytest.exit`), that step is `interrupted`. Selected checklist steps
without a result are added as `not-run`. The verdict, worst first:

* `interrupted`: a step was interrupted or pytest reported the session as interrupted;
* `failed`: a step failed;
* `incomplete`: selected steps did not run for another reason (a crashed worker, `-x`);
* `passed`.

The verdict in words (`verdict`) never flatters: a bare "passed" only when every step
passed, was attested or does not apply; otherwise "passed with 5 sign-offs pending and
3 warnings" (and the steps only planned in a dry run).

Interrupted and incomplete runs make pytest exit with a non-zero status. A run killed
outright (SIGKILL) writes nothing: its next run starts from the migration's recorded state
and writes its own report.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from .items import ITEMS, ORDER

RUNNING = "running"
INTERRUPTED = "interrupted"
NOT_RUN = "not-run"
UNFINISHED = ("interrupted", "incomplete")  # verdicts of a run that did not get to its end


def close_unfinished(results: list[Any], *, interrupted: bool, now: float | None = None) -> list[Any]:
    """Mark the results still `running` as interrupted (their duration up to now); returns them."""
    now = time.time() if now is None else now
    cut = []
    for r in results:
        if r.status != RUNNING:
            continue
        r.status = INTERRUPTED
        r.reason = ("interrupted while this step ran (Ctrl-C or a termination signal): rerun the plan, "
                    "the migration continues from its recorded state" if interrupted else
                    "the session ended while this step ran (pytest.exit or an internal error): rerun the plan")
        if not r.duration_s and r.started:
            r.duration_s = round(max(now - r.started, 0.0), 3)
        cut.append(r)
    return cut


def _name(step: dict[str, Any]) -> str:
    return f"{step['id']}{' ' + step['table'] if step.get('table') else ''}"


def complete(steps: list[dict[str, Any]], expected: list[list[Any]], *, interrupted: bool) -> dict[str, Any]:
    """Add a `not-run` step for every expected (id, table) without a result, sort the steps
    in checklist order and return the run's outcome fields (`status`, `interrupted_at`,
    `not_run`)."""
    have = {(s["id"], s.get("table") or None) for s in steps}
    cut = [s for s in steps if s["status"] == INTERRUPTED]
    interrupted = interrupted or bool(cut)
    where = ", ".join(_name(s) for s in cut)
    missing = [(i, t or None) for i, t in expected if (i, t or None) not in have and i in ITEMS]
    for item_id, table in dict.fromkeys(missing):
        reason = (f"not run: the run was interrupted{' during ' + where if where else ''}" if interrupted
                  else "not run: the session ended before this step (see the pytest output)")
        steps.append({"id": item_id, "table": table, "status": NOT_RUN, "reason": reason, "started": None,
                      "duration_s": 0.0, "text": ITEMS[item_id].text, "section": ITEMS[item_id].section,
                      "evidence": {}, "statements": []})
    steps.sort(key=lambda s: (ORDER.index(s["id"]) if s["id"] in ORDER else len(ORDER), s.get("table") or ""))
    statuses = {s["status"] for s in steps}
    if interrupted:
        status = "interrupted"
    elif "failed" in statuses:
        status = "failed"
    elif NOT_RUN in statuses:
        status = "incomplete"
    else:
        status = "passed"
    return {"status": status, "interrupted_at": [_name(s) for s in cut],
            "not_run": sum(1 for s in steps if s["status"] == NOT_RUN)}


# what keeps a run that did not fail from a bare "passed", in the order the verdict names them
QUALIFIERS = (("needs-attestation", "sign-off", "sign-offs", "pending"), ("warning", "warning", "warnings", ""),
              ("blocked", "step", "steps", "blocked"), ("deferred", "step", "steps", "deferred"),
              ("dry-run", "step", "steps", "only planned (dry run)"))


def _plural(n: int, one: str, many: str, after: str) -> str:
    return f"{n} {one if n == 1 else many}{' ' + after if after else ''}"


def verdict(run: dict[str, Any]) -> str:
    """The run's verdict in words: its status, and for a run that did not fail what is still
    open, e.g. "passed with 5 sign-offs pending and 3 warnings"."""
    status = str(run.get("status") or "unknown")
    if status != "passed":
        return status
    counts = Counter(str(s.get("status")) for s in run.get("steps") or [] if isinstance(s, dict))
    open_ = [_plural(counts[key], one, many, after) for key, one, many, after in QUALIFIERS if counts[key]]
    if not open_:
        return "passed"
    return "passed with " + (", ".join(open_[:-1]) + " and " + open_[-1] if len(open_) > 1 else open_[0])


def headline(run: dict[str, Any]) -> str:
    """One line for the terminal and the report: the verdict and what did not run."""
    status = verdict(run).upper()
    parts = [f"run {status}" + (" during " + ", ".join(run["interrupted_at"]) if run.get("interrupted_at") else "")]
    if run.get("not_run"):
        n = run["not_run"]
        parts.append(f"{n} checklist step{'' if n == 1 else 's'} not run")
    text = "; ".join(parts)
    if run.get("status") in UNFINISHED:
        text += ": rerun the plan, the migration continues from its recorded state"
    return text
