"""How balanced each split stays, over every prefix of its rows, and what any split rule could reach.

    python benchmarks/bench_splits.py            # the plan's splits, per case
    python benchmarks/bench_splits.py --search   # exhaustive search on emotions' order (see below)
    python benchmarks/bench_splits.py --shapes   # the searched table against the deficit rule, per shape
    python benchmarks/bench_splits.py --joint    # emotions' order and splits searched together (see below)

The first table is ``facesynth.plan.balance_report`` per split: the worst max-minus-min count over every
prefix of the split's rows (so at every size of the plan) for one attribute's values, and for the primary
label x each other attribute's values.

``--shapes``: for cross products of every attribute, ``facesynth.plan.split_order.split_table`` (searched once per
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

``--joint`` chooses the order of the cells too: depth-first over the cell *and* the split of each row, keeping
the plan's own guarantees (each round lists every cell once, every axis within 1, every pair within 1, as
`emotions`' order does) and, in every split, each value and each primary x value within 1, with split sizes
within ``S`` rows of their ratios and each primary label's first rows taking every split in turn. It prints,
for the first round (56 rows) and for the whole period (560 rows, every count on its share at the end),
whether such rows exist (found), provably do not (impossible) or were not settled.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from pathlib import Path

import numpy as np

from facesynth.plan.cross_order import cross_order
from facesynth.plan import Plan, balance_report
from facesynth.recipe import load_recipe
from facesynth.plan.split_order import _Counts, deficit_splits, period, search_splits, split_table, worst

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
    ``facesynth.plan.split_order.search_splits`` without the plan's demand on each label's first rows; see the
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


def joint_search(sizes: list[int], ratios: tuple[float, ...], bounds: tuple[int, int, int, int], rounds: int,
                 rows: int, limit: int) -> tuple[list[tuple[tuple[int, ...], int]] | bool | None, int]:
    """``rows`` rows of (cell, split) over a period of ``rounds`` rounds, False (impossible) or None (not settled),
    and the deepest row reached. ``bounds``: (every pair of the order, each value in a split, each primary x value
    in a split, split sizes in rows). Values first occur as 0, 1, 2, ... on every axis (renaming values maps a
    solution to a solution), so "impossible" holds for every order."""
    order_pair, value, pair, slack = bounds
    m, size = len(sizes), math.prod(sizes)
    n, width = rounds * size, len(ratios)
    cells = list(itertools.product(*(range(k) for k in sizes)))
    pairs = list(itertools.combinations(range(m), 2))
    whole = [(list(sizes) + [sizes[a] * sizes[b] for a, b in pairs]), [1] * m + [order_pair] * len(pairs)]
    split = [list(sizes) + [sizes[0] * k for k in sizes[1:]] + [size], [value] * m + [pair] * (m - 1) + [n]]
    whole_keys = [[(j, c[j]) for j in range(m)] + [(m + q, c[a] * sizes[b] + c[b]) for q, (a, b) in enumerate(pairs)]
                  for c in cells]
    split_keys = [[(j, c[j]) for j in range(m)] + [(m + j - 1, c[0] * sizes[j] + c[j]) for j in range(1, m)]
                  + [(2 * m - 1, i)] for i, c in enumerate(cells)]
    shares = [[round(r * n / w) for w in split[0]] for r in ratios]
    counts = [_Counts(w) for w in whole[0]]
    per_split = [[_Counts(w) for w in split[0]] for _ in ratios]
    taken, in_round, top = [0] * width, [False] * size, [[-1] * m]

    def fits(group: list[_Counts], keys: list[tuple[int, int]], caps: list[int], most: list[int] | None) -> bool:
        return all(group[a].count[v] + 1 - group[a].min <= caps[a] and (most is None or group[a].count[v] < most[a])
                   for a, v in keys)

    def options(t: int) -> list[tuple[int, int]]:
        out = []
        for i, c in enumerate(cells):
            if in_round[i] or any(v > top[-1][j] + 1 for j, v in enumerate(c)):
                continue
            if not fits(counts, whole_keys[i], whole[1], None):
                continue
            forced = t // sizes[0] if t < width * sizes[0] else None  # every axis within 1: fixed rows
            for s in range(width) if forced is None else [forced]:
                if forced is None and (taken[s] + 1 > ratios[s] * (t + 1) + slack or any(
                        taken[x] < ratios[x] * (t + 1) - slack for x in range(width) if x != s)):
                    continue
                if fits(per_split[s], split_keys[i], split[1], shares[s]):
                    out.append((taken[s] - ratios[s] * (t + 1), i, s))
        return [(i, s) for _, i, s in sorted(out, reverse=True)]  # the split furthest below its share popped first

    def step(i: int, s: int, by: int) -> None:
        for a, v in whole_keys[i]:
            counts[a].move(v, by)
        for a, v in split_keys[i]:
            per_split[s][a].move(v, by)
        taken[s] += by

    chosen: list[tuple[int, int]] = []
    stack, deepest = [options(0)], 0
    for _ in range(limit):
        if len(chosen) == rows:
            return [(cells[i], s) for i, s in chosen], deepest
        if not stack[-1]:
            stack.pop()
            if not chosen:
                return False, deepest
            i, s = chosen.pop()
            step(i, s, -1)
            top.pop()
            if len(chosen) % size == size - 1:  # back into a full round
                in_round[:] = [True] * size
            in_round[i] = False
            continue
        i, s = stack[-1].pop()
        chosen.append((i, s))
        step(i, s, 1)
        top.append([max(a, b) for a, b in zip(top[-1], cells[i])])
        in_round[i] = True
        if len(chosen) % size == 0:
            in_round[:] = [False] * size
        deepest = max(deepest, len(chosen))
        if len(chosen) < rows:
            stack.append(options(len(chosen)))
    return None, deepest


JOINT = [(1, 1, 1, 1), (1, 1, 1, 2), (1, 1, 1, 3), (1, 1, 2, 2)]  # order pair, value, primary x value, sizes


def joint_table(limit: int) -> None:
    r = recipe("emotions")
    sizes = [len(r.attributes[a].values) for a in r.attributes]
    assert list(r.attributes).index(r.primary) == 0
    print(f"`emotions`, order and splits chosen together, node limit {limit:,}\n")
    print("| order's pairs within | value within | primary x value within | sizes within (rows) | rows | result |"
          " deepest row | seconds |\n|---:|---:|---:|---:|---:|---|---:|---:|")
    for bounds in JOINT:
        for rows in (math.prod(sizes), REPEAT * math.prod(sizes)):
            start = time.perf_counter()
            found, deepest = joint_search(sizes, RATIOS, bounds, REPEAT, rows, limit)
            result = "found" if isinstance(found, list) else {False: "impossible", None: "not settled"}[found]
            print(f"| {' | '.join(map(str, bounds))} | {rows} | {result} | {deepest} | "
                  f"{time.perf_counter() - start:.1f} |", flush=True)


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
    parser.add_argument("--joint", action="store_true", help="search emotions' order and splits together instead")
    parser.add_argument("--limit", type=int, default=400_000, help="nodes per bound for --search and --joint")
    args = parser.parse_args()
    if args.joint:
        joint_table(args.limit)
    else:
        search_table(args.limit) if args.search else shapes_table() if args.shapes else table()


if __name__ == "__main__":
    main()
