"""The reports of a plan run, written next to `run.json` by `tablemig.report.writer.finish_run`:

* `report.html` — one self-contained page for auditors (inline CSS, charts as `data:` PNGs,
  no external reference), rendered from `tablemig/report/templates/report.html.j2`;
* `junit.xml` — one test case per step result, for CI (`tablemig.report.junit`);
* `cutoff_distribution_<table>.csv`, `reconciliation_<table>.csv` — per table, when measured.

The run dict is first turned into plain JSON-like data with every string passed through
`tablemig.pg.connect.redact`, so no report can show a password. Any subset of checklist steps and
any missing fact is fine: absent data is reported as "not run" / "not measured".
"""

from __future__ import annotations

import datetime as dt
import re
import traceback
from collections import Counter, defaultdict
from importlib import resources
from pathlib import Path
from typing import Any

from .. import version
from ..checklist.figures import batch_text, recommendation
from ..checklist.items import ITEMS, ORDER
from ..checklist.outcome import NOT_RUN, UNFINISHED, verdict
from ..checklist.wording import fmt, fmt_duration, num
from ..pg.connect import redact
from .charts import replication_context, table_context
from .format import columns, fmt_ts, mapping, plain, records, safe_name
from .junit import database_role, write_junit

STATUS_LABELS = {
    "passed": "Passed", "failed": "Failed", "blocked": "Blocked", "dry-run": "Dry run",
    "attested": "Attested", "needs-attestation": "Needs attestation", "not-applicable": "Not applicable",
    "not-run": "Not run", "not-evaluated": "Not evaluated", "warning": "Warning", "deferred": "Deferred",
    "interrupted": "Interrupted", "incomplete": "Incomplete", "running": "Running",
}
# Worst first: the verdict of an item with several results (one per table).
SEVERITY = ["failed", "interrupted", "blocked", "not-run", "needs-attestation", "warning", "deferred", "dry-run",
            "passed", "attested", "not-applicable"]
SC_VERDICTS = {
    "passed": "Met", "attested": "Met (attested)", "failed": "Not met", "blocked": "Not evaluated (blocked)",
    "needs-attestation": "Awaiting attestation", "dry-run": "Not evaluated (dry run)",
    "not-applicable": "Not applicable", "warning": "Met with warnings", "deferred": "Not evaluated (deferred)",
    "interrupted": "Not evaluated (run interrupted)", "not-run": "Not evaluated (not run)",
}


