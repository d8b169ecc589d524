"""A written run marked as a rehearsal (`pytest PLAN --rehearse`), so that it is never taken
for a production run: `mode` "rehearsal" in run.json (and so in junit.xml and report.html),
a headline that starts with REHEARSAL, the run directory named `…-rehearsal-…`, and next to
run.json `rehearsal.json`: what was cloned and made, and the duration estimated at
production size (`tablemig.rehearsal.estimate`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..rehearsal.estimate import estimate, summary_lines
from .writer import dumps

REHEARSAL_FILE = "rehearsal.json"


def mark_run(out: Path, mark: str) -> tuple[Path, dict[str, Any]]:
    """Mark the run written in `out` as a rehearsal (headline prefixed with `mark`), render its
    reports again and rename its directory. Returns the directory and the run."""
    run = json.loads((out / "run.json").read_text())
    facts = run.setdefault("facts", {})
    prepared = facts.get("rehearsal")
    run["mode"] = "rehearsal"
    if not str(run.get("headline", "")).startswith("REHEARSAL"):
        run["headline"] = f"{mark}: {run.get('headline', '')}"
    if isinstance(prepared, dict):
        est = estimate(run, prepared)
        facts["rehearsal"] = {**prepared, "estimate": est}
        run["rehearsal"] = {"file": REHEARSAL_FILE, "measured_s": est["measured_s"],
                            "estimated_production_s": est["estimated_s"], "model": est["model"]}
        (out / REHEARSAL_FILE).write_text(dumps(facts["rehearsal"]))
    else:
        run["rehearsal"] = {"file": None, "note": "the rehearsal was not prepared: see the steps' errors"}
    name = out.name.replace("-execute-", "-rehearsal-", 1)
    if name != out.name:
        run["run_id"] = name
        target = out.with_name(name)
        os.replace(out, target)
        latest = out.parent / "latest"
        if latest.is_symlink() and os.readlink(latest) == out.name:
            latest.unlink()
            latest.symlink_to(name)
        out = target
    (out / "run.json").write_text(dumps(run))
    from .model import render_reports

    render_reports(out, run)
    return out, run


def estimate_lines(run: dict[str, Any]) -> list[str]:
    """The estimate of a marked run, as lines for the terminal (none when it was not prepared)."""
    prepared = (run.get("facts") or {}).get("rehearsal")
    if isinstance(prepared, dict) and "estimate" in prepared:
        return summary_lines(prepared, prepared["estimate"])
    return []
