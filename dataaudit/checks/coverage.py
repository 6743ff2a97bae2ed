"""Epoch coverage: did every epoch draw every sample exactly once, in a fresh order?

Judged on complete epochs only (a pass the loop broke out of, or the epoch a
killed process was in, proves nothing about the sampler).

- missing_ids: ids of the dataset that no complete epoch drew (a sampler
  restricted to a subset, `drop_last` with a fixed order, a filtered index);
- duplicate_ids: ids drawn more than once within one epoch (sampling with
  replacement, DistributedSampler padding, a buggy custom sampler);
- order_repeated: every epoch drew the same sequence (shuffle off, or
  DistributedSampler without `set_epoch`).

What the loader's sampler promises (its facts, recorded at wrap(): see
`dataaudit.track.sampler_info`) decides what is a fault. Drawing as promised is
information, naming the sampler: repeats and skips of a sampler with replacement
(RandomSampler(replacement=True), WeightedRandomSampler), the fewer-than-a-batch
remainder that `drop_last` leaves out of a shuffled epoch, a sampler asked for fewer
draws than the dataset has, ids never drawn by the train split that another split over
a dataset of the same size draws (a held-out split). What the sampler does not promise
is a fault: a subset never drawn (a SubsetRandomSampler, a filtered index), repeats or
skips from a sampler that draws each index once, ranks that disagree on the dataset.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from dataaudit.checks.base import CheckResult, Finding
from dataaudit.run import Run, positions, union_ids

NAME = "coverage"


def check(run: Run, *, split: str = "train") -> CheckResult:
    data = run.split(split)
    if data is None or not data.complete_epochs:
        return CheckResult.skipped(NAME, f"no complete epoch of split {split!r} was recorded")
    facts = run.meta.get("splits", {}).get(split, {}).get("loader") or {}
    result = _compute_coverage(data.draws, data.coverage, data.complete_epochs, data.dataset_size,
                               facts=facts, held_out=_held_out(run, split, data.dataset_size))
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


def _held_out(run: Run, split: str, dataset_size: int | None) -> dict[str, np.ndarray]:
    """Per other split over a dataset of the same size: the ids it drew (e.g. a validation SubsetRandomSampler
    over the same dataset)."""
    out = {}
    for name, other in run.splits.items():
        if name != split and dataset_size is not None and other.dataset_size == dataset_size and other.draws:
            out[name] = union_ids(other.draws.values())
    return out


def _compute_coverage(draws: dict[int, np.ndarray], coverage: pd.DataFrame, epochs: list[int],
                      dataset_size: int | None, *, facts: dict | None = None,
                      held_out: dict[str, np.ndarray] | None = None) -> CheckResult:
    """Coverage of the complete `epochs` of `draws` (epoch -> ids drawn, in order), judged against the
    sampler's `facts` (see `dataaudit.track.sampler_info`; empty: every sample once per epoch).

    The draws are taken one epoch at a time (a long run's are read back from the store as they are needed).
    """
    facts = facts or {}
    universe = (np.arange(dataset_size, dtype=np.int64) if dataset_size is not None
                else union_ids(draws.values()).astype(np.int64))
    n_complete = len(epochs)

    # Per id, over complete epochs: epochs it was absent from, and its most draws in one epoch.
    n_universe = len(universe)
    absent = np.zeros(n_universe, np.int64)
    most = np.zeros(n_universe, np.int64)
    duplicate_ids: set[int] = set()
    outside: list[np.ndarray] = []  # ids drawn that are not in the dataset's range
    first_len = None
    for epoch in epochs:
        ids = draws[epoch]
        first_len = len(ids) if first_len is None else first_len
        pos, ok = positions(universe, ids)
        if not ok.all():
            outside.append(union_ids([ids[~ok]]))
        counts = np.bincount(pos[ok], minlength=n_universe)
        absent += counts == 0
        most = np.maximum(most, counts)
        if ok.all():  # every draw is in the universe: the counts are the ids' counts
            duplicate_ids.update(universe[counts > 1].tolist())
        else:
            uniq, c = np.unique(ids, return_counts=True)
            duplicate_ids.update(uniq[c > 1].tolist())
        del ids, pos, ok
    in_complete = union_ids([universe[absent < n_complete], *outside])
    missing = np.setdiff1d(universe, in_complete)
    sometimes = np.flatnonzero((absent > 0) & (absent < n_complete))

    per_epoch = coverage.drop(columns=["order_hash"]).to_dict("records")
    judged = coverage[coverage["epoch"].isin(epochs)]
    order_repeated = n_complete >= 2 and judged["order_hash"].nunique() == 1 and (first_len or 0) > 1
    dup_share = float(judged["duplicates"].sum() / max(judged["seen"].sum(), 1))
    missing_share = len(missing) / max(n_universe, 1)
    sometimes_share = len(sometimes) / max(n_universe, 1)

    sampler = facts.get("sampler") or "the sampler"
    replacement = bool(facts.get("replacement"))
    per_epoch_missing = judged["missing"].to_numpy()
    # what the contract leaves out of each epoch: the drop_last remainder, or a sampler asked for fewer draws
    expected_gap = max(n_universe - facts["epoch_draws"], 0) if facts.get("epoch_draws") is not None else 0
    partial_by_design = bool(expected_gap) and facts.get("contract") == "without replacement"
    # held out: another split draws exactly from what this one never draws (a split of one dataset),
    # not a dataset of its own that merely has as many samples
    elsewhere = [name for name, ids in (held_out or {}).items()
                 if len(missing) and np.isin(missing, ids).all() and not np.isin(ids, in_complete).any()]

    findings = []
    if len(missing):
        evidence = {"missing": len(missing), "dataset_size": n_universe, "epochs": n_complete,
                    "first_missing": missing[:10].tolist(), "sampler": facts.get("sampler")}
        if elsewhere:
            findings.append(Finding(
                NAME, "info", f"{len(missing)} of {n_universe} samples ({missing_share:.1%}) were never drawn for "
                f"training; split {elsewhere[0]!r} draws all of them from a dataset of the same size (held out).",
                evidence={**evidence, "held_out_by": elsewhere[0]}, ids=tuple(missing.tolist())))
        elif replacement or (partial_by_design and not facts.get("drop_last")):
            findings.append(Finding(
                NAME, "info", f"{len(missing)} of {n_universe} samples ({missing_share:.1%}) were never drawn in "
                f"{n_complete} complete epochs, as {sampler} draws "
                + ("with replacement." if replacement else f"{facts.get('num_samples')} samples an epoch."),
                evidence=evidence, ids=tuple(missing.tolist())))
        elif facts.get("drop_last") and len(missing) <= expected_gap and not order_repeated:
            findings.append(Finding(
                NAME, "info", f"{len(missing)} samples were left out of every one of the {n_complete} complete "
                f"epochs by chance: drop_last drops the last partial batch (batch size {facts.get('batch_size')}) "
                f"of each shuffled epoch.", evidence=evidence, ids=tuple(missing.tolist())))
        elif facts.get("drop_last") and len(missing) <= expected_gap:
            findings.append(Finding(
                NAME, "warning", f"The same {len(missing)} samples were left out of every complete epoch: drop_last "
                f"drops the last partial batch, and the order does not change between epochs.",
                remedy="Shuffle each epoch (shuffle=True) so that a different remainder is dropped each time, "
                       "or set drop_last=False.",
                evidence=evidence, ids=tuple(missing.tolist())))
        else:
            subset = (f" {sampler} draws {facts['subset_size']} of them." if facts.get("subset_size") is not None
                      else "")
            findings.append(Finding(
                NAME, "critical" if missing_share > 0.01 else "warning",
                f"{len(missing)} of {n_universe} samples ({missing_share:.1%}) were never drawn in any of "
                f"{n_complete} complete epochs: the model never trained on them.{subset}",
                remedy="Fix the sampler or the index it draws from (a subset, a filter, drop_last with a fixed "
                       "order) so that every epoch covers the dataset; if they are held out on purpose, wrap the "
                       "split that uses them too.",
                evidence=evidence, ids=tuple(missing.tolist())))
    if len(duplicate_ids):
        evidence = {"duplicate_draw_share": round(dup_share, 4), "ids_repeated": len(duplicate_ids),
                    "sampler": facts.get("sampler")}
        if replacement:
            findings.append(Finding(
                NAME, "info", f"{len(duplicate_ids)} samples were drawn more than once within an epoch "
                f"({dup_share:.1%} of draws), as {sampler} draws with replacement"
                + (" by weight (rebalancing)." if facts.get("weighted") else "."),
                evidence=evidence, ids=tuple(sorted(duplicate_ids))))
        else:
            findings.append(Finding(
                NAME, "critical" if dup_share > 0.10 else ("warning" if dup_share > 0.01 else "info"),
                f"{len(duplicate_ids)} samples were drawn more than once within an epoch; "
                f"{dup_share:.1%} of all draws repeat a sample already drawn that epoch"
                + (f", although {sampler} draws without replacement." if facts.get("contract") ==
                   "without replacement" else "."),
                remedy="Sample without replacement (RandomSampler(replacement=False) or shuffle=True); "
                       "a few repeats per epoch are DistributedSampler padding and harmless.",
                evidence=evidence, ids=tuple(sorted(duplicate_ids))))
    if len(sometimes):
        evidence = {"sometimes_missing": len(sometimes), "mean_missing_per_epoch": float(per_epoch_missing.mean()),
                    "expected_missing_per_epoch": expected_gap, "sampler": facts.get("sampler")}
        ids = tuple(universe[sometimes].tolist())
        if replacement or (partial_by_design and per_epoch_missing.max() <= expected_gap):
            why = ("draws with replacement" if replacement else
                   f"drops the last partial batch (drop_last, batch size {facts.get('batch_size')})"
                   if facts.get("drop_last") and facts.get("num_samples") == n_universe else
                   f"draws {facts.get('epoch_draws')} of {n_universe} samples an epoch")
            findings.append(Finding(
                NAME, "info", f"{len(sometimes)} samples ({sometimes_share:.1%}) were skipped in some complete "
                f"epochs and drawn in others, as the loader's {sampler} {why}: at most "
                f"{int(per_epoch_missing.max())} a epoch, different ones each time.",
                evidence=evidence, ids=ids))
        else:
            findings.append(Finding(
                NAME, "warning" if sometimes_share > 0.01 else "info",
                f"{len(sometimes)} samples ({sometimes_share:.1%}) were skipped in some complete epochs "
                f"but drawn in others.",
                remedy="Each epoch should draw every sample once; check for sampling with replacement, "
                       "drop_last, or a sampler whose length is shorter than the dataset.",
                evidence=evidence, ids=ids))
    if order_repeated:
        findings.append(Finding(
            NAME, "warning",
            f"All {n_complete} complete epochs drew the samples in exactly the same order.",
            remedy="Shuffle each epoch: shuffle=True, or call sampler.set_epoch(epoch) before each epoch "
                   "when using DistributedSampler.",
            evidence={"epochs": n_complete}))
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
        "complete_epochs": n_complete,
        "sometimes_missing": int(len(sometimes)),
        "duplicate_draw_share": round(dup_share, 6),
        "sampler": {k: facts[k] for k in ("sampler", "contract", "replacement", "weighted", "drop_last",
                                         "batch_size", "num_samples", "epoch_draws") if k in facts},
    }
    per_sample = pd.DataFrame({"sample_id": universe, "epochs_absent": absent, "max_draws_per_epoch": most})
    score = max(missing_share, min(dup_share * 2, 1.0), sometimes_share * 0.5)
    return CheckResult.from_findings(NAME, findings, score=score, details=details, per_sample=per_sample)

