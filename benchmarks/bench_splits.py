"""How balanced each split stays, over every prefix of its rows, and what any split rule could reach.

    python benchmarks/bench_splits.py            # the plan's splits, per case
    python benchmarks/bench_splits.py --search   # exhaustive search on emotions' order (see below)
    python benchmarks/bench_splits.py --shapes   # the searched table against the deficit rule, per shape

The first table is ``facesynth.plan.balance_report`` per split: the worst max-minus-min count over every
prefix of the split's rows (so at every size of the plan) for one attribute's values, and for the primary
label x each other attribute's values.

``--shapes``: for cross products of every attribute, ``facesynth.split_order.split_table`` (searched once per
shape) against the deficit rule it replaces, each as the worst value / primary x value spread over every
prefix of every split, over two periods of rows.

``--search`` keeps the plan's order of cells (every axis within 1 and every pair within 1 at every prefix for
``emotions``) and searches depth-first over the split of each row of ten rounds (560 rows: the 8/1/1 ratios
repeat exactly after ten rounds) for an assignment that keeps, in every split and at every prefix, each
value within ``V`` and each primary x value within ``P``, with every split's size within ``S`` rows of its
ratio and every value's and pair's count per split exactly its share at the end (so the ten rounds can
repeat with the same bounds; the rows that keep each value within 1 drop that last demand, so their
"impossible" holds for any assignment of these 560 rows). It prints, per bound, whether such an
assignment exists (found), provably does not (impossible: the whole tree was searched) or was not settled
within the node limit.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from facesynth.cross_order import cross_order
from facesynth.plan import Plan, balance_report
from facesynth.recipe import load_recipe
from facesynth.split_order import deficit_splits, period, search_splits, split_table, worst

RATIOS = (0.8, 0.1, 0.1)
REPEAT = 10  # rounds after which 8/1/1 of every count is whole
CASES = [("emotions", 32), ("emotions", 112), ("emotions", 1000), ("emotions", 5600),
         ("grid", 1050), ("grid", 2100), ("grid", 10500), ("agfd", None)]
ANY = 10**6
BOUNDS = [(1, ANY, 1), (1, ANY, 2), (1, ANY, 3), (1, ANY, 5), (2, 1, 2), (2, 2, 1), (2, 2, 2), (2, 3, 1), (2, 3, 2)]


def recipe(name: str):
    return load_recipe(Path(__file__).parent / "recipes" / "grid.yaml") if name == "grid" else load_recipe(name)


def table() -> None:
    print("| recipe | samples | seconds | train: value / pair | validation | test |\n|---|---:|---:|---|---|---|")
    for name, n in CASES:
        start = time.perf_counter()
        plan = Plan(recipe(name), n)
        plan.samples
        seconds = time.perf_counter() - start
        splits = balance_report(plan)["splits"].values()
        cols = [f"{v['value']} / {'-' if v['pair'] is None else v['pair']}" for v in splits]
        print(f"| `{name}` | {len(plan):,} | {seconds:.2f} | " + " | ".join(cols) + " |", flush=True)


def search(cells: np.ndarray, sizes: list[int], primary: int, bounds: tuple[int, int, int], limit: int,
           repeat: bool = True):
    """The split index of every row (found), False (impossible) or None (not settled in ``limit`` nodes), by
    ``facesynth.split_order.search_splits`` without the plan's demand on each label's first rows; see the
    module docstring. Without ``repeat`` the counts need not reach their shares at the end (a weaker demand,
    so "impossible" then also rules out every assignment of these rows that does not repeat)."""
    assert primary == 0, "search_splits takes the primary as the first axis"
    return search_splits(cells.tolist(), sizes, RATIOS, bounds, limit, first_rows=False, repeat=repeat)


def emotions_rows() -> tuple[np.ndarray, list[int], int]:
    """Ten rounds of ``emotions``' plan as value indices per attribute, the attributes' sizes, the primary's axis."""
    r = recipe("emotions")
    names = list(r.attributes)
    sizes = [len(r.attributes[a].values) for a in names]
    ids = {a: {v: i for i, v in enumerate(r.attributes[a].values)} for a in names}
    plan = Plan(r, REPEAT * int(np.prod(sizes)))
    cells = np.array([[ids[a][s.labels[a]] for a in names] for s in plan.samples], np.int64)
    return cells, sizes, names.index(r.primary)


def search_table(limit: int) -> None:
    cells, sizes, primary = emotions_rows()
    print(f"`emotions`, the plan's order, {len(cells)} rows, node limit {limit:,}\n")
    print("| value within | primary x value within | split sizes within (rows) | result | seconds |\n"
          "|---:|---:|---:|---|---:|")
    for bounds in BOUNDS:
        start = time.perf_counter()
        found = search(cells, sizes, primary, bounds, limit, repeat=bounds[0] > 1)
        result = "found" if isinstance(found, list) else {False: "impossible", None: "not settled"}[found]
        pairs = "any" if bounds[1] == ANY else bounds[1]
        print(f"| {bounds[0]} | {pairs} | {bounds[2]} | {result} | {time.perf_counter() - start:.1f} |", flush=True)


SHAPES = [(4, 2, 7), (4, 2), (7, 2), (2, 2), (3, 3), (3, 2, 2), (5, 2, 3), (3, 3, 3), (4, 2, 2, 2),
          (2, 2, 2, 2, 2), (7, 2, 5), (5, 5, 3), (4, 4, 4), (6, 2, 7), (2, 3, 4, 5), (8, 2, 8)]


def shapes_table() -> None:
    print("| shape | cells | deficit rule | table: bounds (value, pair, slack) | table | search seconds |\n"
          "|---|---:|---|---|---|---:|")
    for sizes in SHAPES:
        start = time.perf_counter()
        table = split_table(sizes, RATIOS)
        seconds = time.perf_counter() - start
        rows = 2 * (period(sizes, RATIOS) or REPEAT) * math.prod(sizes)
        cells = cross_order(sizes).cells(np.arange(rows))
        before = "%d / %d" % worst(cells, sizes, deficit_splits(cells, RATIOS), len(RATIOS))
        after = "-" if table is None else "%d / %d" % worst(cells, sizes, np.array([table[t] for t in range(rows)]),
                                                            len(RATIOS))
        print(f"| {' x '.join(map(str, sizes))} | {math.prod(sizes)} | {before} | "
              f"{'none' if table is None else table.bounds} | {after} | {seconds:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--search", action="store_true", help="search emotions' splits exhaustively instead")
    parser.add_argument("--shapes", action="store_true", help="the searched split tables per shape instead")
    parser.add_argument("--limit", type=int, default=400_000, help="nodes per bound for --search")
    args = parser.parse_args()
    search_table(args.limit) if args.search else shapes_table() if args.shapes else table()


if __name__ == "__main__":
    main()
