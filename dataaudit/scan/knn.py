"""Exact k nearest neighbours (euclidean) of every row among the others, by blocked matrix products with
cluster pruning.

The rows are split into about n / CLUSTER_SIZE k-means clusters. Each block of queries first meets its own
cluster, which gives every query an upper bound r on its k-th neighbour distance; a cluster B is then read
only for the queries whose lower bound |x - centre_B| - radius_B (triangle inequality) is under their r.
The bounds are exact, so the result is that of brute force (up to ties between equal distances). On data
with structure (classes, modes) most clusters are skipped; where the first query blocks (taken in random order)
show that little is (one blob in many dimensions), sklearn's brute-force search answers the remaining queries.
"""
from __future__ import annotations

import numpy as np

CLUSTER_SIZE = 1024  # rows per k-means cluster, about
QUERY_BLOCK = 256  # queries per block: fewer prune better, more cost more numpy calls
# After BRUTE_AFTER query blocks, if each query read more than BRUTE_ABOVE of the rows, the pruning does not pay
# for its small blocks: the remaining queries go to sklearn's brute force.
BRUTE_AFTER, BRUTE_ABOVE = 8, 0.4
KMEANS_ROUNDS = 5


def nearest_neighbors(X: np.ndarray, k: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other rows of each row of X, nearest first.

    X : array of shape (n, d), float; its rows should be distinct (ties are broken arbitrarily).
    k : neighbours per row, 1 <= k < n.
    Returns (distances, indices), each of shape (n, k): euclidean distances (computed row minus row, so a
    tiny distance is exact) and the neighbours' row indices. A row is never its own neighbour.
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"nearest_neighbors needs X of shape (n, d); got shape {X.shape}")
    n = len(X)
    if not 1 <= k < n:
        raise ValueError(f"nearest_neighbors needs 1 <= k < n = {n}; got k = {k}")
    return _compute_nearest_neighbors(X, k, seed=seed)


