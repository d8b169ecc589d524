"""Table names as SQL writes them, parsed and quoted safely.

`public.orders`, `orders` and `"Sales"."Invoice"` are all accepted; identifiers are only
ever turned back into SQL through `psycopg.sql.Identifier`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from psycopg import sql

from ..errors import InputError

MAX_IDENT_BYTES = 63

# PostgreSQL's reserved key words (and those reserved "can be function or type"): names that
# must be quoted even when they are simple lower-case identifiers.
_RESERVED = frozenset("""
all analyse analyze and any array as asc asymmetric authorization binary both case cast check
collate collation column concurrently constraint create cross current_catalog current_date
current_role current_schema current_time current_timestamp current_user default deferrable
desc distinct do else end except false fetch for foreign freeze from full grant group having
ilike in initially inner intersect into is isnull join lateral leading left like limit
localtime localtimestamp natural not notnull null offset on only or order outer overlaps
placing primary references returning right select session_user similar some symmetric
system_user table tablesample then to trailing true union unique user using variadic verbose
when where window with
""".split())


def quote_ident(name: str) -> str:
    """Quote like PostgreSQL's quote_ident(): only when needed."""
    simple = name and (name[0].islower() or name[0] == "_") and name.isascii() and all(
        c.islower() or c.isdigit() or c in "_$" for c in name)
    if simple and name not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'
# An unquoted identifier as PostgreSQL's scanner reads it: a letter, "_" or any non-ASCII
# character first, then also digits and "$". Anything else (a space, "-", ";") needs quotes.
_UNQUOTED = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*")
# PostgreSQL folds only ASCII letters of unquoted identifiers (UTF8): `Ärger` stays `Ärger`.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _split(text: str) -> list[str]:
    """The dot-separated identifiers of `text`, quoted ones unquoted and unquoted ones folded."""
    parts: list[str] = []
    i, n = 0, len(text)
    while i < n:
        part, i = _quoted(text, i) if text[i] == '"' else _unquoted(text, i)
        parts.append(part)
        if i < n:
            if text[i] != ".":
                raise InputError(f"unexpected {text[i]!r} in table name {text!r}",
                                 "separate schema and table with a single dot")
            i += 1
            if i == n:
                raise InputError(f"table name {text!r} ends with a dot", "give schema.table")
    return parts


def _quoted(text: str, i: int) -> tuple[str, int]:
    """The quoted identifier starting at text[i] (a double quote); and where it ends."""
    j, buf, n = i + 1, [], len(text)
    while True:
        if j >= n:
            raise InputError(
                f"unterminated quoted identifier in {text!r}",
                'close the double quote, e.g. "Sales"."Invoice"',
            )
        if text[j] == '"':
            if j + 1 < n and text[j + 1] == '"':
                buf.append('"')
                j += 2
                continue
            break
        buf.append(text[j])
        j += 1
    return "".join(buf), j + 1


def _unquoted(text: str, i: int) -> tuple[str, int]:
    """The unquoted identifier starting at text[i], folded as SQL folds it; and where it ends."""
    j = text.find(".", i)
    raw = text[i:] if j < 0 else text[i:j]
    if raw.strip() != raw or not raw:
        raise InputError(
            f"invalid table name {text!r}",
            'write it as SQL does: schema.table, or quote it: "My Schema"."My Table"',
        )
    if '"' in raw:
        raise InputError(f"stray double quote in {text!r}", "quote the whole identifier")
    if not _UNQUOTED.fullmatch(raw):
        raise InputError(
            f"invalid unquoted identifier {raw!r} in {text!r}",
            'quote names with spaces or special characters: "My Schema"."My Table"',
        )
    return raw.translate(_ASCII_LOWER), i + len(raw)  # unquoted identifiers fold, as in SQL


@dataclass(frozen=True, order=True)
class QualifiedName:
    schema: str
    name: str

    @classmethod
    def parse(cls, text: str, default_schema: str = "public") -> QualifiedName:
        parts = _split(text.strip())
        if not parts:
            raise InputError("empty table name", "give schema.table or table")
        for p in parts:
            if len(p.encode()) > MAX_IDENT_BYTES:
                raise InputError(
                    f"identifier {p!r} is {len(p.encode())} bytes; PostgreSQL allows 63",
                    "use the name as stored in the catalog (PostgreSQL truncates longer names)",
                )
            if "\x00" in p:
                raise InputError("identifier contains a NUL byte", "remove it")
        if len(parts) == 1:
            return cls(default_schema, parts[0])
        if len(parts) == 2:
            return cls(parts[0], parts[1])
        raise InputError(f"too many dots in table name {text!r}", "give schema.table")

    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)

    def sibling(self, name: str) -> QualifiedName:
        return QualifiedName(self.schema, name)

    def __str__(self) -> str:
        """schema.table as SQL writes it (quoted only where needed); parses back."""
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"


def derived_name(base: str, suffix: str) -> str:
    """`base + suffix`, shortened (with a stable hash) to fit PostgreSQL's 63-byte limit."""
    full = base + suffix
    if len(full.encode()) <= MAX_IDENT_BYTES:
        return full
    digest = hashlib.sha1(base.encode()).hexdigest()[:6]
    room = MAX_IDENT_BYTES - len(suffix.encode()) - 7
    short = base.encode()[:room].decode(errors="ignore")
    return f"{short}_{digest}{suffix}"
