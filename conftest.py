"""Fixtures shared by the test suite (the plan fixtures come from the tablemig plugin).

Every test that changes data gets its own database (`fresh_db`), created on the active
site and replicated to the standby, so tests stay independent under pytest-xdist.
`installed_wheel` is tablemig as users install it: the wheel built from this tree,
installed (not editable) with its dependencies into a virtual environment of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tablemig.pg.connect import connect
from tablemig.pg.replication import wait_for_replay


def with_dbname(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo("", **params)


@dataclass
class FreshDb:
    name: str
    dsn: str
    passive_dsn: str | None

    def connect(self, **kw: Any) -> psycopg.Connection[Any]:
        return connect(self.dsn, **kw)


@pytest.fixture
def fresh_db(active: psycopg.Connection[Any], active_dsn: str,
             passive_dsn: str | None) -> Iterator[FreshDb]:
    """A new empty database on the active site (visible on the standby by replication)."""
    with new_database(active, active_dsn, passive_dsn) as db:
        yield db


@pytest.fixture(scope="module")
def module_db(active: psycopg.Connection[Any], active_dsn: str,
              passive_dsn: str | None) -> Iterator[FreshDb]:
    """`fresh_db` shared by the tests of one module (each keeps to its own schema)."""
    with new_database(active, active_dsn, passive_dsn) as db:
        yield db


@contextlib.contextmanager
def new_database(active: psycopg.Connection[Any], active_dsn: str,
                 passive_dsn: str | None) -> Iterator[FreshDb]:
    """Create a database on the active site, wait for the standby to have it, drop it after."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    active.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    if passive_dsn:
        # a test connecting to the passive site at once must not race the standby's replay
        # of CREATE DATABASE (it lags while another xdist worker writes; on a busy machine,
        # for many seconds)
        with connect(passive_dsn) as passive:
            if passive.execute("SELECT pg_is_in_recovery()").fetchone() == (True,):
                wait_for_replay(active, passive, timeout_s=300)
    db = FreshDb(name, with_dbname(active_dsn, name),
                 with_dbname(passive_dsn, name) if passive_dsn else None)
    try:
        yield db
    finally:
        active.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


# -- tablemig as users install it --------------------------------------------------------

REPO = Path(__file__).resolve().parent
# what the build reads: the packages and the project files (build/, dist/, *.egg-info and
# caches of the working tree stay out of it)
BUILD_INPUTS = ("tablemig", "sql_templates", "pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in",
                "README.md", "LICENSE")


def clean_env(venv: Path | None = None) -> dict[str, str]:
    """The environment of a user's shell: nothing of this test session (its virtualenv, its
    pytest worker, its import path), `venv`'s scripts first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("PYTEST_")}
    outer_bin = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != outer_bin]
    env["PATH"] = os.pathsep.join(([str(venv / "bin")] if venv is not None else []) + path)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run_checked(cmd: list[str], *, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    assert out.returncode == 0, f"{cmd}\n--- stdout\n{out.stdout[-5000:]}\n--- stderr\n{out.stderr[-5000:]}"
    return out


@dataclass(frozen=True)
class InstalledWheel:
    wheel: Path
    venv: Path

    @property
    def names(self) -> frozenset[str]:
        """The files in the wheel."""
        with zipfile.ZipFile(self.wheel) as zf:
            return frozenset(zf.namelist())

    def wheel_text(self, name: str) -> str:
        with zipfile.ZipFile(self.wheel) as zf:
            return zf.read(name).decode()

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def env(self) -> dict[str, str]:
        return clean_env(self.venv)

    def run(self, tool: str, *args: str, cwd: Path, check: bool = True, timeout: float = 600
            ) -> subprocess.CompletedProcess[str]:
        """`tool` (python, tablemig, pytest) of the virtualenv, from `cwd`, in a user's environment."""
        cmd = [self.bin(tool), *args]
        if check:
            return run_checked(cmd, cwd=cwd, env=self.env(), timeout=timeout)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              cwd=cwd, env=self.env())


def build_wheel(out: Path) -> Path:
    """The wheel of a copy of this tree (the build writes nothing into the repository)."""
    src = out / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        elif (REPO / name).exists():
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / name, src / name)
    # --no-isolation: the build backend is this environment's, not one fetched for the build
    run_checked([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out / "dist"),
                 str(src)], cwd=src, env=clean_env())
    wheels = list((out / "dist").glob("tablemig-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def install_wheel(wheel: Path, venv: Path) -> None:
    """A brand-new virtualenv with the wheel and its dependencies, resolved by pip as for a
    user (from pip's cache, filled when this environment was set up). Byte-compiling is left
    to the first import: it would double the install's time."""
    run_checked([sys.executable, "-m", "venv", "--without-pip", str(venv)], env=clean_env())
    run_checked([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                 "--no-compile", str(wheel)], env=clean_env(), timeout=900)


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> InstalledWheel:
    """The wheel built from this tree, installed into a fresh virtualenv: built once per test
    run, shared by the xdist workers of the run (the first one builds, under a lock)."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if worker_id != "master" else base) / "installed-wheel"
    shared.mkdir(parents=True, exist_ok=True)
    with open(shared / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = shared / "venv" / "installed"
        if not done.exists():
            shutil.rmtree(shared / "venv", ignore_errors=True)
            for old in (shared / "src", shared / "dist"):
                shutil.rmtree(old, ignore_errors=True)
            install_wheel(build_wheel(shared), shared / "venv")
            done.write_text("")
        wheel = next((shared / "dist").glob("tablemig-*.whl"))
    return InstalledWheel(wheel, shared / "venv")
