"""One writer per rank of a run: a lock file that names its holder (host, pid, start time).

Two processes appending to one run would splice their epochs together in the manifest. So a Tracker holds
`.writer.rank<R>.lock` in the run directory while it is open: created atomically (written under a temporary
name, then hard-linked into place, which fails if the lock exists), removed by `close()`. Ranks of one
distributed run hold a lock each and never meet.

A lock whose holder is gone is stale and taken over, and said so: on this host a holder is gone when its pid
no longer runs, or runs a process started after the lock was taken (the pid was reused, as after a container
restart), or is this very process with no open Tracker holding the lock. A lock from another host is never
judged: the error names it, for the user to remove if that process is gone.
"""
from __future__ import annotations

import gc
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

# An unreadable lock this recent may be one that the O_EXCL fallback is still writing.
_UNREADABLE_GRACE_S = 10.0
# Locks held by open Trackers of this process, by path.
_HELD: set[str] = set()


class RunLockedError(RuntimeError):
    """Another writer holds this rank of the run; the message names it."""


@dataclass
class RankLock:
    path: Path
    holder: dict
    took_over: dict | None = None  # the stale holder replaced, if any


def lock_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / f".writer.rank{rank}.lock"


def acquire(run_dir: Path, rank: int, *, session: str) -> RankLock:
    """Take the lock of `rank` in `run_dir` (created if needed); RunLockedError if a live writer holds it."""
    path = lock_path(run_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
          "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "session": session}
    took_over = None
    for _ in range(5):  # a few rounds: another process may be taking over the same stale lock
        if _create(path, me):
            _HELD.add(str(path))
            return RankLock(path, me, took_over)
        holder = _read(path)
        if holder is None and not path.exists():
            continue  # released meanwhile
        if _alive(path, holder):
            raise RunLockedError(_locked_message(path, rank, holder))
        if _remove_stale(path, holder):
            took_over = holder or {"unreadable": True}
    raise RunLockedError(f"{path}: could not take the lock of rank {rank}: other processes keep taking it")


def release(lock: RankLock | None) -> None:
    """Remove the lock if it is still this holder's (a taker of a stale lock owns it now otherwise)."""
    if lock is None or lock.holder["pid"] != os.getpid():  # a forked child (a loader worker) owns no lock
        return
    _HELD.discard(str(lock.path))
    holder = _read(lock.path)
    if holder is not None and holder.get("session") == lock.holder["session"]:
        try:
            lock.path.unlink()
        except FileNotFoundError:
            pass


def describe(holder: dict | None) -> str:
    if not holder:
        return "an unknown process (unreadable lock)"
    return (f"pid {holder.get('pid')} on host {holder.get('host')!r} (since {holder.get('started')}, "
            f"session {holder.get('session')})")


def _locked_message(path: Path, rank: int, holder: dict | None) -> str:
    text = (f"{path.parent}: rank {rank} of this run is being written by {describe(holder)}; two writers "
            f"would splice their epochs together. Wait for it to close, or write to another run directory")
    if holder and holder.get("pid") == os.getpid():
        return text + " (it is a Tracker of this process: close() it first)"
    if holder and holder.get("host") != socket.gethostname():
        return text + f". If that process is gone, delete {path}"
    return text


def _create(path: Path, info: dict) -> bool:
    """Create `path` holding `info`, atomically; False if it exists."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(info))
    try:
        os.link(tmp, path)  # atomic, complete when it appears, and fails if the lock exists
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system: exclusive creation instead
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(info))
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _alive(path: Path, holder: dict | None) -> bool:
    """Whether the holder may still be writing (see the module docstring)."""
    if holder is None:
        try:
            return time.time() - path.stat().st_mtime < _UNREADABLE_GRACE_S
        except FileNotFoundError:
            return False
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        if str(path) in _HELD:
            gc.collect()  # a Tracker dropped without close() lets go of its lock when collected
        return str(path) in _HELD
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, as another user
        pass
    recorded, current = holder.get("process_start"), _process_start(pid)
    return recorded is None or current is None or recorded == current


def _remove_stale(path: Path, holder: dict | None) -> bool:
    """Move the stale lock aside and delete it; False if another process got there first."""
    aside = path.with_name(f".{path.name}.stale.{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if _read(aside) != holder:  # a fresh lock was taken between our read and the rename: put it back
        try:
            os.link(aside, path)
        except OSError:
            pass
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


def _process_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux), to tell a reused pid; else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