# -- entry point ---------------------------------------------------------------------------
def render_reports(out: Path, data: dict[str, Any]) -> None:
    """Write report.html, junit.xml and the per-table CSV files of one run into `out`.

    Each artifact is written independently; if one fails the others are still written, the
    error goes to `report_errors.txt` and a RuntimeError names it (a missing report must not
    go unnoticed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = plain(data)
    if not isinstance(run, dict):
        raise TypeError("render_reports expects the run dict of report_writer")
    errors = []
    for name, write in (("report.html", write_html), ("junit.xml", write_junit), ("CSV files", write_csvs)):
        try:
            write(out, run)
        except Exception as exc:  # noqa: BLE001 - reported below, after the other artifacts
            errors.append((name, exc, redact(traceback.format_exc())))
    if errors:
        (out / "report_errors.txt").write_text("\n\n".join(f"{n}:\n{tb}" for n, _, tb in errors))
        raise RuntimeError("tablemig reports not written: " + "; ".join(
            f"{n}: {type(e).__name__}: {redact(str(e))}" for n, e, _ in errors) + f" (see {out}/report_errors.txt)")


def status_label(status: str) -> str:
    return STATUS_LABELS.get(status, status.replace("-", " ").capitalize() if status else "Unknown")


def _worst(statuses: list[str]) -> str:
    known = [s for s in statuses if s in SEVERITY]
    if known:
        return min(known, key=SEVERITY.index)
    return statuses[0] if statuses else "not-run"


# -- context ----------------------------------------------------------------------------------
def _steps(run: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for s in run.get("steps") or []:
        if not isinstance(s, dict) or not s.get("id"):
            continue
        item = ITEMS.get(str(s["id"]))
        evidence = s.get("evidence")
        out.append({
            "id": str(s["id"]), "table": s.get("table") or None, "status": str(s.get("status") or "unknown"),
            "reason": s.get("reason") or "", "duration_s": num(s.get("duration_s")), "started": s.get("started"),
            "text": s.get("text") or (item.text if item else ""),
            "section": s.get("section") or (item.section if item else "Other steps"),
            "evidence": evidence if isinstance(evidence, dict) else ({"value": evidence} if evidence else {}),
            "statements": [st for st in s.get("statements") or [] if isinstance(st, dict)],
            "statement_checks": records(s.get("statement_checks")),
        })
    return out


def _table_names(run: dict[str, Any], steps: list[dict[str, Any]]) -> list[str]:
    names = [str(t) for t in (run.get("tables") or {})]
    for s in steps:
        if s["table"] and s["table"] not in names:
            names.append(s["table"])
    return names


def _row(step: dict[str, Any]) -> dict[str, Any]:
    not_run = step["status"] == NOT_RUN
    return {**step, "label": status_label(step["status"]), "anchor": _anchor(step["id"], step["table"]),
            "duration": "—" if not_run else fmt_duration(step["duration_s"]), "not_run": not_run}


def _not_run(item_id: str, table: str | None) -> dict[str, Any]:
    return {"id": item_id, "table": table, "status": "not-run", "label": status_label("not-run"),
            "anchor": _anchor(item_id, table),
            "reason": "No result in this run.",
            "duration": "—", "evidence": {}, "statements": [], "not_run": True}


def checklist_sections(steps: list[dict[str, Any]], tables: list[str]) -> list[dict[str, Any]]:
    """Every checklist item in ORDER, grouped by section, with one row per result (per table)."""
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in steps:
        by_id[s["id"]].append(s)
    sections: list[dict[str, Any]] = []
    for item_id in ORDER:
        item = ITEMS[item_id]
        results = by_id.pop(item_id, [])
        results.sort(key=lambda s: tables.index(s["table"]) if s["table"] in tables else -1)
        rows = [_row(s) for s in results]
        if item.per_table:
            seen = {s["table"] for s in results}
            rows += [_not_run(item_id, t) for t in tables if t not in seen]
        if not rows:
            rows.append(_not_run(item_id, None))
        if not sections or sections[-1]["name"] != item.section:
            sections.append({"name": item.section, "anchor": "sec-" + safe_name(item.section).lower(), "items": []})
        sections[-1]["items"].append({"id": item_id, "text": item.text, "per_table": item.per_table,
                                      "human": item.human, "mutating": item.mutating, "rows": rows})
    if by_id:  # steps of ids this checklist does not know (a newer plan module)
        extra: dict[str, Any] = {"name": "Other steps", "anchor": "sec-other", "items": []}
        for item_id, results in by_id.items():
            extra["items"].append({"id": item_id, "text": results[0]["text"], "per_table": False, "human": False,
                                   "mutating": False, "rows": [_row(s) for s in results]})
        sections.append(extra)
    for sec in sections:
        sec["counts"] = Counter(r["status"] for it in sec["items"] for r in it["rows"])
    return sections


def success_criteria(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for item_id in (i for i in ORDER if i.startswith("SC-")):
        results = [s for s in steps if s["id"] == item_id]
        if results:
            status = _worst([s["status"] for s in results])
            reasons = "; ".join(dict.fromkeys(s["reason"] or str(s["evidence"].get("basis") or "") for s in results
                                              if s["reason"] or s["evidence"].get("basis")))
            verdict = SC_VERDICTS.get(status, status_label(status))
        else:
            status, reasons, verdict = "not-evaluated", "", "Not evaluated"
        out.append({"id": item_id, "text": ITEMS[item_id].text, "status": status, "verdict": verdict,
                    "reason": reasons})
    return out


def server_versions(facts: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in ("server_versions", "server_version", "versions"):
        v = facts.get(key)
        if isinstance(v, dict):
            out.update({str(k): str(x) for k, x in v.items() if x not in (None, "")})
        elif v not in (None, ""):
            out.setdefault("active", str(v))
    repl = facts.get("replication")
    if isinstance(repl, dict):
        for site in ("active", "passive"):
            settings = (repl.get(site) or {}).get("settings") if isinstance(repl.get(site), dict) else None
            if isinstance(settings, dict) and settings.get("server_version"):
                out.setdefault(site, str(settings["server_version"]))
    return out


def summary(run: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any]:
    facts = run.get("facts") or {}
    started, finished = num(run.get("started")), num(run.get("finished"))
    duration = finished - started if started is not None and finished is not None else None
    counts = Counter(s["status"] for s in steps if s["status"] != NOT_RUN)  # not-run rows are counted apart
    status = run.get("status") or ("failed" if counts.get("failed") else "passed")
    said = verdict({"status": status, "steps": steps})
    return {
        "plan": run.get("plan") or "plan", "module": run.get("module"), "mode": run.get("mode") or "unknown",
        "status": status, "unfinished": status in UNFINISHED, "headline": run.get("headline") or "",
        # a run that passed with something still open is not shown as a plain pass
        "verdict": said, "verdict_class": status if said == status else "passed-with",
        # the version that wrote run.json (a report rendered again later says which made the run)
        "tool_version": (run.get("tool") or {}).get("version") or version(),
        "run_id": run.get("run_id"), "host": run.get("host"), "executed_by": facts.get("executed_by"),
        "role": database_role(facts), "started": fmt_ts(started), "finished": fmt_ts(finished),
        "duration": fmt_duration(duration), "duration_s": duration, "versions": server_versions(facts),
        "counts": sorted(counts.items(), key=lambda kv: SEVERITY.index(kv[0]) if kv[0] in SEVERITY else 99),
        "results": sum(counts.values()),
    }


# -- notes and observations ------------------------------------------------------------------
def derived_notes(run: dict[str, Any], steps: list[dict[str, Any]], summ: dict[str, Any],
                  tables: list[dict[str, Any]], sections: list[dict[str, Any]]) -> dict[str, Any]:
    """The closing notes when the plan has none of its own: issues, performance, recommendations."""
    issues = [issue for s in steps if (issue := _issue(s))]
    perf = [line for t in tables for line in _table_performance(t)]
    recs = [line for t in tables for line in _table_recommendations(t)]
    recs += _run_recommendations(run, steps, sections)
    if summ["unfinished"]:
        recs.insert(0, f"The {summ['status']} run did not get to its end: run the plan again; every step is "
                       "rerun and the migration continues from the state recorded in the database.")
    return {
        "Migration date": summ["started"].split(" ")[0] if summ["started"] != "—" else "—",
        "Executed by": summ["executed_by"] or "—", "Database role": summ["role"] or "not recorded",
        "Duration": summ["duration"], "Issues encountered": issues or ["None recorded."],
        "Performance observations": perf or ["No performance data was recorded."],
        "Recommendations": recs or ["None."],
    }


def _issue(s: dict[str, Any]) -> str | None:
    """A step that failed, was blocked, warned or was interrupted, in one line (else None)."""
    where = f" ({s['table']})" if s["table"] else ""
    said = {"failed": f"failed: {s['reason'] or 'no reason recorded'}", "blocked": s["reason"] or "blocked",
            "warning": f"warning: {s['reason'] or 'no reason recorded'}",
            "interrupted": f"interrupted: {s['reason']}"}.get(s["status"])
    return f"{s['id']}{where} {said}" if said is not None else None


def _table_performance(t: dict[str, Any]) -> list[str]:
    perf = []
    if t["timings"]:
        phases = ", ".join(f"{k} {fmt_duration(v)}" for k, v in t["timings"].items() if num(v) is not None)
        perf.append(f"{t['name']}: phase timings — {phases}.")
    fig = t["figures"]
    if fig:
        perf.append(f"{t['name']}: backfill copied {fmt(t['rows_copied'])} rows; {batch_text(fig)}.")
    if t["pacing"]:
        perf.append(f"{t['name']}: {t['pacing']}.")
    if t["lock_hold_ms"] is not None:
        perf.append(f"{t['name']}: the swap held its exclusive lock for {fmt(t['lock_hold_ms'])} ms"
                    f" ({fmt(t['swap_attempts'])} attempt(s)).")
    if t["lag"]:
        peak = max((num(x.get("lag_bytes")) or 0) for x in t["lag"])
        pauses = sum(1 for x in t["lag"] if x.get("paused"))
        perf.append(f"{t['name']}: peak replication lag {fmt(peak)} bytes over {len(t['lag'])} samples"
                    f"{f', {pauses} paused samples' if pauses else ''}.")
    return perf


def _table_recommendations(t: dict[str, Any]) -> list[str]:
    recs = []
    advice = recommendation(t["figures"]) if t["figures"] else None
    if advice:
        recs.append(f"{t['name']}: {advice}.")
    if num(t["swap_attempts"]) and (num(t["swap_attempts"]) or 0) > 1:
        recs.append(f"{t['name']}: the swap needed {fmt(t['swap_attempts'])} attempts (lock contention); "
                    "schedule the swap at a quieter time or end long transactions first.")
    if t["reconciliation"]["mismatches"]:
        recs.append(f"{t['name']}: {t['reconciliation']['mismatches']} reconciliation segment(s) differ; "
                    "investigate before sign-off.")
    return recs


def _run_recommendations(run: dict[str, Any], steps: list[dict[str, Any]],
                         sections: list[dict[str, Any]]) -> list[str]:
    """What the run as a whole asks for next."""
    recs = []
    unattested = [f"{s['id']}{' (' + s['table'] + ')' if s['table'] else ''}" for s in steps
                  if s["status"] == "needs-attestation"]
    not_run = [it["id"] for sec in sections for it in sec["items"] if all(r["not_run"] for r in it["rows"])]
    failed = [s for s in steps if s["status"] == "failed"]
    if failed:
        recs.append("Resolve the failure of " + ", ".join(sorted({s["id"] for s in failed}))
                    + " and run the plan again (the migration resumes where it stopped).")
    if unattested:
        recs.append("Record the human confirmations still missing: " + ", ".join(unattested)
                    + " (plan attestations or --attest ID=NAME).")
    if run.get("mode") == "dry-run":
        recs.append("This was a dry run: nothing was changed; review the planned SQL, then run with --execute.")
    if not_run:
        recs.append(f"{len(not_run)} checklist item(s) have no result in this run: " + ", ".join(not_run) + ".")
    return recs


def step_notes(evidence: dict[str, Any]) -> dict[str, Any]:
    """The evidence of the NOTES step with readable headings (duration_s -> Duration)."""
    out = {}
    for key, value in evidence.items():
        label = re.sub(r"_s$", "", key).replace("_", " ").strip().capitalize() or key
        out[label] = fmt_duration(value) if key.endswith("_s") and num(value) is not None else value
    return out


# -- what an auditor signs: the outcome per table, what is still open, the contents ----------
def _found(value: Any, key: str, depth: int = 0) -> Any:
    """The first value of `key` in nested evidence (dicts only, three levels)."""
    if not isinstance(value, dict) or depth > 2:
        return None
    if value.get(key) not in (None, ""):
        return value[key]
    return next((v for x in value.values() if (v := _found(x, key, depth + 1)) is not None), None)


def table_outcomes(names: list[str], table_facts: dict[str, Any], steps: list[dict[str, Any]],
                   mode: str) -> list[dict[str, Any]]:
    """Per table what the run did to it: its state, the cutoff (with its offset in the
    database's time zone), rows kept and archived, the archive's name, the swap's lock hold."""
    out = []
    for name in names:
        f = mapping(table_facts.get(name))
        mine = [s for s in steps if s["table"] == name]

        def fact(key: str, f: dict[str, Any] = f, mine: list[dict[str, Any]] = mine) -> Any:
            return f.get(key) if f.get(key) not in (None, "") else next(
                (v for s in mine if (v := _found(s["evidence"], key)) is not None), None)

        cutoff, local = fact("cutoff"), fact("cutoff_local")
        state = f.get("state") or ("unchanged (dry run)" if mode == "dry-run" else "not migrated in this run")
        out.append({
            "name": name, "anchor": f"table-{safe_name(name)}", "state": state,
            "status": _worst([s["status"] for s in mine]) if mine else "not-run",
            "cutoff": local or cutoff, "cutoff_utc": cutoff if local and str(local) != str(cutoff) else None,
            "timezone": fact("timezone") if local else None,
            "rows_keep": fact("rows_keep"), "rows_archive": fact("rows_archive"),
            # the children whose policy keeps the rows they reference live (docs/families.md)
            "kept_for": [c["child"] for c in f.get("children") or [] if c.get("policy") == "keep"],
            "rows_kept_for_children": f.get("rows_kept_for_children"),
            "archive": fact("archive_table"), "new_table": fact("new_table"),
            "lock_hold_ms": f.get("lock_hold_ms"), "swap_attempts": f.get("swap_attempts"),
        })
        # the `follow` children moved with it (docs/families.md), one row each
        out += [{"name": c["child"], "anchor": f"table-{safe_name(name)}", "state": out[-1]["state"],
                 "status": out[-1]["status"], "cutoff": None, "cutoff_utc": None, "timezone": None,
                 "follows": c.get("follows") or name, "rows_keep": c.get("rows_live"),
                 "rows_archive": c.get("rows_archived"), "kept_for": [], "rows_kept_for_children": None,
                 "archive": c.get("archive"), "new_table": None, "lock_hold_ms": None, "swap_attempts": None}
                for c in f.get("followed") or []]
    return out


def _open(step: dict[str, Any]) -> dict[str, Any]:
    """A step still open for sign-off (or doubtful): what it is and what it needs."""
    return {"id": step["id"], "table": step["table"], "text": step["text"], "reason": step["reason"],
            "anchor": _anchor(step["id"], step["table"])}


def _anchor(item_id: str, table: str | None) -> str:
    return safe_name(f"step-{item_id}-{table or ''}").rstrip("_")


def contents(sections: list[dict[str, Any]], tables: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table of contents: (anchor, title, sub-entries)."""
    return [
        {"anchor": "summary", "title": "Verdict and outcome per table", "sub": []},
        {"anchor": "open-items", "title": "Pending sign-offs and warnings", "sub": []},
        {"anchor": "success-criteria", "title": "Success criteria", "sub": []},
        {"anchor": "checklist", "title": "Checklist",
         "sub": [{"anchor": sec["anchor"], "title": sec["name"]} for sec in sections]},
        {"anchor": "tables", "title": "Tables",
         "sub": [{"anchor": f"table-{t['safe']}", "title": t["name"]} for t in tables]},
        {"anchor": "replication", "title": "Replication configuration", "sub": []},
        {"anchor": "notes", "title": "Notes and observations", "sub": []},
        {"anchor": "contacts", "title": "Emergency contacts", "sub": []},
        {"anchor": "run-details", "title": "Run details", "sub": []},
    ]


# -- statements -------------------------------------------------------------------------------
def statements_section(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The dry run's statements checked against the catalog (tablemig.checklist.statements):
    each statement with its item, table and verdict, and the count of each verdict."""
    rows = [{"item": c.get("item") or s["id"], "table": c.get("table"), "sql": c.get("sql", ""),
             "status": c.get("status", ""), "reason": c.get("reason", "")}
            for s in steps for c in s["statement_checks"]]
    return {"rows": rows, "counts": dict(Counter(r["status"] for r in rows))}


# -- writers ----------------------------------------------------------------------------------
def build_context(run: dict[str, Any]) -> dict[str, Any]:
    steps = _steps(run)
    names = _table_names(run, steps)
    facts = mapping(run.get("facts"))
    table_facts = mapping(run.get("tables"))
    sections = checklist_sections(steps, names)
    summ = summary(run, steps)
    batch_cfg = next((s["evidence"].get("config", {}).get("batch_size") for s in steps
                      if s["id"] == "EX-1.2" and isinstance(s["evidence"].get("config"), dict)), None)
    tables = [table_context(n, mapping(table_facts.get(n)),
                            [s for s in steps if s["table"] in (n, None)], batch_cfg, facts) for n in names]
    notes_step = [s for s in steps if s["id"] == "NOTES" and s["evidence"]]
    notes = step_notes(notes_step[0]["evidence"]) if notes_step else derived_notes(run, steps, summ, tables, sections)
    contacts = records(run.get("contacts"))
    run_facts = {k: v for k, v in facts.items() if k not in ("replication", "lag_samples")}
    replication = replication_context(facts, steps, any(t["lag_chart"] and t["lag_from_run"] for t in tables))
    return {
        "outcomes": table_outcomes(names, table_facts, steps, summ["mode"]),
        "pending": [_open(s) for s in steps if s["status"] == "needs-attestation"],
        "warnings": [_open(s) for s in steps if s["status"] == "warning"],
        "toc": contents(sections, tables),
        "s": summ, "sections": sections, "criteria": success_criteria(steps), "tables": tables,
        "replication": replication,
        "notes": notes, "statements": statements_section(steps),
        "notes_source": "NOTES step" if notes_step else "derived from this run",
        "contacts": contacts, "contact_columns": columns(contacts, ["role", "name", "phone", "email", "escalation"]),
        "run_facts": run_facts, "generated": fmt_ts(dt.datetime.now(dt.UTC).timestamp()),
        "not_run": sum(1 for sec in sections for it in sec["items"] for r in it["rows"] if r["not_run"]),
        "order_count": len(ORDER),
    }


def _environment() -> Any:
    import jinja2

    def load(name: str) -> str:
        return resources.files("tablemig.report.templates").joinpath(name).read_text(encoding="utf-8")

    env = jinja2.Environment(loader=jinja2.FunctionLoader(load), autoescape=True, undefined=jinja2.ChainableUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=fmt, ts=fmt_ts, duration=fmt_duration, label=status_label,
                       columns=lambda rows: columns(rows, []))
    env.tests.update(
        records=lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v),
        scalars=lambda v: isinstance(v, list) and all(x is None or isinstance(x, str | int | float | bool) for x in v),
        listish=lambda v: isinstance(v, list),
        long_text=lambda v: isinstance(v, str) and (len(v) > 100 or "\n" in v),
    )
    return env


def render_html(run: dict[str, Any]) -> str:
    html: str = _environment().get_template("report.html.j2").render(**build_context(run))
    return html


def write_html(out: Path, run: dict[str, Any]) -> Path:
    path = out / "report.html"
    path.write_text(render_html(run), encoding="utf-8")
    return path


def write_csvs(out: Path, run: dict[str, Any]) -> list[Path]:
    import json

    import pandas as pd

    def cell(v: Any) -> Any:
        return json.dumps(v) if isinstance(v, dict | list) else v

    written = []
    tables = mapping(run.get("tables"))
    for name, facts in tables.items():
        if not isinstance(facts, dict):
            continue
        for fact, prefix, preferred in (
                ("distribution", "cutoff_distribution", ["month", "record_count", "kept", "archived", "percentage"]),
                ("reconciliation", "reconciliation", ["segment", "key_from", "key_to"])):
            rows = records(facts.get(fact))
            if not rows:
                continue
            cols = columns(rows, preferred)
            if fact == "reconciliation":  # segment, range, then count/checksum per side, then match
                rest = [c for c in cols if c not in preferred and c != "match"]
                cols = [c for c in preferred if c in cols] + rest + (["match"] if "match" in cols else [])
            frame = pd.DataFrame([{c: cell(r.get(c)) for c in cols} for r in rows], columns=cols, dtype=object)
            path = out / f"{prefix}_{safe_name(str(name))}.csv"
            frame.to_csv(path, index=False)
            written.append(path)
    return written
