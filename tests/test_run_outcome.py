"""The verdict of a run from its step results (no database): a run that did not get to its
end is never reported passed, in run.json's fields, junit.xml or report.html."""

from __future__ import annotations

from typing import Any

from tablemig.checklist.figures import backfill_figures, recommendation
from tablemig.checklist.items import ITEMS, ORDER
from tablemig.checklist.outcome import close_unfinished, complete, headline, verdict
from tablemig.checklist.record import StepResult
from tablemig.checklist.steps.summary import placeholders
from tablemig.report.junit import junit_tree
from tablemig.report.model import render_html


def _step(item: str, status: str, table: str | None = None) -> dict[str, Any]:
    return {"id": item, "table": table, "status": status, "reason": "", "started": 1.0, "duration_s": 0.5,
            "text": ITEMS[item].text, "section": ITEMS[item].section, "evidence": {}, "statements": []}


def _expected() -> list[list[Any]]:
    return [[i, "public.t" if ITEMS[i].per_table else None] for i in ORDER]


def test_a_step_never_ended_is_interrupted_not_passed() -> None:
    running = StepResult("EX-2.2", "public.t", started=1.0)
    done = StepResult("EX-2.1", "public.t", status="passed")
    assert running.status == "running"
    assert close_unfinished([done, running], interrupted=True, now=11.0) == [running]
    assert (running.status, running.duration_s) == ("interrupted", 10.0) and done.status == "passed"
    assert "rerun the plan" in running.reason


def test_verdicts() -> None:
    first = [_step(i, "passed", "public.t" if ITEMS[i].per_table else None) for i in ORDER[:24]]
    steps = [*first, _step("EX-2.2", "interrupted", "public.t")]
    out = complete(steps, _expected(), interrupted=False)
    assert out == {"status": "interrupted", "interrupted_at": ["EX-2.2 public.t"], "not_run": 25}
    assert [s["id"] for s in steps] == ORDER and steps[-1]["status"] == "not-run"
    assert "interrupted during EX-2.2 public.t" in steps[-1]["reason"]
    assert headline({**out}).startswith("run INTERRUPTED during EX-2.2 public.t; 25 checklist steps not run")
    # pytest interrupted between two steps: no step was running, the run is still interrupted
    assert complete([_step("PRE-1.1a", "passed")], _expected(), interrupted=True)["status"] == "interrupted"
    # steps missing for another reason (-x, a crashed worker)
    assert complete([_step("PRE-1.1a", "passed")], _expected(), interrupted=False)["status"] == "incomplete"
    assert complete([_step("PRE-1.1a", "failed")], _expected(), interrupted=False)["status"] == "failed"
    assert complete([_step("PRE-1.1a", "passed")], [["PRE-1.1a", None]], interrupted=False)["status"] == "passed"


def test_junit_and_html_of_an_interrupted_run() -> None:
    steps = [_step("PRE-1.1a", "passed"), _step("EX-2.2", "interrupted", "public.t")]
    run: dict[str, Any] = {"plan": "p", "module": "p", "mode": "execute", "started": 1.0, "finished": 2.0,
                           "facts": {}, "tables": {}, "steps": steps, "contacts": []}
    run.update(complete(steps, _expected(), interrupted=True))
    run["headline"] = headline(run)
    suite = junit_tree(run).getroot().find("testsuite")
    assert suite is not None
    errors = {c.get("name"): c.find("error") for c in suite.iter("testcase") if c.find("error") is not None}
    assert set(errors) == {"EX-2.2 public.t", "run verdict"} and suite.get("errors") == "2"
    skipped = [s for c in suite.iter("testcase") if (s := c.find("skipped")) is not None]
    assert len(skipped) == run["not_run"] and all(s.get("type") == "not-run" for s in skipped)
    html = render_html(run)
    assert "p · execute · INTERRUPTED" in html and 'id="unfinished"' in html
    assert 'data-status="interrupted"' in html and html.count('data-status="not-run"') == run["not_run"]


def test_verdict_in_words_never_flatters() -> None:
    """A run that passed with sign-offs pending and warnings says so; a bare "passed" only
    when nothing is open."""
    steps = [_step("PRE-1.1a", "passed"), _step("PRE-3.2", "needs-attestation"), _step("PRE-3.3", "needs-attestation"),
             _step("CONTACTS", "warning"), _step("NOTES", "not-applicable")]
    assert verdict({"status": "passed", "steps": steps}) == "passed with 2 sign-offs pending and 1 warning"
    assert headline({"status": "passed", "steps": steps}).startswith(
        "run PASSED WITH 2 SIGN-OFFS PENDING AND 1 WARNING")
    assert verdict({"status": "passed", "steps": steps[:1] + steps[-1:]}) == "passed"
    assert verdict({"status": "failed", "steps": steps}) == "failed"
    dry = [_step("EX-2.2", "dry-run", "public.t"), _step("EX-2.3", "dry-run", "public.t")]
    assert verdict({"status": "passed", "steps": dry}) == "passed with 2 steps only planned (dry run)"
    html = render_html({"plan": "p", "mode": "execute", "status": "passed", "steps": steps})
    assert 'data-verdict="passed with 2 sign-offs pending and 1 warning"' in html
    junit = junit_tree({"plan": "p", "mode": "execute", "status": "passed", "steps": steps}).getroot()
    props = {p.get("name"): p.get("value") for p in junit.iter("property")}
    assert props["verdict"] == "passed with 2 sign-offs pending and 1 warning" and props["tablemig_version"]


def test_placeholder_contacts_are_named() -> None:
    """A template's "[Name]", an empty field or an address at a documentation domain is no
    way to reach anyone; a real contact has none."""
    assert placeholders({"name": "[Name]", "phone": "[Phone]", "email": "[Email]"}) == [
        "name '[Name]'", "phone '[Phone]'", "email '[Email]'"]
    assert placeholders({"name": "Ana", "phone": "", "email": "ana@example.com"}) == [
        "phone empty", "email 'ana@example.com'"]
    assert placeholders({"name": "Ana Ruiz", "phone": "+34 600 000 000", "email": "ana@shop.es"}) == []


def test_one_computation_of_the_backfill_rate() -> None:
    """The rate is the rows copied over the backfill's time; the suggested batch size is what
    that rate copies in the target batch time, so the two never disagree."""
    facts = {"rows_copied": 20000, "timings": {"backfill": 0.128},
             "throughput": [{"batch_rows": 5000, "batch_seconds": 0.016, "batch_size": 5000}] * 4}
    fig = backfill_figures(facts, 5000)
    assert fig is not None and fig["rows_per_second"] == 156250
    assert fig["suggested_batch_size"] == 78000 and fig["far"]
    advice = recommendation(fig) or ""
    assert "78,000" in advice and "156,250 rows/s" in advice and "configured: 5,000" in advice
    assert backfill_figures({}, None) is None

