"""How values of a column type are read from statistics, made, varied and written for COPY.

A kind turns the text PostgreSQL prints for a value (as in `pg_stats`, with the ISO date
style and UTC of `tablemig.pg.connect`) into a Python value and back. Kinds whose values are
ordered like numbers (integers, numeric, floats, dates, timestamps, times) can interpolate
inside a histogram bucket and be compared by a CHECK; every other kind passes its text
through unchanged and compares only for equality (text order depends on the collation).
"""

from __future__ import annotations

import datetime as dt
import math
import random
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

INT_BITS = {"int2": 16, "int4": 32, "int8": 64}
SYNTH_DAYS = 365  # values made without statistics fall in the year before now


class Kind:
    """Text values passed through as they are (any type PostgreSQL can read back)."""

    ordered = False  # values compare and interpolate like numbers

    def parse(self, text: str) -> Any:
        """The Python value of PostgreSQL's text; ValueError when it has none."""
        return text

    def format(self, value: Any) -> str:
        """The text COPY reads."""
        return value if isinstance(value, str) else str(value)

    def between(self, lo: Any, hi: Any, frac: float) -> Any:
        """The value at `frac` (0..1) of the way from `lo` to `hi` (ordered kinds only)."""
        return lo if frac < 0.5 else hi

    def position(self, lo: Any, hi: Any, value: Any) -> float:
        """Where `value` lies from `lo` (0) to `hi` (1) (ordered kinds only)."""
        return 0.5

    def bump(self, value: Any, k: int) -> Any | None:
        """The k-th (k >= 1) variant of `value` with the same meaning, for a unique key; None
        when the kind has none."""
        return None

    def step(self, value: Any, up: bool) -> Any | None:
        """The next value above (`up`) or below `value`, for a strict comparison."""
        return None

    def synth(self, rng: random.Random, i: int, unique: bool) -> Any | None:
        """A value of row `i` when the column has no statistics; None when the kind cannot
        make one."""
        return None


@dataclass(frozen=True)
class IntKind(Kind):
    bits: int = 64
    ordered = True

    def parse(self, text: str) -> int:
        return int(text)

    def _clamp(self, v: int) -> int:
        top = 2 ** (self.bits - 1) - 1
        return int(max(-top - 1, min(top, v)))

    def between(self, lo: Any, hi: Any, frac: float) -> Any:
        return self._clamp(math.floor(lo + (hi - lo) * frac))

    def position(self, lo: Any, hi: Any, value: Any) -> float:
        return 0.5 if hi == lo else (value - lo) / (hi - lo)

    def bump(self, value: Any, k: int) -> Any:
        v = value + k
        return v if self._clamp(v) == v else None

    def step(self, value: Any, up: bool) -> Any:
        return self._clamp(value + (1 if up else -1))

    def synth(self, rng: random.Random, i: int, unique: bool) -> int:
        return i + 1 if unique else rng.randint(1, 1000)


