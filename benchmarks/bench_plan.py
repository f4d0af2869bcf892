"""How long a plan takes as it grows: samples asked for, and number of label cells.

    python benchmarks/bench_plan.py
    python benchmarks/bench_plan.py --shapes 150     # the pair bound over random shapes
    python benchmarks/bench_plan.py --best            # the best pair bound possible, on small shapes

Prints seconds per case, and the balance the plan reaches (``facesynth.plan.balance_report``): the
worst max-minus-min count over every prefix for one attribute and for a pair of attributes, and the
worst within one split over every prefix of its rows (each value / the primary label x each value;
``benchmarks/bench_splits.py`` has the splits per case and what any split rule could reach). The plan
is pure Python and numpy (no torch), so this is the time of ``facesynth plan`` and of the start of every
``generate``. ``--shapes N`` instead draws N random shapes
(3 to 6 attributes of 1 to 12 values, at most 30,000 cells, a fixed seed) and prints how far apart a pair of
attributes gets over every prefix of one whole round, as cross-product axes and as free attributes of a
strata recipe, with the worst shapes. ``--best`` searches small shapes exhaustively for the smallest pair
bound any order can keep while every round holds each cell once and every axis stays within 1 (what the
plan guarantees), and prints it beside the cross-product order's.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections import Counter

import numpy as np

from facesynth.plan.balance import CrossOrder, spreads
from facesynth.plan.order_search import search_order
from facesynth.plan import Plan, balance_report
from facesynth.recipe import parse_recipe


def cross_recipe(sizes: list[int], free: int = 0) -> str:
    """A cross-product recipe with attributes of the given sizes, plus one free attribute of ``free`` values."""
    names = [f"a{i}" for i in range(len(sizes))] + (["free"] if free else [])
    lines = ["name: scale", "primary: a0", "attributes:"]
    for name, size in zip(names, [*sizes, free]):
        lines += [f"  {name}:", "    values:"] + [f"      {name}_{v}:" for v in range(size)]
    lines += ["template: '" + " ".join("{" + n + "}" for n in names) + "'",
              f"balance: {{cross: [{', '.join(names[:len(sizes)])}]}}"]
    return "\n".join(lines) + "\n"


CASES = [
    ("300 x 300 = 90,000 cells", [300, 300], 0, [16, 100_000]),
    ("10 x 10 x 10 x 9 x 10 = 90,000 cells", [10, 10, 10, 9, 10], 0, [16, 100_000]),
    ("7 x 2 x 5 x 5 x 3 grid, 1,050 cells", [7, 2, 5, 5, 3], 0, [1_050, 2_100, 100_000]),
    ("one attribute of 10,000 values", [10_000], 0, [16, 10_000]),
    ("emotions shape 4 x 2 x 7, free attribute of 5,000 values", [4, 2, 7], 5_000, [100_000]),
]


def strata_recipe(sizes: list[int]) -> str:
    """Three strata of a primary label, with attributes of the given sizes left free."""
    names = [f"a{i}" for i in range(len(sizes))]
    lines = ["name: free", "primary: kind", "attributes:", "  kind:", "    values:", "      k0:", "      k1:", "      k2:"]
    for name, size in zip(names, sizes):
        lines += [f"  {name}:", "    values:"] + [f"      {name}_{v}:" for v in range(size)]
    lines += ["template: '{kind} " + " ".join("{" + n + "}" for n in names) + "'", "balance:", "  strata:"]
    lines += [f"    - {{kind: k{i}, count: {c}}}" for i, c in enumerate((3000, 2000, 1000))]
    return "\n".join(lines) + "\n"


def random_shapes(count: int, seed: int = 0, cap: int = 30_000) -> list[list[int]]:
    rng, out = random.Random(seed), []
    while len(out) < count:
        sizes = [rng.randint(1, 12) for _ in range(rng.randint(3, 6))]
        if math.prod(sizes) <= cap:
            out.append(sizes)
    return out


def worst_pair(cells: np.ndarray, sizes: list[int]) -> tuple[int, int]:
    found = spreads(cells, sizes)
    return (max(v for k, v in found.items() if len(k) == 1),
            max((v for k, v in found.items() if len(k) == 2), default=0))


def shapes(count: int) -> None:
    """The worst axis and pair over every prefix of one round (cross) or of 6,000 samples (free), per random shape."""
    cross, free, rows = Counter(), Counter(), []
    for sizes in random_shapes(count):
        order = CrossOrder(sizes)
        c_axis, c_pair = worst_pair(order.cells(np.arange(order.size)), sizes)
        report = balance_report(Plan(parse_recipe(strata_recipe(sizes))))  # the free attributes: a0, a1, ...
        f_axis, f_pair = report["axis"], report["pair"][0]
        assert c_axis <= 1 and f_axis <= 1, sizes
        cross[c_pair] += 1
        free[f_pair] += 1
        rows.append((c_pair, f_pair, sizes))
    print(f"{count} random shapes; every axis within 1 in all of them")
    print("| worst pair over every prefix | shapes (cross product) | shapes (free attributes) |\n|---:|---:|---:|")
    for bound in sorted(set(cross) | set(free)):
        print(f"| {bound} | {cross[bound]} | {free[bound]} |")
    print("worst cross-product shapes:", "; ".join(f"{' x '.join(map(str, s))}: {c}"
                                                for c, _, s in sorted(rows, key=lambda r: -r[0])[:5]))
    print("worst free-attribute shapes:", "; ".join(f"{' x '.join(map(str, s))}: {f}"
                                                  for _, f, s in sorted(rows, key=lambda r: -r[1])[:5]))


def order_within(sizes: list[int], bound: int, limit: int) -> bool | None:
    """Whether some order keeps every pair within ``bound`` (see ``facesynth.plan.cross_order.search_order``)."""
    found = search_order(sizes, bound, limit)
    return found if found is None or found is False else True


SMALL = [[2, 2, 2], [2, 2, 3], [3, 3, 2], [2, 2, 2, 2], [2, 2, 2, 3], [2, 2, 3, 3], [4, 6, 2], [3, 3, 3, 3],
         [2, 2, 2, 2, 2], [2, 2, 2, 2, 2, 2], [3, 3, 3, 3, 3]]


def best(limit: int = 3_000_000) -> None:
    print("| shape | cross-product order | best possible |\n|---|---:|---:|")
    for sizes in SMALL:
        order = CrossOrder(sizes)
        ours = worst_pair(order.cells(np.arange(order.size)), sizes)[1]
        text = f"more than {ours}"
        for bound in range(1, ours + 1):
            found = order_within(sizes, bound, limit)
            if found:
                text = str(bound)
                break
            if found is None:
                text = f"unknown below {ours}"
                break
        print(f"| {' x '.join(map(str, sizes))} | {ours} | {text} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=int, metavar="N", help="measure the pair bound over N random shapes instead")
    parser.add_argument("--best", action="store_true", help="search small shapes for the best pair bound instead")
    args = parser.parse_args()
    if args.best:
        best()
        return
    if args.shapes:
        shapes(args.shapes)
        return
    print("| case | samples | seconds | one attribute | a pair | within a split (value / primary pair) |\n"
          "|---|---:|---:|---:|---:|---:|")
    for label, sizes, free, counts in CASES:
        recipe = parse_recipe(cross_recipe(sizes, free))
        for n in counts:
            start = time.perf_counter()
            plan = Plan(recipe, n)
            plan.samples
            seconds = time.perf_counter() - start
            report = balance_report(plan)
            pair = report["pair"][0] if report["pair"] else "-"
            value = max(v["value"] for v in report["splits"].values())
            both = max((v["pair"] for v in report["splits"].values() if v["pair"] is not None), default="-")
            print(f"| {label} | {n:,} | {seconds:.2f} | {report['axis']} | {pair} | {value} / {both} |", flush=True)


if __name__ == "__main__":
    main()
