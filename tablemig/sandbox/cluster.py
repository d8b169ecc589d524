"""Throwaway PostgreSQL clusters on loopback: a primary ("active"), a streaming physical
standby ("passive") and optionally a separate "subscriber" cluster.

Everything lives under one directory whose `sandbox.json` lets any process stop it.
The clusters trade durability for speed (fsync=off); never point one at real data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..pg.binaries import (
    PgBin,
    RunAs,
    check_traversable,
    chown_to,
    find_pg_bin,
    log_tail,
    postmaster_alive,
    postmaster_pid,
    run_tool,
    server_account,
    write_as,
)
from ..pg.connect import connect

STATE_FILE = "sandbox.json"
PROVIDERS = ("embedded", "docker")
ORDER = ("active", "passive", "subscriber")
NODE_CONF = "tablemig_node.conf"
SLOT = "tablemig_standby"
DBNAME = "tablemig"
SOCKET_LIMIT = 100  # sun_path is 108 bytes on Linux; keep a margin
MANAGED_KEYS = frozenset({"port", "unix_socket_directories", "cluster_name"})
BASE_CONF: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "wal_level": "logical",
    "max_wal_senders": "20",
    "max_replication_slots": "20",
    # every subscription of the logical tests needs an apply worker, table syncs one more
    "max_logical_replication_workers": "12",
    "max_worker_processes": "20",
    "hot_standby": "on",
    "wal_keep_size": "256MB",
    "max_connections": "100",
    "shared_buffers": "128MB",
    # Throwaway clusters: durability costs time and buys nothing here.
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "logging_collector": "off",
    "log_line_prefix": "%m [%p] %q%u@%d ",
    "max_prepared_transactions": "10",
    "track_commit_timestamp": "on",
    # A restarted primary (fault tests) is found again within a second, not the default 5s.
    "wal_retrieve_retry_interval": "1s",
}
HBA = """# written by tablemig sandbox: loopback only, trust
local all all trust
local replication all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
"""
_handed_out: set[int] = set()  # ports given to clusters by this process


@dataclass(frozen=True)
class ClusterInfo:
    """One cluster of the sandbox: where its data, socket and log live and its port."""

    name: str
    datadir: Path
    port: int
    logfile: Path
    socket_dir: str = ""

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={DBNAME} user=postgres"


@dataclass
class Sandbox:
    """A running sandbox; `Sandbox.load(root)` rebuilds it from the state file."""

    root: Path
    active_dsn: str
    passive_dsn: str
    subscriber_dsn: str | None
    pg_bin: PgBin
    clusters: dict[str, ClusterInfo] = field(default_factory=dict)
    run_as: RunAs = field(default_factory=RunAs)

    def as_dict(self) -> dict[str, str]:
        """{"active": dsn, "passive": dsn} plus "subscriber" when there is one."""
        out = {"active": self.active_dsn, "passive": self.passive_dsn}
        if self.subscriber_dsn:
            out["subscriber"] = self.subscriber_dsn
        return out

    def stop(self, keep_logs: bool = False) -> None:
        """Stop every cluster and remove the sandbox (see `stop_sandbox`)."""
        stop_sandbox(self.root, keep_logs=keep_logs)

    def pg_ctl(self, name: str, *args: str, check: bool = True, timeout: float = 180) -> str:
        """Run `pg_ctl -D <datadir> *args` for cluster `name` as the server user.

        e.g. `sb.pg_ctl("active", "restart", "-m", "fast")`, `sb.pg_ctl("passive", "promote")`.
        start/restart get `-l <logfile>` so the server log stays in one place.
        """
        info = self.clusters[name]
        cmd: list[str] = [str(self.pg_bin.tool("pg_ctl")), "-D", str(info.datadir), *args]
        if {"start", "restart"} & set(args) and "-l" not in args:
            cmd += ["-l", str(info.logfile)]
        rc, out = run_tool(cmd, self.run_as, cwd=self.root, timeout=timeout)
        _record_pids(self.root)
        if rc != 0 and check:
            raise InputError(f"pg_ctl {' '.join(args)} failed for {name} (exit {rc}):\n"
                             f"{out.strip()}\n--- {info.logfile} ---\n{log_tail(info.logfile)}",
                             "read the server log above")
        return out

    def postmaster_pid(self, name: str) -> int | None:
        """PID of the cluster's postmaster if it is running."""
        pid = postmaster_pid(self.clusters[name].datadir)
        return pid if pid and postmaster_alive(pid, self.clusters[name].datadir) else None

    @classmethod
    def load(cls, root: Path) -> Sandbox:
        """Read `root/sandbox.json` written by `start_sandbox` (possibly in another process)."""
        state = _read_state(Path(root).absolute())
        if not state or not state.get("complete"):
            raise InputError(f"no started sandbox at {root}", "run `tablemig sandbox start`")
        clusters = {n: _info(n, c) for n, c in state["clusters"].items()}
        return cls(root=Path(state["root"]), active_dsn=clusters["active"].dsn,
                   passive_dsn=clusters["passive"].dsn,
                   subscriber_dsn=clusters["subscriber"].dsn if "subscriber" in clusters else None,
                   pg_bin=PgBin.from_dict(state["pg_bin"]), clusters=clusters,
                   run_as=_account(state))


