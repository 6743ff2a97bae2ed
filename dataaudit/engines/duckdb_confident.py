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
    """Table `prob_sums`: per (sample, class) and window j, the sum (t_j) and count (n_j) of the class's
    probability over the window's epochs whose margin is kept."""
    parts = ", ".join(
        f"sum(p) FILTER (WHERE pos >= {a} AND pos < {b}) AS t_{j}, "
        f"count(*) FILTER (WHERE pos >= {a} AND pos < {b}) AS n_{j}" for j, (a, b) in enumerate(windows))
    con.execute(f"""
        CREATE TABLE prob_sums AS
        SELECT sample_id, cls, {parts} FROM (
            SELECT sample_id, pos, unnest(probs) AS p, unnest(range({k})) AS cls FROM cells
            WHERE NOT isnan(margin) AND probs IS NOT NULL)
        WHERE NOT isnan(p) GROUP BY sample_id, cls""")


def pp_view(con, j: int, k: int) -> str:
    """Create view pp_{j}: (sample_id, cls, p) the window's mean probabilities as the labels check forms them
    (float32 means, 1/k where none, clipped at 1e-9, each sample's row summing to 1); returns its name."""
    con.execute(f"""
        CREATE OR REPLACE VIEW raw_pp_{j} AS
        SELECT s.sample_id, c.cls,
               greatest(coalesce(CASE WHEN ps.n_{j} > 0 THEN (ps.t_{j} / ps.n_{j})::FLOAT::DOUBLE END, 1.0 / {k}),
                        1e-9) AS v
        FROM sample_sums s CROSS JOIN (SELECT unnest(range({k})) AS cls) c
        LEFT JOIN prob_sums ps ON ps.sample_id = s.sample_id AND ps.cls = c.cls""")
    con.execute(f"""
        CREATE OR REPLACE TABLE pp_{j} AS
        SELECT r.sample_id, r.cls, r.v / t.total AS p
        FROM raw_pp_{j} r JOIN (SELECT sample_id, sum(v) AS total FROM raw_pp_{j} GROUP BY sample_id) t
        USING (sample_id)""")
    return f"pp_{j}"


def confident_joint(con, pp: str, k: int) -> np.ndarray:
    """cleanlab's compute_confident_joint (uncalibrated, diagonal not yet clipped): counts (k, k) of
    (given label, confident guess) over the samples with at least one class at or above its threshold."""
    rows = con.execute(f"""
        WITH thresholds AS (
            SELECT c.cls, greatest(coalesce(t.mean, 2.0), 2e-6) AS threshold
            FROM (SELECT unnest(range({k})) AS cls) c LEFT JOIN (
                SELECT pp.cls, avg(pp.p) AS mean FROM {pp} pp JOIN sample_sums s USING (sample_id)
                WHERE pp.cls = s.label GROUP BY pp.cls) t USING (cls)),
        guesses AS (
            SELECT pp.sample_id, count(*) FILTER (WHERE pp.p >= t.threshold - 1e-6) AS confident,
                   {_FIRST_MAX.format(p="pp.p")} AS top,
                   min(pp.cls) FILTER (WHERE pp.p >= t.threshold - 1e-6) AS first_confident
            FROM {pp} pp JOIN thresholds t USING (cls) GROUP BY pp.sample_id)
        SELECT s.label, CASE WHEN g.confident > 1 THEN g.top ELSE g.first_confident END AS guess, count(*)
        FROM guesses g JOIN sample_sums s USING (sample_id) WHERE g.confident > 0 GROUP BY ALL""").fetchall()
    joint = np.zeros((k, k), dtype=np.int64)
    for label, guess, count in rows:
        joint[label, guess] = count
    return joint


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


def prune_by_noise_rate(con, pp: str, joint: np.ndarray, label_counts: np.ndarray) -> None:
    """Table `cl_flagged` (sample_id): cleanlab's find_label_issues(filter_by="prune_by_noise_rate") from the
    window's probabilities `pp` and their confident joint (uncalibrated)."""
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


def suggestions(con, pp: str) -> None:
    """Table `cl_samples` (sample_id, top, suggested, quality): the window's most probable class, the labels
    check's suggested label (the most probable other class when the model prefers it or is unsure) and the
    probability of the given label."""
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
