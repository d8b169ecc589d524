"""`tablemig new-plan`: write a plan module for any table from a jinja2 template."""

from __future__ import annotations

import argparse
import dataclasses
import re
from importlib import resources
from pathlib import Path

import jinja2

from ..checklist.items import ORDER
from ..config.plan import Contact, TableConfig
from ..config.settings import BATCH_SIZE
from ..config.spec import CHILD_POLICIES
from ..errors import InputError
from ..lifecycle.driver import Migration
from ..lifecycle.family_plan import policy_children
from ..lifecycle.planner import TablePlan
from ..pg.catalog import resolve
from ..pg.connect import connect
from ..pg.references import references
from ..pg.replication import LagLimit
from ..pg.statements import Direct
from .conventions import add_dsn, add_json, cutoff, emit, fraction, positive_int

PLACEHOLDER_CONTACTS = [
    Contact("DBA Lead", "[Name]", "[Phone]", "[Email]", "Primary"),
    Contact("App Team Lead", "[Name]", "[Phone]", "[Email]", "Secondary"),
    Contact("Operations", "[Name]", "[Phone]", "[Email]", "24/7"),
    Contact("Business Owner", "[Name]", "[Phone]", "[Email]", "Executive"),
]


def render_plan(*, name: str, tables: list[TableConfig], path: str, title: str = "",
                max_replication_lag: str = "16MB", contacts: list[Contact] | None = None,
                demo_rows: int = 0, notifiers: list[dict[str, str]] | None = None, window: str = "None",
                require_attestations: bool = False, backup_dir: str = "backups",
                child_notes: dict[str, str] | None = None, proposed_cutoff: str = "") -> str:
    """The source of a short-form plan module: `PLAN` only (the plugin runs every checklist
    item, in order)."""
    LagLimit.parse(max_replication_lag)
    for t in tables:
        t.spec()  # validates names, retention, mode
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)  # noqa: S701 - Python source, values go through repr
    env.filters["pyrepr"] = repr
    template = env.from_string(resources.files("tablemig.cli.templates").joinpath("plan.py.j2").read_text())
    return template.render(name=name, title=title or ", ".join(t.table for t in tables), path=path,
                           tables=tables, max_replication_lag=max_replication_lag,
                           contacts=contacts if contacts is not None else PLACEHOLDER_CONTACTS,
                           demo_rows=demo_rows, notifiers=notifiers or [], window=window,
                           require_attestations=require_attestations, backup_dir=backup_dir,
                           child_notes=child_notes or {}, proposed_cutoff=proposed_cutoff)


@dataclasses.dataclass
class Found:
    """What `--dsn` found: the table with its children's policies, a comment per child, the
    cutoff the retention gives with its counts, and the plan's blockers."""

    table: TableConfig
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    cutoff: str = ""
    blockers: list[str] = dataclasses.field(default_factory=list)


def _child_notes(plan: TablePlan) -> dict[str, str]:
    notes = {}
    for c in plan.children:
        if not c.ref.self_ref:
            notes[str(c.ref.child)] = f"{c.referencing_archived} rows reference {plan.original} rows to be archived"
            if c.retained is not None:
                notes[str(c.ref.child)] += f"; keeps {c.retained} of them live"
            if c.policy == "follow":
                notes[str(c.ref.child)] += "; they go to the archive with them"
    return notes


def _inspect(a: argparse.Namespace, table: TableConfig) -> Found:
    """With --dsn: the table and column checked by planning them, the cutoff proposed with
    the rows it keeps and archives, and the table's children (tables whose foreign keys
    reference it), each with the policy --children gives and its counts."""
    if not a.dsn:
        return Found(table)
    # the children are found first, so that the one plan has their policies: their own
    # figures and refusals
    with connect(a.dsn) as conn:
        st = Direct(conn)
        children = policy_children(st, references(st, resolve(st, table.spec().qualified)))
    given = dataclasses.replace(table, children={str(c): a.children for c in children}) if children else table
    with Migration(a.dsn, given.spec(), progress=lambda _p: None) as mig:
        plan = mig.plan()
    # the children the plan gave a policy (after a swap, none)
    policies = {str(c.ref.child): a.children for c in plan.children if not c.ref.self_ref}
    if policies:
        table = dataclasses.replace(table, children=policies)
    rule = f"retention {table.retention}" if table.retention is not None else "the cutoff given"
    cutoff = (f"{rule}: cutoff {plan.cutoff_local or plan.cutoff} on {plan.date_column}; keeps {plan.keep_rows} "
              f"of {plan.total_rows} rows, archives {plan.archive_rows}")
    if plan.retained_rows:
        cutoff += f" (and keeps {plan.retained_rows} rows live for the children)"
    return Found(table, _child_notes(plan), cutoff, plan.blockers)


def _cmd(a: argparse.Namespace) -> int:
    table = TableConfig(a.table, a.date_column, retention=a.retention, cutoff=a.cutoff, new_table=a.new_table,
                        archive_table=a.archive_table, archive_mode=a.archive_mode, batch_size=a.batch_size)
    if a.children and not a.dsn:
        raise InputError("--children needs --dsn: the children are found in the database",
                         "pass --dsn of the active site, or name each child in the plan's children")
    out = Path(a.output)
    if out.exists() and not a.force:
        raise InputError(f"{out} exists", "choose another --output or pass --force")
    name = a.name or re.sub(r"\W+", "_", out.stem).strip("_") or "migration"
    a.children = a.children or "refuse"
    found = _inspect(a, table)
    table = found.table
    source = render_plan(name=name, tables=[table], path=str(out), max_replication_lag=a.max_replication_lag,
                         child_notes=found.notes, proposed_cutoff=found.cutoff)
    compile(source, str(out), "exec")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(source)
    text = f"wrote {out}: plan {name!r} for {table.qualified} ({len(ORDER)} checklist steps)"
    if found.cutoff:
        text += f"\n{found.cutoff}"
    if table.children:
        text += "\nchildren: " + "; ".join(f"{c} {p} ({found.notes[c]})" for c, p in table.children.items())
    if found.blockers:
        text += "\nthe plan is blocked until these are resolved:\n" + "\n".join(f"  - {b}" for b in found.blockers)
    emit(a, {"path": str(out), "plan": name, "table": str(table.qualified), "steps": len(ORDER),
             "proposed_cutoff": found.cutoff or None,
             "children": [{"table": c, "policy": p, "note": found.notes[c]} for c, p in table.children.items()],
             "blockers": found.blockers}, text)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("new-plan", help="write a plan module for a table")
    p.add_argument("--table", required=True, help="as SQL writes it: public.orders, \"Sales\".\"Invoice\"")
    p.add_argument("--date-column", required=True)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--retention", type=fraction, help="fraction of rows to keep live, e.g. 0.1")
    g.add_argument("--cutoff", type=cutoff, help="keep rows with date >= this ISO 8601 date or timestamp")
    p.add_argument("--new-table")
    p.add_argument("--archive-table")
    p.add_argument("--archive-mode", choices=["rename", "copy"], default="rename")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE)
    p.add_argument("--max-replication-lag", default="16MB", help="a size (16MB) or a duration (30s)")
    p.add_argument("--name", help="plan name (default: from the output file name)")
    p.add_argument("--output", required=True, help="path of the plan module to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    add_dsn(p, "the active site: the plan lists the tables whose foreign keys reference the table, with "
               "their counts (without it the plan names no children)")
    p.add_argument("--children", choices=CHILD_POLICIES,
                   help="the policy of every child found (with --dsn; default refuse); see docs/families.md")
    add_json(p)
    p.set_defaults(func=_cmd)
