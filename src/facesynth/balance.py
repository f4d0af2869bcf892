"""Orders and assignments that keep every prefix of a plan balanced (pure numpy, no torch).

- :class:`~facesynth.cross_order.CrossOrder` (in its own module): the cells of a cross product, one round
  after another, every cell once a round and every axis within 1 at every prefix; pairs of axes are
  measured (:func:`~facesynth.cross_order.spreads`).
- :class:`FreeValues`: the values of a free attribute (one a cross or strata does not fix), sample by
  sample: each aligned block of ``len(values)`` samples uses every value once (within 1 at every
  prefix), each value chosen as the least used one with the sample's other labels and cell.
- :class:`Splits`: train/validation/test, sample by sample, by the largest deficit summed over the
  whole plan, each attribute value, each primary label x attribute value and each label cell; a small cross
  product takes a split searched once per shape instead (:mod:`facesynth.split_order`).

Everything depends only on earlier samples, so a plan's prefix never changes when it grows.
"""

from __future__ import annotations

import numpy as np

from .cross_order import CrossOrder, spreads

__all__ = ["CrossOrder", "FreeValues", "Splits", "spreads"]


class FreeValues:
    """The values of one free attribute, sample by sample (see the module docstring)."""

    def __init__(self, size: int):
        self.size = size
        self.used = np.zeros(size, np.int64)  # 1 << 40 for a value this block has used: never the cheapest
        self.left = size
        self.cost = np.zeros(size, np.int64)
        self.with_label: dict[tuple[str, int], np.ndarray] = {}  # (attribute, value) -> counts per free value
        self.with_cell: dict[tuple, np.ndarray] = {}

    def take(self, labels: dict[str, int], cell: tuple) -> int:
        rows = [self.with_label.setdefault(key, np.zeros(self.size, np.int64)) for key in labels.items()]
        per_cell = self.with_cell.setdefault(cell, np.zeros(self.size, np.int64))
        cost = self.cost
        np.multiply(per_cell, len(rows) + 1, out=cost)  # the cell first, then the labels one by one
        for row in rows:
            cost += row
        cost += self.used
        value = int(cost.argmin())
        for row in (*rows, per_cell):
            row[value] += 1
        self.used[value] = 1 << 40
        self.left -= 1
        if not self.left:
            self.used[:] = 0
            self.left = self.size
        return value


class Splits:
    """Splits sample by sample: a primary label's first rows take each split in turn, then the largest deficit
    summed over the plan, the sample's attribute values, its primary label with each of them, and its cell."""

    def __init__(self, ratios: dict[str, float], primary: str):
        self.names = list(ratios)
        self.ratios = [ratios[n] for n in self.names]
        self.primary = primary
        self.counts: dict[tuple, list[int]] = {}  # group -> rows per split, then the group's total

    def take(self, labels: dict[str, str]) -> str:
        label = labels[self.primary]
        groups = [(), (self.primary, label)]
        groups += [g for a, v in labels.items() if a != self.primary for g in ((a, v), (self.primary, label, a, v))]
        groups.append(tuple(labels.items()))  # the whole label cell
        width = len(self.names)
        rows = [self.counts.setdefault(g, [0] * (width + 1)) for g in groups]
        seen = rows[1][width]
        if seen < width:
            i = seen  # train, validation, test in turn for a label's first rows
        else:
            total = sum(row[width] for row in rows) + len(rows)
            deficit = [total * self.ratios[s] - sum(row[s] for row in rows) for s in range(width)]
            i = max(range(width), key=lambda s: (deficit[s], -s))
        for row in rows:
            row[i] += 1
            row[width] += 1
        return self.names[i]
