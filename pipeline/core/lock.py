"""One process per run directory: ``run.lock`` holds the PID, host, start time and command.

Two ``pipeline run`` processes on one folder would each resume and overwrite the other's files,
leaving outputs that belong to neither. So every command that writes a run directory takes its
lock first (the runner does, per run folder; ``pipeline bench --jobs N`` therefore still runs N
detectors at once, each in its own folder).

The lock is an ``fcntl.flock`` on ``run.lock``: the kernel grants it to one open file at a time
and releases it when the holder exits, however it exits (a SIGKILL included). The file's content
names the holder for the error message. A lock file whose holder is gone (its PID is dead on this
host, so its flock was released) is a stale lock: it is taken over with a message. A lock file
written by another host cannot be checked from here; ``pipeline unlock RUN_DIR`` (``--unlock``)
removes it by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from pipeline.core.artifacts import ARTIFACTS
from pipeline.core.errors import MedAnomalyError

LOCK_FILE = ARTIFACTS["lock"].pattern
_HELD: dict[Path, int] = {}  # run folders this process holds → depth (re-entrant within a process)


class RunLockedError(MedAnomalyError):
    """The run directory is in use by another process."""


def _holder_text(info: dict) -> str:
    cmd = f", command: {info['command']}" if info.get("command") else ""
    return f"PID {info.get('pid', '?')} on host {info.get('host', '?')} since {info.get('started', '?')}{cmd}"


def read_holder(run_dir: Path) -> dict:
    """The content of ``run.lock`` ({} when absent or unreadable)."""
    try:
        return json.loads((Path(run_dir) / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def run_lock(run_dir: Path, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the lock of ``run_dir`` for the block; raise :class:`RunLockedError` naming the holder."""
    key = Path(run_dir).resolve()
    if key in _HELD:  # this process already holds it (bench → runner): re-entrant
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    key.mkdir(parents=True, exist_ok=True)
    fd = _acquire(key, log)
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        _release(key, fd)


def _acquire(run_dir: Path, log: Callable[[str], None]) -> int:
    path = run_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(f"run folder {run_dir} is in use by {_holder_text(_written_holder(run_dir))}; "
                                 "wait for it to finish, or use another --out") from None
        try:  # the file we locked must still be the one at the path (a holder may have removed it meanwhile)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    old = read_holder(run_dir)
    if old:
        if old.get("host") not in (None, socket.gethostname()):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise RunLockedError(f"run folder {run_dir} has a lock of {_holder_text(old)}, another machine; "
                                 f"if that run is no longer running, remove it with: pipeline unlock {run_dir}")
        state = "no longer running" if not _pid_alive(int(old.get("pid", -1))) else "running but no longer holding the lock"
        log(f"taking over a stale lock of {run_dir}: {_holder_text(old)} is {state}")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv[:1] + sys.argv[1:])[:500]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    os.fsync(fd)
    return fd


def _written_holder(run_dir: Path, wait_s: float = 2.0) -> dict | None:
    """The holder's record, waiting up to ``wait_s`` for it: a holder writes it just after taking the lock,
    so a process that finds the lock in that instant would otherwise name no one."""
    deadline = time.monotonic() + wait_s
    while True:
        holder = read_holder(run_dir)
        if holder or time.monotonic() >= deadline:
            return holder
        time.sleep(0.02)


def _release(run_dir: Path, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(run_dir / LOCK_FILE)  # unlink before unlocking: a waiter then re-checks the inode and retries
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def unlock(run_dir: Path) -> str:
    """Remove ``run_dir``'s lock by hand; refuse when a live process on this host holds it. Returns what was done."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    if not path.exists():
        return f"{run_dir} has no lock"
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLockedError(f"run folder {run_dir} is in use by {_holder_text(read_holder(run_dir))} on this host; not removed") from None
    holder = read_holder(run_dir)
    _release(run_dir, fd)
    return f"removed the lock of {run_dir} ({_holder_text(holder)})"
