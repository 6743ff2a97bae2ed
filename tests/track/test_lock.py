"""One writer per rank: a second writer is refused naming the holder; a stale lock is taken over, and said so."""
from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import dataaudit
from dataaudit.track import lock

ROOT = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent("""
    import os, signal, sys, time
    import torch, torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset
    import dataaudit

    run_dir, mode = sys.argv[1], sys.argv[2]
    ds = TensorDataset(torch.randn(40, 3), torch.randint(0, 2, (40,)))
    try:
        tracker = dataaudit.Tracker(run_dir)
        loader = tracker.wrap(DataLoader(ds, batch_size=10))   # the first write takes the rank's lock
    except RuntimeError as e:
        print("REFUSED", e, flush=True)
        sys.exit(3)
    for x, y in loader:
        tracker.record(F.cross_entropy(torch.zeros(len(y), 2), y, reduction="none"), targets=y)
    print("HOLDING", flush=True)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "hold":
        sys.stdin.readline()   # until the test says so
    tracker.close()
    print("CLOSED", flush=True)
""")


def _start(tmp_path, run_dir, mode):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen([sys.executable, str(script), str(run_dir), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")
def test_a_second_writer_process_is_refused_naming_the_holder(tmp_path, run_dir):
    first = _start(tmp_path, run_dir, "hold")
    try:
        assert first.stdout.readline().strip() == "HOLDING", first.stderr.read()
        second = _start(tmp_path, run_dir, "close")
        out, err = second.communicate(timeout=120)
        assert second.returncode == 3, err
        assert out.startswith("REFUSED") and f"pid {first.pid} on host {socket.gethostname()!r}" in out
        assert "rank 0 of this run is being written" in out
    finally:
        first.communicate("\n", timeout=120)
    assert first.returncode == 0 and not lock.lock_path(run_dir, 0).exists()  # released at close()
    third = _start(tmp_path, run_dir, "close")
    assert third.communicate(timeout=120)[0].strip().endswith("CLOSED")
    run = dataaudit.load_run(run_dir)
    assert [s["pid"] for s in run.meta["sessions"]] == [first.pid, third.pid]  # the refused one left no trace
    assert run.train.epochs == [0, 1]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_the_lock_of_a_killed_writer_is_taken_over_and_said_so(tmp_path, run_dir):
    killed = _start(tmp_path, run_dir, "kill")
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert json.loads(lock.lock_path(run_dir, 0).read_text())["pid"] == killed.pid  # left behind
    with pytest.warns(RuntimeWarning, match=f"took over the lock of rank 0 from pid {killed.pid}"):
        tracker = _opened(run_dir)
    tracker.close()
    session = dataaudit.load_run(run_dir).meta["sessions"][-1]
    assert session["took_over_lock"]["pid"] == killed.pid


def test_a_second_tracker_in_one_process_is_refused_until_the_first_closes(run_dir):
    first = _opened(run_dir)
    with pytest.raises(lock.RunLockedError, match="Tracker of this process: close"):
        _opened(run_dir)
    first.close()
    _opened(run_dir).close()
    dropped = _opened(run_dir)  # never closed: its lock goes with it
    del dropped
    gc.collect()
    _opened(run_dir).close()


def test_ranks_hold_their_own_locks(run_dir):
    zero, one = _opened(run_dir, rank=0), _opened(run_dir, rank=1)
    assert lock.lock_path(run_dir, 0).exists() and lock.lock_path(run_dir, 1).exists()
    zero.close()
    one.close()


def _opened(run_dir, **kwargs) -> dataaudit.Tracker:
    """A Tracker that has made its first write: the rank's lock is taken then (the rank is known by then)."""
    tracker = dataaudit.Tracker(run_dir, **kwargs)
    tracker.rank  # noqa: B018 (learning the rank opens the run)
    return tracker


def _plant(run_dir, **holder):
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {"host": socket.gethostname(), "started": "2026-01-01T00:00:00Z", "session": "planted", **holder}
    lock.lock_path(run_dir, 0).write_text(json.dumps(info))


def test_a_reused_pid_does_not_keep_a_stale_lock(run_dir):
    """After a container restart the old writer's pid may run another process: its start time differs."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        _plant(run_dir, pid=sleeper.pid, process_start=lock._process_start(sleeper.pid) - 1)
        with pytest.warns(RuntimeWarning, match=f"from pid {sleeper.pid}"):
            _opened(run_dir).close()
        _plant(run_dir, pid=sleeper.pid, process_start=lock._process_start(sleeper.pid))  # that very process
        with pytest.raises(lock.RunLockedError, match=f"pid {sleeper.pid}"):
            _opened(run_dir)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lock_from_another_host_is_refused_with_how_to_clear_it(run_dir):
    _plant(run_dir, host="elsewhere-node-7", pid=4242)
    with pytest.raises(lock.RunLockedError, match="on host 'elsewhere-node-7'.*If that process is gone, delete"):
        _opened(run_dir)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_never_releases_its_parents_lock(run_dir):
    tracker = _opened(run_dir)
    pid = os.fork()
    if pid == 0:  # as a DataLoader worker would, were it to drop its copy of the tracker
        lock.release(tracker._lock)
        os._exit(0)
    os.waitpid(pid, 0)
    assert json.loads(lock.lock_path(run_dir, 0).read_text())["pid"] == os.getpid()
    tracker.close()
    assert not lock.lock_path(run_dir, 0).exists()
