"""Per-group figures of an audit, through fairlearn's ``MetricFrame`` and scikit-learn's metrics.

For the audited attribute: accuracy, each value's recall and the confusion matrix, overall and for every value of
every other attribute and every pair of them; the largest difference and ratio between groups; for a two-valued
attribute fairlearn's equalized-odds and demographic-parity differences. Each accuracy and difference comes with a
seeded bootstrap interval (rows resampled within each group), and a group with fewer rows than ``min_group`` is
marked too small: it is shown, never ranked or counted in a difference.
"""

from __future__ import annotations

import itertools
import math
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

OTHER = "other"


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), 6)


def _interval(samples: np.ndarray) -> list[float | None]:
    return [_finite(np.percentile(samples, 2.5)), _finite(np.percentile(samples, 97.5))]


def _boot(correct: np.ndarray, rng: np.random.Generator, rounds: int) -> np.ndarray:
    """Bootstrap means of a 0/1 vector (``rounds`` resamples of its own size), in blocks to bound memory."""
    out, n = np.empty(rounds), len(correct)
    step = max(1, 2_000_000 // max(n, 1))
    for start in range(0, rounds, step):
        k = min(step, rounds - start)
        out[start:start + k] = correct[rng.integers(0, n, (k, n))].mean(1)
    return out


def metrics(values: list[str]) -> dict[str, Any]:
    """The per-group metrics MetricFrame computes: accuracy, and each value's recall."""
    from sklearn.metrics import accuracy_score, recall_score

    out: dict[str, Any] = {"accuracy": accuracy_score}
    for v in values:
        out[f"recall:{v}"] = partial(recall_score, labels=[v], average="macro", zero_division=np.nan)
    return out


def confusion(true: pd.Series, predicted: pd.Series, values: list[str]) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(true, predicted, labels=[*values, OTHER])
    return matrix[:len(values)].tolist()  # rows: the true values; columns: the values, then other


def overall(frame: pd.DataFrame, attribute: str, values: list[str], rng, rounds: int) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, recall_score

    correct = (frame[attribute] == frame["predicted"]).to_numpy(dtype=np.float64)
    recall = recall_score(frame[attribute], frame["predicted"], labels=values, average=None, zero_division=np.nan)
    return {"rows": int(len(frame)), "accuracy": _finite(accuracy_score(frame[attribute], frame["predicted"])),
            "accuracy_ci": _interval(_boot(correct, rng, rounds)) if len(frame) else [None, None],
            "recall": {v: _finite(r) for v, r in zip(values, recall)},
            "confusion": confusion(frame[attribute], frame["predicted"], values)}


def grouped(frame: pd.DataFrame, attribute: str, values: list[str], by: list[str], min_group: int, rng,
            rounds: int) -> dict[str, Any]:
    """One grouping (one attribute, or a pair): every group's figures, and the gaps between the large ones."""
    from fairlearn.metrics import MetricFrame

    keys = frame[by].astype(str).agg(" / ".join, axis=1) if len(by) > 1 else frame[by[0]].astype(str)
    sizes = keys.value_counts()
    large = sorted(k for k, n in sizes.items() if n >= min_group)
    groups: dict[str, Any] = {}
    boots = {}
    for key in sorted(sizes.index):
        rows = frame[keys == key]
        correct = (rows[attribute] == rows["predicted"]).to_numpy(dtype=np.float64)
        boots[key] = _boot(correct, rng, rounds)
        groups[key] = {"rows": int(len(rows)), "small": key not in large, "accuracy_ci": _interval(boots[key]),
                       "confusion": confusion(rows[attribute], rows["predicted"], values)}
    out: dict[str, Any] = {"by": by, "groups": groups, "min_group": min_group, "difference": None, "ratio": None,
                           "difference_ci": [None, None], "ranked": []}
    kept = frame[keys.isin(large)]
    if len(large) >= 1 and len(kept):
        mf = MetricFrame(metrics=metrics(values), y_true=kept[attribute], y_pred=kept["predicted"],
                         sensitive_features=keys[keys.isin(large)].rename("group"))
        for key, row in mf.by_group.iterrows():
            groups[key]["accuracy"] = _finite(row["accuracy"])
            groups[key]["recall"] = {v: _finite(row[f"recall:{v}"]) for v in values}
        if len(large) >= 2:
            out["difference"] = _finite(mf.difference()["accuracy"])
            out["ratio"] = _finite(mf.ratio()["accuracy"])
            gaps = np.stack([boots[k] for k in large])
            out["difference_ci"] = _interval(gaps.max(0) - gaps.min(0))
            out["ranked"] = sorted(large, key=lambda k: (groups[k]["accuracy"] is None, groups[k]["accuracy"] or 0, k))
        if len(values) == 2 and len(large) >= 2:
            out.update(binary(kept, attribute, values, keys[keys.isin(large)]))
    for key in groups:
        if groups[key]["small"]:
            groups[key]["accuracy"] = _finite((frame[keys == key][attribute] == frame[keys == key]["predicted"]).mean())
            groups[key]["recall"] = None
    return out


def binary(frame: pd.DataFrame, attribute: str, values: list[str], keys: pd.Series) -> dict[str, Any]:
    """fairlearn's equalized-odds and demographic-parity differences, the second value as the positive one."""
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    y_true = (frame[attribute] == values[1]).astype(int)
    y_pred = (frame["predicted"] == values[1]).astype(int)
    return {"positive": values[1],
            "equalized_odds_difference": _finite(equalized_odds_difference(y_true, y_pred, sensitive_features=keys)),
            "demographic_parity_difference": _finite(demographic_parity_difference(y_true, y_pred,
                                                                                   sensitive_features=keys))}


def all_groups(frame: pd.DataFrame, attribute: str, values: list[str], others: list[str], min_group: int,
               seed: int, rounds: int) -> dict[str, Any]:
    """Overall figures, then every other attribute and every pair of them, each from its own seeded stream."""
    out = {"overall": overall(frame, attribute, values, np.random.default_rng([seed, 0]), rounds), "groups": {}}
    groupings = [[a] for a in others] + [list(pair) for pair in itertools.combinations(others, 2)]
    for k, by in enumerate(groupings, start=1):
        out["groups"][" x ".join(by)] = grouped(frame, attribute, values, by, min_group,
                                                np.random.default_rng([seed, k]), rounds)
    return out
