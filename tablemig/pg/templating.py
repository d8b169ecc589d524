"""jinja2 rendering of the SQL templates, with one quoting filter for identifiers.

`{{ name | ident }}` quotes an identifier (a string, or a tuple for schema.name) and
`{{ value | literal }}` quotes a constant; both go through psycopg's own quoting, so no
template ever concatenates raw names or values. `{% filter dollar_quote %}...{% endfilter %}`
dollar-quotes a body with a tag that does not occur in it.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from psycopg import sql

from .sqltext import dollar_quote


def _ident(value: str | tuple[str, ...] | list[str]) -> str:
    parts = (value,) if isinstance(value, str) else tuple(value)
    return sql.Identifier(*parts).as_string()


def _literal(value: Any) -> str:
    return sql.Literal(value).as_string()


def _template_root() -> Path:
    try:
        root = resources.files("tablemig.sql_templates")
        path = Path(str(root))
        if path.is_dir():
            return path
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "sql_templates"


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_template_root())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - SQL, not HTML; quoting is the filters' job
    )
    env.filters["ident"] = _ident
    env.filters["literal"] = _literal
    env.filters["dollar_quote"] = dollar_quote
    return env


def render(name: str, **context: Any) -> str:
    """Render `sql_templates/<name>` with the quoting filters."""
    return environment().get_template(name).render(**context)


def template_names(prefix: str) -> list[str]:
    """The templates under `prefix/`, in file-name order (the order they are applied)."""
    folder = _template_root() / prefix
    return sorted(f"{prefix}/{p.name}" for p in folder.glob("*.sql.j2"))
