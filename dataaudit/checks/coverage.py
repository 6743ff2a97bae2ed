"""Epoch coverage: did every epoch draw every sample exactly once, in a fresh order?

Judged on complete epochs only (a pass the loop broke out of, or the epoch a
killed process was in, proves nothing about the sampler).

- missing_ids: ids of the dataset that no complete epoch drew (a sampler
  restricted to a subset, `drop_last` with a fixed order, a filtered index);
- duplicate_ids: ids drawn more than once within one epoch (sampling with
  replacement, DistributedSampler padding, a buggy custom sampler);
- order_repeated: every epoch drew the same sequence (shuffle off, or
  DistributedSampler without `set_epoch`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from dataaudit.checks.base import CheckResult, Finding
from dataaudit.run import Run, positions, unique_ids

NAME = "coverage"


def check(run: Run, *, split: str = "train") -> CheckResult:
    data = run.split(split)
    if data is None or not data.complete_epochs:
        return CheckResult.skipped(NAME, f"no complete epoch of split {split!r} was recorded")
    result = _compute_coverage(data.draws, data.coverage, data.complete_epochs, data.dataset_size)
    sizes = {r["rank"]: r["splits"].get(split, {}).get("dataset_size") for r in run.meta.get("ranks", [])}
    if len({v for v in sizes.values() if v is not None}) > 1:
        shown = ", ".join(f"rank {r} sees {v}" for r, v in sorted(sizes.items()))
        disagree = Finding(
            NAME, "critical", f"The ranks disagree on the dataset's size ({shown}): they shard different data.",
            remedy="Build the same dataset on every rank (same files, filters and order) before the "
                   "DistributedSampler shards it.",
            evidence={"dataset_size_by_rank": {str(r): v for r, v in sorted(sizes.items())}})
        result = CheckResult.from_findings(NAME, [disagree, *result.findings], score=1.0,
                                           details={**result.details, "dataset_size_by_rank":
                                                    {str(r): v for r, v in sorted(sizes.items())}},
                                           per_sample=result.per_sample)
    return result


def _compute_coverage(draws: dict[int, np.ndarray], coverage: pd.DataFrame, epochs: list[int],
                      dataset_size: int | None) -> CheckResult:
    complete = [draws[e] for e in epochs]
    drawn_ever = unique_ids(np.concatenate(list(draws.values()))) if draws else np.empty(0, np.int64)
    universe = np.arange(dataset_size, dtype=np.int64) if dataset_size is not None else drawn_ever
    in_complete = unique_ids(np.concatenate(complete))
    missing = np.setdiff1d(universe, in_complete)

    # Per id, over complete epochs: epochs it was absent from, and its most draws in one epoch.
    n_universe = len(universe)
    absent = np.zeros(n_universe, np.int64)
    most = np.zeros(n_universe, np.int64)
    duplicate_ids: set[int] = set()
    for ids in complete:
        pos, ok = positions(universe, ids)
        counts = np.bincount(pos[ok], minlength=n_universe)
        absent += counts == 0
        most = np.maximum(most, counts)
        if ok.all():  # every draw is in the universe: the counts are the ids' counts
            duplicate_ids.update(universe[counts > 1].tolist())
        else:
            uniq, c = np.unique(ids, return_counts=True)
            duplicate_ids.update(uniq[c > 1].tolist())
    sometimes = np.flatnonzero((absent > 0) & (absent < len(complete)))

    per_epoch = coverage.drop(columns=["order_hash"]).to_dict("records")
    judged = coverage[coverage["epoch"].isin(epochs)]
    order_repeated = len(complete) >= 2 and judged["order_hash"].nunique() == 1 and len(complete[0]) > 1
    dup_share = float(judged["duplicates"].sum() / max(judged["seen"].sum(), 1))
    missing_share = len(missing) / max(n_universe, 1)
    sometimes_share = len(sometimes) / max(n_universe, 1)

    findings = []
    if len(missing):
        findings.append(Finding(
            NAME, "critical" if missing_share > 0.01 else "warning",
            f"{len(missing)} of {n_universe} samples ({missing_share:.1%}) were never drawn in any of "
            f"{len(complete)} complete epochs: the model never trained on them.",
            remedy="Fix the sampler or the index it draws from (a subset, a filter, drop_last with a fixed order) "
                   "so that every epoch covers the dataset.",
            evidence={"missing": len(missing), "dataset_size": n_universe, "epochs": len(complete),
                      "first_missing": missing[:10].tolist()},
            ids=tuple(missing.tolist())))
    if len(duplicate_ids):
        findings.append(Finding(
            NAME, "critical" if dup_share > 0.10 else ("warning" if dup_share > 0.01 else "info"),
            f"{len(duplicate_ids)} samples were drawn more than once within an epoch; "
            f"{dup_share:.1%} of all draws repeat a sample already drawn that epoch.",
            remedy="Sample without replacement (RandomSampler(replacement=False) or shuffle=True); "
                   "a few repeats per epoch are DistributedSampler padding and harmless.",
            evidence={"duplicate_draw_share": round(dup_share, 4), "ids_repeated": len(duplicate_ids)},
            ids=tuple(sorted(duplicate_ids))))
    if len(sometimes):
        findings.append(Finding(
            NAME, "warning" if sometimes_share > 0.01 else "info",
            f"{len(sometimes)} samples ({sometimes_share:.1%}) were skipped in some complete epochs "
            f"but drawn in others.",
            remedy="Each epoch should draw every sample once; check for sampling with replacement, "
                   "drop_last, or a sampler whose length is shorter than the dataset.",
            evidence={"sometimes_missing": len(sometimes),
                      "mean_missing_per_epoch": float(judged["missing"].mean())},
            ids=tuple(universe[sometimes].tolist())))
    if order_repeated:
        findings.append(Finding(
            NAME, "warning",
            f"All {len(complete)} complete epochs drew the samples in exactly the same order.",
            remedy="Shuffle each epoch: shuffle=True, or call sampler.set_epoch(epoch) before each epoch "
                   "when using DistributedSampler.",
            evidence={"epochs": len(complete)}))
    incomplete = [int(e) for e in coverage.loc[~coverage["complete"], "epoch"]]
    if incomplete:
        findings.append(Finding(
            NAME, "info", f"{len(incomplete)} epoch(s) did not run to the end of the loader and were not judged.",
            evidence={"incomplete_epochs": incomplete[:20]}))

    details = {
        "missing_ids": missing.tolist(),
        "duplicate_ids": sorted(duplicate_ids),
        "per_epoch": per_epoch,
        "order_repeated": bool(order_repeated),
        "dataset_size": n_universe,
        "complete_epochs": len(complete),
        "sometimes_missing": int(len(sometimes)),
        "duplicate_draw_share": round(dup_share, 6),
    }
    per_sample = pd.DataFrame({"sample_id": universe, "epochs_absent": absent, "max_draws_per_epoch": most})
    score = max(missing_share, min(dup_share * 2, 1.0), sometimes_share * 0.5)
    return CheckResult.from_findings(NAME, findings, score=score, details=details, per_sample=per_sample)