def _info(name: str, c: dict[str, Any]) -> ClusterInfo:
    return ClusterInfo(name, Path(c["datadir"]), int(c["port"]), Path(c["logfile"]),
                       c.get("socket_dir", ""))


def _account(state: dict[str, Any]) -> RunAs:
    # Switch users only when we can: a non-root process stopping a root-made sandbox tries
    # as itself and falls back to signals, which fail cleanly if not permitted.
    return server_account() if state.get("run_as") and os.geteuid() == 0 else RunAs()


def _read_state(root: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((root / STATE_FILE).read_text())
        return state
    except (OSError, ValueError):
        return None


def _write_state(root: Path, state: dict[str, Any]) -> None:
    tmp = root / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(root / STATE_FILE)  # atomic, so a concurrent stop never reads half a file


def _record_pids(root: Path) -> None:
    state = _read_state(root)
    if state:
        for c in state["clusters"].values():
            c["pid"] = postmaster_pid(Path(c["datadir"])) or c.get("pid")
        _write_state(root, state)


def _free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _conf_line(key: str, value: str) -> str:
    return f"{key} = '{value.replace(chr(39), chr(39) * 2)}'\n"


def _merged_conf(extra: dict[str, str] | None) -> dict[str, str]:
    conf = dict(BASE_CONF)
    for key, value in (extra or {}).items():
        if not key.replace("_", "a").replace(".", "a").isalnum() or key in MANAGED_KEYS:
            raise InputError(f"cannot set {key!r} in the sandbox configuration",
                             f"give a PostgreSQL setting name other than {sorted(MANAGED_KEYS)}")
        conf[key] = str(value)
    return conf


def _start(root: Path, info: ClusterInfo, bins: PgBin, account: RunAs,
           state: dict[str, Any]) -> ClusterInfo:
    """Start a cluster on a fresh free port, retrying when another process takes the port."""
    for _ in range(5):
        info = ClusterInfo(info.name, info.datadir, _free_port(), info.logfile, info.socket_dir)
        write_as(info.datadir / NODE_CONF, _conf_line("port", str(info.port))
               + _conf_line("unix_socket_directories", info.socket_dir)
               + _conf_line("cluster_name", info.name), account)
        state["clusters"][info.name] = {"datadir": str(info.datadir), "port": info.port,
                                        "logfile": str(info.logfile),
                                        "socket_dir": info.socket_dir, "pid": None}
        _write_state(root, state)
        offset = info.logfile.stat().st_size if info.logfile.exists() else 0
        rc, out = run_tool([bins.tool("pg_ctl"), "-w", "-t", "60", "-D", info.datadir,
                            "-l", info.logfile, "start"], account, cwd=root)
        _record_pids(root)
        state.update(_read_state(root) or {})
        if rc == 0:
            return info
        log = log_tail(info.logfile, start=offset)
        if "already in use" not in log:
            raise InputError(f"the {info.name} server did not start (pg_ctl exit {rc}):\n"
                             f"{out.strip()}\n--- last lines of {info.logfile} ---\n{log}",
                             "fix the cause shown in the log; logs are kept in "
                             f"{root / 'logs'}")
    raise InputError(f"no free port found for the {info.name} server after 5 tries",
                     "free some loopback ports and retry")


def _new_cluster(root: Path, name: str, bins: PgBin, account: RunAs,
                 conf: dict[str, str]) -> ClusterInfo:
    base = root / name
    base.mkdir(mode=0o700)
    chown_to(base, account)
    socket_dir = str(base) if len(f"{base}/.s.PGSQL.65535") < SOCKET_LIMIT else ""
    info = ClusterInfo(name, base / "data", 0, root / "logs" / f"{name}.log", socket_dir)
    if name == "passive":
        return info
    rc, out = run_tool([bins.tool("initdb"), "-D", info.datadir, "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"],
                       account, cwd=root)
    if rc != 0:
        raise InputError(f"initdb failed for the {name} cluster (exit {rc}):\n"
                         + "\n".join(out.splitlines()[-20:]),
                         f"check that user {account.name or 'current'} can write {base}")
    write_as(info.datadir / "postgresql.conf",
           "\n# tablemig sandbox settings\n" + "".join(_conf_line(k, v) for k, v in conf.items())
           + f"include_if_exists = '{NODE_CONF}'\n", account, append=True)
    write_as(info.datadir / "pg_hba.conf", HBA, account)
    return info


def _create_db(info: ClusterInfo) -> None:
    with connect(info.dsn.replace(f"dbname={DBNAME}", "dbname=postgres")) as conn:
        conn.execute(f"CREATE DATABASE {DBNAME}")


def _wait_streaming(active: ClusterInfo, passive: ClusterInfo, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with connect(active.dsn) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM pg_stat_replication"
                               " WHERE state = 'streaming'").fetchone()
            if row and row[0]:
                return
            time.sleep(0.05)
    raise InputError(f"the standby did not start streaming within {timeout:.0f}s; last lines of "
                     f"{passive.logfile}:\n{log_tail(passive.logfile)}", "read the standby log")


def _docker_check() -> None:
    try:
        from testcontainers.core.docker_client import DockerClient
    except ImportError as exc:
        raise InputError(f"the docker provider needs testcontainers: {exc}",
                         "pip install 'tablemig[docker]', or use --pg-provider embedded") from None
    try:
        DockerClient(timeout=5).client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable engine"
        raise InputError(f"no Docker engine is available: {exc}",
                         "use --pg-provider embedded (the default), or start Docker") from None
    raise InputError("a Docker engine answered, but the docker provider cannot build the "
                     "primary + physical standby pair yet",
                     "use --pg-provider embedded (the default)")


def start_sandbox(root: Path, *, subscriber: bool = False, pg_bin: str | None = None,
                  provider: str = "embedded", extra_conf: dict[str, str] | None = None
                  ) -> Sandbox:
    """Create and start a primary + streaming standby (+ subscriber) under `root`.

    On any failure or interrupt, whatever was started is stopped and removed (logs kept in
    `root/logs`) before the exception propagates.
    """
    if provider not in PROVIDERS:
        raise InputError(f"unknown sandbox provider {provider!r}",
                         f"use one of: {', '.join(PROVIDERS)}")
    if provider == "docker":
        _docker_check()
    conf = _merged_conf(extra_conf)
    bins = find_pg_bin(pg_bin)
    account = server_account()
    root = Path(root).absolute()
    if _read_state(root):
        raise InputError(f"a sandbox already exists at {root}",
                         f"stop it first: tablemig sandbox stop --dir {root}")
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    if created and account.switches:
        root.chmod(0o755)
    check_traversable(root, account)
    rc, out = run_tool([bins.tool("initdb"), "--version"], account, cwd=root)
    if rc != 0:
        raise InputError(f"user {account.name} cannot run {bins.bindir}: {out.strip()}",
                         "install the binaries where that user can read them")
    state: dict[str, Any] = {"format": 1, "root": str(root), "pg_bin": bins.as_dict(),
                             "run_as": account.name, "clusters": {}, "complete": False}
    _write_state(root, state)
    try:
        logs = root / "logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir()
        chown_to(logs, account)
        active = _new_cluster(root, "active", bins, account, conf)
        active = _start(root, active, bins, account, state)
        _create_db(active)
        passive = _new_cluster(root, "passive", bins, account, conf)
        rc, out = run_tool([bins.tool("pg_basebackup"), "-h", "127.0.0.1", "-p", str(active.port),
                            "-U", "postgres", "-D", passive.datadir, "-R", "-X", "stream",
                            "-C", "-S", SLOT, "-c", "fast", "--no-sync"], account, cwd=root)
        if rc != 0:
            raise InputError(f"pg_basebackup for the standby failed (exit {rc}):\n"
                             + "\n".join(out.splitlines()[-20:]), "read the output above")
        passive = _start(root, passive, bins, account, state)
        _wait_streaming(active, passive)
        if subscriber:
            sub = _start(root, _new_cluster(root, "subscriber", bins, account, conf),
                         bins, account, state)
            _create_db(sub)
        state["complete"] = True
        _write_state(root, state)
    except BaseException:
        with suppress(Exception):
            stop_sandbox(root, keep_logs=True)
        raise
    return Sandbox.load(root)


def _stop_cluster(c: dict[str, Any], bins: PgBin, account: RunAs, root: Path) -> None:
    datadir = Path(c["datadir"])
    pid = postmaster_pid(datadir) or c.get("pid")
    pg_ctl = bins.bindir / "pg_ctl"  # not .tool(): a vanished bin dir must not block the kill
    if (datadir / "postmaster.pid").exists() and pg_ctl.exists():
        for mode in ("fast", "immediate"):
            rc, _ = run_tool([pg_ctl, "-D", datadir, "-m", mode, "-w", "-t", "30", "stop"],
                             account, cwd=root, timeout=60)
            if rc == 0 or not (pid and postmaster_alive(pid, datadir)):
                break
    if pid and postmaster_alive(pid, datadir):
        with suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while postmaster_alive(pid, datadir) and time.monotonic() < deadline:
            time.sleep(0.05)


def stop_sandbox(root: Path, *, keep_logs: bool = False) -> None:
    """Stop the sandbox at `root` and remove it; idempotent (no sandbox: does nothing).

    With `keep_logs`, `root/logs/*.log` survive and everything else is removed.
    """
    root = Path(root).absolute()
    state = _read_state(root)
    if state is None:
        return
    bins, account = PgBin.from_dict(state["pg_bin"]), _account(state)
    clusters = state.get("clusters", {})
    for name in sorted(clusters, key=lambda n: -ORDER.index(n) if n in ORDER else 0):
        _stop_cluster(clusters[name], bins, account, root)
    for child in root.iterdir():
        if child.name == STATE_FILE or (keep_logs and child.name == "logs"):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    (root / STATE_FILE).unlink(missing_ok=True)  # last, so an interrupted stop can be rerun
    if keep_logs and (root / "logs").is_dir():
        for p in (root / "logs", *(root / "logs").iterdir()):
            with suppress(OSError):
                os.chown(p, os.getuid(), os.getgid())
    else:
        with suppress(OSError):
            root.rmdir()
