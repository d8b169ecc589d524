"""`junit.xml` of a plan run: one test suite, one test case per step result.

Layout (xunit2 as CI servers read it)::

    <testsuites name tests failures errors time>
      <testsuite name tests failures errors skipped time timestamp hostname>
        <properties><property name value/>...</properties>      run metadata
        <testcase classname="<plan>.<table or section>" name="<ID>[ <table>]" time>
          <properties>...</properties>                           item text, status, key evidence
          <failure message/> | <error message/> | <skipped message/>
                                 failed | interrupted | blocked, n/a, needs-attestation, not run
          <system-out>SQL statements</system-out>
        </testcase>
        <testcase classname="<plan>.run" name="run verdict">      only when the run did not finish:
          <error type="interrupted|incomplete" message/>          CI must not show it green
        </testcase>
      </testsuite>
    </testsuites>

The input is the already redacted, JSON-like run of `tablemig.report.model`.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

from .. import version
from ..checklist.items import ITEMS
from ..checklist.outcome import verdict
from .format import mapping

SKIPPED = ("blocked", "not-applicable", "needs-attestation", "deferred", "not-run")
ERRORS = ("interrupted", "running")
MAX_VALUE = 300
MAX_MESSAGE = 1000
MAX_PROPERTIES = 60

# Characters XML 1.0 does not allow (control characters other than tab, LF, CR; surrogates).
_INVALID_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: Any, limit: int | None = None) -> str:
    s = _INVALID_XML.sub("\ufffd", "" if text is None else str(text))
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    return s


def _seconds(v: Any) -> str:
    try:
        return f"{max(float(v), 0.0):.3f}"
    except (TypeError, ValueError):
        return "0.000"


def _iso(ts: Any) -> str:
    try:
        return dt.datetime.fromtimestamp(float(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


ROLE_KEYS = ("database_role", "db_role", "role", "db_user", "current_user", "session_user")


def database_role(facts: dict[str, Any]) -> str | None:
    """The database role the run connected as, when a step recorded it."""
    for key in ROLE_KEYS:
        if facts.get(key) not in (None, ""):
            return str(facts[key])
    return None


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def _flatten(evidence: dict[str, Any]) -> list[tuple[str, str]]:
    """Scalar evidence values (and scalar members of dicts / short scalar lists), prefixed;
    the top-level scalars first."""
    out: list[tuple[str, str]] = []

    def add(name: str, value: Any, depth: int) -> None:
        if _scalar(value):
            out.append((name, "" if value is None else str(value)))
        elif isinstance(value, dict) and depth < 2:
            for k, v in value.items():
                add(f"{name}.{k}", v, depth + 1)
        elif isinstance(value, list) and all(_scalar(x) for x in value):
            out.append((name, ", ".join("" if x is None else str(x) for x in value)))
        elif isinstance(value, list | dict):
            out.append((name, f"({len(value)} {'entries' if isinstance(value, list) else 'keys'}; see report.html)"))

    # the step's own scalar values first: they survive the cap on properties (MAX_PROPERTIES)
    # that the members of a large dict would otherwise fill
    for key, value in sorted(evidence.items(), key=lambda kv: not _scalar(kv[1])):
        add(f"evidence.{key}", value, 0)
    return out


def _property(parent: ET.Element, name: str, value: Any) -> None:
    ET.SubElement(parent, "property", name=_clean(name, 200), value=_clean(value, MAX_VALUE))


def _classname(plan: str, step: dict[str, Any]) -> str:
    if step.get("table"):
        return f"{plan}.{step['table']}"
    item = ITEMS.get(step.get("id", ""))
    section = step.get("section") or (item.section if item else "Other")
    return f"{plan}." + (re.sub(r"[^0-9A-Za-z]+", "_", str(section)).strip("_") or "Other")


def _statements_text(statements: list[dict[str, Any]]) -> str:
    parts = []
    for i, st in enumerate(statements, 1):
        meta = [f"site={st.get('site')}", "executed" if st.get("executed") else "not executed (dry run)"]
        if st.get("duration_ms") is not None:
            meta.append(f"duration_ms={st.get('duration_ms')}")
        if st.get("rows") is not None:
            meta.append(f"rows={st.get('rows')}")
        if st.get("error"):
            meta.append(f"error={st.get('error')}")
        sql = str(st.get("sql") or "").strip()
        parts.append(f"-- [{i}] {'; '.join(meta)}\n{sql}{'' if sql.endswith(';') else ';'}")
    return "\n\n".join(parts)


def junit_tree(run: dict[str, Any]) -> ET.ElementTree[ET.Element]:
    """The run's JUnit XML as a tree whose root, `<testsuites>`, is always there."""
    plan = str(run.get("plan") or "plan")
    steps = [s for s in run.get("steps") or [] if isinstance(s, dict) and s.get("id")]
    failures = sum(1 for s in steps if s.get("status") == "failed")
    skipped = sum(1 for s in steps if s.get("status") in SKIPPED)
    unfinished = run.get("status") in ("interrupted", "incomplete")
    errors = sum(1 for s in steps if s.get("status") in ERRORS) + int(unfinished)
    tests = len(steps) + int(unfinished)
    started, finished = run.get("started"), run.get("finished")
    try:
        total_time = float(finished) - float(started)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        total_time = sum(float(s.get("duration_s") or 0) for s in steps)

    suites = ET.Element("testsuites", name=_clean(plan), tests=str(tests), failures=str(failures),
                        errors=str(errors), time=_seconds(total_time))
    suite = ET.SubElement(suites, "testsuite", name=_clean(plan), tests=str(tests), failures=str(failures),
                          errors=str(errors), skipped=str(skipped), time=_seconds(total_time),
                          timestamp=_iso(started), hostname=_clean(run.get("host") or ""))
    props = ET.SubElement(suite, "properties")
    facts = run.get("facts") or {}
    meta = {"plan": plan, "module": run.get("module"), "mode": run.get("mode"), "run_id": run.get("run_id"),
            "executed_by": facts.get("executed_by"), "database_role": database_role(facts),
            "host": run.get("host"), "started": _iso(started), "finished": _iso(finished),
            "status": run.get("status"), "verdict": verdict(run),
            "tablemig_version": (run.get("tool") or {}).get("version") or version()}
    for name, value in meta.items():
        if value not in (None, ""):
            _property(props, name, value)
    # the steps per status (JUnit itself knows only passed, failed, skipped and errors): the
    # same counts as pytest's terminal and the report
    for status, n in sorted(Counter(str(s.get("status")) for s in steps).items()):
        _property(props, f"steps_{status.replace('-', '_')}", n)

    for s in steps:
        _testcase(suite, plan, s)
    if unfinished:
        case = ET.SubElement(suite, "testcase", classname=_clean(f"{plan}.run"), name="run verdict", time="0.000")
        message = str(run.get("headline") or run.get("status"))
        ET.SubElement(case, "error", message=_clean(message, MAX_MESSAGE), type=str(run.get("status"))).text = \
            _clean(message)
    ET.indent(suites)
    return ET.ElementTree(suites)


