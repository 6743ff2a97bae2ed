"""Confident learning in DuckDB: the labels check's steps on stored probabilities (see `duckdb_labels`).

The per-sample work is SQL over the cells (one row per sample and epoch, with its probabilities): the
probabilities averaged over each window, cleanlab's per-class thresholds (the mean probability of a class
over the samples labelled with it) and each sample's confident guess, counted into the (k, k) confident
joint. The (k, k) steps run in cleanlab itself (calibration, the calibrated count, the prune counts); the
pruning (per given class and other class, the samples with the largest p(other) - p(given)) is a window
function again. What differs from the in-memory check: the window's sums are accumulated in float64 (the check
adds float32 epoch by epoch), so a probability within a rounding of a threshold may be read differently,
and cleanlab's ties in its unstable sort by margin are broken by sample id here.
"""
from __future__ import annotations

import numpy as np

# argmax over classes with numpy's tie rule (the first class): the largest p, then the smallest class
_FIRST_MAX = "arg_max(cls, {{'p': {p}, 'c': -cls}})"


def window_probs(con, windows: list[tuple[int, int]], k: int) -> None:
    """Table `pp` (sample_id, cls, p_0, p_1...): per sample and class, the mean probability over each window j
    as the labels check forms it (float32 means over the epochs whose margin is kept, 1/k where none, clipped
    at 1e-9, each sample's row summing to 1). One pass over the cells for all windows."""
    sums = ", ".join(
        f"sum(p) FILTER (WHERE pos >= {a} AND pos < {b} AND NOT isnan(p)) AS t_{j}, "
        f"count(*) FILTER (WHERE pos >= {a} AND pos < {b} AND NOT isnan(p)) AS n_{j}"
        for j, (a, b) in enumerate(windows))
    con.execute(f"""
        CREATE TABLE prob_sums AS
        SELECT sample_id, cls, {sums} FROM (
            SELECT sample_id, pos, unnest(probs) AS p, unnest(range({k})) AS cls FROM cells
            WHERE NOT isnan(margin) AND probs IS NOT NULL)
        GROUP BY sample_id, cls""")
    values = ", ".join(f"greatest(coalesce(CASE WHEN n_{j} > 0 THEN (t_{j} / n_{j})::FLOAT::DOUBLE END, 1.0 / {k}), "
                       f"1e-9) AS v_{j}" for j in range(len(windows)))
    uniform = ", ".join(f"1.0 / {k} AS v_{j}" for j in range(len(windows)))
    con.execute(f"""
        CREATE VIEW raw_pp AS
        SELECT sample_id, cls, {values} FROM prob_sums
        UNION ALL  -- samples without a kept probability: 1/k for every class
        SELECT s.sample_id, c.cls, {uniform}
        FROM (SELECT sample_id FROM sample_sums ANTI JOIN prob_sums USING (sample_id)) s
        CROSS JOIN (SELECT unnest(range({k})) AS cls) c""")
    totals = ", ".join(f"sum(v_{j}) AS total_{j}" for j in range(len(windows)))
    ratios = ", ".join(f"r.v_{j} / t.total_{j} AS p_{j}" for j in range(len(windows)))
    con.execute(f"""
        CREATE TABLE pp AS
        SELECT r.sample_id, r.cls, {ratios}
        FROM raw_pp r JOIN (SELECT sample_id, {totals} FROM raw_pp GROUP BY sample_id) t USING (sample_id)""")
    con.execute("DROP TABLE prob_sums")


def confident_joints(con, n_windows: int, k: int) -> list[np.ndarray]:
    """cleanlab's compute_confident_joint (uncalibrated, diagonal not yet clipped) of each window: counts (k, k)
    of (given label, confident guess) over the samples with at least one class at or above its threshold (the
    mean probability of the class over the samples labelled with it). One pass over `pp` for all windows."""
    means = ", ".join(f"avg(pp.p_{j}) FILTER (WHERE pp.cls = s.label) AS mean_{j}" for j in range(n_windows))
    limits = ", ".join(f"greatest(coalesce(t.mean_{j}, 2.0), 2e-6) - 1e-6 AS limit_{j}" for j in range(n_windows))
    guesses = ", ".join(
        f"count(*) FILTER (WHERE pp.p_{j} >= l.limit_{j}) AS confident_{j}, "
        f"{_FIRST_MAX.format(p=f'pp.p_{j}')} AS top_{j}, "
        f"min(pp.cls) FILTER (WHERE pp.p_{j} >= l.limit_{j}) AS first_{j}" for j in range(n_windows))
    con.execute(f"""
        CREATE TABLE guesses AS
        WITH thresholds AS (
            SELECT pp.cls, {means} FROM pp JOIN sample_sums s USING (sample_id) GROUP BY pp.cls),
        limits AS (
            SELECT c.cls, {limits} FROM (SELECT unnest(range({k})) AS cls) c LEFT JOIN thresholds t USING (cls))
        SELECT pp.sample_id, {guesses} FROM pp JOIN limits l USING (cls) GROUP BY pp.sample_id""")
    joints = []
    for j in range(n_windows):
        rows = con.execute(f"""
            SELECT s.label, CASE WHEN g.confident_{j} > 1 THEN g.top_{j} ELSE g.first_{j} END AS guess, count(*)
            FROM guesses g JOIN sample_sums s USING (sample_id) WHERE g.confident_{j} > 0 GROUP BY ALL""").fetchall()
        joint = np.zeros((k, k), dtype=np.int64)
        for label, guess, count in rows:
            joint[label, guess] = count
        joints.append(joint)
    con.execute("DROP TABLE guesses")
    return joints


