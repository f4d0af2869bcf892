"""The cross-product order and the exact prefix spread it is chosen by (pure numpy, fast)."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facesynth.plan.cross_order import CrossOrder, prefix_spread
from facesynth.plan.order_search import search_order


def _walk(codes, width):
    """The plain reference: after each row, max - min of the counts of ``0..width-1``."""
    counts, worst = Counter(), 0
    for c in codes:
        counts[c] += 1
        worst = max(worst, max(counts.values()) - (min(counts.values()) if len(counts) == width else 0))
    return worst


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12).flatmap(lambda w: st.tuples(st.just(w), st.lists(st.integers(0, w - 1), max_size=80))))
def test_prefix_spread_is_the_plain_walk(case):
    width, codes = case
    assert prefix_spread(np.array(codes, np.int64), width) == _walk(codes, width)


def test_prefix_spread_handles_a_width_far_above_the_rows():
    codes = np.arange(10_000) % 90_000  # 300 x 300 cells: never all seen, so the spread is the largest count
    assert prefix_spread(codes, 90_000) == 1
    assert prefix_spread(np.r_[codes, 5], 90_000) == 2


def _shapes(max_cells):
    sizes = st.lists(st.integers(1, 12), min_size=1, max_size=6)
    return sizes.filter(lambda s: math.prod(s) <= max_cells)


@settings(max_examples=40, deadline=None)
@given(sizes=_shapes(4_000))
def test_a_round_holds_every_cell_once_and_keeps_every_axis_within_one(sizes):
    """Random shapes (up to 6 axes of 1 to 12 values): the whole round is a permutation of the cells, every
    axis is within 1 of equal after every row (checked by the plain walk), the next round repeats it, and two
    axes or pairwise coprime sizes keep every pair within 1."""
    order = CrossOrder(sizes)
    rows = order.cells(np.arange(order.size))
    assert len({tuple(r) for r in rows.tolist()}) == order.size
    assert all(_walk(rows[:, j].tolist(), k) <= 1 for j, k in enumerate(sizes))
    again = min(order.size, 60)
    assert (order.cells(np.arange(order.size, order.size + again)) == rows[:again]).all()
    if len(sizes) == 2 or all(math.gcd(a, b) == 1 for a, b in itertools.combinations(sizes, 2)):
        assert all(_walk((rows[:, i] * sizes[j] + rows[:, j]).tolist(), sizes[i] * sizes[j]) <= 1
                   for i, j in itertools.combinations(range(len(sizes)), 2))


# The worst pair over every prefix of one round, per shape, as this order reaches it, and whether no order can
# do better (for the record: the order before this one, and the best possible where bench_plan.py --best
# settles it).
KNOWN = [
    ([7, 2, 5, 5, 3], 3, False),   # the held-out grid: 7 before
    ([4, 2, 7], 1, True),          # emotions: 2 before; searched
    ([5, 5, 5], 1, True),          # 4 before
    ([12, 12, 12], 2, False),      # 7 before
    ([6, 6, 6], 2, False),         # 3 before
    ([4, 6, 2], 1, True),          # 3 before; searched
    ([2, 2, 3, 3], 2, True),       # 3 before; a bound of 1 is impossible
    ([3, 3, 3, 3], 2, True),       # 3 before; searched, and 1 is impossible
    ([2, 2, 2, 2, 2], 3, True),    # 4 before; searched, and 2 is impossible
    ([2, 2, 2, 2, 2, 2], 3, True),  # 4 before; 2 is impossible
    ([2, 2, 2, 2, 2, 2, 2], 3, True),  # 4 before (the old search settled nothing below 4); 2 is impossible
    ([3, 3, 3, 3, 3], 2, True),    # 3 before (243 cells, above the old search's 128); 1 is impossible
    ([8, 4, 5], 2, False),         # 3 before (160 cells)
    ([11, 7, 6, 4], 2, False),     # 77 before
    ([12, 9, 11], 3, False),       # 12 before
]


@pytest.mark.parametrize("sizes,bound,best", KNOWN)
def test_the_pair_bound_of_known_shapes(sizes, bound, best):
    order = CrossOrder(sizes)
    rows = order.cells(np.arange(math.prod(sizes)))
    pairs = [_walk((rows[:, i] * sizes[j] + rows[:, j]).tolist(), sizes[i] * sizes[j])
             for i, j in itertools.combinations(range(len(sizes)), 2)]
    assert max(pairs) == bound and order.best_possible is best
    assert order.pair_bound in (None, bound)


def test_the_search_settles_what_it_claims():
    """2 x 2 x 3 x 3 cannot keep its pairs within 1, five binary axes not within 2; what it finds is a valid round."""
    assert search_order([2, 2, 3, 3], 1, 100_000) is False
    assert search_order([2, 2, 2, 2, 2], 2, 100_000) is False
    found = search_order([2, 2, 2, 2, 2], 3, 100_000)
    assert len({tuple(r) for r in found.tolist()}) == 32
    assert all(_walk(found[:, j].tolist(), 2) <= 1 for j in range(5))
    assert max(_walk((found[:, i] * 2 + found[:, j]).tolist(), 4) for i, j in itertools.combinations(range(5), 2)) == 3


def _reference_search(sizes, bound):
    """The plain exhaustive search the fast one must agree with: every order of the cells, row by row, with no
    symmetry cut, each axis within 1 and each pair within ``bound`` at every prefix. True when one exists."""
    cells = list(itertools.product(*[range(k) for k in sizes]))
    pairs = list(itertools.combinations(range(len(sizes)), 2))

    def extend(order, left):
        if not left:
            return True
        t = len(order)
        for cell in left:
            if any(cell[j] in {row[j] for row in order[k * (t // k):]} for j, k in enumerate(sizes)):
                continue  # this axis's aligned block already holds the value
            rows = order + [cell]
            if all(_spread_now(rows, i, j, sizes) <= bound for i, j in pairs) and extend(rows, left - {cell}):
                return True
        return False

    return extend([], set(cells))


def _spread_now(rows, i, j, sizes):
    counts = Counter(r[i] * sizes[j] + r[j] for r in rows)
    width = sizes[i] * sizes[j]
    return max(counts.values()) - (min(counts.values()) if len(counts) == width else 0)


@pytest.mark.parametrize("sizes,bound,exists", [
    ([2, 2, 2], 1, False), ([2, 2, 2], 2, True), ([2, 2, 3], 1, True), ([2, 3, 2], 1, True),
    ([2, 2, 2, 2], 1, False), ([2, 2, 2, 2], 2, True), ([3, 3, 2], 1, False), ([2, 4, 2], 1, True)])
def test_the_search_agrees_with_a_plain_exhaustive_search(sizes, bound, exists):
    """Taking each axis's values in order of first use cuts only relabellings: what the search settles, the plain
    search over every order of the cells settles the same way, and what it finds keeps the bound."""
    found = search_order(sizes, bound, 1_000_000)
    assert found is not None
    assert (found is not False) == _reference_search(sizes, bound) == exists
    if found is not False:
        assert len({tuple(r) for r in found.tolist()}) == math.prod(sizes)
        assert all(_walk(found[:, j].tolist(), k) <= 1 for j, k in enumerate(sizes))
        assert max(_walk((found[:, i] * sizes[j] + found[:, j]).tolist(), sizes[i] * sizes[j])
                   for i, j in itertools.combinations(range(len(sizes)), 2)) <= bound


@settings(max_examples=30, deadline=None)
@given(sizes=_shapes(300), bound=st.integers(1, 3), by_count=st.booleans())
def test_an_order_the_search_returns_keeps_what_it_was_asked(sizes, bound, by_count):
    found = search_order(sizes, bound, 20_000, by_count)
    if isinstance(found, np.ndarray):
        assert sorted(map(tuple, found.tolist())) == sorted(itertools.product(*[range(k) for k in sizes]))
        assert all(_walk(found[:, j].tolist(), k) <= 1 for j, k in enumerate(sizes))
        assert all(_walk((found[:, i] * sizes[j] + found[:, j]).tolist(), sizes[i] * sizes[j]) <= bound
                   for i, j in itertools.combinations(range(len(sizes)), 2))


def test_the_order_depends_only_on_the_shape():
    a, b = CrossOrder([7, 2, 5, 5, 3]), CrossOrder([7, 2, 5, 5, 3])
    assert a.rules == b.rules and (a.cells(np.arange(1050)) == b.cells(np.arange(1050))).all()
