"""The run reports (report.html, junit.xml, CSV files) of real plan runs.

The plan runs are real: `pytest plans/orders_migration.py --execute` in a subprocess, on its
own embedded sandbox or on a fresh database of this session's sandbox. report.html is
rendered by headless chromium (DOM dump and screenshot).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, cast

import pandas as pd
import pytest
from psycopg.conninfo import conninfo_to_dict

from tablemig.checklist.items import ITEMS, ORDER
from tablemig.checklist.wording import fmt
from tablemig.report.model import render_reports
from tablemig.sandbox.demo_data import create_demo_data

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "plans" / "orders_migration.py"
PLAN_NAME = "orders_migration"
SECRET = "S3cretPW"
SKIPPED = {"blocked", "not-applicable", "needs-attestation", "deferred"}
DISTRIBUTION_COLUMNS = ["month", "record_count", "kept", "archived", "percentage"]


# -- running a plan -----------------------------------------------------------------------------
@dataclass
class Run:
    proc: subprocess.CompletedProcess[str]
    reports: Path  # --reports-dir
    dir: Path  # reports/<plan>/<run-id>

    @property
    def data(self) -> dict[str, Any]:
        return cast("dict[str, Any]", json.loads((self.dir / "run.json").read_text()))

    def why(self) -> str:
        return f"plan run output:\n{self.proc.stdout[-6000:]}\n{self.proc.stderr[-3000:]}"


def run_plan(work: Path, *args: str) -> Run:
    """Run the plan in `work` (cwd, where its backups and notifications go), reports in work/reports."""
    reports = work / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("TABLEMIG_ACTIVE_DSN", "TABLEMIG_PASSIVE_DSN")}
    cmd = [sys.executable, "-m", "pytest", str(PLAN), "-q", "-p", "no:cacheprovider", "--reports-dir", str(reports),
           *args]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=900, env=env)
    latest = reports / PLAN_NAME / "latest"
    run = Run(proc, reports, latest.resolve())
    assert latest.is_symlink() and (run.dir / "run.json").is_file(), "no run directory was written\n" + run.why()
    return run


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One real executed run of the demo plan on its own embedded sandbox."""
    work = tmp_path_factory.mktemp("executed")
    return run_plan(work, "--execute", "--sandbox", f"--junitxml={work / 'pytest-junit.xml'}")


@pytest.fixture(scope="module")
def dry(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One real dry run of the demo plan on its own embedded sandbox."""
    return run_plan(tmp_path_factory.mktemp("dry"))


def dsn_with_password(dsn: str) -> str:
    p = conninfo_to_dict(dsn)
    return (f"host={p.get('host', '127.0.0.1')} port={p.get('port', '5432')} dbname={p['dbname']} "
            f"user={p.get('user', 'postgres')} password={SECRET}")


# -- reading HTML -------------------------------------------------------------------------------
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Any] = field(default_factory=list)  # Node or str

    def text(self) -> str:
        return " ".join(" ".join(c.text() if isinstance(c, Node) else c for c in self.children).split())

    def iter(self) -> Any:
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()


class TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse_html(text: str) -> Node:
    builder = TreeBuilder()
    builder.feed(text)
    builder.close()
    return builder.root


def step_rows(doc: Node) -> list[Node]:
    return [n for n in doc.iter() if "data-step-id" in n.attrs]


def row_of(doc: Node, step_id: str, table: str | None) -> Node:
    rows = [n for n in step_rows(doc) if n.attrs["data-step-id"] == step_id and n.attrs.get("data-table") == table]
    assert len(rows) == 1, f"expected one row for {step_id} {table or ''}, found {len(rows)}"
    return rows[0]


def png_dimensions(raw: bytes) -> tuple[int, int]:
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", raw[16:24])


def png_size(uri: str) -> tuple[int, int]:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:60]
    return png_dimensions(base64.b64decode(uri[len(prefix):], validate=True))


REFERENCE_ATTRS = {"src", "href", "srcset", "xlink:href", "action", "formaction", "poster", "data", "background"}


def external_references(doc: Node) -> list[str]:
    """Every src/href/srcset/url(...) that is neither a data: URI nor an anchor in the page, and
    anything naming http(s): or //."""
    found = []
    for n in doc.iter():
        for name, value in n.attrs.items():
            if name in REFERENCE_ATTRS:
                v = value.strip()
                if v.startswith("#") and not re.search(r"https?:|//", v):  # a link within the page
                    continue
                if not v.startswith("data:") or re.search(r"https?:|^//", v):
                    found.append(f"<{n.tag} {name}={v[:80]!r}>")
            if name == "style":
                found += [f"<{n.tag} style> url({u[:80]})" for u in re.findall(r"url\(\s*['\"]?([^'\")]*)", value)
                          if not u.startswith("data:")]
        if n.tag in ("style", "script"):
            css = " ".join(c for c in n.children if isinstance(c, str))
            found += [f"<{n.tag}> url({u[:80]})" for u in re.findall(r"url\(\s*['\"]?([^'\")]*)", css)
                      if not u.startswith("data:")]
            found += [f"<{n.tag}> @import" for _ in re.findall(r"@import|@font-face", css)]
        if n.tag == "script" and n.attrs.get("src") is not None:
            found.append("<script src>")
    return found


# -- chromium -----------------------------------------------------------------------------------
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_binary() -> str:
    if os.environ.get("TABLEMIG_TEST_BROWSER") == "no":
        pytest.skip("browser tests disabled (TABLEMIG_TEST_BROWSER=no)")
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    found = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=900, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, timeout=900, env=env)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed and could not be installed (apt-get install chromium): "
                    "report.html was not rendered in a browser")
    return found


