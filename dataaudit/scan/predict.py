"""Forward passes over a dataset: logits, penultimate-layer embeddings, and out-of-sample probabilities.

A model's own probabilities on its training data are in-sample (it memorised some wrong labels), so
`scan` refits a logistic regression on the embeddings with 5-fold cross-validation: each sample's
probabilities come from a classifier that never saw its label.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

# Embeddings wider than this are reduced by PCA first: the logistic regression stays quick.
_MAX_EMBEDDING_DIM = 256


def predict(model, X: np.ndarray, *, batch_size: int = 256, device: str = "cpu",
            progress: Callable[[str], None] | None = None,
            on_batch: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (n, k) and penultimate-layer embeddings (n, d) (None where they cannot be found) of X (n, ...).

    progress : called with a line every 50 batches; on_batch : called with (samples done, n) after each batch.
    A model exported with a static batch size (torch.export without a dynamic batch dimension) gets batches
    of exactly that size: the last one padded with copies of its first row, whose outputs are dropped.
    """
    import torch

    embed = _embedder(model)
    logits, embeddings = [], []
    n = len(X)
    fixed = static_batch_size(model)
    batch_size = fixed or batch_size
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            rows = X[start:start + batch_size]
            if fixed and len(rows) < fixed:
                rows = np.concatenate([rows, np.repeat(rows[:1], fixed - len(rows), axis=0)])
            batch = torch.from_numpy(np.ascontiguousarray(rows)).to(device)
            out, emb = embed(batch) if embed is not None else (model(batch), None)
            if start == 0 and embed is not None:
                # the decomposition must reproduce the model's own output, or it is not the penultimate layer
                if emb is None or not torch.allclose(out.float(), model(batch).float(), atol=1e-4, rtol=1e-3):
                    embed, emb = None, None
                    out = model(batch)
            real = min(batch_size, n - start)  # rows of X in this batch (the rest is padding)
            logits.append(_as_logits(out).float().cpu().numpy()[:real])
            if emb is not None:
                embeddings.append(emb.reshape(len(batch), -1).float().cpu().numpy()[:real])
            if on_batch is not None:
                on_batch(min(start + batch_size, n), n)
            if progress and (start // batch_size) % 50 == 49:
                progress(f"forward passes: {min(start + batch_size, n)}/{n}")
    return np.concatenate(logits), (np.concatenate(embeddings) if embeddings and embed is not None else None)


def static_batch_size(model) -> int | None:
    """The batch size an exported program was traced with, when it is static (None: any batch size)."""
    import torch

    if not isinstance(model, torch.fx.GraphModule):
        return None
    for node in model.graph.nodes:
        if node.op == "placeholder":
            value = node.meta.get("val")
            shape = getattr(value, "shape", None)
            if shape is not None and len(shape) and isinstance(shape[0], int):
                return int(shape[0])
            return None
    return None


def _as_logits(out):
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values())))
    return out.reshape(len(out), -1)


def _embedder(model):
    """A function batch -> (output, penultimate activations), or None if no penultimate layer is found."""
    import torch

    if isinstance(model, torch.fx.GraphModule):
        return _graph_embedder(model)
    if isinstance(model, torch.jit.ScriptModule):
        return _sequential_embedder(model)
    last = None
    for module in model.modules():  # the last leaf with parameters: the classifier head
        if not list(module.children()) and any(True for _ in module.parameters(recurse=False)):
            last = module
    if last is None:
        return None

    def embed(batch):
        seen = []
        handle = last.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
        try:
            out = model(batch)
        finally:
            handle.remove()
        return out, (seen[-1] if seen else None)
    return embed


def _sequential_embedder(model):
    """TorchScript ignores Python hooks: run a Sequential's children by hand, the last one apart.

    Takes the model itself when it is a Sequential, else its one Sequential child (MLP(net=Sequential)).
    `predict` checks on the first batch that this reproduces the model's output.
    """
    seq = model
    while getattr(seq, "original_name", "") != "Sequential":
        children = [c for _, c in seq.named_children() if getattr(c, "original_name", "") == "Sequential"]
        if len(children) != 1:
            return None
        seq = children[0]
    layers = [c for _, c in seq.named_children()]
    while layers and getattr(layers[-1], "original_name", "") == "Sequential":  # nested heads
        layers = layers[:-1] + [c for _, c in layers[-1].named_children()]
    if len(layers) < 2:
        return None

    def embed(batch):
        h = batch
        for layer in layers[:-1]:
            h = layer(h)
        return layers[-1](h), h
    return embed


def _graph_embedder(gm):
    """For an exported program's module: interpret its graph, keeping the input of the last linear op."""
    import torch

    aten = torch.ops.aten
    targets = {aten.linear.default: 0, aten.addmm.default: 1, aten.mm.default: 0}
    last = None
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in targets:
            last = node
    if last is None:
        return None
    source = last.args[targets[last.target]]

    class _Keep(torch.fx.Interpreter):
        kept = None

        def run_node(self, n):
            value = super().run_node(n)
            if n is source:
                self.kept = value
            return value

    def embed(batch):
        interpreter = _Keep(gm)
        out = interpreter.run(batch)
        return out, interpreter.kept
    return embed


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def cross_val_probs(features: np.ndarray, labels: np.ndarray, *, num_classes: int, folds: int = 5,
                    seed: int = 0, on_fold: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Out-of-sample probabilities (n, num_classes) by `folds`-fold cross-validated logistic regression.

    features : (n, d) embeddings; labels : (n,) class indices in [0, num_classes).
    on_fold : called with (fold, folds) as each fold starts (for a progress line).
    """
    from sklearn.base import clone
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    features = np.asarray(features, np.float64).reshape(len(features), -1)
    present, counts = np.unique(labels, return_counts=True)
    # a class needs a member in every training fold; rare ones set the number of folds (at least 2)
    n_splits = int(max(2, min(folds, counts.min())))
    steps = [StandardScaler()]
    if features.shape[1] > _MAX_EMBEDDING_DIM:
        steps.append(PCA(n_components=min(_MAX_EMBEDDING_DIM // 2, len(features) - 1), random_state=seed))
    model = make_pipeline(*steps, LogisticRegression(max_iter=1000, C=1.0))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    # The products here are small (n, d) x (d, k): one BLAS thread is several times faster than
    # threads spinning against each other (and against torch's).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # a class smaller than the folds, or slow convergence: still usable
        # cross_val_predict, fold by fold so that progress can be told: every class is in every training
        # fold (n_splits <= the rarest class's count), so the columns are the present classes in order
        probs = np.zeros((len(features), len(present)))
        for fold, (train, test) in enumerate(cv.split(features, labels)):
            if on_fold is not None:
                on_fold(fold, n_splits)
            fitted = clone(model).fit(features[train], labels[train])
            probs[test] = fitted.predict_proba(features[test])
    out = np.full((len(features), num_classes), 1e-6)
    out[:, present] = np.clip(probs, 1e-6, None)
    return out / out.sum(1, keepdims=True)
