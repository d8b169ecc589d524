"""`tablemig new-plan`: write a plan module for any table from a jinja2 template."""

from __future__ import annotations

import argparse
import re
from importlib import resources
from pathlib import Path

import jinja2

from ..checklist.items import ORDER
from ..config.plan import Contact, TableConfig
from ..errors import InputError
from ..pg.replication import LagLimit

PLACEHOLDER_CONTACTS = [
    Contact("DBA Lead", "[Name]", "[Phone]", "[Email]", "Primary"),
    Contact("App Team Lead", "[Name]", "[Phone]", "[Email]", "Secondary"),
    Contact("Operations", "[Name]", "[Phone]", "[Email]", "24/7"),
    Contact("Business Owner", "[Name]", "[Phone]", "[Email]", "Executive"),
]


def render_plan(*, name: str, tables: list[TableConfig], path: str, title: str = "",
                max_replication_lag: str = "16MB", contacts: list[Contact] | None = None,
                demo_rows: int = 0, notifiers: list[dict[str, str]] | None = None, window: str = "None",
                require_attestations: bool = False, backup_dir: str = "backups") -> str:
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
                           require_attestations=require_attestations, backup_dir=backup_dir)


def _cmd(a: argparse.Namespace) -> int:
    table = TableConfig(a.table, a.date_column, retention=a.retention, cutoff=a.cutoff, new_table=a.new_table,
                        archive_table=a.archive_table, archive_mode=a.archive_mode, batch_size=a.batch_size)
    out = Path(a.output)
    if out.exists() and not a.force:
        raise InputError(f"{out} exists", "choose another --output or pass --force")
    name = a.name or re.sub(r"\W+", "_", out.stem).strip("_") or "migration"
    source = render_plan(name=name, tables=[table], path=str(out), max_replication_lag=a.max_replication_lag)
    compile(source, str(out), "exec")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(source)
    print(f"wrote {out}: plan {name!r} for {table.qualified} ({len(ORDER)} checklist steps)")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("new-plan", help="write a plan module for a table")
    p.add_argument("--table", required=True, help="as SQL writes it: public.orders, \"Sales\".\"Invoice\"")
    p.add_argument("--date-column", required=True)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--retention", type=float, help="fraction of rows to keep live, e.g. 0.1")
    g.add_argument("--cutoff", help="keep rows with date >= this timestamp")
    p.add_argument("--new-table")
    p.add_argument("--archive-table")
    p.add_argument("--archive-mode", choices=["rename", "copy"], default="rename")
    p.add_argument("--batch-size", type=int, default=10_000)
    p.add_argument("--max-replication-lag", default="16MB", help="a size (16MB) or a duration (30s)")
    p.add_argument("--name", help="plan name (default: from the output file name)")
    p.add_argument("--output", required=True, help="path of the plan module to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=_cmd)