def _compute_nearest_neighbors(X: np.ndarray, k: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(X)
    labels = _kmeans(X, max(1, n // CLUSTER_SIZE), seed=seed)
    centres = np.stack([X[labels == c].mean(axis=0) for c in np.unique(labels)])
    labels = np.unique(labels, return_inverse=True)[1].reshape(-1)  # no empty cluster
    spread = np.sqrt(((X - centres[labels]) ** 2).sum(axis=1))  # each row's distance to its centre
    # Rows in cluster order, farthest from the centre first: a cluster is a slice, and the rows a query can
    # reach in it (see below) are a prefix of that slice.
    perm = np.lexsort((-spread, labels))
    Xp, spread, sq = X[perm], spread[perm], np.einsum("ij,ij->i", X[perm], X[perm])
    bounds = np.searchsorted(labels[perm], np.arange(len(centres) + 1))
    best_i = np.empty((n, k), dtype=np.int64)
    blocks = [(a, start) for a in range(len(centres)) for start in range(bounds[a], bounds[a + 1], QUERY_BLOCK)]
    # In random order, so that the first blocks tell how much the pruning saves on this data
    order = np.random.default_rng(seed).permutation(len(blocks))
    read = queried = 0  # distances computed, queries answered
    for turn, (a, start) in enumerate(blocks[j] for j in order):
        if turn >= BRUTE_AFTER and read > BRUTE_ABOVE * queried * n:
            rest = np.concatenate([np.arange(s, min(s + QUERY_BLOCK, bounds[c + 1]))
                                   for c, s in (blocks[j] for j in order[turn:])])
            best_i[rest] = _brute_force(Xp, rest, k)
            break
        q = np.arange(start, min(start + QUERY_BLOCK, bounds[a + 1]))
        _, best_i[q], cost = _answer(Xp, sq, centres, spread, bounds, q, k)
        read, queried = read + cost, queried + len(q)
    # Exact distances, row minus row (the matrix-product form loses the digits of tiny distances), nearest first
    dist = _exact_distances(Xp, best_i)
    first = np.argsort(dist, axis=1, kind="stable")
    dist, idx = np.take_along_axis(dist, first, axis=1), perm[np.take_along_axis(best_i, first, axis=1)]
    out_d, out_i = np.empty_like(dist), np.empty_like(idx)
    out_d[perm], out_i[perm] = dist, idx
    return out_d, out_i


def _answer(Xp: np.ndarray, sq: np.ndarray, centres: np.ndarray, spread: np.ndarray, bounds: np.ndarray,
            q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(squared distances, indices) of the k nearest other rows of the queries Xp[q], each (len(q), k) in no
    order, and how many distances that took."""
    to_centre = np.sqrt(_sq_dist(Xp[q], centres))  # (queries, clusters)
    # Start from the own cluster (and the next nearest while under k + 1 rows): every query gets an
    # upper bound on its k-th distance, its reach.
    near_first = np.argsort(to_centre.mean(axis=0), kind="stable")
    sizes = np.diff(bounds)[near_first]
    start_with = near_first[:int(np.searchsorted(np.cumsum(sizes), k + 1)) + 1]
    cols = np.concatenate([np.arange(bounds[b], bounds[b + 1]) for b in start_with])
    block = _block(Xp, sq, q, cols)
    read = block.size
    keep = np.argpartition(block, k - 1, axis=1)[:, :k]
    d2, ids = np.take_along_axis(block, keep, axis=1), cols[keep]
    # Then the other clusters, by the least distance any query could have to them: once that is beyond
    # every query's reach, so is everything after it.
    rest = np.setdiff1d(near_first, start_with)
    least = to_centre[:, rest].min(axis=0) - spread[bounds[rest]]  # a cluster's farthest row is its first
    for b, bound in zip(rest[np.argsort(least)], np.sort(least), strict=True):
        reach = np.sqrt(d2.max(axis=1)) * (1 + 1e-9) + 1e-9
        if bound > reach.max():
            break
        lo, hi = bounds[b], bounds[b + 1]
        # Row j of cluster b is within reach of query i only if |x_i - c_b| - |x_j - c_b| < reach_i
        # (triangle inequality); the slack keeps float rounding from pruning a row just inside.
        floor = to_centre[:, b] - reach
        rows = np.flatnonzero(floor < spread[lo])
        if len(rows):
            take = int(np.searchsorted(-spread[lo:hi], -floor[rows].min(), side="right"))
            cols = np.arange(lo, lo + take)
            read += len(rows) * take
            _merge(d2, ids, rows, _block(Xp, sq, q[rows], cols), cols)
    return d2, ids, read


def _brute_force(Xp: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The k nearest other rows of Xp[rows], (len(rows), k) indices into Xp, by sklearn's brute-force search:
    its compiled pass beats our small blocks where the bounds skip little (one blob in many dimensions)."""
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(Xp).kneighbors(Xp[rows])[1]
    own = idx == rows[:, None]
    own[~own.any(axis=1), -1] = True  # a row that rounding left out of its own list: drop the farthest instead
    return idx[~own].reshape(len(rows), k)


def _block(Xp: np.ndarray, sq: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Squared distances from rows to cols of Xp, shape (len(rows), len(cols)); a row to itself is inf."""
    contiguous = len(cols) and cols[-1] - cols[0] == len(cols) - 1
    right = Xp[cols[0]:cols[-1] + 1] if contiguous else Xp[cols]
    block = sq[rows, None] + sq[None, cols] - 2.0 * (Xp[rows] @ right.T)
    np.maximum(block, 0.0, out=block)
    at = np.flatnonzero(np.isin(rows, cols))
    if len(at):  # a row is not its own neighbour
        block[at, np.searchsorted(cols, rows[at]) if contiguous else _where(cols, rows[at])] = np.inf
    return block


def _where(cols: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position of each of `values` in `cols` (distinct, any order; every value is there)."""
    order = np.argsort(cols, kind="stable")
    return order[np.searchsorted(cols[order], values)]


def _merge(d2: np.ndarray, ids: np.ndarray, rows: np.ndarray, block: np.ndarray, cols: np.ndarray) -> None:
    """Fold the candidates of `block` (rows x cols, squared distances) into each row's k best (d2, ids, shape
    (queries, k)), in place. Only entries under the row's current k-th count."""
    k = d2.shape[1]
    r, c = np.nonzero(block < d2[rows].max(axis=1, keepdims=True))
    if not len(r):
        return
    touched = np.unique(r)
    at = rows[touched]
    pool_row = np.concatenate([np.repeat(np.arange(len(touched)), k), np.searchsorted(touched, r)])
    pool_d2 = np.concatenate([d2[at].ravel(), block[r, c]])
    pool_id = np.concatenate([ids[at].ravel(), cols[c]])
    order = np.lexsort((pool_d2, pool_row))  # by row, then nearest first
    first = order.reshape(-1)[_firsts(pool_row[order], k)]
    d2[at] = pool_d2[first].reshape(-1, k)
    ids[at] = pool_id[first].reshape(-1, k)


def _firsts(sorted_groups: np.ndarray, k: int) -> np.ndarray:
    """Positions of the first k entries of each group in a sorted group array (every group has >= k)."""
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    return (starts[:, None] + np.arange(k)).ravel()


def _exact_distances(X: np.ndarray, idx: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """distance of row i to row idx[i, j], shape idx.shape, row minus row in chunks."""
    out = np.empty(idx.shape)
    for s in range(0, len(X), chunk):
        out[s:s + chunk] = np.sqrt(((X[s:s + chunk, None, :] - X[idx[s:s + chunk]]) ** 2).sum(axis=2))
    return out


def _sq_dist(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Squared euclidean distances, shape (len(A), len(B)), by the matrix-product form."""
    d2 = np.einsum("ij,ij->i", A, A)[:, None] + np.einsum("ij,ij->i", B, B)[None, :] - 2.0 * (A @ B.T)
    return np.maximum(d2, 0.0, out=d2)


def _kmeans(X: np.ndarray, clusters: int, *, seed: int) -> np.ndarray:
    """Cluster of each row, shape (n,): a few Lloyd rounds from distinct seeded rows (only the pruning's
    speed depends on how good they are, never the result)."""
    if clusters <= 1:
        return np.zeros(len(X), dtype=np.int64)
    rng = np.random.default_rng(seed)
    centres = X[rng.choice(len(X), clusters, replace=False)]
    for _ in range(KMEANS_ROUNDS):
        labels = _sq_dist(X, centres).argmin(axis=1)
        sums = np.zeros_like(centres)
        for j in range(X.shape[1]):  # per-cluster sums of each column
            sums[:, j] = np.bincount(labels, weights=X[:, j], minlength=clusters)
        counts = np.bincount(labels, minlength=clusters)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return _sq_dist(X, centres).argmin(axis=1)

