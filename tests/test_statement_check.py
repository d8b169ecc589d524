"""Statement verification against a real catalog (`tablemig.pg.statement_check`): each
statement parsed with sqlglot, each table, column, function, sequence and type it names found
in the catalog or created by an earlier statement of the plan; opaque commands and PL/pgSQL
bodies listed as unverified with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import FreshDb
from tablemig.pg.schema import render_schema
from tablemig.pg.statement_check import MISSING, UNVERIFIED, VERIFIED, StatementCheck

SCHEMA = """
CREATE TYPE mood AS ENUM ('ok', 'bad');
CREATE SEQUENCE ticket_seq;
CREATE TABLE orders (id bigint PRIMARY KEY, created_date timestamptz NOT NULL, note text, m mood);
CREATE FUNCTION order_label(bigint) RETURNS text LANGUAGE sql AS $$ SELECT 'order ' || $1 $$;
"""


@pytest.fixture
def catalog_db(fresh_db: FreshDb) -> FreshDb:
    with fresh_db.connect() as conn:
        conn.execute(SCHEMA)
    return fresh_db


def test_references_found_in_the_catalog_are_verified(catalog_db: FreshDb) -> None:
    with catalog_db.connect() as conn:
        verdicts = StatementCheck(conn).check([
            ("EX-2.1", "UPDATE orders SET note = %s WHERE id = %(id)s"),
            ("EX-2.1", "SELECT o.id, order_label(o.id), nextval('ticket_seq'), 'ok'::mood FROM public.orders o"
                       " WHERE o.created_date < now()"),
            ("EX-2.1", "INSERT INTO orders (id, created_date) VALUES (1, now())"),
        ])
        assert [v.status for v in verdicts] == [VERIFIED] * 3, [v.as_dict() for v in verdicts]
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,), "nothing was run"


def test_what_the_migration_itself_runs_is_verified(catalog_db: FreshDb) -> None:
    """The engine's own statement shapes: a row hash over ROW(...), an index built and then
    renamed, a constraint dropped by name (none of them is a function or a table)."""
    with catalog_db.connect() as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, order_id bigint"
                     " CONSTRAINT items_order_fkey REFERENCES orders (id))")
        verdicts = StatementCheck(conn).check([
            ("EX-2.2", "SELECT hash_record_extended(ROW(\"id\", \"note\"), 0) FROM \"public\".\"orders\" LIMIT 1"),
            ("EX-2.2", 'CREATE UNIQUE INDEX "orders_note_idx_n1" ON "public"."orders" USING btree (note)'),
            ("EX-2.2", 'ALTER INDEX "public"."orders_note_idx_n1" RENAME TO "orders_note_idx"'),
            ("EX-2.2", 'ALTER TABLE "public"."items" DROP CONSTRAINT "items_order_fkey"'),
        ])
        assert [v.status for v in verdicts] == [VERIFIED] * 4, [v.as_dict() for v in verdicts]


@pytest.mark.parametrize("text, missing", [
    ("UPDATE orders SET notes = 'x' WHERE id = 1", "column notes of orders"),
    ("SELECT o.created_at FROM orders o", "column created_at of orders"),
    ("INSERT INTO orders (id, created) VALUES (1, now())", "column created of orders"),
    ("SELECT * FROM public.orderz", "table public.orderz"),
    ("SELECT order_lable(1)", "function order_lable"),
    ("SELECT table_migration.get_config('x')", "function table_migration.get_config"),
    ("SELECT nextval('ticket_sequence')", "sequence ticket_sequence"),
    ("SELECT NULL::moods", "type moods"),
])
def test_a_missing_object_is_named(catalog_db: FreshDb, text: str, missing: str) -> None:
    """Fails on a check that passes what it cannot find: each statement names a missing one."""
    with catalog_db.connect() as conn:
        [verdict] = StatementCheck(conn).check([("EX-2.2", text)])
    assert verdict.status == MISSING and verdict.missing == [missing], verdict.as_dict()
    assert missing in verdict.reason and verdict.item == "EX-2.2"


def test_objects_created_by_earlier_statements_count(catalog_db: FreshDb) -> None:
    """A table created (and renamed, and given a column) earlier in the plan is known to the
    later statements; a column it never had is still missing."""
    with catalog_db.connect() as conn:
        verdicts = StatementCheck(conn).check([
            ("EX-2.1", "CREATE TABLE public.orders_new (id bigint, created_date timestamptz)"),
            ("EX-2.1", "ALTER TABLE public.orders_new ADD COLUMN note text"),
            ("EX-2.2", "INSERT INTO public.orders_new (id, created_date, note) SELECT id, created_date, note"
                       " FROM public.orders"),
            ("EX-2.3", "ALTER TABLE public.orders_new RENAME TO orders_live"),
            ("EX-2.3", "UPDATE public.orders_live SET note = NULL"),
            ("EX-2.3", "UPDATE public.orders_live SET m = NULL"),
        ])
    assert [v.status for v in verdicts] == [VERIFIED] * 5 + [MISSING], [v.as_dict() for v in verdicts]
    assert verdicts[-1].missing == ["column m of public.orders_live"]


def test_opaque_commands_and_plpgsql_bodies_are_unverified(catalog_db: FreshDb) -> None:
    with catalog_db.connect() as conn:
        verdicts = StatementCheck(conn).check([
            ("EX-2.3", "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"),
            ("EX-2.1", "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"),
        ])
    assert [v.status for v in verdicts] == [UNVERIFIED, UNVERIFIED]
    assert "opaque command" in verdicts[0].reason and verdicts[0].reason.startswith("LOCK")
    assert "PL/pgSQL" in verdicts[1].reason


def test_the_framework_schema_checks_against_an_empty_database(fresh_db: FreshDb) -> None:
    """The table_migration schema's own scripts, as EX-1.1 would run them: nothing missing
    (each object is created before it is used); its PL/pgSQL bodies are listed unverified."""
    with fresh_db.connect() as conn:
        verdicts = StatementCheck(conn).check([("EX-1.1", text) for text in render_schema()])
    assert not [v.as_dict() for v in verdicts if v.status == MISSING]
    assert any(v.status == VERIFIED for v in verdicts) and any("PL/pgSQL" in v.reason for v in verdicts)


PLAN_WITH_STATEMENT = '''
from tablemig.checklist.context import StepContext
from tablemig.config.plan import PlanConfig, TableConfig, after

PLAN = PlanConfig(name="{name}", tables=[TableConfig("public.orders", date_column="created_date", retention=0.1,
                                                    children={{"public.order_returns": "keep",
                                                              "public.order_items": "follow"}})],
                  demo_rows=3000)


@after("EX-1.2")
def stamp_orders(ctx: StepContext) -> None:
    """A statement of the plan's own, recorded (not run) in a dry run."""
    ctx.executor().run("UPDATE public.orders SET {column} = now() WHERE id = %s", (1,))