def chromium(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="tablemig-chromium-")
    try:
        return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


# -- tests: the executed run in a browser --------------------------------------------------------
def test_report_html_in_headless_chromium(executed: Run) -> None:
    binary = chromium_binary()
    html = executed.dir / "report.html"
    assert html.is_file(), executed.why()
    dumped = chromium(binary, "--dump-dom", html.as_uri())
    assert dumped.returncode == 0 and "</html>" in dumped.stdout, dumped.stderr[-2000:]
    doc = parse_html(dumped.stdout)
    data = executed.data

    # every checklist id is there, with a status; every step result with its own status
    rows = step_rows(doc)
    assert all(r.attrs.get("data-status") for r in rows)
    assert {r.attrs["data-step-id"] for r in rows} >= set(ORDER)
    assert data["steps"], executed.why()
    for s in data["steps"]:
        row = row_of(doc, s["id"], s["table"])
        assert row.attrs["data-status"] == s["status"], (s["id"], s["table"])
        if s["reason"]:
            assert " ".join(s["reason"].split())[:60] in row.text()
    ran = {s["id"] for s in data["steps"]}
    for item_id in set(ORDER) - ran:
        assert {r.attrs["data-status"] for r in rows if r.attrs["data-step-id"] == item_id} == {"not-run"}

    # the success criteria are all listed with a verdict
    verdicts = {n.attrs["data-criterion"]: n.attrs["data-verdict"] for n in doc.iter() if "data-criterion" in n.attrs}
    assert sorted(verdicts) == [i for i in ORDER if i.startswith("SC-")]
    for s in data["steps"]:
        if s["id"].startswith("SC-"):
            assert verdicts[s["id"]] == s["status"]

    # charts: data: PNGs with a size; the cutoff distribution, and the backfill progress only
    # when it has enough batches to draw a line through (fewer are said in a sentence)
    images = [n for n in doc.iter() if n.tag == "img"]
    assert images, executed.why()
    for img in images:
        width, height = png_size(img.attrs["src"])
        assert width > 0 and height > 0
    alts = " ".join(img.attrs.get("alt", "") for img in images)
    assert "Rows per month" in alts
    samples = len(data["tables"]["public.orders"].get("throughput") or [])
    assert ("Backfill progress" in alts) == (samples >= 3), (samples, alts)

    # self-contained: nothing refers to anything outside the file
    assert external_references(doc) == []
    raw = html.read_text()
    assert not re.search(r"<script|<link|@import|@font-face|https?://", raw, re.I)

    # the screenshot an auditor would see
    shot = executed.dir / "report.png"
    made = chromium(binary, f"--screenshot={shot}", "--window-size=1400,3000", html.as_uri())
    assert shot.is_file() and shot.stat().st_size > 0, made.stderr[-2000:]
    assert png_dimensions(shot.read_bytes()) == (1400, 3000)


