"""Orders and assignments that keep every prefix of a plan balanced (pure numpy, no torch).

- :class:`~facesynth.cross_order.CrossOrder` (in its own module): the cells of a cross product, one round
  after another, every cell once a round and every axis within 1 at every prefix; pairs of axes are
  measured (:func:`~facesynth.cross_order.spreads`).
- :class:`FreeValues`: the values of a free attribute (one a cross or strata does not fix), one aligned
  block of ``len(values)`` samples at a time: each block uses every value once (within 1 at every prefix),
  the block's values going to its samples at the least total cost, a sample's cost for a value being how
  often that value already went with its label cell and with each of its labels (earlier free attributes
  included, which keeps pairs of free attributes close).
- :class:`Splits`: train/validation/test, sample by sample, by the largest deficit summed over the
  whole plan, each attribute value, each primary label x attribute value and each label cell; a small cross
  product takes a split searched once per shape instead (:mod:`facesynth.split_order`).

Everything depends only on earlier samples and the block a sample is in (its cells are known ahead), so a
plan's prefix never changes when it grows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from .cross_order import CrossOrder, spreads

__all__ = ["CrossOrder", "FreeLabels", "FreeValues", "Splits", "min_cost_assignment", "spreads"]


ASSIGN_MAX = 32  # a free attribute of at most this many values has each block assigned at the least total cost


def min_cost_assignment(cost: Sequence[Sequence[int]]) -> list[int]:
    """The column of each row (rows <= columns, each column at most once) with the least total integer cost.

    The Hungarian method with potentials, O(rows^2 x columns), in exact integer arithmetic, so the same costs
    give the same assignment on every machine and with every library version."""
    n, m = len(cost), len(cost[0]) if cost else 0
    u, v = [0] * (n + 1), [0] * (m + 1)
    owner, way = [0] * (m + 1), [0] * (m + 1)  # owner[j]: the row (from 1) holding column j (from 1)
    for i in range(1, n + 1):
        owner[0], j0 = i, 0
        least, done = [None] * (m + 1), [False] * (m + 1)
        while owner[j0]:
            done[j0] = True
            i0, row, delta, j1 = owner[j0], cost[owner[j0] - 1], None, 0
            for j in range(1, m + 1):
                if not done[j]:
                    reduced = row[j - 1] - u[i0] - v[j]
                    if least[j] is None or reduced < least[j]:
                        least[j], way[j] = reduced, j0
                    if delta is None or least[j] < delta:
                        delta, j1 = least[j], j
            for j in range(m + 1):
                if done[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                elif least[j] is not None:
                    least[j] -= delta
            j0 = j1
        while j0:
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    out = [0] * n
    for j in range(1, m + 1):
        if owner[j]:
            out[owner[j] - 1] = j - 1
    return out


class FreeValues:
    """The values of one free attribute, one aligned block of ``size`` samples at a time (see the module
    docstring): every block uses each value once, so the attribute is within 1 of equal at every prefix. A
    sample's cost for a value is how often that value already went with its label cell (weighted by the number of
    its labels plus one) and with each of its labels (earlier free attributes included). A block of at most
    ``ASSIGN_MAX`` values is assigned at the least total cost; a larger one sample by sample, the cheapest unused
    value first."""

    def __init__(self, size: int):
        self.size = size
        self.with_label: dict[tuple[str, int], np.ndarray] = {}  # (attribute, value) -> counts per free value
        self.with_cell: dict[tuple, np.ndarray] = {}

    def assign(self, rows: Sequence[tuple[dict[str, int], tuple]]) -> list[int]:
        """The values of one block's samples, ``(labels, cell)`` each, in order (at most ``size`` of them)."""
        if self.size <= ASSIGN_MAX:
            chosen = min_cost_assignment([self._cost(labels, cell).tolist() for labels, cell in rows])
            for (labels, cell), value in zip(rows, chosen):
                self._count(labels, cell, value)
            return chosen
        out: list[int] = []
        used = np.zeros(self.size, np.int64)
        for labels, cell in rows:
            value = int((self._cost(labels, cell) + used).argmin())
            used[value] = 1 << 40  # never the cheapest again in this block
            self._count(labels, cell, value)
            out.append(value)
        return out

    def _cost(self, labels: dict[str, int], cell: tuple) -> np.ndarray:
        cost = self.with_cell.setdefault(cell, np.zeros(self.size, np.int64)) * (len(labels) + 1)
        for key in labels.items():
            cost += self.with_label.setdefault(key, np.zeros(self.size, np.int64))
        return cost

    def _count(self, labels: dict[str, int], cell: tuple, value: int) -> None:
        self.with_cell[cell][value] += 1
        for key in labels.items():
            self.with_label[key][value] += 1


