"""Subprocesses of the bench: the tablemig CLI, pytest running a plan, pgbench, pg_dump.

Each one is waited for with `os.wait4`, whose resource usage covers the child and every
descendant it waited for itself: its peak RSS is the child's, never the bench's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # our running subprocesses, by pid


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> float:
    """The 1-minute load average (-1 when unknown)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def tablemig_cli(*args: str) -> list[str]:
    """The real `tablemig` command line, run by this interpreter."""
    return [sys.executable, "-m", "tablemig.cli.main", *args]


def tail(path: Path, n: int = 15) -> str:
    """The last `n` lines of a log file ("" when unreadable)."""
    try:
        text = path.read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-n:])


@dataclass
class Samples:
    """What a sampler thread saw of a running child every `interval` seconds: its own
    high-water RSS (VmHWM, the child alone, without its descendants) and the machine's load."""

    own_peak_kib: int = 0
    loads: list[float] = field(default_factory=list)

    def load_summary(self) -> dict[str, float | None]:
        xs = [x for x in self.loads if x >= 0]
        return {"min": min(xs) if xs else None, "max": max(xs) if xs else None,
                "mean": round(sum(xs) / len(xs), 2) if xs else None}


@dataclass
class Finished:
    """A child that ran to completion."""

    code: int
    seconds: float
    peak_rss_mb: float  # the child and the descendants it waited for (wait4's ru_maxrss)
    own_peak_rss_mb: float | None  # the child process alone (its last VmHWM seen)
    load: dict[str, float | None]


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _sample(pid: int, stop: threading.Event, out: Samples, interval: float) -> None:
    while not stop.is_set():
        hwm = _vm_hwm_kib(pid)
        if hwm is not None:
            out.own_peak_kib = max(out.own_peak_kib, hwm)
        out.loads.append(loadavg())
        stop.wait(interval)


def run_child(cmd: Sequence[str], out: Path, err: Path, *, env: Mapping[str, str] | None = None,
              cwd: Path | None = None, sample_every: float = 0.5) -> Finished:
    """Run `cmd` to completion with its output in `out` and `err`."""
    with open(out, "wb") as o, open(err, "wb") as e:
        t0 = time.perf_counter()
        p = subprocess.Popen(list(cmd), stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                             env=dict(env) if env is not None else None, cwd=cwd)
        _CHILDREN[p.pid] = p
        samples, stop = Samples(), threading.Event()
        sampler = threading.Thread(target=_sample, args=(p.pid, stop, samples, sample_every), daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            stop.set()
            sampler.join()
            _CHILDREN.pop(p.pid, None)
        seconds = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    own = samples.own_peak_kib / 1024.0 if samples.own_peak_kib else None
    # ru_maxrss is in KiB on Linux
    return Finished(p.returncode, seconds, usage.ru_maxrss / 1024.0, own, samples.load_summary())


def start_child(cmd: Sequence[str], out: Path, err: Path) -> subprocess.Popen[bytes]:
    """Start `cmd` in the background (stopped by `stop_children` if still running)."""
    with open(out, "wb") as o, open(err, "wb") as e:
        p = subprocess.Popen(list(cmd), stdout=o, stderr=e, stdin=subprocess.DEVNULL)
    _CHILDREN[p.pid] = p
    return p


def forget(p: subprocess.Popen[bytes]) -> None:
    """A background child that has ended."""
    _CHILDREN.pop(p.pid, None)


def stop_children() -> None:
    """Terminate (then kill) every child of ours still running."""
    for pid, p in list(_CHILDREN.items()):
        if p.poll() is None:
            log(f"stopping child pid {pid}")
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        _CHILDREN.pop(pid, None)
