"""Comparing the two sites while the application writes (tablemig.pg.site_compare).

Both directions, against real servers: the check passes while writers insert, update,
delete, move dates across the cutoff both ways and change keys during the whole check, on a
physical standby and on a logical subscriber; it fails, naming the keys, when rows of the
subscriber were changed behind replication's back; it fails when the standby stopped
replaying or the subscriber stopped applying. A private sandbox (primary, standby,
subscriber): pausing the shared standby would stall every other test."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from db_helpers import scalar
from site_helpers import own_sandbox, pause_replay
from twin import CUTOFF, Writers, create_events

from tablemig.errors import InputError
from tablemig.pg import site_compare
from tablemig.pg.connect import connect
from tablemig.pg.names import QualifiedName
from tablemig.pg.reconcile import Reconciler
from tablemig.pg.replication import wait_for_apply, wait_for_replay
from tablemig.pg.site_compare import Pair, SiteDiff, compare
from tablemig.sandbox.cluster import Sandbox

ROWS = 20_000
REC_COLUMNS = ["id", "d", "v", "payload"]


@pytest.fixture(scope="module")
def sites() -> Iterator[Sandbox]:
    with own_sandbox("sites") as sb:
        yield sb


def _rec() -> Reconciler:
    return Reconciler(["id"], ["bigint"], REC_COLUMNS)


def _published(sb: Sandbox, table: str, rows: int = ROWS) -> QualifiedName:
    """`table` (events-like) on the active site, published to the subscriber, synced."""
    assert sb.subscriber_dsn is not None
    with connect(sb.active_dsn) as pub, connect(sb.subscriber_dsn) as sub:
        create_events(pub, rows, table=table)
        pub.execute(f"CREATE PUBLICATION pub_{table} FOR TABLE {table}")
        sub.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, d timestamptz NOT NULL, v integer NOT NULL,"
                    " payload text)")
        info = pub.info
        sub.execute(f"CREATE SUBSCRIPTION sub_{table} CONNECTION 'host={info.host} port={info.port}"
                    f" dbname={info.dbname} user={info.user}' PUBLICATION pub_{table}")
        t0 = time.monotonic()
        while not scalar(sub, "SELECT bool_and(srsubstate = 'r') FROM pg_subscription_rel"):
            assert time.monotonic() - t0 < 60, "initial table sync"
            time.sleep(0.05)
    return QualifiedName("public", table)


def _passive(sb: Sandbox, site: str) -> str:
    dsn = sb.passive_dsn if site == "standby" else sb.subscriber_dsn
    assert dsn is not None
    return dsn


def _compare_under_writes(sb: Sandbox, site: str, table: QualifiedName, checks: int = 2,
                          **pair: Any) -> tuple[list[SiteDiff], int]:
    """`checks` comparisons while writers change the table; the writes made meanwhile."""
    with Writers(sb.active_dsn, ROWS, table=table.name, threads=2) as writers, \
            connect(sb.active_dsn) as a, connect(_passive(sb, site)) as p:
        time.sleep(0.3)
        before = sum(writers.stats.ops.values())
        found = [compare(Pair(a, p, logical=site == "subscriber", **pair), _rec(), table) for _ in range(checks)]
        during = sum(writers.stats.ops.values()) - before
    return found, during


@pytest.mark.parametrize("site", ["standby", "subscriber"])
def test_sites_agree_under_a_constant_write_load(sites: Sandbox, site: str) -> None:
    table = _published(sites, f"load_{site}")
    found, writes = _compare_under_writes(sites, site, table)
    assert writes > 100, f"the writers made only {writes} writes during the checks"
    for d in found:
        assert d.in_sync, d.evidence()
        assert d.rows_active > 0 and d.segments >= 16


def test_bounded_chunks_agree_under_writes_and_still_name_divergence(
        sites: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny chunks: every range is cut into many chunks on both sites (the subscriber holds
    far more rows in one range than the active site), and the verdicts are the same."""
    monkeypatch.setattr(site_compare, "CHUNK_ROWS", 300)
    monkeypatch.setattr(site_compare, "ROW_LEVEL", 40)
    table = _published(sites, "chunks")
    assert sites.subscriber_dsn is not None
    with connect(sites.subscriber_dsn) as sub:
        sub.execute("INSERT INTO chunks SELECT -g, now(), g, 'only here' FROM generate_series(1, 1000) g")
    found, writes = _compare_under_writes(sites, "subscriber", table, checks=1)
    (d,) = found
    assert writes > 50
    assert d.divergent == 1000, d.evidence()
    assert all(k["passive"] == "only on the passive site" and int(k["key"][0]) < 0 for k in d.divergent_keys)
    found, _ = _compare_under_writes(sites, "standby", table, checks=1)
    assert found[0].in_sync, found[0].evidence()


