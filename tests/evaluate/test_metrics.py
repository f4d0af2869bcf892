"""The measures behind ``facesynth evaluate``, each against its definition computed another way."""

import itertools
import math

import numpy as np
import pytest
import scipy.linalg

from facesynth.evaluate import metrics as metrics


def unit_rows(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def vendi_by_definition(x):
    """exp(entropy) of the eigenvalues of K / n, with the n x n kernel (as the Vendi paper writes it)."""
    k = x.astype(np.float64) @ x.T.astype(np.float64)
    w = scipy.linalg.eigvalsh(k / len(x))
    w = w[w > 1e-12]
    return math.exp(-(w * np.log(w)).sum())


@pytest.mark.parametrize("n,d", [(5, 16), (40, 8), (16, 16)])  # fewer rows than dimensions, more, equal
def test_vendi_equals_its_definition(n, d):
    x = unit_rows(n, d)
    assert metrics.vendi(x) == pytest.approx(vendi_by_definition(x), rel=1e-6)


def test_vendi_counts_copies_once_and_orthogonal_rows_each():
    one = unit_rows(1, 32)
    assert metrics.vendi(np.repeat(one, 50, axis=0)) == pytest.approx(1.0)
    assert metrics.vendi(np.eye(7, 32, dtype=np.float32)) == pytest.approx(7.0)
    two = np.repeat(np.eye(2, 32, dtype=np.float32), 20, axis=0)  # two distinct images, 20 copies each
    assert metrics.vendi(two) == pytest.approx(2.0)


def test_mean_distance_and_closest_pair_equal_the_pairwise_matrix(monkeypatch):
    monkeypatch.setattr(metrics, "BLOCK", 7)  # several blocks, and a last block of a single row
    x = unit_rows(50, 12, seed=3)
    x[41] = x[9] * 0.999 + x[2] * 0.001  # a near-copy across blocks
    x[41] /= np.linalg.norm(x[41])
    pairs = list(itertools.combinations(range(len(x)), 2))
    sims = [float(x[i] @ x[j]) for i, j in pairs]
    assert metrics.mean_distance(x) == pytest.approx(1 - np.mean(sims), abs=1e-6)
    similarity, i, j = metrics.closest_pair(x)
    assert (i, j) == pairs[int(np.argmax(sims))] == (9, 41)
    assert similarity == pytest.approx(max(sims), abs=1e-6)
    assert metrics.closest_pair(x[:1]) is None and math.isnan(metrics.mean_distance(x[:1]))


def test_diversity_names_the_closest_rows():
    x = unit_rows(4, 8)
    x[3] = x[1]
    out = metrics.diversity(x, ["a", "b", "c", "d"])
    assert out["closest"] == {"similarity": pytest.approx(1.0, abs=1e-6), "ids": ["b", "d"]}
    assert out["rows"] == 4 and 1 < out["vendi"] < 4


def test_fid_equals_the_sqrtm_formula():
    a, b = unit_rows(300, 10, 1), unit_rows(200, 10, 2) + 0.05
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.cov(a.astype(np.float64), rowvar=False), np.cov(b.astype(np.float64), rowvar=False)
    expected = mu @ mu + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real)
    assert metrics.fid(a, b) == pytest.approx(expected, rel=1e-5)
    assert metrics.fid(a, a) == pytest.approx(0.0, abs=1e-8)


def test_kid_is_the_unbiased_polynomial_mmd():
    a, b = unit_rows(30, 6, 1).astype(np.float64), unit_rows(20, 6, 2).astype(np.float64)
    k = lambda x, y: (x @ y / 6 + 1) ** 3  # noqa: E731
    aa = sum(k(a[i], a[j]) for i in range(30) for j in range(30) if i != j) / (30 * 29)
    bb = sum(k(b[i], b[j]) for i in range(20) for j in range(20) if i != j) / (20 * 19)
    ab = sum(k(a[i], b[j]) for i in range(30) for j in range(20)) / (30 * 20)
    assert metrics.kid(a, b) == pytest.approx(aa + bb - 2 * ab, rel=1e-9)


def test_kid_on_large_sets_averages_fixed_subsets(monkeypatch):
    monkeypatch.setattr(metrics, "KID_SUBSET", 50)
    a, b = unit_rows(120, 6, 1), unit_rows(90, 6, 2)
    assert metrics.kid(a, b, seed=4) == metrics.kid(a, b, seed=4)  # the same figure every run
    same = metrics.kid(a[:60], a[60:], seed=0)
    assert abs(same) < metrics.kid(a, b + 0.5, seed=0)


def test_separability_is_out_of_fold_and_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = (np.eye(3, 16)[y] * 0.8 + rng.standard_normal((60, 16)) * 0.2).astype(np.float32)
    out = metrics.separability(x, y, ["a", "b", "c"], folds=5, seed=0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, tol=1e-3, random_state=0))
    pred = cross_val_predict(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    assert out["accuracy"] == pytest.approx((pred == y).mean())
    assert out["accuracy"] > 0.9 and out["chance"] == pytest.approx(1 / 3, abs=1e-6)
    assert np.trace(np.array(out["confusion"])) == (pred == y).sum() and np.sum(out["confusion"]) == 60
    noise = metrics.separability(rng.standard_normal((60, 16)).astype(np.float32), y, ["a", "b", "c"])
    assert noise["accuracy"] < 0.6


def test_separability_says_why_it_cannot_measure():
    x = unit_rows(6, 4)
    assert "single row" in metrics.separability(x, np.array([0, 0, 0, 0, 0, 1]), ["a", "b"])["skipped"]
    assert "fewer than two" in metrics.separability(x, np.zeros(6, int), ["a", "b"])["skipped"]
    assert metrics.separability(x, np.array([0, 0, 0, 1, 1, 1]), ["a", "b"], folds=5)["folds"] == 3
