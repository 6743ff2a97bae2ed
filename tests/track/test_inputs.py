"""Inputs of every form: HF-style dict batches padded per batch, token ids, float tensors whose shape changes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import dataaudit
from dataaudit import store
from dataaudit.track.inputs import input_kind, token_summary


class _Texts(Dataset):
    """Token sequences of 3 to 12 ids (1..49), label = first id parity."""

    def __init__(self, n=48, seed=0):
        rng = np.random.default_rng(seed)
        self.seqs = [rng.integers(1, 50, rng.integers(3, 13)).tolist() for _ in range(n)]

    def __len__(self):
        return len(self.seqs)

    def __getitem__(self, i):
        return self.seqs[i], self.seqs[i][0] % 2


def _pad(batch, left=False):
    longest = max(len(s) for s, _ in batch)
    ids = torch.zeros(len(batch), longest, dtype=torch.long)
    mask = torch.zeros(len(batch), longest, dtype=torch.long)
    for i, (s, _) in enumerate(batch):
        span = slice(longest - len(s), longest) if left else slice(0, len(s))
        ids[i, span] = torch.tensor(s)
        mask[i, span] = 1
    return {"input_ids": ids, "attention_mask": mask}, torch.tensor([y for _, y in batch])


def test_dict_batches_padded_per_batch_never_raise(run_dir):
    ds = _Texts()
    loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=_pad, generator=torch.Generator().manual_seed(0))
    emb = torch.nn.EmbeddingBag(50, 2)
    with dataaudit.Tracker(run_dir) as tracker:
        wrapped = tracker.wrap(loader)
        for _ in range(3):
            for batch, y in wrapped:
                logits = emb(batch["input_ids"])
                tracker.record(F.cross_entropy(logits, y, reduction="none"), logits=logits, targets=y, inputs=batch)
    info = json.loads((run_dir / store.MANIFEST).read_text())["splits"]["train"]
    assert info["input_kind"] == "tokens" and info["input_key"] == "input_ids" and info["input_dtype"] == "int64"
    run = dataaudit.load_run(run_dir)
    # the sketch keeps each sample's length; fingerprints ignore how a batch was padded
    lengths = run.train.features[0]
    assert lengths["min"].iloc[0] >= 3 and lengths["max"].iloc[0] <= 12
    fp = run.records.pivot(index="sample_id", columns="epoch", values="fingerprint")
    np.testing.assert_allclose(fp[0], fp[2], rtol=1e-5)
    audit = dataaudit.analyze(run)
    assert audit.results["feature_scale"].status == "skipped"
    assert "tokens" in audit.results["feature_scale"].details["skipped"]


def test_the_token_fingerprint_ignores_padding():
    batch = [([5, 7, 9], 0), ([4, 4], 1)]
    right, _ = _pad(batch)
    left, _ = _pad(batch, left=True)
    wide = {k: F.pad(v, (0, 3)) for k, v in right.items()}
    fps = [token_summary(b, "input_ids", 2)[0] for b in (right, left, wide)]
    np.testing.assert_allclose(fps[0], fps[1], rtol=1e-5)
    np.testing.assert_allclose(fps[0], fps[2], rtol=1e-5)
    assert token_summary(right, "input_ids", 2)[1].tolist() == [[3.0], [2.0]]
    # other tokens, or the same tokens in another order, hash differently
    assert token_summary(_pad([([7, 5, 9], 0)])[0], "input_ids", 1)[0] != fps[0][0]


@pytest.mark.parametrize("inputs, kind, key", [
    (torch.zeros(2, 3), "float", None),
    (torch.zeros(2, 3, dtype=torch.long), "tokens", None),
    ({"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3)}, "tokens", "input_ids"),
    ({"pixel_values": torch.zeros(2, 3, 4, 4)}, "float", "pixel_values"),
])
def test_input_kind(inputs, kind, key):
    assert input_kind(inputs) == (kind, key)


def test_inputs_of_no_known_form_are_refused():
    with pytest.raises(TypeError, match="tensor or a dict of tensors; got list"):
        input_kind([1, 2])


def test_float_inputs_whose_shape_changes_stop_the_sketch_with_a_note(run_dir):
    loader = DataLoader(torch.utils.data.TensorDataset(torch.arange(40)), batch_size=10)
    with dataaudit.Tracker(run_dir) as tracker:
        wrapped = tracker.wrap(loader)
        for _ in range(2):
            for (idx,) in wrapped:
                x = torch.randn(len(idx), 4 + int(idx[0]) // 10, 2)  # a sequence length that changes per batch
                tracker.record(torch.ones(len(idx)), inputs=x)
    info = json.loads((run_dir / store.MANIFEST).read_text())["splits"]["train"]
    assert info["input_kind"] == "float" and info["input_dtype"] == "float32"
    assert info["input_sketch"] == "stopped" and "padded per batch" in info["input_sketch_note"]
    run = dataaudit.load_run(run_dir)
    assert len(run.records) == 80
