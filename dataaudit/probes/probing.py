"""`probe()`: plan the arms, state the cost, run them, measure the share, write it into the run."""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from dataaudit.load import load_run
from dataaudit.probes import arms as arms_
from dataaudit.probes import data, results, runner, share

# The default budget: at most this share of the original run's samples processed.
BUDGET = 0.2
# Auto plan: continuations of this many epochs, shortened per epoch (a random part of each) to fit the budget.
EPOCHS = 2
SEEDS = (0, 1)


@dataclass(frozen=True)
class Probe:
    """A probe's outcome (also written to RUN_DIR/probes/probe-<id>.json).

    data_share : the measured share in [0, 1]; interval : its range over seeds.
    verdict : "data", "optimizer", "mixed", "none", or "inconclusive" (no arm removed a measurable part of a
        loss that is not negligible: `analyze` then keeps the passive estimate).
    arms : one row per arm: arm, kind, description, estimated, reduction (mean over seeds), low, high, level.
    runs : one row per (arm, seed) run: arm, seed, kind, level, epoch_loss, samples, seconds.
    summary : the JSON written to the run.
    complete : False when the probe was cut short (Ctrl-C).
    """

    data_share: float
    interval: tuple[float, float]
    verdict: str
    arms: pd.DataFrame
    runs: pd.DataFrame
    summary: dict[str, Any]
    path: Path
    complete: bool


def probe(run_dir: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
          loader: DataLoader | None = None, dataset: Dataset | None = None, batch_size: int = 64,
          loss_fn: Callable | None = None, batch_loss: Callable | None = None, scheduler: object | None = None,
          scheduler_step: str = "epoch", clip: float | None = None, epochs: int | None = None,
          seeds: Sequence[int] = SEEDS, subset: float | None = None, arms: str | list[str] = "auto",
          budget: float = BUDGET, audit=None, progress: bool | None = None, verbose: bool = True) -> Probe:
    """Measure the data's share of the run's plateau by short continuations of training ("arms").

    Parameters
    ----------
    run_dir : the tracked run (its audit chooses the arms; the results are written into it).
    model, optimizer : the user's, in their current state (usually the end of training). Never modified:
        every arm trains deep copies, and the global random states are restored afterwards.
    loader : the training DataLoader (its dataset, batch size, sampler and collate function are reused, never
        iterated); or `dataset` (map-style, items (input, target, ...)) with `batch_size`, drawn shuffled.
    loss_fn : (logits, targets) -> per-sample losses (batch,), with batches (inputs, targets, ...) and
        logits = model(inputs). Or `batch_loss`: (model, batch) -> per-sample losses, for any other batch.
    scheduler : the lr scheduler, copied and stepped once per epoch (scheduler_step="epoch") or per step ("step").
    clip : the max_norm of the user's clip_grad_norm_, if any (each arm clips like the loop; "unclip" does not).
        Without it, a threshold that the run's telemetry shows binding is used.
    epochs : continuation length k per arm (default 2); seeds : one run of every arm per seed.
    subset : fraction of each epoch's batches drawn (default: what fits the budget).
    arms : "auto" (from the audit's findings) or a list of arm names (see `arms.DATA_CHANGES`, `arms.OPT_CHANGES`).
    budget : the most samples the probe may process, as a share of the original run's (default 0.2).
    audit : the run's Audit, if already computed (else `dataaudit.analyze(run_dir)`).
    progress : a progress bar on stderr (default: when stderr is a terminal); verbose : print the cost first.

    Returns
    -------
    Probe. Ctrl-C returns what was measured so far (complete=False), also written to the run.
    """
    from dataaudit.audit import analyze

    run_dir = Path(run_dir)
    training, loader = _validate(run_dir, model, optimizer, loader, dataset, batch_size, loss_fn, batch_loss,
                                 scheduler, scheduler_step, clip, budget, seeds)
    audit = audit if audit is not None else analyze(run_dir)
    run = audit.run if audit.run is not None else load_run(run_dir)
    training.clip = arms_.clip_threshold(audit.results, clip)
    planned, notes = arms_.plan(audit, clip=clip, arms=arms)
    runnable = [a for a in planned if not a.estimated]
    # "both" is run when a data arm that runs (not one read from the records) meets an optimizer arm
    has_both = any(a.kind == "data" for a in runnable) and any(a.kind == "optimizer" for a in runnable)
    plan = _cost(run, loader, n_arms=len(runnable) + has_both, seeds=len(seeds), epochs=epochs, subset=subset,
                 budget=budget)
    first_loss = _first_epoch_loss(run)
    now = time.time_ns()  # ids sort by time, to the microsecond: the newest probe is the one analyze reads
    probe_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9)) + f"{now // 1000 % 10**6:06d}"
    summary = {"format": "dataaudit-probe", "version": 1, "id": probe_id, "created": _now(), "complete": False,
               "plan": {**plan, "seeds": [int(s) for s in seeds], "arms": [_describe(a) for a in planned]},
               "notes": notes, "first_epoch_loss": round(first_loss, 5),
               "passive": {"data_share": audit.data_share, "verdict": audit.verdict}}
    if verbose:
        print(_estimate_line(plan, len(runnable) + has_both, len(seeds)), file=sys.stderr, flush=True)
    labels = data.sample_labels(loader.dataset) if any(a.data == "balance_classes" for a in planned) else None
    estimated = _estimated_rows(planned, run, seeds)
    rows: list[dict] = []
    bar = _Progress(plan["samples"], enabled=progress)
    complete = False
    try:
        for arm in runnable:
            for seed in seeds:
                rows.append(_run(arm, training, loader, labels, seed, plan, bar))
                _save(run_dir, probe_id, summary, planned, rows, estimated, first_loss, complete=False)
        table = _table(pd.DataFrame(rows + estimated), planned)
        data_arm, opt_arm = share.best(table, "data"), share.best(table, "optimizer")
        if data_arm is not None and opt_arm is not None:
            combined = arms_.both(_named(planned, data_arm), _named(planned, opt_arm))
            planned.append(combined)
            for seed in seeds:
                if combined.estimated:
                    rows.append(_estimated_both(data_arm, opt_arm, seed))
                else:
                    rows.append(_run(combined, training, loader, labels, seed, plan, bar))
                _save(run_dir, probe_id, summary, planned, rows, estimated, first_loss, complete=False)
        complete = True
    except KeyboardInterrupt:
        print("dataaudit.probe: interrupted; keeping the arms measured so far", file=sys.stderr, flush=True)
    finally:
        bar.close()
    path, arms_table, runs = _save(run_dir, probe_id, summary, planned, rows, estimated, first_loss,
                                   complete=complete)
    measured = summary.get("share") or {"share": 0.0, "interval": [0.0, 0.0], "negligible": True,
                                        "conclusive": False}
    return Probe(float(measured["share"]), tuple(measured["interval"]), share.verdict(measured), arms_table, runs,
                 summary, path, complete)


