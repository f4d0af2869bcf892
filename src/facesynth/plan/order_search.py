"""Depth-first search for one round of a cross product's cells with a small pair bound (pure Python).

A round lists every cell once. The search keeps, at every prefix, each axis within 1 of equal (every aligned run
of ``k`` rows holds each of the axis's ``k`` values once) and each pair of axes within ``bound``, and so settles
either way: an order it returns keeps the bound at every size (rounds repeat, and at the end of a round every
count is equal), and False means that no order of these cells can.

Two things make it fast enough to use on rounds of a few thousand cells:

- **values in order of first use**: renaming an axis's values maps a valid order to a valid order, so it is
  enough to search orders in which each axis's values first occur as 0, 1, 2, ... (the next row's value is at
  most one above the largest so far). This removes every relabelling of every axis from the tree, and is what
  lets it prove, for example, that no order of five binary axes keeps its pairs within 2 in a few hundred nodes;
- **one axis at a time**: a node fixes one axis of the next row, checking its pairs with the axes already fixed,
  so a dead value is cut before the rest of the row is enumerated.

:func:`search_order` tries the values of each axis smallest first (``by_count=False``) or least used with the
row's earlier axes first (``by_count=True``); neither finds every order the other does, so the plan tries both.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np


class _PairCounts:
    """The count of each value of one pair of axes, with the smallest count kept in O(1) as counts move by one."""

    __slots__ = ("count", "at", "low")

    def __init__(self, width: int, most: int):
        self.count = [0] * width
        self.at = [width] + [0] * (most + 1)  # how many values have each count
        self.low = 0

    def move(self, code: int, by: int) -> None:
        old = self.count[code]
        new = self.count[code] = old + by
        self.at[old] -= 1
        self.at[new] += 1
        if by > 0:
            if old == self.low and not self.at[old]:
                self.low = new
        elif new < self.low:
            self.low = new


def search_order(sizes: Sequence[int], bound: int, limit: int, by_count: bool = False) -> np.ndarray | bool | None:
    """A round of the cells (each once, every axis within 1 at every prefix) that keeps every pair of axes within
    ``bound`` at every prefix, as a ``(cells, axes)`` array; False when no order can; None when ``limit`` nodes
    (one node: one axis of one row tried, or undone) did not settle it. Deterministic."""
    return counted_search(sizes, bound, limit, by_count)[0]


def counted_search(sizes: Sequence[int], bound: int, limit: int,
                   by_count: bool = False) -> tuple[np.ndarray | bool | None, int]:
    """:func:`search_order`, and the number of nodes it took."""
    sizes = [int(k) for k in sizes]
    m, size = len(sizes), math.prod(sizes)
    counts: dict[tuple[int, int], _PairCounts] = {
        (i, j): _PairCounts(sizes[i] * sizes[j], size) for i, j in itertools.combinations(range(m), 2)}
    partners = [[(i, counts[i, j]) for i in range(j)] for j in range(m)]  # the pairs an axis closes in a row
    weight = [math.prod(sizes[j + 1:]) for j in range(m)]
    rows: list[list[int]] = []
    used = bytearray(size)
    row: list[int] = []  # the row being built, one axis at a time
    top = [[-1] * m]  # top[t][j]: the largest value of axis j before row t

    def candidates(t: int, j: int) -> list[int]:
        """The values axis ``j`` of row ``t`` may take, the one to try first last."""
        k = sizes[j]
        taken = {rows[r][j] for r in range(k * (t // k), t)}  # this aligned block's values so far
        out = []
        for v in range(min(k, top[t][j] + 2)):
            if v in taken:
                continue
            score = 0
            for i, pair in partners[j]:
                over = pair.count[row[i] * k + v] + 1 - pair.low
                if over > bound:
                    break
                score += over
            else:
                out.append((score if by_count else 0, v))
        out.sort(reverse=True)
        return [v for _, v in out]

    def place(j: int, v: int, by: int) -> None:
        for i, pair in partners[j]:
            pair.move(row[i] * sizes[j] + v, by)

    stack = [candidates(0, 0)]
    for nodes in range(1, limit + 1):
        if not stack[-1]:  # every value of this axis is spent: step back one axis
            stack.pop()
            if not stack:
                return False, nodes
            if not row:  # back into the last full row
                row[:] = rows.pop()
                top.pop()
                used[sum(v * w for v, w in zip(row, weight))] = 0
            v = row.pop()
            place(len(row), v, -1)
            continue
        j, v = len(row), stack[-1].pop()
        place(j, v, 1)
        row.append(v)
        if j < m - 1:
            stack.append(candidates(len(rows), j + 1))
            continue
        code = sum(x * w for x, w in zip(row, weight))
        if used[code]:  # this cell is already in the round
            row.pop()
            place(j, v, -1)
            continue
        used[code] = 1
        rows.append(row[:])
        top.append([max(a, b) for a, b in zip(top[-1], row)])
        row.clear()
        if len(rows) == size:
            return np.array(rows, np.int64).reshape(size, m), nodes
        stack.append(candidates(len(rows), 0))
    return None, limit
