"""Free attributes: one aligned block at a time, assigned at the least total cost (pure Python, fast)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from facesynth.plan.balance import ASSIGN_MAX, min_cost_assignment
from facesynth.plan.cross_order import prefix_spread
from facesynth.plan import Plan, balance_report
from facesynth.recipe import parse_recipe


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6).flatmap(lambda rows: st.integers(rows, 6).flatmap(lambda cols: st.lists(
    st.lists(st.integers(0, 9), min_size=cols, max_size=cols), min_size=rows, max_size=rows))))
def test_min_cost_assignment_takes_the_least_total_cost(cost):
    """Against every assignment of the rows to distinct columns."""
    chosen = min_cost_assignment(cost)
    assert len(set(chosen)) == len(cost) and all(0 <= c < len(cost[0]) for c in chosen)
    best = min(sum(row[c] for row, c in zip(cost, cols))
               for cols in itertools.permutations(range(len(cost[0])), len(cost)))
    assert sum(row[c] for row, c in zip(cost, chosen)) == best


def _free_recipe(sizes: list[int], strata=((3000, "k0"), (2000, "k1"), (1000, "k2"))):
    """Strata of a primary ``kind`` that leave attributes ``a0, a1, ...`` of the given sizes free."""
    lines = ["name: free", "primary: kind", "attributes:", "  kind:", "    values:"]
    lines += [f"      {k}:" for _, k in strata]
    for i, size in enumerate(sizes):
        lines += [f"  a{i}:", "    values:"] + [f"      a{i}_{v}:" for v in range(size)]
    lines += ["template: '{kind} " + " ".join("{a%d}" % i for i in range(len(sizes))) + "'", "balance:", "  strata:"]
    lines += [f"    - {{kind: {k}, count: {n}}}" for n, k in strata]
    return parse_recipe("\n".join(lines) + "\n")


MIXED = parse_recipe("""
name: mixed
primary: kind
attributes:
  kind: {values: {a: , b: , c: }}
  mood: {values: {calm: , wild: , odd: }}
  hue: {values: {red: , blue: }}
  size: {values: {s: , m: , l: , xl: }}
template: "{kind} {mood} {hue} {size}"
balance:
  strata:
    - {kind: a, mood: calm, count: 50}
    - {kind: b, count: 30}
    - {kind: c, hue: red, count: 20}
""")


def test_free_values_depend_only_on_earlier_rows_and_their_block():
    """A block's cells are read ahead of the plan's size, so every prefix of the plan is the smaller plan; an
    attribute free in only some strata is within 1 of equal over the rows it is free in."""
    full = Plan(MIXED).samples
    for n in (1, 2, 5, 7, 33, 64, 99):
        assert Plan(MIXED, n).samples == full[:n], n
    for name, fixed_by in (("mood", "a"), ("hue", "c"), ("size", None)):
        values = list(MIXED.attributes[name].values)
        counts = Counter()
        for s in full:
            if s.labels["kind"] != fixed_by:
                counts[s.labels[name]] += 1
                assert max(counts.values()) - min(counts.get(v, 0) for v in values) <= 1, name
    cross = parse_recipe("name: c\nprimary: x\nattributes:\n  x: {values: {a: , b: , c: }}\n"
                         "  y: {values: {p: , q: , r: , s: , t: }}\n  z: {values: {u: , v: }}\n"
                         "template: '{x} {y} {z}'\nbalance: {cross: [x]}\n")
    assert Plan(cross, 40).samples == Plan(cross, 1000).samples[:40]


def test_pairs_of_free_attributes_stay_close_and_each_stratum_keeps_its_values_even():
    """The shape whose free pairs drifted furthest (23) when each value was chosen sample by sample: each free
    attribute within 1 at every prefix, each pair within 11, and each attribute within 3 inside every stratum."""
    sizes = [10, 2, 5, 2, 4, 2]
    plan = Plan(_free_recipe(sizes))
    report = balance_report(plan)
    assert report["attributes"] == [f"a{i}" for i in range(len(sizes))]
    assert report["axis"] == 1 and report["pair"][0] <= 11
    kinds = np.array([s.labels["kind"] for s in plan.samples])
    for i, size in enumerate(sizes):
        values = np.array([int(s.labels[f"a{i}"].rsplit("_", 1)[1]) for s in plan.samples])
        assert max(prefix_spread(values[kinds == k], size) for k in ("k0", "k1", "k2")) <= 3


def test_a_free_attribute_of_many_values_is_chosen_value_by_value():
    """Above ASSIGN_MAX values, a block is filled sample by sample: still each value once per block."""
    size = ASSIGN_MAX + 8
    recipe = _free_recipe([size], strata=((100, "k0"), (60, "k1")))
    samples = Plan(recipe).samples
    for start in range(0, len(samples) - size + 1, size):
        assert len({s.labels["a0"] for s in samples[start:start + size]}) == size
