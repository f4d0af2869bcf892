import itertools
from collections import Counter

import numpy as np
import pytest

from facesynth.plan.cross_order import cross_order
from facesynth.plan import Plan, balance_report, format_balance
from facesynth.recipe import load_recipe, parse_recipe
from facesynth.plan.split_order import period, search_splits, split_table, worst


def _keeps(cells, sizes, ratios, bounds, chosen, first_rows=True, repeat=True):
    """The plain reference: walk the rows and check every demand ``search_splits`` makes, from its docstring."""
    value, pair, slack = bounds
    n, width = len(cells), len(ratios)
    counts = [Counter() for _ in ratios]
    size, seen = [0] * width, Counter()
    for t, (c, s) in enumerate(zip(cells, chosen)):
        first = first_rows and seen[c[0]] < width
        if first and s != seen[c[0]]:
            return False
        seen[c[0]] += 1
        size[s] += 1
        if not first and any(abs(size[x] - ratios[x] * (t + 1)) > slack for x in range(width)):
            return False
        counts[s].update([("v", j, c[j]) for j in range(len(sizes))]
                         + [("p", j, c[0], c[j]) for j in range(1, len(sizes))] + [("c", tuple(c))])
        for j, k in enumerate(sizes):
            if max(counts[s][("v", j, v)] for v in range(k)) - min(counts[s][("v", j, v)] for v in range(k)) > value:
                return False
            every = [counts[s][("p", j, e, v)] for e in range(sizes[0]) for v in range(k)]
            if j and max(every) - min(every) > pair:
                return False
    if repeat:  # every value, primary x value and cell ends on its share of each split
        every = [("v", j, v) for j, k in enumerate(sizes) for v in range(k)]
        every += [("p", j, e, v) for j, k in enumerate(sizes) if j for e in range(sizes[0]) for v in range(k)]
        cells_of = list(itertools.product(*[range(k) for k in sizes]))
        share = {"v": lambda key: sizes[key[1]], "p": lambda key: sizes[0] * sizes[key[1]],
                 "c": lambda key: len(cells_of)}
        for s, r in enumerate(ratios):
            for key in every + [("c", c) for c in cells_of]:
                if counts[s][key] * share[key[0]](key) != round(r * n):
                    return False
    return True


@pytest.mark.parametrize("sizes", [(2, 2), (2, 3), (3, 2)])
@pytest.mark.parametrize("bounds", [(1, 1, 1), (1, 1, 2), (1, 2, 1), (2, 2, 1), (2, 2, 2)])
@pytest.mark.parametrize("first_rows", [True, False])
def test_search_splits_finds_exactly_what_brute_force_finds(sizes, bounds, first_rows):
    """Two splits, one period of the plan's order (2 rounds): every one of the 2^n assignments is tried."""
    ratios = (0.5, 0.5)
    rounds = period(sizes, ratios)
    cells = cross_order(sizes).cells(np.arange(rounds * int(np.prod(sizes)))).tolist()
    possible = [list(a) for a in itertools.product(range(2), repeat=len(cells))
                if _keeps(cells, sizes, ratios, bounds, a, first_rows)]
    found = search_splits(cells, sizes, ratios, bounds, 100_000, first_rows=first_rows)
    if possible:
        assert isinstance(found, list) and _keeps(cells, sizes, ratios, bounds, found, first_rows)
    else:
        assert found is False


def test_period_is_the_fewest_rounds_whose_shares_are_whole():
    assert period((4, 2, 7), (0.8, 0.1, 0.1)) == 10  # 0.1 of a cell's rows is whole after 10 rounds
    assert period((2, 2), (0.5, 0.5)) == 2
    assert period((2, 2), (0.5, 0.25, 0.25)) == 4
    assert period((3, 3), (0.77, 0.13, 0.1)) is None  # 100 rounds: longer than any period searched


def test_a_search_that_runs_out_of_nodes_says_so():
    sizes = (4, 2, 7)
    cells = cross_order(sizes).cells(np.arange(560)).tolist()
    assert search_splits(cells, sizes, (0.8, 0.1, 0.1), (2, 2, 3), 10) is None


def test_small_cross_products_get_a_table_no_worse_than_the_deficit_rule_and_large_or_free_ones_keep_the_rule():
    ratios = (0.8, 0.1, 0.1)
    emotions = split_table((4, 2, 7), ratios)
    assert emotions is not None and emotions.bounds == (2, 2, 3) and len(emotions.splits) == 560
    cells = cross_order((4, 2, 7)).cells(np.arange(1120))
    assert worst(cells, (4, 2, 7), np.array([emotions[t] for t in range(1120)]), 3) == (2, 2)
    assert split_table((7, 2, 5, 5, 3), ratios) is None  # 10,500 rows a period: too long to search
    plan = Plan(load_recipe("agfd"), 1000)
    plan.samples
    assert plan.split_table is None  # strata
    free = parse_recipe("name: free\nprimary: x\nattributes:\n  x:\n    values: {a: , b: }\n"
                        "  y:\n    values: {c: , d: }\ntemplate: '{x} {y}'\nbalance: {cross: [x]}\n")
    plan = Plan(free, 100)
    plan.samples
    assert plan.split_table is None  # a free attribute: its values are not in the searched rows


def test_the_plan_takes_each_rows_split_from_the_table_and_stays_put_as_it_grows():
    recipe = load_recipe("emotions")
    big = Plan(recipe, 1200)
    table = split_table((4, 2, 7), tuple(recipe.splits.values()))
    names = list(recipe.splits)
    assert [s.split for s in big.samples] == [names[table[i]] for i in range(1200)]
    assert [s.split for s in Plan(recipe, 77).samples] == [s.split for s in big.samples[:77]]


def test_facesynth_plan_says_where_the_splits_were_searched():
    searched = Plan(load_recipe("emotions"), 1000)
    report = balance_report(searched)
    assert report["searched"] and format_balance(report).splitlines()[0].endswith("(splits searched for this shape)")
    assert {v["value"] for v in report["splits"].values()} == {2}
    strata = balance_report(Plan(load_recipe("agfd"), 500))
    assert not strata["searched"] and "searched" not in format_balance(strata)
