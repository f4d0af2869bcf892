"""Train/validation/test for the rows of a small cross product, searched once per shape (pure Python).

The plan's order of cells repeats every round of ``prod(sizes)`` rows. After ``period`` rounds every split's
share of every value, of every primary label x value and of every cell is a whole number, so a split for the
rows of one period that ends on those shares repeats forever with the same bounds. :func:`search_splits` looks for
one, depth-first, that keeps in every split and at every prefix of its rows:

- each attribute value within ``value`` of the attribute's other values,
- each primary label x value within ``pair`` of the others,
- and the split's size within ``slack`` rows of its ratio (where the first rows allow),

while each primary label's first rows take every split in turn (so a small plan evaluates every label).
:func:`split_table` tries the bounds of :data:`LADDER` in turn, each with at most :data:`SEARCH_NODES`
nodes (:data:`TOTAL_NODES` in all, about 1 s), and keeps the first one found if it is no worse than
:class:`facesynth.balance.Splits`, which every other plan uses. With the order fixed, no split keeps every
value within 1 for ``emotions`` (``benchmarks/bench_splits.py --search``), so its 2 is the best possible.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .balance import Splits
from .cross_order import cross_order, prefix_spread

SEARCH_ROWS = 1_280  # a period of at most this many rows is searched,
SEARCH_NODES = 100_000  # with at most this many nodes for each rung of the ladder,
TOTAL_NODES = 300_000  # and this many in all
MAX_ROUNDS = 20  # the longest period tried, in rounds
LADDER = ((1, 1, 1), (1, 1, 2), (2, 2, 2), (2, 2, 3), (2, 3, 3), (3, 3, 3), (3, 4, 4))  # value, pair, slack


@dataclass(frozen=True)
class SplitTable:
    """The split index of each row of one period (``rounds`` rounds of the cells); ``bounds`` = (value, pair,
    slack) it keeps."""

    splits: tuple[int, ...]
    bounds: tuple[int, int, int]
    rounds: int

    def __getitem__(self, index: int) -> int:
        return self.splits[index % len(self.splits)]


def period(sizes: Sequence[int], ratios: Sequence[float]) -> int | None:
    """The fewest rounds after which every split's share of every value, primary (axis 0) x value and cell is
    whole, or None beyond MAX_ROUNDS."""
    size = math.prod(sizes)
    parts = [*sizes, *(sizes[0] * k for k in sizes[1:]), size]
    for rounds in range(1, MAX_ROUNDS + 1):
        shares = [r * rounds * size / k for r in ratios for k in (1, *parts)]
        if all(abs(x - round(x)) < 1e-9 for x in shares):
            return rounds
    return None


class _Counts:
    """Counts of the values ``0..width-1`` with their minimum, kept in O(1) as they rise and fall by one."""

    def __init__(self, width: int):
        self.count = [0] * width
        self.at = {0: width}  # how many values have each count
        self.min = 0

    def move(self, value: int, by: int) -> None:
        old = self.count[value]
        self.count[value] = new = old + by
        self.at[old] -= 1
        self.at[new] = self.at.get(new, 0) + 1
        if by > 0 and old == self.min and not self.at[old]:
            self.min = new
        elif by < 0 and new < self.min:
            self.min = new


def search_splits(cells: Sequence[Sequence[int]], sizes: Sequence[int], ratios: Sequence[float],
                  bounds: tuple[int, int, int], limit: int, first_rows: bool = True,
                  repeat: bool = True) -> list[int] | bool | None:
    """The split of each row of ``cells`` (one period; the primary is axis 0), False when none keeps
    ``bounds`` (the whole tree was searched) or None when ``limit`` nodes did not settle it.

    ``first_rows``: each primary label's first rows take the splits in turn. ``repeat``: every count ends on
    its share (each cell's too), so the period can repeat; without it, "False" rules out every split of
    these rows, repeating or not."""
    value, pair, slack = bounds
    n, width, m = len(cells), len(ratios), len(sizes)
    cell = [math.prod(sizes[j + 1:]) for j in range(m)]  # a cell's index from its values
    keys = [[(j, c[j]) for j in range(m)] + [(m + j - 1, c[0] * sizes[j] + c[j]) for j in range(1, m)]
            + [(2 * m - 1, sum(v * w for v, w in zip(c, cell)))] for c in cells]
    widths = [*sizes, *(sizes[0] * k for k in sizes[1:]), math.prod(sizes)]
    caps = [value] * m + [pair] * (m - 1) + [n]  # each cell: only its share of each split by the end
    shares = [[round(r * n / w) if repeat else n for w in widths] for r in ratios]
    counts = [[_Counts(w) for w in widths] for _ in ratios]
    size = [0] * width
    seen = [0] * sizes[0]
    forced: list[int | None] = []
    for c in cells:  # each primary label's first rows take each split in turn
        forced.append(seen[c[0]] if first_rows and seen[c[0]] < width else None)
        seen[c[0]] += 1

    def ok(t: int, s: int) -> bool:
        if forced[t] is None and (size[s] + 1 > ratios[s] * (t + 1) + slack or any(
                size[x] < ratios[x] * (t + 1) - slack for x in range(width) if x != s)):
            return False
        for a, v in keys[t]:
            c = counts[s][a]
            if c.count[v] + 1 - c.min > caps[a] or c.count[v] + 1 > shares[s][a]:
                return False
        return True

    def options(t: int) -> list[int]:  # the split furthest below its share is tried first (popped last)
        if forced[t] is not None:
            return [forced[t]] if ok(t, forced[t]) else []
        order = sorted(range(width), key=lambda s: (size[s] - ratios[s] * (t + 1), s))
        return [s for s in order if ok(t, s)][::-1]

    def step(t: int, s: int, by: int) -> None:
        size[s] += by
        for a, v in keys[t]:
            counts[s][a].move(v, by)

    chosen: list[int] = []
    stack = [options(0)]
    for _ in range(limit):
        if len(chosen) == n:
            return chosen
        if not stack[-1]:
            stack.pop()
            if not chosen:
                return False
            step(len(chosen) - 1, chosen.pop(), -1)
            continue
        chosen.append(stack[-1].pop())
        step(len(chosen) - 1, chosen[-1], 1)
        if len(chosen) < n:
            stack.append(options(len(chosen)))
    return chosen if len(chosen) == n else None


def split_spread(rows: np.ndarray, sizes: Sequence[int], primary: int | None = 0) -> tuple[int, int | None]:
    """The worst value spread, and primary x value spread (None without a primary), over every prefix of
    ``rows`` (one split's rows, value indices per axis)."""
    value = max((prefix_spread(rows[:, j], k) for j, k in enumerate(sizes)), default=0)
    pair = max((prefix_spread(rows[:, primary] * k + rows[:, j], sizes[primary] * k)
                for j, k in enumerate(sizes) if primary is not None and j != primary), default=None)
    return value, pair


def worst(cells: np.ndarray, sizes: Sequence[int], split_of: np.ndarray, width: int) -> tuple[int, int]:
    """The worst value spread and primary (axis 0) x value spread over every prefix of every split's rows."""
    found = [split_spread(cells[split_of == s], sizes) for s in range(width)]
    return max(v for v, _ in found), max((p for _, p in found if p is not None), default=0)


def deficit_splits(cells: np.ndarray, ratios: Sequence[float]) -> np.ndarray:
    """The split index :class:`facesynth.balance.Splits` gives each row of ``cells`` (the primary is axis 0)."""
    rule = Splits({str(s): r for s, r in enumerate(ratios)}, "0")
    return np.array([int(rule.take({str(j): str(v) for j, v in enumerate(c)})) for c in cells.tolist()], np.int64)


@functools.lru_cache(maxsize=64)
def split_table(sizes: tuple[int, ...], ratios: tuple[float, ...]) -> SplitTable | None:
    """The searched split of a cross product of ``sizes`` (primary first, no free attributes) in the plan's
    order, for the first rung of :data:`LADDER` found, or None: too large, no whole period, nothing found, or
    worse than the deficit rule (:class:`facesynth.balance.Splits`) over two periods."""
    rounds = period(sizes, ratios)
    if rounds is None or len(sizes) < 2 or rounds * math.prod(sizes) > SEARCH_ROWS:
        return None
    cells = cross_order(sizes).cells(np.arange(rounds * math.prod(sizes)))
    left = TOTAL_NODES  # a rung proved impossible costs little; one not settled costs its whole limit
    for bounds in LADDER:
        limit = min(SEARCH_NODES, left)
        if limit <= 0:
            return None
        found = search_splits(cells.tolist(), sizes, ratios, bounds, limit)
        if isinstance(found, list):
            break
        left -= limit if found is None else 0
    else:
        return None
    twice = np.concatenate([cells, cells])
    if worst(twice, sizes, np.array(found * 2), len(ratios)) > worst(twice, sizes, deficit_splits(twice, ratios),
                                                                      len(ratios)):
        return None
    return SplitTable(tuple(found), bounds, rounds)
