"""Sandboxes shared between processes: the xdist workers of one run use one sandbox, and
sandboxes left running by runs that were killed are reaped."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ..errors import InputError
from .cluster import Sandbox, start_sandbox, stop_sandbox


@contextmanager
def _flocked(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def shared_sandbox(root: Path, key: str, *, keep_logs: bool = False,
                   **kw: Any) -> Iterator[Sandbox]:
    """One sandbox under `root/key` shared by every process (e.g. xdist worker) using `key`.

    The first user starts it; users are a list of pids in `root/key.users`, changed only
    under an flock on `root/key.lock`; the last live user to leave stops it. Pids of users
    that died are ignored, so a crashed worker does not keep the sandbox up for the others.
    """
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    target, users_file = root / key, root / f"{key}.users"

    def users() -> list[int]:
        try:
            pids = [int(p) for p in json.loads(users_file.read_text())]
        except (OSError, ValueError, TypeError):
            return []
        return [p for p in pids if p == os.getpid() or Path(f"/proc/{p}").exists()]

    with _flocked(root / f"{key}.lock"):
        current = users()
        try:
            sb = Sandbox.load(target)
            healthy = all(sb.postmaster_pid(n) for n in sb.clusters)
        except InputError:
            healthy = False
        if not healthy:
            stop_sandbox(target)  # leftovers of a crashed run
            sb = start_sandbox(target, **kw)
        users_file.write_text(json.dumps([*current, os.getpid()]))
    try:
        yield sb
    finally:
        with _flocked(root / f"{key}.lock"):
            current = users()
            with suppress(ValueError):
                current.remove(os.getpid())
            if current:
                users_file.write_text(json.dumps(current))
            else:
                users_file.unlink(missing_ok=True)
                stop_sandbox(target, keep_logs=keep_logs)


def reap_stale(root: Path, exclude: str = "") -> list[str]:
    """Stop and remove shared sandboxes under `root` whose users have all died (a run that was
    killed before its session could stop them). Skips `exclude` (the caller's own key) and
    any whose lock is held right now."""
    reaped = []
    for lock in sorted(Path(root).glob("*.lock")):
        key = lock.name[: -len(".lock")]
        if key == exclude:
            continue
        users_file = lock.with_name(f"{key}.users")
        with open(lock, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # being started or stopped by a live run
            try:
                try:
                    pids = [int(p) for p in json.loads(users_file.read_text())]
                except (OSError, ValueError, TypeError):
                    pids = []
                if any(Path(f"/proc/{p}").exists() for p in pids):
                    continue
                stop_sandbox(Path(root) / key)
                users_file.unlink(missing_ok=True)
                reaped.append(key)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        lock.unlink(missing_ok=True)
    return reaped

