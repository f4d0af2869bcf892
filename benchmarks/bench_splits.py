"""How balanced each split stays, over every prefix of its rows, and what any split rule could reach.

    python benchmarks/bench_splits.py            # the plan's splits, per case
    python benchmarks/bench_splits.py --search   # exhaustive search on emotions' order (see below)

The first table is ``facesynth.plan.balance_report`` per split: the worst max-minus-min count over every
prefix of the split's rows (so at every size of the plan) for one attribute's values, and for the primary
label x each other attribute's values.

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
import time
from pathlib import Path

import numpy as np

from facesynth.plan import Plan, balance_report
from facesynth.recipe import load_recipe

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
    """The split index of every row (found), False (impossible) or None (not settled in ``limit`` nodes); see
    the module docstring.
    Without ``repeat`` the counts need not reach their shares at the end (a weaker demand, so "impossible"
    then also rules out every assignment of these rows that does not repeat)."""
    value_bound, pair_bound, slack = bounds
    n, splits = len(cells), len(RATIOS)
    others = [j for j in range(len(sizes)) if j != primary]
    single = [[np.zeros(k, np.int64) for k in sizes] for _ in RATIOS]
    pair = [[np.zeros(sizes[primary] * sizes[j], np.int64) for j in others] for _ in RATIOS]
    top = 1 if repeat else n + 1  # no share to stay under without repeat
    share_single = [[round(r * n / k) * top for k in sizes] for r in RATIOS]
    share_pair = [[round(r * n / sizes[primary] / sizes[j]) * top for j in others] for r in RATIOS]
    size = np.zeros(splits, np.int64)

    def ok(t: int, s: int) -> bool:
        c, total = cells[t], t + 1
        if size[s] + 1 > RATIOS[s] * total + slack:
            return False
        if any(size[x] < RATIOS[x] * total - slack for x in range(splits) if x != s):
            return False
        for j, counts in enumerate(single[s]):
            if counts[c[j]] + 1 - counts.min() > value_bound or counts[c[j]] + 1 > share_single[s][j]:
                return False
        for k, (j, counts) in enumerate(zip(others, pair[s])):
            code = c[primary] * sizes[j] + c[j]
            if counts[code] + 1 - counts.min() > pair_bound or counts[code] + 1 > share_pair[s][k]:
                return False
        return True

    def step(t: int, s: int, by: int) -> None:
        c = cells[t]
        size[s] += by
        for j, counts in enumerate(single[s]):
            counts[c[j]] += by
        for j, counts in zip(others, pair[s]):
            counts[c[primary] * sizes[j] + c[j]] += by

    def options(t: int) -> list[int]:  # the split furthest below its share is tried first (popped last)
        order = sorted(range(splits), key=lambda s: size[s] - RATIOS[s] * (t + 1))
        return [s for s in order if ok(t, s)][::-1]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--search", action="store_true", help="search emotions' splits exhaustively instead")
    parser.add_argument("--limit", type=int, default=400_000, help="nodes per bound for --search")
    args = parser.parse_args()
    search_table(args.limit) if args.search else table()


if __name__ == "__main__":
    main()