def _validate(run_dir, model, optimizer, loader, dataset, batch_size, loss_fn, batch_loss, scheduler,
              scheduler_step, clip, budget, seeds) -> tuple[runner.Training, DataLoader]:
    if not run_dir.is_dir():
        raise ValueError(f"probe(run_dir=) needs a tracked run directory; {run_dir} does not exist")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"probe(model=) needs a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"probe(optimizer=) needs a torch.optim.Optimizer; got {type(optimizer).__name__}")
    if (loader is None) == (dataset is None):
        raise ValueError("probe needs exactly one of loader= (the training DataLoader) or dataset=")
    if loader is None:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    from dataaudit.track.loader import TrackedLoader
    if isinstance(loader, TrackedLoader):  # tracker.wrap(train_loader): the user's loader is inside
        loader = loader.loader
    if not isinstance(loader, DataLoader):
        raise TypeError(f"probe(loader=) needs a torch DataLoader; got {type(loader).__name__}")
    if (loss_fn is None) == (batch_loss is None):
        raise ValueError("probe needs exactly one of loss_fn= ((logits, targets) -> per-sample losses) or "
                         "batch_loss= ((model, batch) -> per-sample losses)")
    if scheduler_step not in ("epoch", "step"):
        raise ValueError(f"probe(scheduler_step=) must be 'epoch' or 'step'; got {scheduler_step!r}")
    if clip is not None and not clip > 0:
        raise ValueError(f"probe(clip=) must be a positive max_norm or None; got {clip!r}")
    if not 0 < budget:
        raise ValueError(f"probe(budget=) must be a positive share of the original run's compute; got {budget!r}")
    if not len(seeds):
        raise ValueError("probe(seeds=) needs at least one seed")
    if batch_loss is None:
        def batch_loss(m, batch):
            return loss_fn(m(batch[0]), batch[1])
    return runner.Training(model, optimizer, batch_loss, scheduler, clip, scheduler_step), loader


