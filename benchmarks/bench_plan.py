"""How long a plan takes as it grows: samples asked for, and number of label cells.

    python benchmarks/bench_plan.py

Prints seconds per case, and the balance the plan reaches (``facesynth.plan.balance_report``): the
worst max-minus-min count over every prefix for one attribute and for a pair of attributes, and the
worst within a split at that size. The plan is pure Python and numpy (no torch), so this is the time
of ``facesynth plan`` and of the start of every ``generate``.
"""

from __future__ import annotations

import argparse
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    print("| case | samples | seconds | one attribute | a pair | within a split |\n|---|---:|---:|---:|---:|---:|")
    for label, sizes, free, counts in CASES:
        recipe = parse_recipe(cross_recipe(sizes, free))
        for n in counts:
            start = time.perf_counter()
            plan = Plan(recipe, n)
            plan.samples
            seconds = time.perf_counter() - start
            report = balance_report(plan)
            pair = report["pair"][0] if report["pair"] else "-"
            print(f"| {label} | {n:,} | {seconds:.2f} | {report['axis']} | {pair} | {max(report['splits'].values())} |",
                  flush=True)


if __name__ == "__main__":
    main()
