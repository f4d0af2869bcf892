"""What ``facesynth evaluate`` measures, on unit-norm CLIP image embeddings (rows of a float32 matrix).

- **Vendi score** (Friedman and Dieng, 2023): ``exp`` of the Shannon entropy of the eigenvalues of
  ``K / n``, with ``K`` the cosine-similarity kernel; the effective number of distinct rows, 1 for
  copies of one image, ``n`` for ``n`` orthogonal ones. Computed from the ``d x d`` matrix
  ``X^T X / n`` when ``n > d`` (same non-zero eigenvalues), so a 30,000-row group costs one
  ``d x d`` eigendecomposition, not ``n x n``.
- **Mean pairwise cosine distance** from the column sums (no ``n x n`` matrix) and the **closest pair**
  from blocks of the upper triangle (memory bounded by the block).
- **Linear separability**: out-of-fold predictions of a scikit-learn logistic regression (stratified
  k-fold), so every row is predicted by a model that did not see it.
- **Transfer** (train on one set, test on another), and **FID / KID** between two sets of embeddings.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

BLOCK = 2048  # rows per block of the closest-pair search: BLOCK x n float32 at a time
KID_SUBSET = 1000  # rows per KID subset, as the KID paper and torchmetrics use
KID_SUBSETS = 100


def vendi(x: np.ndarray) -> float:
    """The Vendi score of the rows of ``x`` under the cosine kernel (rows are unit norm)."""
    n, d = x.shape
    if n == 0:
        return math.nan
    x = x.astype(np.float64)
    gram = (x @ x.T) if n <= d else (x.T @ x)
    w = np.linalg.eigvalsh(gram / n)
    w = w[w > 1e-12]
    w = w / w.sum()  # trace(K / n) is 1 for unit-norm rows; this absorbs float rounding
    return float(np.exp(-(w * np.log(w)).sum()))


def mean_distance(x: np.ndarray) -> float:
    """Mean cosine distance over all pairs of distinct rows: ``1 - (|sum x|^2 - sum |x|^2) / (n (n - 1))``."""
    n = len(x)
    if n < 2:
        return math.nan
    x = x.astype(np.float64)
    total = x.sum(axis=0)
    pairs = (total @ total - (x * x).sum()) / (n * (n - 1))
    return float(1.0 - pairs)


def closest_pair(x: np.ndarray) -> tuple[float, int, int] | None:
    """The highest cosine similarity between two different rows, and their indices (first such pair)."""
    n = len(x)
    if n < 2:
        return None
    best = (-math.inf, -1, -1)
    for start in range(0, n - 1, BLOCK):
        block = x[start:start + BLOCK]
        sims = block @ x[start:].T  # block rows against themselves and every later row
        b = len(block)
        sims[np.tril_indices(b, 0, sims.shape[1])] = -np.inf  # each pair once, no row with itself
        at = int(np.argmax(sims))
        i, j = divmod(at, sims.shape[1])
        if sims[i, j] > best[0]:
            best = (float(sims[i, j]), start + i, start + j)
    return best


def diversity(x: np.ndarray, ids: list[str]) -> dict[str, Any]:
    """Vendi score, mean pairwise distance and closest pair of one group of rows."""
    pair = closest_pair(x)
    return {
        "rows": len(x),
        "vendi": rounded(vendi(x)) if len(x) >= 2 else None,  # one row has nothing to be diverse from
        "mean_distance": rounded(mean_distance(x)),
        "closest": None if pair is None else {"similarity": rounded(pair[0]), "ids": [ids[pair[1]], ids[pair[2]]]},
    }


def _classifier(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, tol=1e-3, random_state=seed))


def scores(y_true: np.ndarray, y_pred: np.ndarray, values: list[str]) -> dict[str, Any]:
    """Accuracy, recall per value (None where the value has no true rows) and the confusion matrix
    (rows: true value, columns: predicted value)."""
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(values))))
    support = matrix.sum(axis=1)
    return {
        "rows": int(len(y_true)),
        "accuracy": rounded(float((y_true == y_pred).mean())) if len(y_true) else None,
        "recall": {v: (rounded(matrix[i, i] / support[i]) if support[i] else None) for i, v in enumerate(values)},
        "confusion": matrix.tolist(),
    }


def chance(y: np.ndarray) -> float:
    """The accuracy of always answering the most frequent value."""
    return rounded(float(np.bincount(y).max() / len(y)))


def separability(x: np.ndarray, y: np.ndarray, values: list[str], folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Out-of-fold accuracy of a linear classifier on the embeddings, with per-value recall and confusion.

    ``folds`` is lowered to the smallest value's row count; with fewer than two rows of some value, or
    fewer than two values present, the result says why instead of a figure.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    counts = np.bincount(y, minlength=len(values))
    present = counts[counts > 0]
    if len(present) < 2:
        return {"skipped": "fewer than two values present"}
    k = int(min(folds, present.min()))
    if k < 2:
        return {"skipped": "a value has a single row, so it cannot be held out"}
    pred = cross_val_predict(_classifier(seed), x, y, cv=StratifiedKFold(k, shuffle=True, random_state=seed))
    return {"folds": k, "chance": chance(y), **scores(y, pred, values)}


def transfer(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             values: list[str], seed: int = 0) -> dict[str, Any]:
    """Train on one set, test on the other: accuracy, recall per value and confusion on the test set."""
    if len(np.unique(y_train)) < 2:
        return {"skipped": "the training set has fewer than two values"}
    model = _classifier(seed).fit(x_train, y_train)
    return {"train_rows": int(len(y_train)), "chance": chance(y_test), **scores(y_test, model.predict(x_test), values)}


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two sets of rows (at least two rows each)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu = a.mean(axis=0) - b.mean(axis=0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(ca)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # ca^(1/2)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ cb @ root), 0, None)).sum()  # trace((ca cb)^(1/2))
    return float(mu @ mu + np.trace(ca) + np.trace(cb) - 2 * cross)


def _mmd(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the polynomial kernel ``(x.y / d + 1)^3`` (the KID kernel)."""
    d, m, n = a.shape[1], len(a), len(b)
    kaa, kbb, kab = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * kab.mean())


def kid(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    """Kernel Inception Distance: the unbiased MMD^2 above, averaged over random subsets of
    ``KID_SUBSET`` rows when a set is larger (fixed ``seed``: the same figure every run)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    size = min(KID_SUBSET, len(a), len(b))
    if len(a) <= KID_SUBSET and len(b) <= KID_SUBSET:
        return _mmd(a, b)
    rng = np.random.default_rng(seed)
    return float(np.mean([_mmd(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
                          for _ in range(KID_SUBSETS)]))


def rounded(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)
