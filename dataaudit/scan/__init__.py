"""`scan`: audit a dataset from a model checkpoint or precomputed out-of-sample probabilities.

Builds the same one-epoch `Run` the tracker would (labels, probabilities, input moments) and runs the
checks that need no tracked training: labels, class_imbalance, feature_scale; and `neighbors` (near-duplicates
and outliers, see `neighbors.py`) on the model's embeddings or the features, kept only when it finds some (the
scan summary's `neighbors` names what it looked at). With a tracked run, the
run's own audit (every check) is kept and the scan's label issues are added to it (see `scan`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dataaudit.scan.datasets import Dataset, ScanInputError, load_dataset
from dataaudit.scan.probs import load_pred_probs, validate_pred_probs

SCAN_CHECKS = ("labels", "class_imbalance", "feature_scale")

__all__ = ["SCAN_CHECKS", "Dataset", "ScanInputError", "flagged_table", "load_dataset", "scan",
           "validate_pred_probs"]


def scan(dataset_dir: str | Path, *, model: Any = None, pred_probs: str | Path | np.ndarray | None = None,
         run: str | Path | None = None, arch: str | None = None, trust_pickle: bool = False, device: str = "cpu",
         label_col: str = "label", batch_size: int = 256,
         log: Callable[[str], None] | None = None, progress: bool | None = False):
    """Audit the dataset in `dataset_dir`; returns an `Audit`.

    model : a checkpoint path (see `checkpoint.load_model`) or an nn.Module: its penultimate-layer
        embeddings feed a 5-fold cross-validated logistic regression, whose out-of-sample probabilities
        the checks read.
    pred_probs : (n, k) out-of-sample probabilities, or a .npy file of them (instead of a model).
    run : a tracked run directory of a model trained on this dataset (same sample ids). Its audit (every
        check) is the result; the scan's labels result is added as `scan_labels`, or replaces the run's
        `labels` when that was skipped (no logits recorded).
    log : called with one line per warning and progress step.
    progress : progress lines on stderr for each phase (loading, forward passes, cross-validation folds, checks,
        neighbours) with the time spent and left: True, None (only on a terminal) or False.
    Raises ScanInputError on bad input (one line naming the file or option).
    """
    from dataaudit.progress import Progress

    bar = Progress(None, "scan", enabled=progress)
    try:
        return _scan(dataset_dir, model=model, pred_probs=pred_probs, run=run, arch=arch, trust_pickle=trust_pickle,
                     device=device, label_col=label_col, batch_size=batch_size, log=log, bar=bar)
    except BaseException:
        bar.clear()  # an error message starts on a clean line
        raise


def _scan(dataset_dir, *, model, pred_probs, run, arch, trust_pickle, device, label_col, batch_size, log, bar):
    from dataaudit.audit import analyze
    from dataaudit.run import Run

    # Progress waits until the inputs are known good: a bad input gets its one-line message alone.
    say = _HeldLog(log or (lambda _line: None))
    if (model is None) == (pred_probs is None):
        raise ScanInputError("scan needs exactly one of --model CKPT or --pred-probs FILE.npy")
    if run is not None:
        bar.step(f"reading the run {run}")
    tracked = _load_tracked(run) if run is not None else None
    bar.step(f"loading {dataset_dir}")
    data = load_dataset(dataset_dir, label_col=label_col)
    notes = list(data.warnings)
    for line in data.warnings:
        say(f"warning: {line}")
    say(f"loaded {len(data.labels)} samples, {data.num_classes} classes from {data.path} ({data.kind})")
    embeddings = None
    if pred_probs is not None:
        if isinstance(pred_probs, (str, Path)):
            probs, warned = load_pred_probs(pred_probs, data.labels, num_classes=_named_classes(data))
        else:
            probs, warned = validate_pred_probs(pred_probs, data.labels, num_classes=_named_classes(data))
        source = {"pred_probs": str(pred_probs) if isinstance(pred_probs, (str, Path)) else "array"}
    else:
        probs, warned, embeddings = _model_probs(data, model, arch=arch, trust_pickle=trust_pickle,
                                                 device=device, batch_size=batch_size, say=say, bar=bar)
        source = {"model": str(model) if isinstance(model, (str, Path)) else type(model).__name__}
    if data.class_names is not None and probs.shape[1] != len(data.class_names):
        raise ScanInputError(f"{source.get('pred_probs') or source.get('model')}: gives {probs.shape[1]} classes; "
                             f"the dataset names {len(data.class_names)} ({', '.join(data.class_names[:5])}...)")
    say.release()
    for line in warned:
        say(f"warning: {line}")
    notes += warned
    meta = {"source": "scan", "dataset": str(data.path), "class_names": data.class_names,
            "sample_files": data.files}
    scan_run = Run.from_arrays(data.labels, probs, features=data.features, meta=meta)
    say("running the checks: " + ", ".join(SCAN_CHECKS))
    bar.clear()
    audit = analyze(scan_run, checks=SCAN_CHECKS, progress=bar.enabled)
    neighbors = _neighbors(data, embeddings, say, bar)
    if neighbors is not None and neighbors.findings:  # a result only where it adds evidence
        audit = dataclasses.replace(audit, results={**audit.results, "neighbors": neighbors})
    summary = {"dataset": str(data.path), "format": data.kind, "samples": int(len(data.labels)),
               "num_classes": int(probs.shape[1]), "class_names": data.class_names, "warnings": notes, **source}
    if neighbors is not None:
        summary["neighbors"] = neighbors.details.get("source") or neighbors.details.get("skipped")
    if run is None:
        audit = dataclasses.replace(audit, run_summary={**audit.run_summary, "scan": summary})
    else:
        audit = _merge(tracked, audit, summary, say, bar)
    if data.kind == "images":
        audit = dataclasses.replace(audit, thumbnails=_thumbnails(data, audit.label_issues))
    return audit


def _thumbnails(data: Dataset, ids, *, size: int = 32) -> dict[int, str]:
    """sample id -> base64 PNG (size x size, aspect kept, padded) of the report's flagged images (the first
    `thumbnails.MAX_THUMBNAILS`: the page stays small). An image that cannot be read again is left out."""
    from dataaudit.thumbnails import MAX_THUMBNAILS, folder_thumbnails

    if data.files is None:
        return {}
    return folder_thumbnails(data.path, data.files, list(ids)[:MAX_THUMBNAILS], size=size)


def _neighbors(data: Dataset, embeddings: np.ndarray | None, say, bar):
    """The `neighbors` result on the embeddings, else the features; None when there are neither."""
    from dataaudit.progress import Progress
    from dataaudit.scan.neighbors import neighbors_result

    X, source = (embeddings, "embeddings") if embeddings is not None else (data.features, "features")
    if X is None:
        return None
    say(f"near-duplicates and outliers on the {source}")
    step = Progress(1, "scan", enabled=bar.enabled)
    step.step(f"near-duplicates and outliers among {len(X):,} samples on the {source}")
    result = neighbors_result(X, data.labels, source=source)
    step.done("near-duplicates and outliers")
    return result


class _HeldLog:
    """Calls `log` with each line; lines said before `release()` wait for it."""

    def __init__(self, log: Callable[[str], None]):
        self._log, self._held = log, []

    def __call__(self, line: str) -> None:
        if self._held is None:
            self._log(line)
        else:
            self._held.append(line)

    def release(self) -> None:
        held, self._held = self._held or [], None
        for line in held:
            self._log(line)


def _named_classes(data: Dataset) -> int | None:
    return len(data.class_names) if data.class_names is not None else None


def _model_probs(data: Dataset, model, *, arch, trust_pickle, device, batch_size,
                 say, bar) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(out-of-sample probabilities (n, k), warnings, embeddings (n, d)) from the model."""
    from dataaudit.progress import Progress
    from dataaudit.scan.checkpoint import load_model
    from dataaudit.scan.predict import cross_val_probs, predict

    if data.features is None:
        raise ScanInputError(f"{data.path}: holds labels but no inputs (features.npy) to run the model on; "
                             "pass --pred-probs instead")
    classes = np.unique(data.labels)
    if len(classes) < 2:
        only = data.class_names[classes[0]] if data.class_names and len(classes) else str(classes[:1].tolist())
        raise ScanInputError(f"{data.path}: every label is class {only}; scanning with a model needs at least two "
                             "classes (out-of-sample probabilities come from a classifier refit on its embeddings)")
    name = str(model) if isinstance(model, (str, Path)) else "the model"
    if isinstance(model, (str, Path)):
        say(f"loading the model from {model}")
        bar.step(f"loading the model from {model}")
        model = load_model(model, arch=arch, trust_pickle=trust_pickle, device=device)
    try:
        first, _ = predict(model, data.features[:2], device=device)  # do these inputs fit the model at all?
    except Exception as e:  # the model does not take these inputs
        raise ScanInputError(f"{name}: failed on inputs of shape {tuple(data.features.shape[1:])} from "
                             f"{data.path} ({type(e).__name__}: {_first_line(e)})") from None
    k = first.shape[1]
    if int(data.labels.max()) >= k:
        raise ScanInputError(f"{name}: gives {k} classes; the labels in {data.path} go up to "
                             f"{int(data.labels.max())}")
    if data.class_names is not None and k != len(data.class_names):
        raise ScanInputError(f"{name}: gives {k} classes; the dataset names {len(data.class_names)} "
                             f"({', '.join(data.class_names[:5])}...)")
    say.release()
    say(f"forward passes over {len(data.labels)} samples on {device}")
    bar.clear()
    passes = Progress(len(data.labels), "scan: forward passes", enabled=bar.enabled, unit="samples")
    try:
        logits, embeddings = predict(model, data.features, batch_size=batch_size, device=device, progress=say,
                                     on_batch=lambda done, _n: passes.update(done))
    except Exception as e:  # a batch the first one did not foretell (a size the model was exported for...)
        raise ScanInputError(f"{name}: failed during the forward passes over {data.path} with batch size "
                             f"{batch_size} ({type(e).__name__}: {_first_line(e)})") from None
    passes.done(f"{len(data.labels):,} samples")
    warned = []
    if embeddings is None:
        warned.append("no penultimate layer found (not a Sequential or a module with a final Linear): "
                      "cross-validating on the model's logits instead of its embeddings")
        embeddings = logits
    say(f"5-fold cross-validated logistic regression on {embeddings.shape[1]}-dimensional embeddings")
    folds = Progress(None, "scan: cross-validated logistic regression", enabled=bar.enabled, unit="folds")

    def on_fold(fold: int, total: int) -> None:
        folds.total = total
        folds.update(fold, f"fitting fold {fold + 1}")

    probs = cross_val_probs(embeddings, data.labels, num_classes=k, on_fold=on_fold)
    folds.done(f"{folds.total} folds")
    return probs, warned, embeddings


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _load_tracked(run_dir: str | Path):
    from dataaudit.load import load_run
    from dataaudit.store import RunFormatError

    try:
        return load_run(run_dir)
    except RunFormatError as e:
        raise ScanInputError(f"--run {run_dir}: {e}") from None