def _cost(run, loader: DataLoader, *, n_arms: int, seeds: int, epochs: int | None, subset: float | None,
          budget: float) -> dict[str, Any]:
    """Epochs, batches per epoch and samples of the plan, against the budget; and a time estimate."""
    coverage = run.coverage
    original = int(coverage["seen"].sum()) if len(coverage) else 0
    batches = len(loader)
    per_batch = loader.batch_size or 1
    k = EPOCHS if epochs is None else int(epochs)
    if k < 1:
        raise ValueError(f"probe(epochs=) must be at least 1; got {epochs!r}")
    allowed = budget * original if original else math.inf
    full = n_arms * seeds * k * batches * per_batch
    if subset is None:
        subset = min(1.0, allowed / full) if full else 1.0
    elif not 0 < subset <= 1:
        raise ValueError(f"probe(subset=) must be in (0, 1]; got {subset!r}")
    steps = max(1, int(math.floor(subset * batches)))
    samples = n_arms * seeds * k * steps * per_batch
    if samples > allowed * 1.001:
        raise ValueError(f"the probe would process {samples:,} samples, {samples / original:.0%} of the original "
                         f"run's {original:,}; over its budget of {budget:.0%} (raise budget= or lower epochs=, "
                         f"seeds= or subset=)")
    per_sample = _seconds_per_sample(run)
    return {"epochs": k, "subset": round(steps / batches, 4), "steps_per_epoch": steps, "batch_size": per_batch,
            "samples": int(samples), "original_samples": original, "budget": budget,
            "fraction": round(samples / original, 4) if original else None,
            "estimated_seconds": round(samples * per_sample, 3) if per_sample else None}


def _seconds_per_sample(run) -> float | None:
    """Seconds per sample of the original run's train epochs (their recorded start and end), median."""
    rates = []
    for e in run.meta.get("epochs", []):
        try:
            if e.get("split") == "train" and e.get("samples"):
                seconds = (datetime.fromisoformat(e["ended"]) - datetime.fromisoformat(e["started"])).total_seconds()
                rates.append(seconds / e["samples"])
        except (KeyError, TypeError, ValueError):
            continue
    return float(np.median(rates)) if rates else None


def _estimate_line(plan: dict, n_arms: int, seeds: int) -> str:
    t = plan["estimated_seconds"]
    when = "" if t is None else (f", about {t:,.0f} s" if t >= 1 else ", under a second") + " at the run's pace"
    share_ = f" = {plan['fraction']:.0%} of the original run's {plan['original_samples']:,}" if plan["fraction"] else ""
    return (f"dataaudit.probe: {n_arms} arms x {seeds} seeds x {plan['epochs']} epochs of {plan['steps_per_epoch']} "
            f"batches ({plan['subset']:.0%} of an epoch): {plan['samples']:,} samples{share_}{when}")


def _first_epoch_loss(run) -> float:
    records = run.records
    if records.empty:
        return 0.0
    first = records.loc[records["epoch"] == records["epoch"].min(), "loss"]
    return float(np.nanmean(first.to_numpy(np.float64)))


