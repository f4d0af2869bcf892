"""Counterfactual figures on identity sets: inside a set only the varied attributes change, so two members that
share the audited value and differ in one varied attribute should get the same prediction.

Per varied attribute: the flip rate (how often the prediction differs between such a pair) and the mean change
in the probability of the true value, overall and per value of each fixed attribute, with seeded bootstrap
intervals (pairs resampled). Where the audited attribute is itself varied, per-identity accuracy: the share of
identities whose every member is predicted right.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .figures import _boot, _finite, _interval


def pairs(frame: pd.DataFrame, attribute: str, varied: list[str]) -> dict[str, pd.DataFrame]:
    """For each varied attribute other than the audited one, the pairs of members of a set that differ in it
    alone: a frame of (identity, flipped, change) rows and the set's fixed attributes."""
    out: dict[str, list[dict[str, Any]]] = {a: [] for a in varied if a != attribute}
    for identity, members in frame.groupby("identity", sort=True):
        rows = members.to_dict("records")
        for i, a in enumerate(rows):
            for b in rows[i + 1:]:
                differ = [v for v in varied if a[v] != b[v]]
                if len(differ) != 1 or differ[0] == attribute or a[attribute] != b[attribute]:
                    continue
                true = a[attribute]
                out[differ[0]].append({"identity": identity, "flipped": float(a["predicted"] != b["predicted"]),
                                       "change": abs(float(a[f"p_{true}"]) - float(b[f"p_{true}"])),
                                       **{k: a[k] for k in a if k not in ("identity",)}})
    return {k: pd.DataFrame(v) for k, v in out.items()}


def _rates(rows: pd.DataFrame, rng, rounds: int) -> dict[str, Any]:
    flipped, change = rows["flipped"].to_numpy(), rows["change"].to_numpy()
    return {"pairs": int(len(rows)), "flip_rate": _finite(flipped.mean()), "flip_ci": _interval(_boot(flipped, rng,
                                                                                                      rounds)),
            "mean_change": _finite(change.mean()), "change_ci": _interval(_boot(change, rng, rounds))}


def counterfactual(frame: pd.DataFrame, attribute: str, varied: list[str], fixed: list[str], min_group: int,
                   seed: int, rounds: int) -> dict[str, Any]:
    """The counterfactual figures (see the module docstring)."""
    rng = np.random.default_rng([seed, 1000])
    out: dict[str, Any] = {"varied": varied, "attributes": {}}
    for name, rows in pairs(frame, attribute, varied).items():
        if rows.empty:
            continue
        entry = {**_rates(rows, rng, rounds), "by_group": {}}
        for attr in fixed:
            if attr == attribute:
                continue
            entry["by_group"][attr] = {
                str(value): {**_rates(group, rng, rounds), "small": len(group) < min_group}
                for value, group in sorted(rows.groupby(attr), key=lambda kv: str(kv[0]))}
        out["attributes"][name] = entry
    if attribute in varied:
        right = frame.assign(correct=frame[attribute] == frame["predicted"]).groupby("identity")["correct"].all()
        hits = right.to_numpy(dtype=np.float64)
        out["per_identity"] = {"identities": int(len(hits)), "all_right": int(hits.sum()),
                               "rate": _finite(hits.mean()), "ci": _interval(_boot(hits, rng, rounds))}
    return out