def _leaves(value: Any) -> list[str]:
    """The string values in nested evidence, in order."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value] if isinstance(value, str) else []


def test_report_printed_to_pdf_carries_every_evidence(executed: Run) -> None:
    """Printed to PDF by Chromium, report.html is a complete sign-off copy: every step's
    evidence (collapsed on screen) and its SQL are in the PDF's text."""
    from pypdf import PdfReader

    binary = chromium_binary()
    pdf = executed.dir / "report.pdf"
    made = chromium(binary, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", (executed.dir / "report.html").as_uri())
    assert pdf.is_file() and pdf.stat().st_size > 0, made.stderr[-2000:]
    # compared without whitespace: the PDF's lines break where the page does
    text = re.sub(r"\s+", "", "".join(page.extract_text() for page in PdfReader(pdf).pages))
    data = executed.data

    def found(value: str) -> bool:
        return re.sub(r"\s+", "", value) in text

    missing = []
    for step in data["steps"]:
        where = f"{step['id']} {step['table'] or ''}"
        evidence = step.get("evidence") or {}
        missing += [f"{where}: key {k}" for k in evidence if not found(str(k))]
        leaf = next((v for v in _leaves(evidence) if 6 <= len(v) <= 80 and "\n" not in v), None)
        if leaf is not None and not found(leaf):
            missing.append(f"{where}: value {leaf!r}")
        for st in (step.get("statements") or [])[:3]:
            if not found(st["sql"][:60]):
                missing.append(f"{where}: SQL {st['sql'][:60]!r}")
    assert not missing, missing[:20]
    assert any(step.get("evidence") for step in data["steps"])


def test_report_html_tables_and_sections(executed: Run) -> None:
    doc = parse_html((executed.dir / "report.html").read_text())
    data = executed.data
    text = doc.text()
    for heading in ("Success criteria", "Checklist", "Notes and Observations", "Emergency contacts",
                    "Replication configuration"):
        assert heading in text
    for section in dict.fromkeys(ITEMS[i].section for i in ORDER):
        assert section in text
    assert data["facts"]["executed_by"] in text
    for contact in data["contacts"]:
        assert contact["email"] in text
    for table, facts in data["tables"].items():
        block = next(n for n in doc.iter() if n.attrs.get("class", "").startswith("card table-report")
                     and n.attrs.get("data-table") == table)
        recon = facts.get("reconciliation") or []
        assert recon, executed.why()
        body = next(n for n in block.iter() if n.tag == "table" and "reconciliation" in n.attrs.get("class", ""))
        trs = [r for r in body.iter() if r.tag == "tr"]
        assert len(trs) == len(recon) + 1  # header + one row per segment
        mismatching = [r for r in trs if "mismatch" in r.attrs.get("class", "").split()]
        assert len(mismatching) == sum(1 for r in recon if not r["match"])
        assert "Swap" in block.text() and "Cutoff distribution" in block.text()
        if facts.get("lock_hold_ms") is not None:
            assert "Exclusive lock held for" in block.text()
            # what the write guard measured and did, in words (tablemig.lifecycle.pacing)
            assert facts["pacing"]["app_write_share"] == 0.9
            assert "Pacing" in block.text() and "write guard at 90%" in block.text()


# -- tests: junit.xml ------------------------------------------------------------------------------
# The common JUnit XML structure (Jenkins/Surefire junit-10.xsd and the xunit2 layout CI servers
# read), with per-testcase <properties> as most CI servers accept them: element -> (allowed
# attributes, required attributes, allowed children in order ranks).
JUNIT = {
    "testsuites": ({"name", "time", "tests", "failures", "errors", "disabled"}, set(), {"testsuite": 0}),
    "testsuite": ({"name", "tests", "failures", "errors", "skipped", "time", "timestamp", "hostname", "id",
                   "package", "group", "file", "disabled"}, {"name", "tests", "failures", "errors"},
                  {"properties": 0, "testcase": 1, "system-out": 2, "system-err": 2}),
    "properties": (set(), set(), {"property": 0}),
    "property": ({"name", "value"}, {"name", "value"}, {}),
    "testcase": ({"name", "classname", "time", "assertions", "status", "file", "line"}, {"name", "classname", "time"},
                 {"properties": 0, "skipped": 1, "error": 1, "failure": 1, "system-out": 2, "system-err": 2}),
    "failure": ({"message", "type"}, set(), {}),
    "error": ({"message", "type"}, set(), {}),
    "skipped": ({"message", "type"}, set(), {}),
    "system-out": (set(), set(), {}),
    "system-err": (set(), set(), {}),
}
TIME = re.compile(r"^\d+(\.\d{1,3})?$")


def check_junit_structure(el: ET.Element) -> None:
    assert el.tag in JUNIT, f"unexpected element <{el.tag}>"
    allowed, required, children = JUNIT[el.tag]
    assert set(el.attrib) <= allowed, f"<{el.tag}> has attributes {set(el.attrib) - allowed}"
    assert required <= set(el.attrib), f"<{el.tag}> lacks {required - set(el.attrib)}"
    if "time" in el.attrib:
        assert TIME.match(el.attrib["time"]), el.attrib["time"]
    if el.tag in ("skipped", "failure", "error") or not children:
        assert len(el) == 0, f"<{el.tag}> has child elements"
    ranks = []
    for child in el:
        assert child.tag in children, f"<{child.tag}> not allowed in <{el.tag}>"
        ranks.append(children[child.tag])
        check_junit_structure(child)
    assert ranks == sorted(ranks), f"children of <{el.tag}> out of order: {[c.tag for c in el]}"


def props(el: ET.Element) -> dict[str, str]:
    p = el.find("properties")
    return {} if p is None else {x.get("name", ""): x.get("value", "") for x in p.findall("property")}


def check_junit(run: Run) -> ET.Element:
    root = ET.parse(run.dir / "junit.xml").getroot()
    check_junit_structure(root)
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    steps = run.data["steps"]
    cases = suite.findall("testcase")
    assert len(cases) == len(steps) == int(suite.get("tests", "-1"))
    assert [c.get("name") for c in cases] == [f"{s['id']} {s['table']}" if s["table"] else s["id"] for s in steps]
    failed = sum(1 for s in steps if s["status"] == "failed")
    skipped = sum(1 for s in steps if s["status"] in SKIPPED)
    assert int(suite.get("failures", "-1")) == failed == sum(1 for c in cases if c.find("failure") is not None)
    assert int(suite.get("skipped", "-1")) == skipped == sum(1 for c in cases if c.find("skipped") is not None)
    assert int(suite.get("errors", "-1")) == 0 == sum(1 for c in cases if c.find("error") is not None)
    meta = props(suite)
    for key in ("plan", "mode", "run_id", "executed_by", "started", "finished", "status"):
        assert meta.get(key), f"testsuite property {key} missing"
    assert meta["plan"] == PLAN_NAME and meta["run_id"] == run.dir.name and meta["status"] == run.data["status"]
    for case, s in zip(cases, steps, strict=True):
        assert case.get("classname", "").startswith(PLAN_NAME + ".")
        if s["table"]:
            assert case.get("classname") == f"{PLAN_NAME}.{s['table']}"
        p = props(case)
        assert p["text"] == ITEMS[s["id"]].text and p["status"] == s["status"]
        scalars = {k: v for k, v in s["evidence"].items() if isinstance(v, str | int | float | bool)}
        for k, v in scalars.items():
            value = str(v)
            assert p[f"evidence.{k}"] == value or (len(value) > 300 and p[f"evidence.{k}"].endswith("…"))
        if s["statements"]:
            out = case.find("system-out")
            assert out is not None and out.text
            assert all(st["sql"].strip()[:40] in out.text for st in s["statements"])
    return suite


# pytest's words for the statuses in its summary line
TERMINAL_WORDS = {"passed": "passed", "failed": "failed", "warning": "warning",
                  "needs attestation": "needs-attestation", "not applicable": "not-applicable", "dry run": "dry-run",
                  "attested": "attested",
                  "blocked": "blocked", "deferred": "deferred"}


def terminal_counts(stdout: str) -> Counter[str]:
    """The counts of pytest's last summary line ("40 passed, 5 needs attestation ... in 17.35s")."""
    line = [ln for ln in stdout.splitlines() if re.search(r"\d+ (passed|failed).* in [\d.]+s", ln)][-1]
    body = line.split(" in ")[0].strip("= ")
    counts: Counter[str] = Counter()
    for n, word in re.findall(r"(\d+) ([a-z ]+?)(?:,|$)", body):
        if word != "warnings":  # Python warnings, not steps
            counts[TERMINAL_WORDS[word]] += int(n)
    return counts


def test_one_set_of_counts_everywhere(executed: Run) -> None:
    """pytest's terminal, pytest's --junitxml, the run's junit.xml, report.html and run.json
    give the same counts per status; a status that is not a pass is skipped in both JUnit files."""
    data = executed.data
    expected = Counter(s["status"] for s in data["steps"] if s["status"] != "not-run")
    assert expected["passed"] and expected["warning"] and expected["needs-attestation"], expected
    assert terminal_counts(executed.proc.stdout) == expected, executed.why()

    skipped = sum(n for status, n in expected.items() if status in SKIPPED)
    pytest_junit = ET.parse(executed.reports.parent / "pytest-junit.xml").getroot()
    cases = list(pytest_junit.iter("testcase"))
    assert Counter(p.get("value") for c in cases for p in c.iter("property")
                   if p.get("name") == "tablemig_status") == expected
    for c in cases:
        status = next(p.get("value") for p in c.iter("property") if p.get("name") == "tablemig_status")
        assert (c.find("skipped") is not None) == (status in SKIPPED), (c.get("name"), status)
    suite = pytest_junit.find("testsuite")
    assert suite is not None and int(suite.get("skipped", "0")) == skipped

    ours = ET.parse(executed.dir / "junit.xml").getroot()
    assert Counter(p.get("value") for c in ours.iter("testcase") for p in c.iter("property")
                   if p.get("name") == "status") == expected
    own_suite = ours.find("testsuite")
    assert own_suite is not None and int(own_suite.get("skipped", "0")) == skipped
    suite_props = props(own_suite)
    assert {k: int(suite_props[f"steps_{k.replace('-', '_')}"]) for k in expected} == dict(expected)

    doc = parse_html((executed.dir / "report.html").read_text())
    html_counts = {n.attrs["data-count-status"]: int(n.attrs["data-count"]) for n in doc.iter()
                   if "data-count-status" in n.attrs}
    assert html_counts == dict(expected)

    # the verdict does not flatter, and says the same everywhere
    said = data["verdict"]
    assert said.startswith("passed with ") and f"{expected['needs-attestation']} sign-offs pending" in said
    assert f"{expected['warning']} warning" in said
    assert f"tablemig: run {said.upper()}" in executed.proc.stdout
    assert suite_props["verdict"] == said
    verdict_node = next(n for n in doc.iter() if n.attrs.get("id") == "verdict")
    assert verdict_node.attrs["data-verdict"] == said


def test_live_progress_and_the_end_of_run_summary(executed: Run) -> None:
    """The migration's phases and progress reach the terminal while the plan runs (before
    pytest's summary), and the run ends with what happened to the table and where the report is."""
    out = executed.proc.stdout
    end = out.index("tablemig: run ")
    live = out[:end]
    for phase in ("capture", "backfill", "index build", "replay", "verify", "swap"):
        assert f"tablemig: public.orders: {phase}: started" in live, executed.why()
        assert re.search(rf"tablemig: public\.orders: {phase}: done in [\d.]+ s", live), executed.why()
    assert re.search(r"tablemig: public\.orders: [\d,]+/[\d,]+ rows, [\d,]+ rows/s, batch [\d,]+, ETA [\d,]+ s",
                     live), executed.why()
    assert live.index("backfill: started") < live.index("swap: started")

    data = executed.data
    facts = data["tables"]["public.orders"]
    summary = out[end:]
    line = next(ln for ln in summary.splitlines() if ln.startswith("tablemig: public.orders: "))
    assert line.startswith("tablemig: public.orders: swapped; cutoff "), line
    # the demo's order_returns (policy keep) keeps the orders it references live
    extra = facts["rows_kept_for_children"]
    assert extra > 0 and {c["child"]: c["policy"] for c in facts["children"]} == {
        "public.order_items": "follow", "public.order_returns": "keep"}, facts.get("children")
    assert (f"kept {facts['rows_keep'] + extra:,} rows ({extra:,} of them referenced by public.order_returns),"
            f" archived {facts['rows_archive'] - extra:,}") in line
    assert re.search(r"archive public\.orders_archive_\d{8}", line), line
    assert f"lock held {fmt(facts['lock_hold_ms'])} ms" in line
    # the demo's order_items (policy follow) moved with their orders: a line of its own
    items = next(ln for ln in summary.splitlines() if ln.startswith("tablemig: public.order_items: "))
    assert re.search(r"swapped; follows public\.orders; kept [\d,]+ rows, archived [\d,]+; "
                     r"archive public\.order_items_archive_\d{8}", items), items
    report = re.search(r"tablemig: report (\S+report\.html)", summary)
    assert report and Path(report.group(1)).is_file()
    assert "tablemig: sign-offs pending: " in summary


def test_a_dry_run_says_what_it_would_do(dry: Run) -> None:
    """A dry run's summary: what it would keep and archive, and its planned steps in words."""
    out = dry.proc.stdout
    data = dry.data
    expected = Counter(s["status"] for s in data["steps"] if s["status"] != "not-run")
    assert expected["dry-run"] and terminal_counts(out) == expected, dry.why()
    summary = out[out.index("tablemig: run "):]
    facts = data["tables"]["public.orders"]
    extra = facts["rows_kept_for_children"]
    assert (f"public.orders: unchanged (dry run); cutoff {facts['cutoff_local']}; would keep "
            f"{facts['rows_keep'] + extra:,} rows ({extra:,} of them referenced by public.order_returns),"
            f" would archive {facts['rows_archive'] - extra:,}") in summary, summary
    assert "planned (dry run; --execute does it):" in summary
    copy = next(s for s in data["steps"] if s["id"] == "EX-2.2")
    assert copy["reason"].startswith("would copy") and f"EX-2.2 public.orders: {copy['reason']}" in summary
    assert "with --execute" not in data["verdict"] and "only planned (dry run)" in data["verdict"]


def test_junit_xml_of_the_executed_run(executed: Run) -> None:
    suite = check_junit(executed)
    assert props(suite)["mode"] == "execute"


# -- tests: CSV files ------------------------------------------------------------------------------
def test_csv_files_per_table(executed: Run) -> None:
    tables = executed.data["tables"]
    assert tables, executed.why()
    for table, facts in tables.items():
        safe = re.sub(r"[^0-9A-Za-z]", "_", table)
        dist = pd.read_csv(executed.dir / f"cutoff_distribution_{safe}.csv")
        assert list(dist.columns) == DISTRIBUTION_COLUMNS
        assert len(dist) == len(facts["distribution"])
        assert int(dist["record_count"].sum()) == sum(r["record_count"] for r in facts["distribution"])
        assert int(dist["kept"].sum()) == facts["rows_keep"]
        recon = pd.read_csv(executed.dir / f"reconciliation_{safe}.csv", dtype=str, keep_default_na=False)
        sides = [k[len("count_"):] for k in facts["reconciliation"][0] if k.startswith("count_")]
        assert list(recon.columns) == (["segment", "key_from", "key_to"]
                                       + [c for s in sides for c in (f"count_{s}", f"checksum_{s}")] + ["match"])
        assert len(recon) == len(facts["reconciliation"])
        assert list(recon["checksum_new"]) == [str(r["checksum_new"]) for r in facts["reconciliation"]]


# -- tests: a failed run ----------------------------------------------------------------------------
def test_failed_run_still_writes_every_report(fresh_db: Any, tmp_path: Path) -> None:
    """public.orders with a text date column: the analysis fails, the later steps of the table
    are blocked by it, and all reports are still written."""
    with fresh_db.connect() as conn:
        conn.execute("CREATE TABLE public.orders (id bigint PRIMARY KEY, created_date text NOT NULL, amount numeric)")
        conn.execute("INSERT INTO public.orders SELECT g, '2024-01-01', g FROM generate_series(1, 500) g")
    run = run_plan(tmp_path, "--execute", "--active-dsn", fresh_db.dsn)
    assert run.proc.returncode != 0, run.why()
    for name in ("run.json", "report.html", "junit.xml"):
        assert (run.dir / name).is_file(), name
    assert not (run.dir / "report_errors.txt").exists()
    data = run.data
    assert data["status"] == "failed"
    failed = [s for s in data["steps"] if s["status"] == "failed" and s["table"] == "public.orders"]
    assert failed, run.why()
    first = failed[0]
    assert "text" in first["reason"], first  # the planner names the wrong column type

    doc = parse_html((run.dir / "report.html").read_text())
    row = row_of(doc, first["id"], first["table"])
    assert row.attrs["data-status"] == "failed"
    assert " ".join(first["reason"].split())[:60] in row.text()
    later = [s for s in data["steps"] if s["table"] == first["table"] and s["status"] == "blocked"
             and ORDER.index(s["id"]) > ORDER.index(first["id"])]
    assert later, "no later step of the table was blocked"
    for s in later:
        assert s["reason"] == f"blocked by {first['id']}"
        blocked = row_of(doc, s["id"], s["table"])
        assert blocked.attrs["data-status"] == "blocked" and f"blocked by {first['id']}" in blocked.text()
    assert {r.attrs["data-step-id"] for r in step_rows(doc)} >= set(ORDER)
    notes = next(n for n in doc.iter() if n.attrs.get("id") == "notes").text()
    assert first["id"] in notes
    suite = check_junit(run)
    failure = next(c for c in suite.findall("testcase") if c.get("name") == f"{first['id']} public.orders")
    failure_element = failure.find("failure")
    assert failure_element is not None and "text" in failure_element.get("message", "")


# -- tests: passwords ------------------------------------------------------------------------------
def test_no_password_in_any_report(fresh_db: Any, tmp_path: Path) -> None:
    with fresh_db.connect() as conn:
        create_demo_data(conn, 20_000)
    run = run_plan(tmp_path, "--execute", "--active-dsn", dsn_with_password(fresh_db.dsn))
    for name in ("run.json", "report.html", "junit.xml"):
        assert (run.dir / name).is_file(), name + "\n" + run.why()
    assert any(s["id"] == "EX-1.1" and s["status"] == "passed" for s in run.data["steps"]), run.why()
    leaks = [str(p) for p in run.reports.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == []


@dataclass
class _Throttle:  # what a step may leave in the facts: an object holding a DSN
    dsn: str
    samples: list[dict[str, Any]]
    _conn: Any = None


def test_redaction_and_missing_data_without_a_database(tmp_path: Path) -> None:
    """Secrets anywhere in the run (reason, evidence, SQL, facts, objects, keys) never reach a
    report; any subset of steps and facts renders; unknown statuses and ids are shown."""
    url = f"postgresql://app:{SECRET}@db1/shop"
    kv = f"host=db1 password={SECRET}"
    data = {
        "plan": "p", "module": "p", "mode": "dry-run", "started": 1_700_000_000.0, "finished": 1_700_000_012.5,
        "run_id": "r1", "host": "h", "status": "failed",
        "facts": {"executed_by": "alice", "db_role": "migrator", "dsn": kv, "server_version": "16.4",
                  "lag_samples": [{"t": 1_700_000_001 + i, "lag_bytes": 1000 * i} for i in range(5)]},
        "steps": [
            {"id": "EX-1.1", "table": None, "status": "dry-run", "reason": f"would connect to {url}",
             "duration_s": 0.01, "evidence": {"sql": "CREATE SCHEMA x;\n" * 3, "nested": {"conn": kv, "n": [1, 2]}},
             "statements": [{"site": "active", "sql": f"SELECT '{kv}'", "executed": False, "duration_ms": None,
                             "rows": None, "error": None}]},
            {"id": "EX-1.3", "table": "s.t-1", "status": "failed", "reason": f"cannot connect to {kv}",
             "duration_s": 0.2, "evidence": {kv: 1}, "statements": []},
            {"id": "EX-2.1", "table": "s.t-1", "status": "blocked", "reason": "blocked by EX-1.3"},
            {"id": "SC-3", "table": None, "status": "weird-new-status", "reason": "", "evidence": {}},
            {"id": "X-9", "table": None, "status": "passed"},
        ],
        "tables": {"s.t-1": {"cutoff": "2024-06-15", "throttle": _Throttle(kv, [{"t": 1.0, "lag_bytes": 5}]),
                             "distribution": [{"month": "2024-05-01", "record_count": 3, "kept": 0, "archived": 3},
                                              {"month": "2024-06-01", "record_count": 4, "kept": 2, "archived": 2}],
                             "reconciliation": [{"segment": 0, "key_from": "", "key_to": "9", "count_a": 1,
                                                 "checksum_a": "5", "count_b": 2, "checksum_b": "6", "match": False}],
                             "throughput": [{"t": 5.0, "rows": 100, "batch_rows": 100, "batch_seconds": 5.0,
                                             "batch_size": 100}]}},
        "contacts": [{"role": "DBA", "name": "Bob", "phone": "1", "email": url, "escalation": ""}],
    }
    render_reports(tmp_path, data)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["cutoff_distribution_s_t_1.csv", "junit.xml", "reconciliation_s_t_1.csv", "report.html"]
    for p in tmp_path.iterdir():
        assert SECRET not in p.read_text(), p.name
    html = (tmp_path / "report.html").read_text()
    doc = parse_html(html)
    assert {r.attrs["data-step-id"] for r in step_rows(doc)} >= set(ORDER) | {"X-9"}
    assert row_of(doc, "EX-2.1", "s.t-1").attrs["data-status"] == "blocked"
    assert row_of(doc, "EX-2.2", "s.t-1").attrs["data-status"] == "not-run"
    assert row_of(doc, "SC-3", None).attrs["data-status"] == "weird-new-status"
    assert [n for n in doc.iter() if "mismatch" in n.attrs.get("class", "").split()]
    assert external_references(doc) == []
    assert "a batch_size of about 10 rows" in doc.text()  # 100 rows took 5 s: 10 rows take 0.5 s
    for img in (n for n in doc.iter() if n.tag == "img"):
        assert min(png_size(img.attrs["src"])) > 0
    assert "would connect to postgresql://app:***@db1/shop" in doc.text()
    ET.parse(tmp_path / "junit.xml")

    empty = tmp_path / "empty"
    render_reports(empty, {"plan": "p", "mode": "execute", "steps": [], "tables": {}, "facts": {}})
    doc = parse_html((empty / "report.html").read_text())
    assert {r.attrs["data-status"] for r in step_rows(doc)} == {"not-run"}
    assert {r.attrs["data-step-id"] for r in step_rows(doc)} == set(ORDER)
    suite = ET.parse(empty / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "0"
