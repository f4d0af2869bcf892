"""What ``facesynth plan`` prints about a plan: counts per value and split, and how balanced every prefix, split
and attribute stays (measured on the plan's rows, never assumed)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from .cross_order import spreads
from .samples import Plan
from .split_order import split_spread


def balance_report(plan: Plan) -> dict[str, Any]:
    """How far from equal the plan's prefixes get: the largest max-minus-min count over every prefix, for each
    attribute whose values share equally (cross axes and free attributes) and each pair of them, and per split,
    over every prefix of that split's rows (so at every size of the plan), for each such attribute and for the
    primary label x each of them: ``splits[name] = {"value": worst, "pair": worst}``."""
    r = plan.recipe
    fixed = set() if r.balance.cross is not None else {a for s in r.strata for a, _ in s.labels}  # proportional
    varied = set(r.identities.vary) if r.identities is not None else set()  # every set holds each value once
    units = units_of(plan)
    equal = [a for a in r.attributes if a not in fixed | varied]
    sizes = [len(r.attributes[a].values) for a in equal]
    ids = {a: {v: i for i, v in enumerate(r.attributes[a].values)} for a in equal}
    cells = np.array([[ids[a][s.labels[a]] for a in equal] for s in units], np.int64).reshape(-1, len(equal))
    found = spreads(cells, sizes) if equal else {}
    worst_pair = max(((v, " x ".join(equal[i] for i in k)) for k, v in found.items() if len(k) == 2), default=None)
    names = list(r.splits)
    split_of = np.array([names.index(s.split) for s in units], np.int64)
    p = equal.index(r.primary) if r.primary in equal else None
    per_split: dict[str, dict[str, int | None]] = {}  # pair: None where no pair with the primary shares equally
    for k, name in enumerate(names):
        value, pair = split_spread(cells[split_of == k], sizes, p)
        per_split[name] = {"value": value, "pair": pair}
    order = plan.cross_order
    best = bool(order and order.best_possible and worst_pair and worst_pair[0] == order.pair_bound)
    return {"attributes": equal, "axis": max((v for k, v in found.items() if len(k) == 1), default=0),
            "pair": worst_pair, "best": best, "splits": per_split, "searched": plan.split_table is not None,
            "sets": sorted(varied, key=list(r.attributes).index) if varied else None,
            **share_report(plan, units, split_of)}


def units_of(plan: Plan) -> list:
    """What balance is measured over: every row, or for identity sets one row per identity (its reference),
    since a set's members share its split and its fixed attributes."""
    if plan.recipe.identities is None:
        return plan.samples
    return [s for s in plan.samples if s.member == 0]


def share_report(plan: Plan, units: list, split_of: np.ndarray) -> dict[str, Any]:
    """Over every attribute, proportional or equal: how far a value's rows in a split get from the split's share
    of the value's rows so far, over every prefix (``share``: rows, and where), and the values a split lacks
    although it holds as many rows as the attribute has values and the value has a row for every split
    (``lacking``: (split, attribute, value), at the plan's size)."""
    r = plan.recipe
    names, ratios = list(r.splits), np.array(list(r.splits.values()))
    worst, where, lacking = 0.0, None, []
    sizes = np.bincount(split_of, minlength=len(names))
    varied = set(r.identities.vary) if r.identities is not None else set()
    for a in (a for a in r.attributes if a not in varied):
        labels = np.array([s.labels[a] for s in units])
        values = [v for v in r.attributes[a].values if (labels == v).any()]
        for v in values:
            rows = split_of[labels == v]
            seen = np.arange(1, len(rows) + 1)
            for k in range(len(names)):
                gap = np.abs(np.cumsum(rows == k) - ratios[k] * seen).max()
                if gap > worst + 1e-9:
                    worst, where = float(gap), (names[k], a, v)
                if len(rows) >= len(names) and sizes[k] >= len(values) and not (rows == k).any():
                    lacking.append((names[k], a, v))
    return {"share": (round(worst, 2), where), "lacking": lacking}


def format_balance(report: dict[str, Any]) -> str:
    """Two lines for ``facesynth plan``: the balance of equal attributes and pairs, then every attribute's split
    figures."""
    return _format_equal(report) + "\n" + _format_shares(report)


def _format_shares(report: dict[str, Any]) -> str:
    gap, (split, attr, value) = report["share"][0], report["share"][1] or ("-", "-", "-")
    unit = "identities" if report.get("sets") else "rows"
    line = (f"splits over every prefix: each value of every attribute within {gap:g} {unit} of its split's share "
            f"(worst: {attr} {value} in {split})")
    if report["lacking"]:
        shown = "; ".join(f"{s} lacks {a} {v}" for s, a, v in report["lacking"][:4])
        return line + f"; a split with room for every value lacks one: {shown}" + (
            f" (and {len(report['lacking']) - 4} more)" if len(report["lacking"]) > 4 else "")
    return line + "; every split with a row per value holds every value"


def _format_equal(report: dict[str, Any]) -> str:
    sets = report.get("sets")
    if sets:
        return (f"identity sets: every set holds each value of {', '.join(sets)} once, in one split; over the "
                "identities, " + _format_plain(report))
    return _format_plain(report)


def _format_plain(report: dict[str, Any]) -> str:
    if not report["attributes"]:
        return "balance: every stratum exact; prefixes proportional to the strata counts"
    line = f"balance over every prefix: each of {', '.join(report['attributes'])} within {report['axis']} of equal"
    if report["pair"] is not None:
        best = ", the best any order of these cells can keep" if report.get("best") else ""
        line += f"; pairs within {report['pair'][0]} (worst: {report['pair'][1]}{best})"
    pairs = any(v["pair"] is not None for v in report["splits"].values())
    return line + "; within each split over every prefix, each value" + (" / primary x value" if pairs else "") + \
        " within " + ", ".join(f"{v['value']}" + (f" / {v['pair']}" if pairs else "") + f" ({k})"
                               for k, v in report["splits"].items()) + \
        (" (splits searched for this shape)" if report.get("searched") else "")


def format_counts(plan: Plan, by: str | None = "gender") -> str:
    """A text table per attribute: value, total, one column per split and per value of ``by``."""
    counts = plan.counts()
    splits = list(plan.recipe.splits)
    by_values = list(plan.recipe.attributes[by].values) if by else []
    by_counts: dict[str, dict[str, Counter]] = {a: {} for a in plan.recipe.attributes}
    if by:
        for s in plan.samples:
            for a, v in s.labels.items():
                by_counts[a].setdefault(v, Counter())[s.labels[by]] += 1
    lines = [f"recipe {plan.recipe.name}: {plan.num_samples} samples, seed {plan.seed}, "
             f"{plan.num_candidates} candidates each; splits "
             + ", ".join(f"{k} {v}" for k, v in plan.split_sizes().items())]
    for attr, values in counts.items():
        extra = by_values if by and attr != by else []
        header = [attr, "total", *splits, *extra]
        rows = [[v, c["_total"], *(c[s] for s in splits), *(by_counts[attr].get(v, Counter())[b] for b in extra)]
                for v, c in values.items()]
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        lines.append("")
        for row in [header, *rows]:
            lines.append("  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)
                                   for i, (x, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)