def test_rows_changed_on_the_subscriber_are_divergence_named_by_key(sites: Sandbox) -> None:
    """Changed, deleted and added behind replication's back (subscriber tables are writable):
    divergence, each key named, while writers keep changing every other row."""
    table = _published(sites, "drift")
    assert sites.subscriber_dsn is not None
    with connect(sites.active_dsn) as pub, connect(sites.subscriber_dsn) as sub:
        # rows the writers never touch (their keys are positive)
        pub.execute("INSERT INTO drift SELECT -g, now(), g, 'kept' FROM generate_series(1, 10) g")
        wait_for_apply(pub, sub, table="public.drift")
        sub.execute("UPDATE drift SET v = v + 1 WHERE id = -1")
        sub.execute("DELETE FROM drift WHERE id = -2")
        sub.execute("INSERT INTO drift VALUES (-1000, now(), 0, 'only on the subscriber')")
        with sub.transaction():
            sub.execute("SET LOCAL session_replication_role = replica")
            sub.execute("UPDATE drift SET payload = 'changed quietly' WHERE id = -3")
    found, writes = _compare_under_writes(sites, "subscriber", table, checks=1)
    (d,) = found
    assert writes > 50
    named = {k["key"][0]: k["passive"] for k in d.divergent_keys}
    assert named == {"-1": "differs on the passive site", "-2": "missing on the passive site",
                     "-3": "differs on the passive site", "-1000": "only on the passive site"}, d.evidence()
    assert d.divergent == 4 and not d.in_sync
    assert "-1000" in d.problem() and "public.drift" in d.problem()



def test_a_standby_that_stopped_replaying_fails_the_check(sites: Sandbox) -> None:
    table = _published(sites, "stalled")
    with connect(sites.active_dsn) as active, connect(sites.passive_dsn) as standby:
        wait_for_replay(active, standby)
        pause_replay(standby)
        try:
            with pytest.raises(InputError, match="has not replayed") as err:
                _compare_under_writes(sites, "standby", table, checks=1, timeout_s=3)
            assert "replay paused" in err.value.fix
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")


def test_a_subscriber_that_does_not_apply_fails_the_check(sites: Sandbox) -> None:
    """The apply worker has received a change but cannot apply it (a lock on the subscriber):
    the wait is for the subscriber's confirmed flush on the active site, which does not
    move, not for the received position, which does."""
    table = _published(sites, "blocked")
    assert sites.subscriber_dsn is not None
    with connect(sites.active_dsn) as pub, connect(sites.subscriber_dsn) as sub, \
            connect(sites.subscriber_dsn) as locker:
        wait_for_apply(pub, sub, table="public.blocked")
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE blocked IN ACCESS EXCLUSIVE MODE")
        try:
            pub.execute("INSERT INTO blocked VALUES (-5, now(), 5, 'waits on the subscriber')")
            with pytest.raises(InputError, match="has not applied"):
                wait_for_apply(pub, sub, timeout_s=2, table="public.blocked")
            with pytest.raises(InputError, match="has not applied"):
                compare(Pair(pub, sub, logical=True, timeout_s=2), _rec(), table)
        finally:
            locker.execute("ROLLBACK")
        wait_for_apply(pub, sub, table="public.blocked")
        assert sub.execute("SELECT count(*) FROM blocked WHERE id = -5").fetchone() == (1,)
        sub.execute(f"ALTER SUBSCRIPTION sub_{table.name} DISABLE")
        with pytest.raises(InputError, match="no enabled subscription"):
            compare(Pair(pub, sub, logical=True, timeout_s=2), _rec(), table)
        sub.execute(f"ALTER SUBSCRIPTION sub_{table.name} ENABLE")


def test_plan_checks_pass_on_a_subscriber_under_writes(sites: Sandbox, tmp_path: Path) -> None:
    """The plan with the subscriber as passive site, dry run then --execute, while writers
    change the table the whole time: PRE-1.1c and EX-3.2 compare the sites and pass."""
    from tablemig.cli.newplan import render_plan
    from tablemig.config.plan import TableConfig

    table = _published(sites, "planned", 8_000)
    assert sites.subscriber_dsn is not None
    plan = tmp_path / "sub_plan.py"
    plan.write_text(render_plan(name="sub_plan", path=str(plan), tables=[
        TableConfig("public.planned", "d", cutoff=CUTOFF.isoformat(), batch_size=2000)]))
    cmd = [sys.executable, "-m", "pytest", str(plan), "-q", "-p", "no:cacheprovider", "--active-dsn",
           sites.active_dsn, "--passive-dsn", sites.subscriber_dsn, "--reports-dir", str(tmp_path / "reports")]
    runs = {}
    with Writers(sites.active_dsn, 8_000, table=table.name, threads=2) as writers:
        for mode in ("dry-run", "execute"):
            proc = subprocess.run([*cmd, *(["--execute"] if mode == "execute" else [])], capture_output=True,
                                  text=True, timeout=900, cwd=tmp_path)
            run = json.loads(sorted((tmp_path / "reports").glob("*/latest/run.json"))[-1].read_text())
            runs[mode] = ({s["id"]: s for s in run["steps"]}, proc.stdout[-3000:])
    assert sum(writers.stats.ops.values()) > 200
    steps, out = runs["dry-run"]
    assert steps["PRE-1.1c"]["status"] in ("passed", "warning"), (steps["PRE-1.1c"], out)
    steps, out = runs["execute"]
    for item in ("PRE-1.1c", "EX-1.3", "EX-2.2", "EX-3.2", "EX-4.1", "POST-2"):
        assert steps[item]["status"] in ("passed", "warning"), (item, steps[item], out)
    sites_seen = steps["EX-3.2"]["evidence"]["sites"]
    assert set(sites_seen) == {"live", "archive"}
    assert all(v["divergent_keys"] == 0 for v in sites_seen.values()), sites_seen