def _merge(tracked, scan_audit, summary: dict, say, bar):
    """The tracked run's audit (every check), with the scan's labels result added (or filling in for it)."""
    from dataaudit.attribution import attribute
    from dataaudit.audit import Audit, analyze

    say(f"analyzing the tracked run {tracked.path}")
    run_audit = analyze(tracked, progress=bar.enabled)
    results = dict(run_audit.results)
    scanned = scan_audit.results["labels"]
    if "neighbors" in scan_audit.results:
        results["neighbors"] = scan_audit.results["neighbors"]
    if results.get("labels") is None or results["labels"].status == "skipped":
        results["labels"] = scanned
        summary["labels_from"] = "scan"
    else:
        results["scan_labels"] = dataclasses.replace(
            scanned, name="scan_labels",
            findings=tuple(dataclasses.replace(f, check="scan_labels") for f in scanned.findings))
        summary["labels_from"] = "run"
    attribution = attribute(run_audit.run, results)
    labels = results["labels"]
    return Audit(
        verdict=attribution.verdict, data_share=attribution.data_share, results=results,
        plateau=run_audit.plateau, label_issues=tuple(labels.details.get("label_issues", [])),
        attribution={**attribution.details, "verdict": attribution.verdict, "data_share": attribution.data_share},
        run_summary={**run_audit.run_summary, "scan": summary}, run=run_audit.run)


def flagged_table(audit):
    """The suspected label errors, most suspicious first, as a DataFrame (what flagged.csv holds).

    Kept for existing callers: the rows of `audit.issues()` flagged as label issues (see
    `dataaudit.issues.flagged_rows`). Columns: sample_id, given_label, suggested_label, label_quality;
    given_class and suggested_class when the classes have names; file for image folders; then the other
    per-sample columns of `audit.issues()`. For a regression run, the samples the targets check
    flagged: sample_id, loss, residual.
    """
    import pandas as pd

    from dataaudit.checks import flagging
    from dataaudit.issues import flagged_rows

    targets = flagging(audit.results)
    if "scan_labels" not in audit.results and targets is not None and targets.name == "targets":
        # regression: the samples flagged for their targets, with their mean loss and residual
        table = targets.per_sample.set_index("sample_id")
        ids = [i for i in targets.details.get("label_issues", []) if i in table.index]
        return pd.DataFrame({"sample_id": ids, "loss": table.loc[ids, "loss"].to_numpy().round(6),
                             "residual": table.loc[ids, "residual"].to_numpy().round(4)})
    return flagged_rows(audit)
