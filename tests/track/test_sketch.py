from __future__ import annotations

import numpy as np
import torch

from dataaudit.track.sketch import Moments, Projection, Reservoir, hash_ids


def test_moments_match_numpy_even_far_from_zero(rng):
    x = rng.normal(1e4, 2.0, size=(1000, 5)).astype(np.float32)
    x[:, 0] = rng.uniform(0, 1, 1000)
    m = Moments()
    for chunk in np.array_split(x, 7):
        m.update(chunk)
    table = m.table().to_pandas()
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(table["mean"], x64.mean(0), rtol=1e-7)
    np.testing.assert_allclose(table["m2"] / 1000, x64.var(0), rtol=1e-3)
    np.testing.assert_array_equal(table["min"], x.min(0))
    np.testing.assert_array_equal(table["max"], x.max(0))


def test_moments_of_large_chunks_far_from_the_first_chunks_mean(rng):
    """Chunks are summed in float32 blocks: still exact to float64 tolerance when a later chunk's values sit far
    from the shift the first chunk set, and a chunk is many blocks long."""
    x = np.concatenate([rng.normal(0.0, 1.0, size=(100, 3)), rng.normal(300.0, 0.5, size=(50_000, 3))])
    x = x.astype(np.float32)
    m = Moments()
    m.update(x[:100])
    m.update(x[100:])
    table = m.table().to_pandas()
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(table["mean"], x64.mean(0), rtol=1e-6)
    np.testing.assert_allclose(table["m2"] / len(x), x64.var(0), rtol=1e-4)


def test_reservoir_is_bounded_and_picks_the_same_ids_each_epoch(rng):
    picked = []
    for _ in range(2):
        r = Reservoir(50)
        ids = rng.permutation(1000)
        for chunk in np.array_split(ids, 9):
            r.update(chunk, np.repeat(chunk[:, None], 3, 1).astype(np.float32))
        table = r.table().to_pandas()
        assert len(table) == 50
        values = np.stack(table["value"].to_numpy())
        np.testing.assert_array_equal(values[:, 0], table["sample_id"])
        picked.append(set(table["sample_id"]))
    assert picked[0] == picked[1]


def test_reservoir_keeps_one_copy_of_a_repeated_id():
    r = Reservoir(10)
    r.update(np.array([3, 3, 4]), np.array([[1.0], [2.0], [5.0]], np.float32))
    table = r.table().to_pandas()
    assert table["sample_id"].tolist() == [3, 4]
    assert table["value"].iloc[0].tolist() == [1.0]


def test_projection_is_identity_for_narrow_inputs_and_fixed_otherwise():
    x = torch.randn(4, 8)
    assert torch.equal(Projection(8, 32, seed=0)(x), x)
    wide = torch.randn(4, 100)
    a, b = Projection(100, 16, seed=0)(wide), Projection(100, 16, seed=0)(wide)
    assert a.shape == (4, 16) and torch.equal(a, b)


def test_hash_ids_is_stable_and_spread():
    h = hash_ids(np.arange(10000))
    assert len(np.unique(h)) == 10000
    assert hash_ids(np.array([7]))[0] == hash_ids(np.array([7]))[0]
