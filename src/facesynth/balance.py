"""Orders and assignments that keep every prefix of a plan balanced (pure numpy, no torch).

- :class:`CrossOrder`: the cells of a cross product, one round after another. Each round holds every
  cell once (cells within 1 at every prefix), and every aligned block of ``k`` consecutive rows holds
  each of an axis's ``k`` values once (every axis within 1 at every prefix). Both are by construction;
  pairs of axes are balanced greedily and measured (:func:`spreads`).
- :class:`FreeValues`: the values of a free attribute (one a cross or strata does not fix), sample by
  sample: each aligned block of ``len(values)`` samples uses every value once (within 1 at every
  prefix), each value chosen as the least used one with the sample's other labels and cell.
- :class:`Splits`: train/validation/test, sample by sample, by the largest deficit summed over the
  whole plan, each attribute value, each primary label x attribute value and each label cell.

Everything depends only on earlier samples, so a plan's prefix never changes when it grows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np


def axis_order(sizes: Sequence[int]) -> list[int]:
    """The order in which :class:`CrossOrder` lays out its axes.

    An axis whose size is coprime to the product of the axes before it needs no shift at all; one
    whose size divides that product gets a free shift per block (balanced greedily); any other gets
    a fixed shift that cycles slowly. The first permutation (in index order) with the fewest of the
    last kind, then the fewest unshifted axes after a shifted one, wins.
    """
    best, best_key = list(range(len(sizes))), None
    for perm in itertools.permutations(range(len(sizes))) if len(sizes) <= 7 else [range(len(sizes))]:
        before, slow, late, shifted = 1, 0, 0, False
        for i in perm:
            k = sizes[i]
            if math.gcd(before, k) == 1:
                late += shifted  # an unshifted axis after a shifted one meets its shifts out of step
            elif before % k == 0:
                shifted = True
            else:
                slow += 1
            before *= k
        if best_key is None or (slow, late) < best_key:
            best, best_key = list(perm), (slow, late)
            if best_key == (0, 0):
                break
    return best


class CrossOrder:
    """Cell ``t`` of a cross product of axes of the given sizes: ``order[t]`` is a tuple of value indices.

    Axis ``j`` (in :func:`axis_order`) follows the ``K`` cells of the axes before it, repeated ``k`` times:
    in repeat ``s``, row ``T`` gets value ``(h[T] + s) mod k`` when ``k`` divides ``K`` (``h`` a cyclic shift
    of ``0..k-1`` on each block of ``k`` rows, chosen greedily), else ``(t + (t mod Kk) // lcm(K, k))
    mod k``. Either way each earlier cell meets each value once per ``Kk`` rows, and each aligned block of
    ``k`` rows is a permutation.
    """

    def __init__(self, sizes: Sequence[int]):
        self.sizes = [int(k) for k in sizes]
        self.size = math.prod(self.sizes)
        self.axes = axis_order(self.sizes)
        self.shifts: list[np.ndarray | None] = []
        before = 1
        for j, axis in enumerate(self.axes):
            k = self.sizes[axis]
            self.shifts.append(self._shifts(j, before, k) if j and before % k == 0 else None)
            before *= k

    def __getitem__(self, index: int) -> tuple[int, ...]:
        return tuple(int(v) for v in self.cells(np.array([index % self.size]))[0])

    def cells(self, t: np.ndarray) -> np.ndarray:
        """Rows ``t`` (any shape ``(n,)``) as an ``(n, axes)`` array of value indices, in the axes' own order."""
        t = np.asarray(t, dtype=np.int64) % self.size
        out = np.empty((len(t), len(self.sizes)), np.int64)
        for j, col in enumerate(self._laid_out(t, len(self.axes)).T):
            out[:, self.axes[j]] = col
        return out

    def _laid_out(self, t: np.ndarray, upto: int) -> np.ndarray:
        cols, before = [], 1
        for j in range(upto):
            k = self.sizes[self.axes[j]]
            h = self.shifts[j]
            if h is not None:
                cols.append((h[t % before] + (t // before) % k) % k)
            else:
                cols.append((t + (t % (before * k)) // math.lcm(before, k)) % k)
            before *= k
        return np.stack(cols, 1) if cols else np.zeros((len(t), 0), np.int64)

    def _shifts(self, j: int, before: int, k: int) -> np.ndarray:
        """The first repeat's values: on each block of ``k`` rows a cyclic shift of ``0..k-1``, the one whose
        pairs with every earlier axis are least used so far."""
        earlier = self._laid_out(np.arange(before), j)  # (before, j)
        counts = [np.zeros((self.sizes[self.axes[i]], k), np.int64) for i in range(j)]
        r = np.arange(k)
        idx = (r[:, None] + r[None, :]) % k  # slot r, shift c -> value
        values = np.zeros(before, np.int64)
        for b in range(before // k):
            block = earlier[b * k:(b + 1) * k]
            cost = np.zeros(k, np.int64)
            for i in range(j):
                cost += counts[i][block[:, i]][r[:, None], idx].sum(axis=0)
            c = int(cost.argmin())
            values[b * k:(b + 1) * k] = idx[:, c]
            for i in range(j):
                np.add.at(counts[i], (block[:, i], idx[:, c]), 1)
        return values


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


def spreads(cells: np.ndarray, sizes: Sequence[int]) -> dict[tuple[int, ...], int]:
    """The largest max-minus-min count over every prefix, per axis ``(j,)`` and per pair of axes ``(i, j)``."""
    out: dict[tuple[int, ...], int] = {}
    groups = [(j,) for j in range(len(sizes))] + list(itertools.combinations(range(len(sizes)), 2))
    for g in groups:
        code = np.zeros(len(cells), np.int64)
        width = 1
        for a in g:
            code = code * sizes[a] + cells[:, a]
            width *= sizes[a]
        counts = np.zeros(width, np.int64)
        worst = 0
        for start in range(0, len(cells), 4096):  # cumulative counts a chunk at a time: flat memory
            chunk = np.zeros((min(4096, len(cells) - start), width), np.int64)
            chunk[np.arange(len(chunk)), code[start:start + len(chunk)]] = 1
            running = counts + chunk.cumsum(0)
            worst = max(worst, int((running.max(1) - running.min(1)).max()))
            counts = running[-1]
        out[g] = worst
    return out
