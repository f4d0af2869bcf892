"""The order of a cross product's cells, and how far apart a prefix's counts get (pure numpy, no torch).

:class:`CrossOrder` lays out one axis after another. Row ``t`` of the round gets, on axis ``j`` of size
``k`` laid out after axes whose sizes multiply to ``B``, the value ``(t + shift) mod k``, where the shift is
constant on each aligned block of ``k`` rows. So, by construction:

- every aligned block of ``k`` rows holds each of the axis's values once: every axis is within 1 of equal at
  every prefix;
- over ``B * k`` rows each cell of the earlier axes meets each value once: each round of ``prod(sizes)``
  rows holds every cell once, so cells are within 1 of each other at every prefix.

An axis whose size is coprime to ``B`` needs no shift (``t mod k``; with each earlier axis that is also
unshifted, every pair is within 1 by the Chinese remainder theorem). Any other axis takes the shift, out of
a family of structured ones (``sum m * (block // p)``, plain or per segment of ``lcm(B, k)`` rows), that keeps
its pairs with the earlier axes closest to equal over the first rows, measured exactly with
:func:`prefix_spread`. A round of at most ``SEARCH_CELLS`` cells is then searched depth-first
(:func:`facesynth.order_search.search_order`) for an order with a smaller pair bound, under the same two
guarantees: bounds from 1 up are ruled out while the search settles them, then orders are looked for from the
construction's bound down. Where every bound below the one kept is ruled out, the order is the best possible
(``best_possible``). Nothing else guarantees a pair bound; ``facesynth.plan.balance_report`` measures the one a
plan reaches, and ``benchmarks/bench_plan.py --shapes`` over random shapes.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np

from .order_search import counted_search

SCREEN_ROWS = 1_024  # every candidate shift is measured on this many rows,
FINAL_ROWS = 16_384  # the best few on this many
KEEP = 8
PERIODS = 10  # single shifts: the first divisors of B as periods (in blocks), every multiplier
PAIRED_PERIODS = 6  # two shifts: the first divisors, multipliers +-1 and +-2

SEARCH_CELLS = 2_048  # a round this small is also searched for a better order (facesynth.order_search):
PROOF_NODES = 20_000  # first each bound from 1 up, with this many nodes, until one is not ruled out;
FIND_NODES = 300_000  # then from the construction's bound down, this many for each way of ordering values,
TOTAL_NODES = 1_000_000  # and at most this many in all (about a second)

Rule = tuple[str, tuple[int, ...], tuple[int, ...]]  # ("seg" or "lin", periods in blocks, multipliers)


def prefix_spread(code: np.ndarray, width: int) -> int:
    """The largest max-minus-min count of the values ``0..width-1`` over every prefix of ``code``, exactly.

    ``O(n log n)`` whatever ``width``: the largest count reaches ``m`` at the earliest ``m``-th occurrence
    of any value, the smallest reaches ``m`` once every value has occurred ``m`` times, and the spread only
    grows when the largest count does.
    """
    code = np.asarray(code, np.int64)
    n = len(code)
    if n == 0:
        return 0
    rows = np.argsort(code, kind="stable")  # grouped by value, in row order within a value
    ordered = code[rows]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))  # which occurrence of its value, from 0
    depth = int(rank.max()) + 1
    first = np.full(depth, n, np.int64)
    np.minimum.at(first, rank, rows)
    last = np.full(depth, -1, np.int64)
    np.maximum.at(last, rank, rows)
    last[np.bincount(rank, minlength=depth) < width] = n  # some value never occurs that often
    lows = np.searchsorted(np.sort(last), first, side="right")  # the smallest count when the largest rises
    return int((np.arange(1, depth + 1) - lows).max())


def spreads(cells: np.ndarray, sizes: Sequence[int]) -> dict[tuple[int, ...], int]:
    """The largest max-minus-min count over every prefix, per axis ``(j,)`` and per pair of axes ``(i, j)``."""
    cells = np.asarray(cells, np.int64).reshape(-1, len(sizes))
    out = {(j,): prefix_spread(cells[:, j], sizes[j]) for j in range(len(sizes))}
    for i, j in itertools.combinations(range(len(sizes)), 2):
        out[(i, j)] = prefix_spread(cells[:, i] * sizes[j] + cells[:, j], sizes[i] * sizes[j])
    return out


def axis_order(sizes: Sequence[int]) -> list[int]:
    """The order in which :class:`CrossOrder` lays out its axes: those coprime to every other axis first (they
    need no shift, and no shift meets them out of step), then the first permutation of the rest (in index
    order) with the fewest axes whose size shares a factor with the earlier product without dividing it, then
    the fewest unshifted axes after a shifted one."""
    m = len(sizes)
    free = [i for i in range(m) if all(math.gcd(sizes[i], sizes[j]) == 1 for j in range(m) if j != i)]
    rest = [i for i in range(m) if i not in free]
    best, best_key = rest, None
    for perm in itertools.permutations(rest) if len(rest) <= 7 else [rest]:
        before, slow, late, shifted = 1, 0, 0, False
        for i in perm:
            k = sizes[i]
            if math.gcd(before, k) == 1:
                late += shifted
            elif before % k == 0:
                shifted = True
            else:
                slow += 1
            before *= k
        if best_key is None or (slow, late) < best_key:
            best, best_key = list(perm), (slow, late)
            if best_key == (0, 0):
                break
    return free + best


@functools.lru_cache(maxsize=64)
def cross_order(sizes: tuple[int, ...]) -> CrossOrder:
    """The :class:`CrossOrder` of a shape, built once per process (its choices and search depend on the shape
    alone, and nothing changes it after it is built)."""
    return CrossOrder(sizes)


class CrossOrder:
    """Cell ``t`` of a cross product of axes of the given sizes: ``order[t]`` is a tuple of value indices."""

    def __init__(self, sizes: Sequence[int]):
        self.sizes = [int(k) for k in sizes]
        self.size = math.prod(self.sizes)
        self.axes = axis_order(self.sizes)
        self.rules: list[Rule | None] = []
        before = 1
        for j, axis in enumerate(self.axes):
            k = self.sizes[axis]
            self.rules.append(self._choose(j, before, k) if math.gcd(before, k) > 1 else None)
            before *= k
        self.table: np.ndarray | None = None  # one round, searched (small rounds only)
        self.pair_bound: int | None = None  # the worst pair over every prefix, where measured here
        self.best_possible = False
        if len(self.sizes) > 1 and self.size <= SEARCH_CELLS:
            self._search()

    def _search(self) -> None:
        """Look for a round with a smaller pair bound than the construction's: rule out bounds from 1 up while the
        search settles them, then look for orders from the construction's bound down; the order is the best
        possible when every bound below the one kept is ruled out."""
        found = spreads(self.cells(np.arange(self.size)), self.sizes)
        self.pair_bound = max(v for key, v in found.items() if len(key) == 2)
        lower, left = 0, TOTAL_NODES  # every bound up to lower is ruled out

        def attempt(bound: int, nodes: int, by_count: bool) -> np.ndarray | bool | None:
            nonlocal left
            nodes = min(nodes, left)
            if nodes <= 0:
                return None
            result, spent = counted_search(self.sizes, bound, nodes, by_count)
            left -= spent
            return result

        for bound in range(1, self.pair_bound):
            result = attempt(bound, PROOF_NODES, False)
            if result is False:
                lower = bound
                continue
            if isinstance(result, np.ndarray):
                self.table, self.pair_bound = result, bound
            break
        bound = self.pair_bound - 1
        while bound > lower:
            results = [attempt(bound, FIND_NODES, by_count) for by_count in (False, True)]
            table = next((r for r in results if isinstance(r, np.ndarray)), None)
            if table is None:
                lower = bound if False in results else lower
                break
            self.table, self.pair_bound = table, bound
            bound -= 1
        self.best_possible = self.pair_bound <= lower + 1

    def __getitem__(self, index: int) -> tuple[int, ...]:
        return tuple(int(v) for v in self.cells(np.array([index % self.size]))[0])

    def cells(self, t: np.ndarray) -> np.ndarray:
        """Rows ``t`` (any shape ``(n,)``) as an ``(n, axes)`` array of value indices, in the axes' own order."""
        t = np.asarray(t, dtype=np.int64) % self.size
        if self.table is not None:
            return self.table[t]
        out = np.empty((len(t), len(self.sizes)), np.int64)
        for j, col in enumerate(self._laid_out(t, len(self.axes))):
            out[:, self.axes[j]] = col
        return out

    def _laid_out(self, t: np.ndarray, upto: int, last: Rule | None = None) -> list[np.ndarray]:
        cols, before = [], 1
        for j in range(upto):
            rule = last if j == upto - 1 and last is not None else self.rules[j]
            cols.append(self._column(t, before, self.sizes[self.axes[j]], rule))
            before *= self.sizes[self.axes[j]]
        return cols

    @staticmethod
    def _column(t: np.ndarray, before: int, k: int, rule: Rule | None) -> np.ndarray:
        """The values of an axis of size ``k`` laid out after a product ``before``, at rows ``t``."""
        if rule is None:
            return t % k
        kind, periods, mults = rule
        span = before * k
        segment = span // math.gcd(before, k)  # lcm(before, k)
        block = (t % (segment if kind == "seg" else span)) // k
        shift = np.zeros(len(t), np.int64)
        for p, m in zip(periods, mults):
            shift += m * (block // p)
        if kind == "seg":  # a shift in Z_g per segment: each earlier cell meets every value, whatever the periods
            shift = ((t % span) // segment + shift) % math.gcd(before, k)
        return (t + shift) % k

    def _valid(self, before: int, k: int, rule: Rule) -> bool:
        """Whether each earlier cell meets each value once over ``before * k`` rows."""
        t = np.arange(before * k)
        return bool(np.bincount((t % before) * k + self._column(t, before, k, rule), minlength=before * k).min() == 1)

    def _choose(self, j: int, before: int, k: int) -> Rule:
        if j == 1:  # one earlier axis: the plain segment shift keeps the pair within 1
            return ("seg", (), ())
        sizes = [self.sizes[a] for a in self.axes[:j]]

        def score(rule: Rule, rows: int, worst: int | None = None) -> tuple[int, int]:
            t = np.arange(min(rows, before * k))
            *earlier, col = self._laid_out(t, j + 1, last=rule)
            found = []
            for e, size in zip(earlier, sizes):
                found.append(prefix_spread(e * k + col, size * k))
                if worst is not None and found[-1] > worst:
                    break  # already worse than the ones kept
            return max(found), sum(found)

        candidates = self._candidates(before, k)
        screened: list[tuple[tuple[int, int], int]] = []
        for i, rule in enumerate(candidates):
            cut = screened[KEEP - 1][0][0] if len(screened) >= KEEP else None
            screened.append((score(rule, SCREEN_ROWS, cut), i))
            screened.sort()
            del screened[4 * KEEP:]
        kept = [candidates[i] for _, i in screened if candidates[i][0] == "seg" or self._valid(before, k, candidates[i])]
        return min(kept[:KEEP] or [candidates[0]], key=lambda rule: score(rule, FINAL_ROWS))

    @staticmethod
    def _candidates(before: int, k: int) -> list[Rule]:
        divisors = [d for d in range(1, before + 1) if before % d == 0]
        out: list[Rule] = [("seg", (), ())]
        for p in divisors[:PERIODS]:
            for m in range(1, k):
                out += [("seg", (p,), (m,)), ("lin", (p,), (m,))]
        small = sorted({1, 2 % k, (k - 2) % k, k - 1} - {0})
        for ps in itertools.combinations(divisors[:PAIRED_PERIODS], 2):
            for ms in itertools.product(small, repeat=2):
                out += [("seg", ps, ms), ("lin", ps, ms)]
        return out
