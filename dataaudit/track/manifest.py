"""A rank's manifest: created for a new run, or resumed (with what a killed session left moved aside).

The manifest is the run's table of contents (`dataaudit.store` reads and checks it); this module
only opens it for the Tracker, and knows the process facts it records (rank, world size, times).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from dataaudit import store


def open_manifest(path: Path, rank: int, session_id: str, *, seed: int, sketch_dim: int, reservoir: int,
                  sketch_rows: int) -> dict:
    """The manifest of `rank` in the run at `path`, with a new session entry: resumed when it exists (files the
    last session wrote but never committed go to `_partial/`), else created (the directory too)."""
    manifest_path = path / store.manifest_name(rank)
    session = {"id": session_id, "opened": now(), "closed": None, "pid": os.getpid()}
    if manifest_path.exists():
        manifest = store.read_manifest(path, rank)
        # a run begun by an older dataaudit may lack settings added since
        for key, value in {"dim": sketch_dim, "reservoir": reservoir, "rows": sketch_rows, "seed": seed}.items():
            manifest.setdefault("sketch", {}).setdefault(key, value)
        moved = store.move_uncommitted(path, set(manifest["files"]), rank=rank)
        session["resumed"] = True
        session["moved_to_partial"] = len(moved)
        manifest.setdefault("sessions", []).append(session)
        return manifest
    if path.is_dir() and any(not store.is_run_entry(p.name) for p in path.iterdir()):
        raise ValueError(f"Tracker needs an empty or new directory, or an existing dataaudit run; "
                         f"{path} holds other files and no {store.MANIFEST}")
    path.mkdir(parents=True, exist_ok=True)
    return {
        "format": store.FORMAT,
        "version": store.FORMAT_VERSION,
        "created": now(),
        "updated": now(),
        "dataaudit_version": _version(),
        "torch_version": torch.__version__,
        "rank": rank,
        "world_size": world_size(),
        "num_classes": None,
        "sketch": {"dim": sketch_dim, "reservoir": reservoir, "rows": sketch_rows, "seed": seed},
        "splits": {},
        "epochs": [],
        "files": [],
        "sessions": [session],
    }


def check_run_dir(path: Path) -> None:
    """A run directory is new, empty, or already a run (of any rank)."""
    if path.is_dir() and not any(path.glob("manifest*.json")) and any(
            not store.is_run_entry(p.name) for p in path.iterdir()):
        raise ValueError(f"Tracker needs an empty or new directory, or an existing dataaudit run; "
                         f"{path} holds other files and no {store.MANIFEST}")


def default_rank() -> int:
    """torch.distributed's rank once the process group exists, else $RANK, else 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def _version() -> str:
    from dataaudit import __version__
    return __version__


def now() -> str:
    return iso(time.time())


def iso(t: float) -> str:
    """`t` (seconds since the epoch) as an ISO 8601 UTC time with milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
