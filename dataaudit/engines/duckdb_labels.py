"""Per-sample label statistics and the candidate mislabeled samples, in DuckDB (see `engines.duckdb`).

The rule is the labels check's (`checks/labels.py`), every step an aggregate over the records:

1. Rows kept: recorded, of the complete epochs (all epochs when none is), with a label (>= 0); with soft
   targets, only rows whose dominant class holds 3/4 of the target and is the sample's usual label.
2. Cells: per (sample, epoch) the mean margin, the mean finite loss, the last prediction and probabilities.
3. Window: positions first..end-1 of those epochs (first = 1 past epoch 0), the end chosen among the labels
   check's candidates where the n_issues lowest areas under the margin (AUM) are best separated from the rest
   (Fisher ratio; ties to the later end). n_issues: cleanlab's calibrated count on the window's mean
   probabilities (`duckdb_confident`), or without stored probabilities the samples of negative AUM.
4. Gates: nothing is flagged when the model agrees with the labels hardly better than the commonest class
   (lift < 0.2) or would call more than half of them wrong.
5. Flagged: the n_issues lowest AUM, united with cleanlab's prune_by_noise_rate when probabilities are stored;
   the suggested label is the most probable other class (without probabilities: the other class predicted most
   often); when the flagged samples' predictions wander (mean consistency < 0.8, over the window's later half),
   only those predicted as their suggested label in 90% of those epochs stay; samples whose label or suggested
   label is a class the model does not fit (recall < 0.5 over the last third of the epochs) are not judged.

A run that stores only each sample's top-k probabilities (many classes), or probabilities in some files only,
is judged by the margin rule; `labels["note"]` says so (the labels check rebuilds the top-k as dense rows).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dataaudit.checks.labels import (
    _MAX_NOISE,
    _MIN_CONSISTENCY,
    _MIN_LIFT,
    _MIN_RECALL,
    _SOFT_PURITY,
    _STRICT_CONSISTENCY,
    _late_start,
    _window_candidates,
)

# The labels check's thresholds and window candidates: one rule, read from one place.
from dataaudit.engines import duckdb_confident as confident_mod

# arg_max keys that prefer the larger count, then the smaller class (numpy's argmax over counts)
_CLASS_SPAN = 1 << 21
_SAMPLE_COLUMNS = ["sample_id", "label", "aum", "mean_loss", "epochs_drawn", "predicted_as_label",
                   "suggested_label", "consistency", "flagged"]
_ISSUE_COLUMNS = ["sample_id", "label", "suggested_label", "aum"]


def label_statistics(con, listing, *, window: tuple[int, int] | None = None, samples_path: str | Path | None = None,
                     confident_learning: bool = True) -> tuple[dict[str, Any], pd.DataFrame | Path, pd.DataFrame]:
    """(details, per-sample table or the Parquet file it went to, candidate mislabeled samples).

    The per-sample table, one row per sample with a kept row: sample_id, label (its last), aum (mean over the
    window's epochs of its mean margin in each), mean_loss (likewise, finite losses), epochs_drawn (in the
    window), predicted_as_label (share of those epochs predicted as its label), suggested_label, consistency
    (share of the window's later half predicted as the suggested label), flagged.
    """
    empty_issues = pd.DataFrame({c: pd.Series(dtype="float64" if c == "aum" else "int64") for c in _ISSUE_COLUMNS})
    empty_samples = pd.DataFrame({c: pd.Series(dtype="object") for c in _SAMPLE_COLUMNS})
    if listing.task not in ("classification", "binary"):
        return {"skipped": f"labels are not judged on a {listing.task} run"}, empty_samples, empty_issues
    epochs = [e for e, done in listing.complete.items() if done] or list(listing.complete)
    if not epochs:
        return {"skipped": "no committed epoch"}, empty_samples, empty_issues
    con.execute("CREATE TABLE epochs AS SELECT unnest(?::BIGINT[]) AS epoch, unnest(range(?)) AS pos",
                [epochs, len(epochs)])
    _kept_cells(con, listing, probs=confident_learning and listing.probs_width is not None)
    n, margins = con.execute("SELECT count(DISTINCT sample_id), count(*) FILTER (WHERE NOT isnan(margin)) "
                             "FROM cells").fetchone()
    if n == 0 or margins == 0:
        return {"skipped": "no recorded logits and labels"}, empty_samples, empty_issues
    n_epochs = len(epochs)
    if window is None:
        first = 1 if n_epochs > 1 else 0
        windows = [(first, end) for end in _window_candidates(first, n_epochs)]
    else:
        windows = [_window_positions(window, epochs)]
    _samples(con, windows)
    counts = con.execute("SELECT label, count(*) FROM samples GROUP BY label").fetchall()
    k = listing.num_classes or _classes_recorded(con)
    k = max(k, max(label for label, _ in counts) + 1)
    if k < 2 or len(counts) < 2:
        return {"skipped": "the labels hold fewer than two classes"}, empty_samples, empty_issues
    label_counts = np.bincount([label for label, _ in counts], weights=[c for _, c in counts],
                               minlength=k).astype(np.int64)
    confident = confident_learning and listing.probs_width is not None
    if confident:  # the window's n_issues: cleanlab's calibrated count of its mean probabilities
        confident_mod.window_probs(con, windows, k)
        joints = confident_mod.confident_joints(con, len(windows), k)
        j, n_issues = _best_window(con, windows, n, [confident_mod.count_issues(c, label_counts) for c in joints])
        confident_mod.suggestions(con, j)
        agreement = con.execute("SELECT avg(CASE WHEN c.top = s.label THEN 1.0 ELSE 0.0 END) "
                                "FROM cl_samples c JOIN sample_sums s USING (sample_id)").fetchone()[0]
    else:
        j, n_issues = _best_window(con, windows, n)
        agreement = con.execute(f"SELECT avg(CASE WHEN aum_{j} > 0 THEN 1.0 ELSE 0.0 END) FROM samples").fetchone()[0]
    first, end = windows[j]
    prior_max = max(c for _, c in counts) / n
    lift = (agreement - prior_max) / max(1 - prior_max, 1e-9)
    noise_rate = n_issues / n
    weak = lift < _MIN_LIFT or noise_rate > _MAX_NOISE

    if confident:
        if not weak and n_issues > 0:
            confident_mod.prune_by_noise_rate(con, j, joints[j], label_counts)
        else:
            con.execute("CREATE TABLE cl_flagged (sample_id BIGINT)")
        _judge_confident(con, j, first, end, n_issues=n_issues if not weak and n_issues > 0 else 0)
    else:
        _judge(con, j, first, end, flag=not weak and n_issues > 0)
    consistency = con.execute("SELECT coalesce(avg(consistency), 1.0) FROM judged WHERE flagged").fetchone()[0]
    settled = consistency >= _MIN_CONSISTENCY
    if not settled:
        con.execute(f"UPDATE judged SET flagged = false WHERE flagged AND consistency < {_STRICT_CONSISTENCY!r}")
    recall = _class_recall(con, n_epochs, k)
    unfit = [c for c in range(k) if recall[c] < _MIN_RECALL]
    in_unfit, flagged = con.execute(f"""
        SELECT count(*) FILTER (WHERE flagged AND (label IN ({_list(unfit)}) OR suggested_label IN ({_list(unfit)}))),
               count(*) FILTER (WHERE flagged) FROM judged""").fetchone()
    cannot_fit = in_unfit > 0 and in_unfit >= 0.5 * flagged
    if unfit:
        con.execute(f"UPDATE judged SET flagged = false WHERE label IN ({_list(unfit)}) "
                    f"OR suggested_label IN ({_list(unfit)})")
    issues = con.execute(f"SELECT {', '.join(_ISSUE_COLUMNS)} FROM judged WHERE flagged "
                         "ORDER BY suspicion, sample_id").df()
    details = {
        "n_flagged": len(issues), "n_issues": n_issues, "estimated_noise_rate": round(noise_rate, 4),
        "model_agreement": round(agreement, 4), "lift_over_prior": round(lift, 4),
        "consistency": round(consistency, 4), "unfit_classes": unfit, "not_judged": int(in_unfit),
        "class_recall": {c: round(r, 4) for c, r in enumerate(recall) if math.isfinite(r)},
        "evidence": "weak" if weak else ("cannot fit" if cannot_fit else ("strong" if settled else "moderate")),
        "window": [epochs[first], epochs[end - 1]], "samples": n,
        "rule": ("confident learning on the probabilities averaged over the window, united with the lowest area "
                 "under the margin (count: cleanlab's calibrated estimate), with the labels check's gates"
                 if confident else "area under the margin below zero over the window, with the labels check's gates"),
    }
    if listing.probs_stored and not confident:
        details["note"] = ("confident learning left out (confident_learning=False)" if listing.probs_width else
                           "the run stores only each sample's top-k probabilities (or not in every file): the labels "
                           "check rebuilds them for confident learning, which is not done here") + \
            "; these candidates are the margin rule's, not the labels check's"
    select = f"SELECT {', '.join(_SAMPLE_COLUMNS)} FROM judged ORDER BY sample_id"
    if samples_path is None:
        return details, con.execute(select).df(), issues
    samples_path = Path(samples_path)
    con.execute(f"COPY ({select}) TO '{str(samples_path).replace(chr(39), chr(39) * 2)}' (FORMAT parquet)")
    return details, samples_path, issues


def _kept_cells(con, listing, *, probs: bool) -> None:
    """Table `cells`: per (sample, epoch position) of the kept rows: margin, loss, pred, label, k (last row)."""
    soft = ""
    if listing.soft_targets and "target_prob" in listing.optional:
        # a mixed input speaks for its sample's label only where the sample makes up most of it, and a row
        # dominated by a mixup partner carries the partner's class (the labels check's reading)
        soft = f"AND NOT coalesce(target_prob < {_SOFT_PURITY!r}, false)"
    probs = ", r.probs" if probs else ""
    con.execute(f"""
        CREATE VIEW kept AS
        SELECT r.k, r.sample_id, e.pos, coalesce(r.margin, 'nan'::FLOAT) AS margin, r.loss, r.pred, r.label{probs}
        FROM records r JOIN epochs e USING (epoch)
        WHERE r.recorded AND r.label >= 0 {soft}""")
    source = "kept"
    if soft:
        con.execute(f"""
            CREATE VIEW kept_usual AS
            SELECT kept.* FROM kept JOIN (
                SELECT sample_id, arg_max(label, n * {_CLASS_SPAN} - label) AS usual
                FROM (SELECT sample_id, label, count(*) AS n FROM kept GROUP BY sample_id, label)
                GROUP BY sample_id) u USING (sample_id)
            WHERE kept.label = u.usual""")
        source = "kept_usual"
    # a sample drawn twice in an epoch counts once: its mean margin, its last prediction
    cell_probs = ", arg_max(probs, k) AS probs" if probs else ""
    con.execute(f"""
        CREATE TABLE cells AS
        SELECT sample_id, pos, avg(margin) AS margin, avg(loss) FILTER (WHERE isfinite(loss)) AS loss,
               arg_max(pred, k) AS pred, arg_max(label, k) AS label, max(k) AS k{cell_probs}
        FROM {source} GROUP BY sample_id, pos""")


def _samples(con, windows: list[tuple[int, int]]) -> None:
    """Table `samples`: per sample its last label and, per window j, its area under the margin (aum_j: the
    NaN-skipping mean of its epochs' margins, 0 where none) and mean loss (loss_j)."""
    parts = []
    for j, (first, end) in enumerate(windows):
        inside = f"pos >= {first} AND pos < {end}"
        parts.append(f"sum(margin) FILTER (WHERE {inside} AND NOT isnan(margin)) AS m_{j}, "
                     f"count(*) FILTER (WHERE {inside} AND NOT isnan(margin)) AS n_{j}, "
                     f"avg(loss) FILTER (WHERE {inside}) AS loss_{j}")
    con.execute(f"CREATE TABLE sample_sums AS SELECT sample_id, arg_max(label, k) AS label, {', '.join(parts)} "
                "FROM cells GROUP BY sample_id")
    aums = ", ".join(f"CASE WHEN n_{j} > 0 AND isfinite(m_{j} / n_{j}) THEN m_{j} / n_{j} ELSE 0.0 END AS aum_{j}, "
                     f"loss_{j}" for j in range(len(windows)))
    con.execute(f"CREATE VIEW samples AS SELECT sample_id, label, {aums} FROM sample_sums")


def _best_window(con, windows: list[tuple[int, int]], n: int, counts: list[int] | None = None) -> tuple[int, int]:
    """(index of the window whose lowest-AUM samples are best separated from the rest, their count): the
    `counts[j]` lowest of window j, or without counts its negative ones."""
    if counts is None:
        low_of = [f"aum_{j} < 0" for j in range(len(windows))]
        source = "samples"
    else:  # the counts[j] lowest (numpy's sorted values: which of equal values does not matter)
        low_of = [f"r_{j} <= {int(c)}" for j, c in enumerate(counts)]
        ranks = ", ".join(f"row_number() OVER (ORDER BY aum_{j}) AS r_{j}" for j in range(len(windows)))
        source = f"(SELECT *, {ranks} FROM samples)"
    stats = ", ".join(
        f"count(*) FILTER (WHERE {low}), avg(aum_{j}) FILTER (WHERE {low}), "
        f"var_pop(aum_{j}) FILTER (WHERE {low}), avg(aum_{j}) FILTER (WHERE NOT ({low})), "
        f"var_pop(aum_{j}) FILTER (WHERE NOT ({low}))" for j, low in enumerate(low_of))
    row = con.execute(f"SELECT {stats} FROM {source}").fetchone()
    best = None
    for j in range(len(windows)):
        low, low_mean, low_var, high_mean, high_var = row[5 * j:5 * j + 5]
        high = n - low
        if low < 5 or high < 5:  # labels._separation: no separable group
            sep = 0.0
        else:
            pooled = (low_var * low + high_var * high) / n
            sep = (high_mean - low_mean) / math.sqrt(max(pooled, 1e-12))
        if best is None or sep >= best[0] - 1e-9:  # ties go to the later, better-trained window
            best = (sep, j, int(low))
    return best[1], best[2]


def _votes(first: int, end: int) -> str:
    """SQL of the predictions of window positions first..end-1, counted per (sample_id, pred, late): late is
    whether the position is in the window's later half, over which consistency is judged."""
    return (f"SELECT sample_id, pred, pos >= {_late_start(first, end)} AS late, count(*) AS n FROM cells "
            f"WHERE pos >= {first} AND pos < {end} AND pred >= 0 GROUP BY sample_id, pred, late")


def _judge(con, j: int, first: int, end: int, *, flag: bool) -> None:
    """Table `judged`: the per-sample table of window j (positions first..end-1), flagged = AUM < 0 when
    `flag`, before the consistency and unfit-class gates."""
    con.execute(f"""
        CREATE TABLE judged AS
        WITH votes AS ({_votes(first, end)}),
        per_class AS (
            SELECT sample_id, pred, sum(n) AS n FROM votes GROUP BY sample_id, pred),
        summary AS (
            SELECT v.sample_id, sum(v.n) AS drawn, coalesce(sum(v.n) FILTER (WHERE v.pred = s.label), 0) AS as_label,
                   arg_max(v.pred, v.n * {_CLASS_SPAN} - v.pred) FILTER (WHERE v.pred != s.label) AS other
            FROM per_class v JOIN samples s USING (sample_id) GROUP BY v.sample_id),
        suggested AS (
            SELECT s.sample_id, coalesce(m.other, s.label) AS label, m.drawn, m.as_label
            FROM samples s LEFT JOIN summary m USING (sample_id)),
        settled AS (
            SELECT v.sample_id, sum(v.n) AS drawn, coalesce(sum(v.n) FILTER (WHERE v.pred = g.label), 0) AS hits
            FROM votes v JOIN suggested g USING (sample_id) WHERE v.late GROUP BY v.sample_id)
        SELECT s.sample_id, s.label, s.aum_{j} AS aum, s.loss_{j} AS mean_loss,
               coalesce(g.drawn, 0) AS epochs_drawn,
               coalesce(g.as_label, 0) / greatest(coalesce(g.drawn, 0), 1) AS predicted_as_label,
               g.label AS suggested_label,
               coalesce(l.hits, 0) / greatest(coalesce(l.drawn, 0), 1) AS consistency,
               {'s.aum_' + str(j) + ' < 0' if flag else 'false'} AS flagged, s.aum_{j} AS suspicion
        FROM samples s JOIN suggested g USING (sample_id) LEFT JOIN settled l USING (sample_id)""")


def _judge_confident(con, j: int, first: int, end: int, *, n_issues: int) -> None:
    """Table `judged` of window j with confident learning: flagged = pruned by noise rate (cl_flagged) or among
    the n_issues lowest AUM; suggested label from the mean probabilities (cl_samples); suspicion = the mean rank
    of the AUM and the given label's probability."""
    con.execute(f"""
        CREATE TABLE judged AS
        WITH ranked AS (
            SELECT s.sample_id, s.label, s.aum_{j} AS aum, s.loss_{j} AS mean_loss, c.suggested AS suggested_label,
                   (row_number() OVER (ORDER BY s.aum_{j}, s.sample_id)
                    + row_number() OVER (ORDER BY c.quality, s.sample_id)) / 2.0 AS suspicion,
                   row_number() OVER (ORDER BY s.aum_{j}, s.sample_id) <= {n_issues} AS low
            FROM samples s JOIN cl_samples c USING (sample_id)),
        summary AS (
            SELECT r.sample_id, sum(v.n) AS drawn, sum(v.n) FILTER (WHERE v.pred = r.label) AS as_label,
                   sum(v.n) FILTER (WHERE v.late) AS late_drawn,
                   sum(v.n) FILTER (WHERE v.late AND v.pred = r.suggested_label) AS as_suggested
            FROM ranked r JOIN ({_votes(first, end)}) v USING (sample_id)
            GROUP BY r.sample_id)
        SELECT r.sample_id, r.label, r.aum, r.mean_loss, coalesce(m.drawn, 0) AS epochs_drawn,
               coalesce(m.as_label, 0) / greatest(coalesce(m.drawn, 0), 1) AS predicted_as_label,
               r.suggested_label,
               coalesce(m.as_suggested, 0) / greatest(coalesce(m.late_drawn, 0), 1) AS consistency,
               {n_issues} > 0 AND (r.low OR r.sample_id IN (SELECT sample_id FROM cl_flagged)) AS flagged,
               r.suspicion
        FROM ranked r LEFT JOIN summary m USING (sample_id)""")


def _class_recall(con, n_epochs: int, k: int) -> list[float]:
    """Per class (k,): the share of its samples' predictions over the last third of the epochs that are the
    label (NaN for a class without any)."""
    late = n_epochs - max(1, n_epochs // 3)
    rows = con.execute(f"""
        SELECT s.label, count(*) FILTER (WHERE c.pred = s.label) AS hits, count(*) AS seen
        FROM cells c JOIN sample_sums s USING (sample_id) WHERE c.pos >= {late} AND c.pred >= 0
        GROUP BY s.label""").fetchall()
    recall = np.full(k, np.nan)
    for label, hits, seen in rows:
        if 0 <= label < k and seen:
            recall[label] = hits / seen
    return recall.tolist()


def _classes_recorded(con) -> int:
    """Classes of a run whose manifest names none: one past the largest label or prediction recorded."""
    top = con.execute("SELECT max(greatest(label, pred)) FROM records WHERE recorded").fetchone()[0]
    return int(top) + 1 if top is not None else 0


def _window_positions(window: tuple[int, int], epochs: list[int]) -> tuple[int, int]:
    """Positions (first, end exclusive) in `epochs` of the epochs first..last of `window`."""
    try:
        lo, hi = (int(w) for w in window)
    except (TypeError, ValueError):
        raise ValueError(f"analyze_records needs window as (first, last) epochs; got {window!r}") from None
    inside = [i for i, e in enumerate(epochs) if lo <= e <= hi]
    if lo > hi or not inside:
        raise ValueError(f"analyze_records needs a window of epochs among the run's judged ones "
                         f"({epochs[0]}..{epochs[-1]}); got {window!r}")
    return inside[0], inside[-1] + 1


def _list(values: list[int]) -> str:
    return ", ".join(str(int(v)) for v in values) or "NULL"
