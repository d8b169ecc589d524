"""A migration run in plan mode and executed, and the statements each recorded, compared."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tablemig.config.spec import TableSpec
from tablemig.lifecycle.driver import Migration
from tablemig.lifecycle.executor import Mode, Recorder, StatementRecord
from tablemig.lifecycle.state import State


def shown(value: Any) -> Any:
    """A recorded parameter with every observed value reduced to its kind."""
    if isinstance(value, dict):
        if set(value) == {"observed", "value"}:
            return {"observed": value["observed"]}
        return {k: shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shown(v) for v in value]
    return value


# a catalog read of a table by its OID: after the swap the live table is another relation,
# whose OID the server assigned when the execution created it
INSPECT = re.compile(r"(EXECUTE tablemig_inspect_\w+)\(\d+\)")


def statements(recorder: Recorder) -> list[tuple[str, str, str, Any]]:
    """(site, kind, text, parameters) of each recorded statement, observed values reduced to
    their kind."""
    def one(s: StatementRecord) -> tuple[str, str, str, Any]:
        d = s.as_dict()
        return s.site, s.kind, INSPECT.sub(r"\1(oid)", " ".join(s.sql.split())), shown(d.get("params"))
    return [one(s) for s in recorder.statements]


def same(dry: list[tuple[str, str, str, Any]], real: list[tuple[str, str, str, Any]]) -> None:
    """The two lists are equal; else the first statement where they differ."""
    first = next((i for i, (a, b) in enumerate(zip(dry, real, strict=False)) if a != b), None)
    assert first is None and len(dry) == len(real), (
        f"the dry run and the execution differ at statement {first} of {len(dry)}/{len(real)}: "
        f"{dry[first] if first is not None and first < len(dry) else None} != "
        f"{real[first] if first is not None and first < len(real) else None}")


def run(dsn: str, spec: TableSpec, mode: Mode, until: str,
        subscribers: Sequence[str] = ()) -> tuple[Recorder, State | None]:
    """Migrate `spec` up to `until` in `mode`; the recorder and the state reached."""
    recorder = Recorder()
    # unpaced, as a dry run is: the write guard's rests (and the drain of the change log
    # after one) are decided by the clock, not by the plan
    with Migration(dsn, spec, mode=mode, recorder=recorder, progress=lambda p: None,
                   subscribers=subscribers, lock_timeout="1s", nice_ratio=0, app_write_share=0) as mig:
        final = mig.run(until)
    return recorder, final