class FreeLabels:
    """Every attribute's value index, row by row, for a stream of label cells (``{attribute: value index}``):
    the cell's own values, and each attribute the cell leaves free from that attribute's :class:`FreeValues`, one
    block of the rows it is free in at a time. A block's cells are read ahead from the stream as far as the block
    needs, so a row's values never depend on how many rows are asked for."""

    def __init__(self, sizes: dict[str, int], cells: Iterator[dict[str, int]]):
        self.order = list(sizes)  # a free attribute sees the cell and the free attributes before it as labels
        self.free = {name: FreeValues(size) for name, size in sizes.items()}
        self.source = cells
        self.rows: list[dict[str, int]] = []  # the cell's values, then free values as they are assigned
        self.cells: list[dict[str, int]] = []  # each row's cell
        self.free_rows: dict[str, list[int]] = {name: [] for name in sizes}  # the rows each attribute is free in
        self.done = dict.fromkeys(sizes, 0)  # how many of those rows have their value

    def __getitem__(self, index: int) -> dict[str, int]:
        if not self._read(index + 1):
            raise IndexError(index)
        row = self.rows[index]
        if len(row) < len(self.order):  # some attribute is free in this row
            for name in self.order:
                self._ensure(name, index)
        return {name: row[name] for name in self.order}

    def _read(self, upto: int) -> bool:
        """Read cells until ``upto`` rows are known; False where the stream ends first."""
        while len(self.rows) < upto:
            cell = next(self.source, None)
            if cell is None:
                return False
            for name in self.order:
                if name not in cell:
                    self.free_rows[name].append(len(self.rows))
            self.rows.append(dict(cell))
            self.cells.append(cell)
        return True

    def _ensure(self, name: str, row: int) -> None:
        """Assign ``name``'s blocks up to the one holding ``row`` (nothing where the cell fixes ``name``)."""
        free, mine = self.free[name], self.free_rows[name]
        before = self.order[:self.order.index(name)]
        while name not in self.rows[row]:
            start = self.done[name]
            while len(mine) < start + free.size and self._read(len(self.rows) + 1):
                pass
            block = mine[start:start + free.size]
            for t in block:
                for other in before:
                    self._ensure(other, t)
            items = [({**self.cells[t], **{a: self.rows[t][a] for a in before}}, tuple(sorted(self.cells[t].items())))
                     for t in block]
            for t, value in zip(block, free.assign(items)):
                self.rows[t][name] = value
            self.done[name] = start + len(block)


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
        values = groups[2:-1:2]  # the sample's value of each attribute besides the primary

        def lacking(s: int) -> int:  # how many of them split s holds no row of yet
            return sum(1 for g in values if self.counts[g][s] == 0)

        plan = rows[0]
        if rows[1][width] < width:  # a label's first rows take every split once, those lacking its values first
            unvisited = [s for s in range(width) if rows[1][s] == 0]
            i = max(unvisited, key=lambda s: (lacking(s), -s))
        else:  # a split that is due (below its share of the plan) and lacks one of the sample's values takes it
            due = {s: lacking(s) for s in range(width) if (plan[width] + 1) * self.ratios[s] - plan[s] > 0}
            if due and max(due.values()) > 0:
                i = max(due, key=lambda s: (due[s], plan[width] * self.ratios[s] - plan[s], -s))
            else:
                total = sum(row[width] for row in rows) + len(rows)
                deficit = [total * self.ratios[s] - sum(row[s] for row in rows) for s in range(width)]
                i = max(range(width), key=lambda s: (deficit[s], -s))
        for row in rows:
            row[i] += 1
            row[width] += 1
        return self.names[i]
