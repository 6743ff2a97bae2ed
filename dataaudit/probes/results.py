"""A probe's results in the run directory, beside what the tracker wrote.

    RUN_DIR/probes/probe-<id>.json            the plan, the cost, each arm's effect, the measured share
    RUN_DIR/probes/probe-<id>-runs.parquet    one row per (arm, seed): epoch losses, level, samples, seconds

Both are rewritten (atomically) after every arm, so a probe cut short keeps
what it measured (`complete` is false until the last arm is in). `latest`
reads the newest one; `analyze` puts it in audit.json under `probes`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from dataaudit import store

FOLDER = "probes"


def write(run_dir: Path, probe_id: str, summary: dict[str, Any], runs: pd.DataFrame) -> Path:
    folder = Path(run_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    if len(runs):
        table = runs.copy()
        table["epoch_loss"] = table["epoch_loss"].map(list)
        store.write_parquet_atomic(folder / f"probe-{probe_id}-runs.parquet",
                                   pa.Table.from_pandas(table, preserve_index=False))
    path = folder / f"probe-{probe_id}.json"
    store.write_json_atomic(path, summary)
    return path


def latest(run_dir: str | Path | None) -> dict[str, Any] | None:
    """The newest probe of the run (its JSON summary), or None when there is none."""
    if run_dir is None:
        return None
    paths = sorted((Path(run_dir) / FOLDER).glob("probe-*.json"))
    if not paths:
        return None
    try:
        with open(paths[-1]) as f:
            summary = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise store.RunFormatError(f"{paths[-1]}: unreadable probe result ({e})") from None
    if not isinstance(summary, dict) or summary.get("format") != "dataaudit-probe":
        raise store.RunFormatError(f"{paths[-1]}: not a dataaudit probe result")
    return summary


def runs_table(run_dir: str | Path, probe_id: str) -> pd.DataFrame:
    """The per-(arm, seed) table of a probe."""
    path = Path(run_dir) / FOLDER / f"probe-{probe_id}-runs.parquet"
    if not path.is_file():
        raise store.RunFormatError(f"{path}: no such probe table")
    return pd.read_parquet(path)
