"""Plan modules: the short form (PLAN only, every checklist item made by the plugin) gives the
same test ids, outcomes and reports as the long form it replaces (one `@step` function per
item, kept as tests/fixtures/orders_migration_long.py); `@after` and `@replace` add to an
item; a module that is wrong says what and how to fix it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from conftest import FreshDb, new_database
from tablemig.checklist.items import ITEMS, ORDER, TEST_NAMES
from tablemig.cli.newplan import render_plan
from tablemig.config.plan import TableConfig
from tablemig.errors import InputError
from tablemig.plugin.plan_module import read_plan_module
from tablemig.sandbox.demo_data import create_demo_data

REPO = Path(__file__).resolve().parents[1]
LONG_FORM = REPO / "tests" / "fixtures" / "orders_migration_long.py"
SHORT_FORM = REPO / "plans" / "orders_migration.py"


def _pytest(folder: Path, plan: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """pytest on `folder/plan`, with `folder` as rootdir (so that node ids and JUnit class names
    read as in the repository: plans.orders_migration)."""
    return subprocess.run([sys.executable, "-m", "pytest", plan, "-p", "no:cacheprovider", "--rootdir", ".", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=folder)


def _forms(tmp_path: Path) -> dict[str, Path]:
    """The long and the short form of the demo plan, each as plans/orders_migration.py of its own folder."""
    out = {}
    for form, source in (("long", LONG_FORM), ("short", SHORT_FORM)):
        (tmp_path / form / "plans").mkdir(parents=True)
        shutil.copy(source, tmp_path / form / "plans" / "orders_migration.py")
        out[form] = tmp_path / form
    return out


def _collected(folder: Path, plan: str, *args: str) -> list[str]:
    proc = _pytest(folder, plan, "--collect-only", "-q", *args, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return [line for line in proc.stdout.splitlines() if "::" in line]


def _expected_ids(plan: str, tables: list[str]) -> list[str]:
    return [f"{plan}::{TEST_NAMES[i]}[{t}]" if ITEMS[i].per_table else f"{plan}::{TEST_NAMES[i]}"
            for i in ORDER for t in (tables if ITEMS[i].per_table else [""])]


def test_the_short_form_collects_the_long_forms_test_ids(tmp_path: Path) -> None:
    forms = _forms(tmp_path)
    long_ids = _collected(forms["long"], "plans/orders_migration.py")
    assert long_ids == _expected_ids("plans/orders_migration.py", ["public.orders"])
    assert _collected(forms["short"], "plans/orders_migration.py") == long_ids
    chosen = ["-k", "pre_1_1 or ex_4_1 or contacts", "--table", "public.orders"]
    assert _collected(forms["short"], "plans/orders_migration.py", *chosen) == \
        _collected(forms["long"], "plans/orders_migration.py", *chosen)


def test_a_plan_with_additions_collects_the_checklist_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "additions.py").write_text(ADDITIONS)
    assert _collected(tmp_path, "additions.py") == _expected_ids("additions.py", ["public.orders"])


def test_new_plan_writes_the_short_form(tmp_path: Path) -> None:
    plan = tmp_path / "two_tables.py"
    plan.write_text(render_plan(name="two_tables", path=str(plan), tables=[
        TableConfig("shop_a.orders", "created_date", retention=0.1),
        TableConfig("shop_b.orders", "d", cutoff="2025-01-01")]))
    source = plan.read_text()
    assert "def test_" not in source and "@step" not in source and "PLAN = PlanConfig(" in source
    assert _collected(tmp_path, plan.name) == _expected_ids(plan.name, ["shop_a.orders", "shop_b.orders"])


# -- the same run, step by step, in both forms ------------------------------------------------------

def _outcome(folder: Path, db: FreshDb, mode: str) -> dict[str, Any]:
    """Run the plan; what CI and auditors see of the run, without timings and values."""
    junit = folder / f"pytest-{mode}.xml"
    proc = _pytest(folder, "plans/orders_migration.py", "-q", "--active-dsn", db.dsn, "--passive-dsn",
                   str(db.passive_dsn), "--reports-dir", "reports", "--junitxml", str(junit),
                   *(["--execute"] if mode == "execute" else []))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    run_dir = (folder / "reports" / "orders_migration" / "latest").resolve()
    run = json.loads((run_dir / "run.json").read_text())
    assert run["mode"] == mode

    def cases(path: Path) -> list[tuple[str | None, str | None, str, str | None]]:
        out = []
        for case in ET.parse(path).getroot().iter("testcase"):
            outcome = next((e.tag for e in case if e.tag in ("failure", "error", "skipped")), "passed")
            status = next((p.get("value") for p in case.iter("property") if p.get("name") == "status"), None)
            out.append((case.get("classname"), case.get("name"), outcome, status))
        return out

    return {"pytest junit": cases(junit), "tablemig junit": cases(run_dir / "junit.xml"),
            "run": {k: run[k] for k in ("plan", "module", "mode", "status", "not_run")},
            "steps": [(s["id"], s["table"], s["status"], s["text"], s["section"]) for s in run["steps"]],
            "report": (run_dir / "report.html").exists()}


def test_the_short_form_gives_the_long_forms_junit_and_report(
        fresh_db: FreshDb, active: Any, active_dsn: str, passive_dsn: str | None, tmp_path: Path) -> None:
    forms = _forms(tmp_path)
    with new_database(active, active_dsn, passive_dsn) as other:
        for db in (fresh_db, other):
            with db.connect() as conn:
                create_demo_data(conn, 5000)
        # a dry run changes nothing: both forms on one database; each form executes on its own
        dry = {form: _outcome(folder, fresh_db, "dry-run") for form, folder in forms.items()}
        done = {"long": _outcome(forms["long"], fresh_db, "execute"),
                "short": _outcome(forms["short"], other, "execute")}
    for outcome in (dry, done):
        assert outcome["short"] == outcome["long"]
        names = [name for _, name, _, _ in outcome["long"]["pytest junit"]]
        assert names == [i.split("::")[1] for i in _expected_ids("m", ["public.orders"])]
        assert {c for c, _, _, _ in outcome["long"]["pytest junit"]} == {"plans.orders_migration"}
        assert [s[0] for s in outcome["long"]["steps"]] == [s.split(" ")[0] for s in
                                                          [n for _, n, _, _ in outcome["long"]["tablemig junit"]]]
    assert dict.fromkeys(s for _, _, s, _, _ in done["short"]["steps"]).keys() >= {"passed"}
    assert done["short"]["run"]["status"] == "passed"


# -- what a DBA adds ------------------------------------------------------------------------------------

ADDITIONS = '''
from tablemig.checklist.context import StepContext
from tablemig.config.plan import PlanConfig, TableConfig, after, replace

PLAN = PlanConfig(name="additions", tables=[TableConfig("public.orders", "created_date", retention=0.1)])
seen = []


@replace("PRE-3.2")
def notify_by_phone(ctx: StepContext) -> None:
    ctx.evidence(called=["DBA Lead", "Operations"])
    ctx.attest()


@after("EX-1.3")
def cutoff_documented(ctx: StepContext) -> None:
    assert ctx.result.evidence["rows_total"] == 3000  # the item's own evidence: it ran first
    ctx.evidence(checked_by_plan="rows_total")


@after("PRE-3.3")
def test_dashboard_reachable(ctx: StepContext) -> None:  # a test_ name, and still no test of its own
    assert False, "our dashboard is down"
'''


def test_after_and_replace_add_to_the_generated_items(fresh_db: FreshDb, tmp_path: Path) -> None:
    with fresh_db.connect() as conn:
        create_demo_data(conn, 3000)
    (tmp_path / "additions.py").write_text(ADDITIONS)
    proc = _pytest(tmp_path, "additions.py", "-q", "--active-dsn", fresh_db.dsn, "--reports-dir", "reports",
                   "--attest", "PRE-3.2=carol", "-k", "pre_3 or ex_1_3 or contacts")
    assert proc.returncode == 1, proc.stdout[-4000:]
    run = json.loads((tmp_path / "reports" / "additions" / "latest" / "run.json").read_text())
    steps = {s["id"]: s for s in run["steps"]}
    assert [s["id"] for s in run["steps"]] == ["PRE-3.1", "PRE-3.2", "PRE-3.3", "PRE-3.4", "EX-1.3", "CONTACTS"]
    assert steps["PRE-3.2"]["status"] == "attested"  # carried out by the plan's own function
    assert steps["PRE-3.2"]["evidence"]["called"] == ["DBA Lead", "Operations"]
    assert steps["PRE-3.2"]["evidence"]["replaced_by"].startswith("notify_by_phone (additions.py:")
    assert "audiences" not in steps["PRE-3.2"]["evidence"]  # the library's step did not run
    # a failed check fails its item, names itself, and blocks what follows (not the contacts)
    assert steps["PRE-3.3"]["status"] == "failed"
    assert steps["PRE-3.3"]["reason"].startswith("test_dashboard_reachable (additions.py:")
    assert "after PRE-3.3: our dashboard is down" in steps["PRE-3.3"]["reason"]
    assert steps["PRE-3.4"]["status"] == "blocked" and steps["PRE-3.4"]["reason"] == "blocked by PRE-3.3"
    assert steps["EX-1.3"]["status"] == "blocked"
    assert steps["CONTACTS"]["status"] == "warning"  # never blocked; the plan names no contacts

    # without the failing check, the @after of EX-1.3 runs after the library's step
    (tmp_path / "additions.py").write_text(ADDITIONS.replace('assert False, "our dashboard is down"', "pass"))
    proc = _pytest(tmp_path, "additions.py", "-q", "--active-dsn", fresh_db.dsn, "--reports-dir", "reports",
                   "-k", "ex_1_3")
    assert proc.returncode == 0, proc.stdout[-4000:]
    run = json.loads((tmp_path / "reports" / "additions" / "latest" / "run.json").read_text())
    (step,) = run["steps"]
    assert step["status"] == "passed" and step["evidence"]["checked_by_plan"] == "rows_total"
    assert step["evidence"]["checks_after"][0].startswith("cutoff_documented (additions.py:")


# -- a wrong plan module --------------------------------------------------------------------------------

HEAD = '''
from tablemig.config.plan import Attestation, PlanConfig, TableConfig, after, replace, step

PLAN = PlanConfig(name="p", tables=[TableConfig("public.orders", "created_date", retention=0.1)])
'''

WRONG = {
    "unknown item": ('@after("EX-9.9")\ndef check(ctx): pass',
                     "@after('EX-9.9') on check (wrong_plan.py:5): unknown checklist item",
                     "use an id of the checklist"),
    "replaced twice": ('@replace("PRE-3.2")\ndef a(ctx): pass\n@replace("PRE-3.2")\ndef b(ctx): pass',
                       "PRE-3.2 has 2 @replace functions: a (wrong_plan.py:5), b (wrong_plan.py:7)",
                       "an item is carried out once"),
    "two checks after one item": ('@after("EX-4.1")\ndef a(ctx): pass\n@after("EX-4.1")\ndef b(ctx): pass',
                                  "EX-4.1 has 2 @after functions", "put the checks into one function"),
    "both forms": ('@step("EX-4.1")\ndef test_x(ctx): pass\n@after("EX-4.1")\ndef check(ctx): pass',
                   "wrong_plan mixes the two plan forms: @step test functions (test_x) and @after/@replace"
                   " (check (wrong_plan.py:7))", "remove the @step functions"),
    "a generated name taken": ("def test_pre_3_2_notify_stakeholders(ctx): pass",
                               "wrong_plan defines test_pre_3_2_notify_stakeholders, the test the plugin makes for"
                               " PRE-3.2", "@replace('PRE-3.2')"),
    "unknown long-form item": ('@step("EX-9")\ndef test_x(ctx): pass',
                               "@step('EX-9') on test_x: unknown checklist item", "use an id of the checklist"),
    "unknown attested item": ('PLAN = PlanConfig(name="p", tables=PLAN.tables, attestations={"X-1": Attestation("a")})',
                              "attestation for unknown checklist item 'X-1'", "e.g. PRE-3.2"),
}


def _module(source: str) -> types.ModuleType:
    module = types.ModuleType("wrong_plan")
    exec(compile(textwrap.dedent(source), "wrong_plan.py", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("case", list(WRONG))
def test_a_wrong_plan_module_names_the_problem_and_the_fix(case: str) -> None:
    body, problem, fix = WRONG[case]
    with pytest.raises(InputError) as err:
        read_plan_module(_module(HEAD + body))
    assert problem in err.value.problem, err.value.problem
    assert fix in err.value.fix, err.value.fix


def test_two_decorated_functions_of_one_name_are_refused_when_the_module_is_read() -> None:
    with pytest.raises(InputError) as err:
        _module(HEAD + '@after("EX-4.1")\ndef check(ctx): pass\n@after("EX-3.2")\ndef check(ctx): pass')
    assert "wrong_plan has two functions named check with @after or @replace" in err.value.problem
    assert "own name" in err.value.fix


def test_forms_read_right() -> None:
    both = '@after("EX-4.1")\n@replace("EX-4.2")\ndef check(ctx): pass\nalias = check'
    short = read_plan_module(_module(HEAD + both))
    assert short is not None and not short.long_form
    assert {(a.kind, a.item_id) for a in short.additions} == {("after", "EX-4.1"), ("replace", "EX-4.2")}
    long = read_plan_module(_module(HEAD + '@step("EX-4.1")\ndef test_x(ctx): pass'))
    assert long is not None and long.long_form and long.steps == {"test_x": "EX-4.1"}
    assert read_plan_module(_module("X = 1")) is None


def test_a_wrong_plan_module_is_a_collection_error_naming_the_fix(tmp_path: Path) -> None:
    (tmp_path / "wrong_plan.py").write_text(HEAD + WRONG["replaced twice"][0])
    proc = _pytest(tmp_path, "wrong_plan.py", "--collect-only", "-q", timeout=120)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, proc.stdout
    assert "ERROR collecting wrong_plan.py" in proc.stdout
    assert "PRE-3.2 has 2 @replace functions" in proc.stdout and "fix: keep one" in proc.stdout
    assert "Traceback" not in proc.stdout