def _testcase(suite: ET.Element, plan: str, s: dict[str, Any]) -> None:
    """One step as a test case: its properties, its evidence, its outcome, its statements."""
    sid, table, status = str(s["id"]), s.get("table"), str(s.get("status") or "unknown")
    item = ITEMS.get(sid)
    case = ET.SubElement(suite, "testcase", classname=_clean(_classname(plan, s)),
                         name=_clean(f"{sid} {table}" if table else sid), time=_seconds(s.get("duration_s")))
    cprops = ET.SubElement(case, "properties")
    _property(cprops, "id", sid)
    _property(cprops, "text", s.get("text") or (item.text if item else ""))
    _property(cprops, "section", s.get("section") or (item.section if item else ""))
    if table:
        _property(cprops, "table", table)
    _property(cprops, "status", status)
    if s.get("reason"):
        _property(cprops, "reason", s["reason"])
    flat = _flatten(mapping(s.get("evidence")))
    for name, value in flat[:MAX_PROPERTIES]:
        _property(cprops, name, value)
    if len(flat) > MAX_PROPERTIES:
        _property(cprops, "evidence.truncated", f"{len(flat) - MAX_PROPERTIES} more values in report.html")
    _outcome(case, status, str(s.get("reason") or ""))
    statements = [st for st in s.get("statements") or [] if isinstance(st, dict)]
    if statements:
        ET.SubElement(case, "system-out").text = _clean(_statements_text(statements))


def _outcome(case: ET.Element, status: str, reason: str) -> None:
    """The failure, error or skip element of a step that did not pass."""
    if status == "failed":
        fail = ET.SubElement(case, "failure", message=_clean(reason or "failed", MAX_MESSAGE), type="failed")
        fail.text = _clean(reason or "failed")
    elif status in ERRORS:
        err = ET.SubElement(case, "error", message=_clean(reason or status, MAX_MESSAGE), type=status)
        err.text = _clean(reason or status)
    elif status in SKIPPED:
        ET.SubElement(case, "skipped", message=_clean(f"{status}: {reason}" if reason else status, MAX_MESSAGE),
                      type=status)


def write_junit(out: Path, run: dict[str, Any]) -> Path:
    path = out / "junit.xml"
    junit_tree(run).write(path, encoding="utf-8", xml_declaration=True)
    return path
