"""`pytest PLAN --rehearse`: the whole plan, with --execute, on a clone of the active site.

The active site is only read (its schema and statistics); the plan runs on a throwaway
sandbox filled with synthetic rows (`tablemig.rehearsal`, `tablemig.plugin.rehearse_sites`).
The run is reported like a real one, marked as a rehearsal: `mode` "rehearsal" in run.json,
junit.xml and report.html, its headline, the terminal, and the run directory's name; next to
run.json, `rehearsal.json` holds what was cloned and made, and the duration estimated at
production size (`tablemig.rehearsal.estimate`), also printed at the end of the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ..errors import InputError
from ..rehearsal.estimate import estimate, summary_lines
from ..rehearsal.prepare import DEFAULT_ROWS, Scale

REHEARSAL_MARK = ("REHEARSAL on a clone of the active site's schema with synthetic rows "
                  "(the active site was only read)")
_SUMMARY = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("tablemig")
    g.addoption("--rehearse", action="store_true",
                help="run the plan with --execute on a throwaway sandbox holding the active site's schema and "
                     "synthetic rows shaped by its statistics; report it as a rehearsal with the duration "
                     "estimated at production size (the active site is only read)")
    g.addoption("--rehearse-rows", type=int, default=None, metavar="N",
                help=f"with --rehearse: rows of the largest plan table in the rehearsal (default {DEFAULT_ROWS}); "
                     "every table is scaled by the same fraction")
    g.addoption("--rehearse-fraction", type=float, default=None, metavar="F",
                help="with --rehearse: the share of every table's rows to make instead (e.g. 0.001)")
    g.addoption("--rehearse-schema", default=None, metavar="FILE",
                help="with --rehearse: load this schema (plain SQL or a pg_dump archive) instead of dumping "
                     "the active site's (a plan module may name one as REHEARSAL_SCHEMA)")


def rehearsing(config: pytest.Config) -> bool:
    return bool(config.getoption("--rehearse", default=False))


@pytest.hookimpl(tryfirst=True)  # before the plugins that read --execute
def pytest_configure(config: pytest.Config) -> None:
    if not rehearsing(config):
        extra = [o for o in ("--rehearse-rows", "--rehearse-fraction", "--rehearse-schema")
                 if config.getoption(o) is not None]
        if extra:
            raise pytest.UsageError(f"{', '.join(extra)} need --rehearse")
        return
    try:
        Scale(rows=config.getoption("--rehearse-rows"), fraction=config.getoption("--rehearse-fraction"))
    except InputError as exc:
        raise pytest.UsageError(f"--rehearse: {exc.problem} ({exc.fix})") from None
    config.option.execute = True  # on the rehearsal's sandbox, never on the active site
    from . import rehearse_sites

    # registered now, after every entry point: its fixtures replace the sites' ones
    config.pluginmanager.register(rehearse_sites, "tablemig-rehearse-sites")


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not rehearsing(config):
        return []
    return [f"tablemig: {REHEARSAL_MARK}; the plan runs with --execute on a throwaway sandbox"]


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)


def mark_run(out: Path) -> tuple[Path, dict[str, Any]]:
    """Mark the run written in `out` as a rehearsal: rehearsal.json with the estimate, run.json's
    mode and headline, the reports rendered again, the directory renamed `…-rehearsal-…`.
    Returns the directory and the run."""
    run = json.loads((out / "run.json").read_text())
    facts = run.setdefault("facts", {})
    prepared = facts.get("rehearsal")
    run["mode"] = "rehearsal"
    if not str(run.get("headline", "")).startswith("REHEARSAL"):
        run["headline"] = f"{REHEARSAL_MARK}: {run.get('headline', '')}"
    if isinstance(prepared, dict):
        est = estimate(run, prepared)
        facts["rehearsal"] = {**prepared, "estimate": est}
        run["rehearsal"] = {"file": "rehearsal.json", "measured_s": est["measured_s"],
                            "estimated_production_s": est["estimated_s"], "model": est["model"]}
        (out / "rehearsal.json").write_text(_dumps(facts["rehearsal"]))
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
    (out / "run.json").write_text(_dumps(run))
    from ..report.model import render_reports

    render_reports(out, run)
    return out, run


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Any:
    """After the run is written (by the plan's last process): mark it as a rehearsal."""
    result = yield
    config = session.config
    if not rehearsing(config):
        return result
    from ..report.writer import OUTCOME

    outcome = config.stash.get(OUTCOME, None)
    if outcome and outcome.get("dir"):
        out, run = mark_run(Path(outcome["dir"]))
        outcome.update(dir=str(out), headline=run["headline"])
        prepared = (run.get("facts") or {}).get("rehearsal")
        if isinstance(prepared, dict) and "estimate" in prepared:
            config.stash[_SUMMARY] = summary_lines(prepared, prepared["estimate"])
    return result


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(_SUMMARY, None)
    if not rehearsing(config) or lines is None:
        return
    terminalreporter.write_sep("-", "tablemig rehearsal: duration estimated at production size")
    for line in lines:
        terminalreporter.write_line(line)