'''


def _dry_run(tmp_path: Path, name: str, column: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    plan = tmp_path / f"{name}.py"
    plan.write_text(PLAN_WITH_STATEMENT.format(name=name, column=column))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TABLEMIG_ACTIVE", "TABLEMIG_PASSIVE"))}
    proc = subprocess.run([sys.executable, "-m", "pytest", str(plan), "-p", "no:cacheprovider",
                           "--reports-dir", str(tmp_path / "reports")], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env)
    run = json.loads((tmp_path / "reports" / name / "latest" / "run.json").read_text())
    return proc, run


def test_a_dry_run_fails_on_a_statement_naming_a_missing_column(tmp_path: Path) -> None:
    """The plan's statement names a column the table lacks: the dry run fails at that item,
    naming the statement and the column; with the right column the same plan passes, and the
    report's Statements section lists each statement with its verdict."""
    proc, run = _dry_run(tmp_path, "typo_plan", "shipped_on")
    assert proc.returncode == 1, proc.stdout[-3000:]
    step = next(s for s in run["steps"] if s["id"] == "EX-1.2")
    assert step["status"] == "failed", step
    assert "EX-1.2: statement 'UPDATE public.orders SET shipped_on" in step["reason"]
    assert "column shipped_on of public.orders" in step["reason"]
    [check] = [c for c in step["statement_checks"] if c["status"] == MISSING]
    assert check["missing"] == ["column shipped_on of public.orders"] and check["item"] == "EX-1.2"
    html = (tmp_path / "reports" / "typo_plan" / "latest" / "report.html").read_text()
    assert 'id="statements"' in html and "shipped_on" in html

    proc, run = _dry_run(tmp_path, "good_plan", "updated_at")
    assert proc.returncode == 0, proc.stdout[-3000:]
    checks = [c for s in run["steps"] for c in s.get("statement_checks", [])]
    assert {c["status"] for c in checks} == {VERIFIED, UNVERIFIED}, "the schema's PL/pgSQL bodies are unverified"
    assert any(c["item"] == "EX-1.2" and "updated_at" in c["sql"] and c["status"] == VERIFIED for c in checks)
    assert all(c["reason"] for c in checks if c["status"] == UNVERIFIED)