@dataclass(frozen=True)
class NumericKind(Kind):
    precision: int | None = None
    scale: int | None = None
    ordered = True

    def parse(self, text: str) -> Decimal:
        try:
            v = Decimal(text)
        except InvalidOperation:
            raise ValueError(text) from None
        if not v.is_finite():
            raise ValueError(text)
        return v

    @property
    def unit(self) -> Decimal:
        return Decimal(1).scaleb(-self.scale) if self.scale is not None else Decimal("0.000001")

    def format(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        return str(value.quantize(self.unit)) if self.scale is not None else str(value)

    def between(self, lo: Any, hi: Any, frac: float) -> Any:
        v = lo + (hi - lo) * Decimal(repr(frac))
        return v.quantize(self.unit) if self.scale is not None else v

    def position(self, lo: Any, hi: Any, value: Any) -> float:
        return 0.5 if hi == lo else float((value - lo) / (hi - lo))

    def bump(self, value: Any, k: int) -> Any:
        return Decimal(value) + self.unit * k

    def step(self, value: Any, up: bool) -> Any:
        return Decimal(value) + (self.unit if up else -self.unit)

    def synth(self, rng: random.Random, i: int, unique: bool) -> Decimal:
        top = 1000.0
        if self.precision is not None:
            top = min(top, 10.0 ** (self.precision - (self.scale or 0)) - 1)
        v = Decimal(repr(i + 1 if unique else rng.uniform(0, top)))
        return v.quantize(self.unit) if self.scale is not None else v


@dataclass(frozen=True)
class FloatKind(Kind):
    ordered = True

    def parse(self, text: str) -> float:
        v = float(text)
        if not math.isfinite(v):
            raise ValueError(text)
        return v

    def format(self, value: Any) -> str:
        return value if isinstance(value, str) else repr(float(value))

    def between(self, lo: Any, hi: Any, frac: float) -> float:
        return float(lo + (hi - lo) * frac)

    def position(self, lo: Any, hi: Any, value: Any) -> float:
        return 0.5 if hi == lo else float((value - lo) / (hi - lo))

    def bump(self, value: Any, k: int) -> float:
        return float(value) + k * max(abs(float(value)) * 1e-9, 1e-9)

    def step(self, value: Any, up: bool) -> float:
        return math.nextafter(float(value), math.inf if up else -math.inf)

    def synth(self, rng: random.Random, i: int, unique: bool) -> float:
        return float(i + 1) if unique else rng.uniform(0, 1000)


@dataclass(frozen=True)
class DateKind(Kind):
    ordered = True

    def parse(self, text: str) -> dt.date:
        return dt.date.fromisoformat(text)

    def format(self, value: Any) -> str:
        return value if isinstance(value, str) else value.isoformat()

    def between(self, lo: Any, hi: Any, frac: float) -> Any:
        return lo + dt.timedelta(days=math.floor((hi - lo).days * frac))

    def position(self, lo: Any, hi: Any, value: Any) -> float:
        span = (hi - lo).days
        return 0.5 if span == 0 else (value - lo).days / span

    def bump(self, value: Any, k: int) -> Any:
        try:
            return value + dt.timedelta(days=k)
        except OverflowError:
            return None

    def step(self, value: Any, up: bool) -> Any:
        return value + dt.timedelta(days=1 if up else -1)

    def synth(self, rng: random.Random, i: int, unique: bool) -> dt.date:
        return dt.date.today() - dt.timedelta(days=i if unique else rng.randint(0, SYNTH_DAYS))


@dataclass(frozen=True)
class TimestampKind(Kind):
    with_zone: bool = False
    ordered = True

    def parse(self, text: str) -> dt.datetime:
        v = dt.datetime.fromisoformat(text)
        if (v.tzinfo is not None) != self.with_zone:
            raise ValueError(text)
        return v

    def format(self, value: Any) -> str:
        return value if isinstance(value, str) else value.isoformat(sep=" ")

    def between(self, lo: Any, hi: Any, frac: float) -> Any:
        return lo + dt.timedelta(microseconds=math.floor((hi - lo) / dt.timedelta(microseconds=1) * frac))

    def position(self, lo: Any, hi: Any, value: Any) -> float:
        span = (hi - lo).total_seconds()
        return 0.5 if span == 0 else (value - lo).total_seconds() / span

    def bump(self, value: Any, k: int) -> Any:
        try:
            return value + dt.timedelta(microseconds=k)
        except OverflowError:
            return None

    def step(self, value: Any, up: bool) -> Any:
        return value + dt.timedelta(microseconds=1 if up else -1)

    def synth(self, rng: random.Random, i: int, unique: bool) -> dt.datetime:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        if not self.with_zone:
            now = now.replace(tzinfo=None)
        return now - dt.timedelta(seconds=i if unique else rng.randint(0, SYNTH_DAYS * 86400))


@dataclass(frozen=True)
class TimeKind(Kind):
    ordered = True

    def parse(self, text: str) -> dt.time:
        v = dt.time.fromisoformat(text)
        if v.tzinfo is not None:
            raise ValueError(text)
        return v

    def format(self, value: Any) -> str:
        return value if isinstance(value, str) else value.isoformat()

    @staticmethod
    def _us(t: dt.time) -> int:
        return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond

    @staticmethod
    def _time(us: int) -> dt.time:
        us = max(0, min(us, 86_400_000_000 - 1))
        s, micro = divmod(us, 1_000_000)
        m, sec = divmod(s, 60)
        h, minute = divmod(m, 60)
        return dt.time(h, minute, sec, micro)

    def between(self, lo: Any, hi: Any, frac: float) -> dt.time:
        return self._time(self._us(lo) + math.floor((self._us(hi) - self._us(lo)) * frac))

    def position(self, lo: Any, hi: Any, value: Any) -> float:
        span = self._us(hi) - self._us(lo)
        return 0.5 if span == 0 else (self._us(value) - self._us(lo)) / span

    def step(self, value: Any, up: bool) -> dt.time:
        return self._time(self._us(value) + (1 if up else -1))

    def synth(self, rng: random.Random, i: int, unique: bool) -> dt.time:
        return self._time(rng.randrange(86_400) * 1_000_000)


@dataclass(frozen=True)
class TextKind(Kind):
    max_length: int | None = None  # varchar(n), char(n)
    width: int = 8  # average bytes of a value (pg_stats.avg_width), for values made without statistics

    def format(self, value: Any) -> str:
        text = value if isinstance(value, str) else str(value)
        return text if self.max_length is None else text[: self.max_length]

    def bump(self, value: Any, k: int) -> str:
        suffix = f"~{k}"
        base = str(value)
        if self.max_length is not None:
            if len(suffix) > self.max_length:
                return suffix[-self.max_length:]
            base = base[: self.max_length - len(suffix)]
        return base + suffix

    def synth(self, rng: random.Random, i: int, unique: bool) -> str:
        n = max(1, min(self.width - 1, self.max_length or 64))
        text = "".join(rng.choices(string.ascii_lowercase, k=n))
        return self.bump(text, i + 1) if unique else text


@dataclass(frozen=True)
class UuidKind(Kind):
    def bump(self, value: Any, k: int) -> str:
        return str(uuid.UUID(int=random.getrandbits(128), version=4))

    def synth(self, rng: random.Random, i: int, unique: bool) -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass(frozen=True)
class ChoiceKind(Kind):
    """A type with few values: booleans, the labels of an enum."""

    values: tuple[str, ...] = ("t", "f")

    def synth(self, rng: random.Random, i: int, unique: bool) -> str | None:
        return rng.choice(self.values) if self.values else None


@dataclass(frozen=True)
class ConstantKind(Kind):
    """Types whose value hardly matters to a migration: json, bytea, inet, interval."""

    made: str = ""

    def synth(self, rng: random.Random, i: int, unique: bool) -> str:
        n = rng.randrange(1, 1000)
        return self.made.replace("N", str(n)) if "N" in self.made else self.made


@dataclass(frozen=True)
class ArrayKind(Kind):
    element: Kind = Kind()

    def synth(self, rng: random.Random, i: int, unique: bool) -> str | None:
        items = []
        for j in range(rng.randrange(0, 4)):
            v = self.element.synth(rng, i * 4 + j, False)
            if v is None:
                return "{}"
            text = self.element.format(v).replace("\\", "\\\\").replace('"', '\\"')
            items.append(f'"{text}"')
        return "{" + ",".join(items) + "}"


CONSTANTS = {"json": '{"n": N}', "jsonb": '{"n": N}', "bytea": "\\x00", "inet": "10.0.0.1",
             "cidr": "10.0.0.0/8", "interval": "N minutes", "macaddr": "08:00:2b:01:02:03"}
TEXT_TYPES = {"text", "varchar", "bpchar", "name", "citext"}


def _fixed_kind(typname: str, typmod: int) -> Kind | None:
    """The kind of a type known by its name alone (numbers, dates and times, uuid, bool)."""
    if typname in INT_BITS:
        return IntKind(INT_BITS[typname])
    if typname == "numeric":
        return NumericKind((typmod - 4) >> 16, (typmod - 4) & 0xFFFF) if typmod >= 4 else NumericKind()
    simple: dict[str, Callable[[], Kind]] = {
        "float4": FloatKind, "float8": FloatKind, "date": DateKind, "time": TimeKind, "uuid": UuidKind,
        "timestamp": lambda: TimestampKind(with_zone=False), "timestamptz": lambda: TimestampKind(with_zone=True),
        "bool": lambda: ChoiceKind(("t", "f")),
    }
    make = simple.get(typname)
    return make() if make else None


def kind_for(typname: str, typmod: int, category: str, *, enum_labels: tuple[str, ...] = (),
             element: Kind | None = None, width: int = 8) -> Kind:
    """The kind of a base type (domains resolved to their base type first) by its name in
    pg_type, its type modifier, its category and, for enums, its labels."""
    known = _fixed_kind(typname, typmod)
    if known is not None:
        return known
    if typname in TEXT_TYPES or category == "S":
        return TextKind(typmod - 4 if typname in ("varchar", "bpchar") and typmod >= 4 else None, max(width, 2))
    if category == "E" or enum_labels:
        return ChoiceKind(enum_labels)
    if element is not None:
        return ArrayKind(element)
    if typname in CONSTANTS:
        return ConstantKind(CONSTANTS[typname])
    return Kind()
