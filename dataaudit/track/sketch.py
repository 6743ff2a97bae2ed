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


def hash_ids(ids: np.ndarray) -> np.ndarray:
    """splitmix64 of int64 ids: a stable pseudo-random key per id, uint64."""
    # numpy array arithmetic on uint64 wraps around silently, as the hash wants.
    z = ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class Projection:
    """A fixed random projection of flattened inputs to `dim` dimensions (shape (n,) when dim is 1).

    With identity=True, inputs of at most `dim` features are kept as they are.
    """

    def __init__(self, num_features: int, dim: int, seed: int, *, identity: bool = True):
        self.num_features = num_features
        self.identity = identity and num_features <= dim
        self.dim = num_features if self.identity else dim
        self._seed = seed
        self._matrix: dict[torch.device, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x : (n, num_features) float -> (n, dim) float."""
        if self.identity:
            return x
        m = self._matrix.get(x.device)
        if m is None:
            g = torch.Generator().manual_seed(self._seed)
            m = torch.randn(self.num_features, self.dim, generator=g) / self.dim**0.5
            m = self._matrix[x.device] = m.to(x.device)
        out = x @ m
        return out[:, 0] if self.dim == 1 else out


class Moments:
    """Streaming per-feature count, mean, M2, min and max, on the inputs' device.

    A non-finite input makes its feature's moments non-finite, which is itself
    what the feature-scale check reports.
    """

    def __init__(self):
        self.count = 0
        self._shift = self._sum = self._sumsq = self._min = self._max = None

    def update(self, x: torch.Tensor) -> None:
        """x : (n, d) float, already flattened."""
        if self._shift is None:
            # A shift taken from the first batch keeps sums of squares well
            # conditioned for features whose mean is far from zero.
            self._shift = x.mean(0)
            self._sum = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            self._sumsq = torch.zeros_like(self._sum)
            self._min, self._max = x.amin(0), x.amax(0)
        else:
            self._min = torch.minimum(self._min, x.amin(0))
            self._max = torch.maximum(self._max, x.amax(0))
        xc = x - self._shift
        self._sum += xc.sum(0)
        self._sumsq += (xc * xc).sum(0)
        self.count += x.shape[0]

    def table(self) -> pa.Table | None:
        """One row per feature: feature, count, mean, m2, min, max (copies to the host)."""
        if self._shift is None:
            return None
        s, ss = self._sum.cpu().numpy(), self._sumsq.cpu().numpy()
        mean_c = s / self.count
        return pa.table({
            "feature": np.arange(len(s), dtype=np.int64),
            "count": np.full(len(s), self.count, dtype=np.int64),
            "mean": self._shift.double().cpu().numpy() + mean_c,
            "m2": np.maximum(ss - self.count * mean_c**2, 0.0),
            "min": self._min.double().cpu().numpy(),
            "max": self._max.double().cpu().numpy(),
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
        flat = pa.array(values.reshape(-1), type=pa.float32())
        return pa.table({
            "sample_id": self.ids[order],
            "value": pa.FixedSizeListArray.from_arrays(flat, values.shape[1]),
        })