def calibrated(joint: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """cleanlab's calibrate_confident_joint of `joint` (k, k), for labels with these counts (k,)."""
    from cleanlab.count import calibrate_confident_joint

    joint = joint.copy()
    np.fill_diagonal(joint, joint.diagonal().clip(min=1))
    # only the labels' counts are read: the labels themselves, rebuilt as runs of each class
    return calibrate_confident_joint(joint, np.repeat(np.arange(len(label_counts)), label_counts))


def count_issues(joint: np.ndarray, label_counts: np.ndarray) -> int:
    """labels._count_issues from the confident joint: estimate_joint calibrates the calibrated joint again."""
    twice = calibrated(calibrated(joint, label_counts), label_counts)
    estimate = twice / max(float(twice.sum()), 1e-100)
    return int(np.rint((1.0 - estimate.trace()) * label_counts.sum()))


def prune_by_noise_rate(con, j: int, joint: np.ndarray, label_counts: np.ndarray) -> None:
    """Table `cl_flagged` (sample_id): cleanlab's find_label_issues(filter_by="prune_by_noise_rate") from the
    probabilities of window j and their confident joint (uncalibrated)."""
    from cleanlab.filter import _keep_at_least_n_per_class

    prune = _keep_at_least_n_per_class(calibrated(joint, label_counts).T, n=1, frac_noise=1.0)
    k = len(label_counts)
    cells = [(given, other, int(prune[other, given])) for given in range(k) for other in range(k)
             if other != given and prune[other, given] > 0 and label_counts[given] > 1]
    con.execute("CREATE OR REPLACE TABLE prune (label BIGINT, cls BIGINT, num BIGINT)")
    if cells:
        con.executemany("INSERT INTO prune VALUES (?, ?, ?)", cells)
    # per (given, other) the samples with the largest p(other) - p(given); then none whose prediction, with
    # 1e-6 added to the given label, is the given label (cleanlab's _reduce_issues)
    pp = f"(SELECT sample_id, cls, p_{j} AS p FROM pp)"
    con.execute(f"""
        CREATE OR REPLACE TABLE cl_flagged AS
        WITH given AS (
            SELECT pp.sample_id, s.label, pp.p AS p_label FROM {pp} pp JOIN sample_sums s USING (sample_id)
            WHERE pp.cls = s.label),
        ranked AS (
            SELECT pp.sample_id, pr.num,
                   row_number() OVER (PARTITION BY g.label, pp.cls ORDER BY pp.p - g.p_label DESC, pp.sample_id) AS r
            FROM {pp} pp JOIN given g USING (sample_id) JOIN prune pr ON pr.label = g.label AND pr.cls = pp.cls),
        kept AS (
            SELECT g.sample_id FROM given g JOIN {pp} pp USING (sample_id) GROUP BY g.sample_id, g.label, g.p_label
            HAVING g.p_label + 1e-6 > coalesce(max(pp.p) FILTER (WHERE pp.cls < g.label), -1)
               AND g.p_label + 1e-6 >= coalesce(max(pp.p) FILTER (WHERE pp.cls > g.label), -1))
        SELECT DISTINCT sample_id FROM ranked WHERE r <= num
        EXCEPT SELECT sample_id FROM kept""")


def suggestions(con, j: int) -> None:
    """Table `cl_samples` (sample_id, top, suggested, quality): the window's most probable class, the labels
    check's suggested label (the most probable other class when the model prefers it or is unsure) and the
    probability of the given label (of window j)."""
    pp = f"(SELECT sample_id, cls, p_{j} AS p FROM pp)"
    con.execute(f"""
        CREATE OR REPLACE TABLE cl_samples AS
        WITH ordered AS (
            SELECT pp.sample_id, s.label, pp.cls, pp.p,
                   -- numpy: argmax takes the first of equal values; argsort (stable for up to 16 classes)
                   -- puts the last of them at the end, so the second is read in that order
                   row_number() OVER (PARTITION BY pp.sample_id ORDER BY pp.p DESC, pp.cls DESC) AS place
            FROM {pp} pp JOIN sample_sums s USING (sample_id))
        SELECT sample_id, any_value(label) AS label, {_FIRST_MAX.format(p="p")} AS top, max(p) AS top_p,
               max(cls) FILTER (WHERE place = 2) AS second, max(p) FILTER (WHERE cls = label) AS quality
        FROM ordered GROUP BY sample_id""")
    con.execute("""
        CREATE OR REPLACE TABLE cl_samples AS
        SELECT sample_id, top, quality,
               CASE WHEN top != label THEN top WHEN top_p < 0.5 THEN second ELSE top END AS suggested
        FROM cl_samples""")
