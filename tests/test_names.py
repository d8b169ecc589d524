"""Table names as SQL writes them: `QualifiedName.parse`, quoting and `derived_name`.

Pure unit tests: no database. The folding rules follow PostgreSQL's scanner with a UTF8
server encoding (only ASCII letters of unquoted identifiers are folded to lower case).
"""

from __future__ import annotations

import pytest
from psycopg import sql

from tablemig.errors import InputError
from tablemig.pg.names import MAX_IDENT_BYTES, QualifiedName, derived_name

INJECTION = 'x"; DROP TABLE y; --'


@pytest.mark.parametrize(
    ("text", "schema", "name"),
    [
        ("public.orders", "public", "orders"),
        ("orders", "public", "orders"),
        ("sales.orders", "sales", "orders"),
        ('"Sales"."Invoice"', "Sales", "Invoice"),
        ('"a.b"."c""d"', "a.b", 'c"d'),
        ("Sales.Invoice", "sales", "invoice"),
        ("PUBLIC.ORDERS", "public", "orders"),
        ('Sales."Invoice"', "sales", "Invoice"),
        ('"My Schema"."My Table"', "My Schema", "My Table"),
        ("  public.orders  ", "public", "orders"),
        ("_tmp$1.t_2", "_tmp$1", "t_2"),
        ("größe.bestellung", "größe", "bestellung"),
        ("заказы", "public", "заказы"),
        ('"заказы"."Ärger"', "заказы", "Ärger"),
        ('""""', "public", '"'),
    ],
)
def test_parse_accepts_sql_spellings(text: str, schema: str, name: str) -> None:
    assert QualifiedName.parse(text) == QualifiedName(schema, name)


def test_unquoted_folding_is_ascii_only_like_postgresql() -> None:
    # CREATE TABLE Ärger (...) creates "Ärger" in a UTF8 database: only A-Z are folded.
    assert QualifiedName.parse("Ärger") == QualifiedName("public", "Ärger")
    assert QualifiedName.parse("ÄrGER.Straße") == QualifiedName("Ärger", "straße")


def test_default_schema_is_used_only_without_a_schema() -> None:
    assert QualifiedName.parse("orders", default_schema="sales") == QualifiedName("sales", "orders")
    assert QualifiedName.parse("x.orders", default_schema="sales") == QualifiedName("x", "orders")


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a" * MAX_IDENT_BYTES, True),
        ("a" * (MAX_IDENT_BYTES + 1), False),
        ("ü" * 31 + "a", True),  # 2-byte characters: 63 bytes
        ("ü" * 32, False),  # 64 bytes, only 32 characters
    ],
)
def test_identifier_byte_limit(name: str, ok: bool) -> None:
    for text in (name, f"public.{name}", f'"{name}"', f'"{name}".t'):
        if ok:
            parsed = QualifiedName.parse(text)
            assert name in (parsed.schema, parsed.name)
        else:
            with pytest.raises(InputError, match="bytes"):
                QualifiedName.parse(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.b.c", "too many dots"),
        ('"a"."b"."c"', "too many dots"),
        ('"unterminated', "unterminated"),
        ('public."orders', "unterminated"),
        ("a.", "ends with a dot"),
        (".a", "invalid table name"),
        ("a..b", "invalid table name"),
        ("", "empty"),
        ("   ", "empty"),
        ("a b", "invalid unquoted identifier"),
        ("public.my table", "invalid unquoted identifier"),
        ("1orders", "invalid unquoted identifier"),
        ("order-items", "invalid unquoted identifier"),
        ("orders;", "invalid unquoted identifier"),
        ('ab"c"', "stray double quote"),
        ('"a"b', "unexpected"),
        (INJECTION, "stray double quote"),
        ("x; DROP TABLE y; --", "invalid unquoted identifier"),
        ('"a\x00b"', "NUL"),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        QualifiedName.parse(text)
    assert info.value.fix, "every refusal says what to do"


@pytest.mark.parametrize(
    "qn",
    [
        QualifiedName("public", "orders"),
        QualifiedName("Sales", "Invoice"),
        QualifiedName("a.b", 'c"d'),
        QualifiedName("my schema", "my table"),
        QualifiedName("заказы", "Ärger"),
        QualifiedName("public", INJECTION),
        QualifiedName("public", "select"),
        QualifiedName("x" * 63, "ü" * 31 + "a"),
    ],
)
def test_str_round_trips_through_parse(qn: QualifiedName) -> None:
    text = str(qn)
    assert QualifiedName.parse(text) == qn
    assert QualifiedName.parse(str(QualifiedName.parse(text))) == qn


def test_names_that_need_quotes_are_quoted() -> None:
    qn = QualifiedName("Sales", 'In"voice')
    assert str(qn) == '"Sales"."In""voice"'
    assert qn.ident().as_string() == '"Sales"."In""voice"'
    assert qn.sibling("x") == QualifiedName("Sales", "x")
    for schema, name in [("a.b", "c"), ("my schema", "t"), ("public", "Ärger"), ("public", "select")]:
        text = str(QualifiedName(schema, name))
        assert QualifiedName.parse(text) == QualifiedName(schema, name), text


def test_injection_attempt_stays_one_identifier() -> None:
    quoted = sql.Identifier(INJECTION).as_string()
    assert quoted == '"x""; DROP TABLE y; --"'
    # Inside the quotes every `"` is doubled: the text cannot leave the identifier.
    inner = quoted[1:-1]
    assert inner.replace('""', "").count('"') == 0
    qn = QualifiedName("public", INJECTION)
    statement = sql.SQL("SELECT * FROM {}").format(qn.ident()).as_string()
    assert statement == 'SELECT * FROM "public"."x""; DROP TABLE y; --"'
    assert QualifiedName.parse(str(qn)) == qn  # parsed back as a single table name


def test_derived_name_short_names_are_untouched() -> None:
    assert derived_name("orders", "_new") == "orders_new"
    base = "a" * (MAX_IDENT_BYTES - 4)
    assert derived_name(base, "_new") == base + "_new"  # exactly 63 bytes: no hashing


@pytest.mark.parametrize("suffix", ["_new", "_archive_20250101", "_backup", ""])
@pytest.mark.parametrize("base", ["o" * 63, "o" * 60, "ü" * 31 + "a", "ä" * 40, "x" * 200])
def test_derived_name_fits_and_is_stable(base: str, suffix: str) -> None:
    name = derived_name(base, suffix)
    assert len(name.encode()) <= MAX_IDENT_BYTES
    assert name.endswith(suffix)
    assert name == derived_name(base, suffix)  # stable (a hash of the base, not Python's hash())
    name.encode().decode()  # never a cut multi-byte character
    QualifiedName.parse(str(QualifiedName("public", name)))  # a valid identifier


def test_derived_name_distinguishes_long_bases_with_a_common_prefix() -> None:
    common = "customer_order_history_" * 3  # 69 bytes
    a = derived_name(common + "europe", "_new")
    b = derived_name(common + "asia", "_new")
    assert a != b
    assert a[:40] == b[:40]  # still readable: the prefix is kept
    assert len(a.encode()) <= MAX_IDENT_BYTES and len(b.encode()) <= MAX_IDENT_BYTES
    # and the shortened name never collides with the suffix-free base's own truncation
    assert derived_name(common + "europe", "_archive") != derived_name(common + "europe", "_new")
