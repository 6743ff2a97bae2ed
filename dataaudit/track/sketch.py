"""A bounded sketch of the inputs one epoch fed the model.

Two parts, both of fixed size whatever the dataset size:

- per-feature moments of the flattened inputs (count, mean, M2, min, max),
  accumulated on the device in float64 around a fixed shift for stability;
- a reservoir of `reservoir` samples' inputs, randomly projected to
  `dim` dimensions (kept raw when the input has at most `dim` features).
  Samples are chosen by a hash of their id, so a deterministic pipeline shows
  the same ids every epoch: their inputs can be compared one to one.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from dataaudit.track import arrow


def hash_ids(ids: np.ndarray) -> np.ndarray:
    """splitmix64 of int64 ids: a stable pseudo-random key per id, uint64."""
    # numpy array arithmetic on uint64 wraps around silently, as the hash wants.
    z = ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class Projection:
    """A fixed random projection of flattened inputs to `dim` dimensions (shape (n,) when dim is 1).

    Works on numpy arrays and on tensors (on their device). With identity=True,
    inputs of at most `dim` features are kept as they are.
    """

    def __init__(self, num_features: int, dim: int, seed: int, *, identity: bool = True):
        self.num_features = num_features
        self.identity = identity and num_features <= dim
        self.dim = num_features if self.identity else dim
        g = torch.Generator().manual_seed(seed)
        self.matrix = (torch.randn(num_features, self.dim, generator=g) / self.dim**0.5).numpy()
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def __call__(self, x):
        """x : (n, num_features) float array or tensor -> (n, dim), or (n,) when dim is 1."""
        if self.identity:
            return x
        if isinstance(x, torch.Tensor):
            m = self._on_device.get(x.device)
            if m is None:
                # once per device; non-blocking, so that the training thread does not wait for the device
                matrix = self.matrix[:, 0].copy() if self.dim == 1 else self.matrix
                m = self._on_device[x.device] = torch.from_numpy(matrix).to(x.device, non_blocking=True)
            # one direction (the fingerprint, every batch): a matrix-vector product, a third cheaper on a CPU
            return torch.mv(x, m) if self.dim == 1 else x @ m
        out = x @ self.matrix
        return out[:, 0] if self.dim == 1 else out


# Moments sums this many rows in float32 at a time (a relative error of at most ~1e-4 on centred values).
_BLOCK_ROWS = 1024


class Moments:
    """Streaming per-feature count, mean, M2, min and max (numpy, float64 sums).

    A non-finite input makes its feature's moments non-finite, which is itself
    what the feature-scale check reports.
    """

    def __init__(self):
        self.count = 0
        self._shift = self._sum = self._sumsq = self._min = self._max = None

    def update(self, x: np.ndarray) -> None:
        """x : (n, d) float32, already flattened."""
        if self._shift is None:
            # A shift taken from the first chunk keeps sums of squares well
            # conditioned for features whose mean is far from zero.
            self._shift = x.mean(0, dtype=np.float64).astype(np.float32)
            self._sum = np.zeros(x.shape[1], np.float64)
            self._sumsq = np.zeros(x.shape[1], np.float64)
            self._min, self._max = x.min(0), x.max(0)
        else:
            self._min = np.minimum(self._min, x.min(0))
            self._max = np.maximum(self._max, x.max(0))
        # float32 sums over blocks of rows, added up in float64: a third of the time of float64 throughout
        for start in range(0, x.shape[0], _BLOCK_ROWS):
            xc = x[start:start + _BLOCK_ROWS] - self._shift
            self._sum += xc.sum(0)
            self._sumsq += np.einsum("ij,ij->j", xc, xc)
        self.count += x.shape[0]

    def table(self) -> pa.Table | None:
        """One row per feature: feature, count, mean, m2, min, max."""
        if self._shift is None:
            return None
        mean_c = self._sum / self.count
        return arrow.table({
            "feature": np.arange(len(self._sum), dtype=np.int64),
            "count": np.full(len(self._sum), self.count, dtype=np.int64),
            "mean": self._shift.astype(np.float64) + mean_c,
            "m2": np.maximum(self._sumsq - self.count * mean_c**2, 0.0),
            "min": self._min.astype(np.float64),
            "max": self._max.astype(np.float64),
        })


class Reservoir:
    """The `size` samples with the smallest id-hash keys seen this epoch, host side."""

    def __init__(self, size: int):
        self.size = size
        self.ids = np.empty(0, np.int64)
        self.keys = np.empty(0, np.uint64)
        self.values: np.ndarray | None = None

    def update(self, ids: np.ndarray, values: np.ndarray) -> None:
        """ids : (n,) int64; values : (n, dim) float32."""
        keys = hash_ids(ids)
        if self.values is None:
            self.values = np.empty((0, values.shape[1]), np.float32)
        ids = np.concatenate([self.ids, ids])
        keys = np.concatenate([self.keys, keys])
        values = np.concatenate([self.values, values.astype(np.float32, copy=False)])
        # A sample drawn twice in one epoch keeps its first appearance.
        _, first = np.unique(ids, return_index=True)
        if len(first) > self.size:
            first = first[np.argpartition(keys[first], self.size - 1)[: self.size]]
        first.sort()
        self.ids, self.keys, self.values = ids[first], keys[first], values[first]

    def table(self) -> pa.Table | None:
        """sample_id, value (fixed-size list of dim float32), sorted by id."""
        if self.values is None:
            return None
        order = np.argsort(self.ids, kind="stable")
        values = self.values[order]
        return arrow.table({
            "sample_id": self.ids[order],
            "value": arrow.lists(values.astype(np.float32, copy=False)),
        })