def _estimated_rows(planned: list, run, seeds: Sequence[int]) -> list[dict]:
    """Arms read from the records: the run's plateau level (last third) minus its level before the fault."""
    out = []
    for arm in planned:
        if not arm.estimated:
            continue
        per_epoch = run.records.groupby("epoch")["loss"].mean()
        epochs = list(per_epoch.index)
        tail = per_epoch.iloc[len(epochs) * 2 // 3:].mean()
        before = per_epoch.loc[[e for e in epochs if e < arm.params["drift_epoch"]][-3:]]
        if before.empty:
            continue
        for seed in seeds:  # the same for every seed: nothing random was run
            out.append({"arm": arm.name, "seed": int(seed), "level": float(before.mean()), "estimated": True,
                        "recorded_plateau": float(tail), "epoch_loss": (), "samples": 0, "seconds": 0.0})
    return out


def _estimated_both(data_arm: str, opt_arm: str, seed: int) -> dict:
    """Both together, when the data arm is read from the records: the larger of the two reductions."""
    return {"arm": "both", "seed": int(seed), "level": math.nan, "estimated": True, "epoch_loss": (), "samples": 0,
            "seconds": 0.0, "max_of": [data_arm, opt_arm]}


def _run(arm, training, loader, labels, seed, plan, bar) -> dict:
    arm_loader = data.loader_for(arm, loader, labels=labels, seed=int(seed))
    result = runner.run_arm(arm, training, arm_loader, seed=int(seed), epochs=plan["epochs"],
                            steps_per_epoch=plan["steps_per_epoch"], on_step=bar.update)
    row = {"arm": arm.name, "seed": int(seed), "level": result.level, "estimated": False,
           "epoch_loss": result.epoch_loss, "samples": result.samples, "seconds": round(result.seconds, 3)}
    if result.absorbed is not None:
        row["absorbed"] = result.absorbed
    return row


def _kinds(planned) -> dict[str, str]:
    return {a.name: a.kind for a in planned}


def _named(planned, name):
    return next(a for a in planned if a.name == name)


def _save(run_dir, probe_id, summary, planned, rows, estimated, first_loss, *, complete):
    """Write the summary and the runs table as they stand; return (path, arms table, runs table)."""
    runs = pd.DataFrame(rows + estimated, columns=None if rows or estimated else ["arm", "seed", "level"])
    arms_table = pd.DataFrame(columns=["arm", "kind", "description", "estimated", "reduction", "low", "high"])
    measured = None
    if len(runs) and (runs["arm"] == "control").any():
        runs["kind"] = runs["arm"].map(_kinds(planned))
        table = _table(runs, planned)
        arms_table = _arms_table(table, planned)
        data_arm, opt_arm = share.best(table, "data"), share.best(table, "optimizer")
        have_both = (table["arm"] == "both").any()
        if data_arm is None or opt_arm is None or have_both:
            control = runs.loc[runs["arm"] == "control", "level"]
            measured = share.measure(table, data_arm=data_arm, opt_arm=opt_arm, first_loss=first_loss,
                                     control_level=float(control.mean()))
    if "absorbed" in runs and (runs["absorbed"] == False).any():  # noqa: E712 (NaN for the other arms)
        note = ("standardise_features: the model's first linear layer could not absorb the standardisation, so "
                "the arm also measures the shock of inputs the model was not trained on")
        if note not in summary["notes"]:
            summary["notes"].append(note)
    summary.update(complete=complete, share=measured, arms=arms_table.to_dict("records"),
                   cost={"samples_done": int(runs["samples"].sum()) if "samples" in runs else 0,
                         "seconds": round(float(runs["seconds"].sum()), 2) if "seconds" in runs else 0.0,
                         "fraction_done": round(float(runs["samples"].sum()) / summary["plan"]["original_samples"], 4)
                         if "samples" in runs and summary["plan"]["original_samples"] else None})
    path = results.write(run_dir, probe_id, summary, runs.drop(columns=["max_of"], errors="ignore"))
    return path, arms_table, runs


def _table(runs: pd.DataFrame, planned) -> pd.DataFrame:
    """Per (arm, seed) the reduction against the control of the seed (`share.reductions`); estimated arms against
    the recorded plateau, and both-by-estimate as the larger of its two arms' reductions."""
    table = share.reductions(runs.assign(kind=runs["arm"].map(_kinds(planned))))
    est = table["estimated"].astype(bool) & table["arm"].ne("both")
    if est.any():
        table.loc[est, "reduction"] = table.loc[est, "recorded_plateau"] - table.loc[est, "level"]
    both_est = table["arm"].eq("both") & table["estimated"].astype(bool)
    for i in table.index[both_est]:
        seed, pair = table.at[i, "seed"], table.at[i, "max_of"]
        parts = table.loc[table["arm"].isin(pair) & table["seed"].eq(seed), "reduction"]
        table.at[i, "reduction"] = float(parts.max())
    return table


def _arms_table(table: pd.DataFrame, planned) -> pd.DataFrame:
    described = {a.name: a for a in planned}
    out = []
    for name, rows in table.groupby("arm", sort=False):
        arm = described.get(name)
        r = rows["reduction"].to_numpy(np.float64)
        out.append({"arm": name, "kind": arm.kind if arm else None, "description": arm.description if arm else "",
                    "estimated": bool(arm.estimated) if arm else False, "reduction": round(float(np.mean(r)), 5),
                    "low": round(float(np.min(r)), 5), "high": round(float(np.max(r)), 5),
                    "level": round(float(np.nanmean(rows["level"])), 5) if rows["level"].notna().any() else None,
                    "seeds": int(len(r))})
    return pd.DataFrame(out)


def _describe(arm) -> dict:
    return {"arm": arm.name, "kind": arm.kind, "description": arm.description, "estimated": arm.estimated}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _Progress:
    """tqdm on a terminal when it is installed, else one rewritten stderr line; nothing when not a terminal."""

    def __init__(self, total: int, *, enabled: bool | None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total, self.done, self.bar = total, 0, None
        if self.enabled:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, unit="sample", desc="dataaudit.probe", file=sys.stderr)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
        else:
            print(f"\rdataaudit.probe: {self.done:,}/{self.total:,} samples", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)
