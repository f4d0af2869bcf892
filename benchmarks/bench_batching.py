"""How full the pipeline calls are on a recipe whose values set their own settings.

    python benchmarks/bench_batching.py [-n 210] [--recipe benchmarks/recipes/grid.yaml]

The grid recipe (7 x 2 x 5 x 5 x 3 cells) gives six settings combinations (two schedulers, three guidance
scales), so neighbouring samples in a shard rarely share settings. Prints the samples per pipeline call
(from the rows' ``batch`` column, each call counted once) and kept images/s on the tiny preset. Run it on
two checkouts (``PYTHONPATH=OTHER/src``) in one session to compare them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from facesynth.generation import GenerateConfig, generate

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=210)
    parser.add_argument("--recipe", default=str(HERE / "recipes" / "grid.yaml"))
    parser.add_argument("--batch-size", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "grid"
        start = time.perf_counter()
        result = generate(GenerateConfig(recipe=args.recipe, out=out, num_samples=args.n, model="tiny", quiet=True,
                                         batch_size=args.batch_size))
        wall = time.perf_counter() - start
        calls = Counter()
        for path in sorted(out.glob("data/*/*.parquet")):
            for batch in pq.read_table(path, columns=["batch"])["batch"].to_pylist():
                calls[batch] += 1
        sizes = [len(b.split()) for b in calls]
    per_call = args.batch_size // 3
    print(f"{Path(args.recipe).name}, {result.rows} rows, batch size {args.batch_size} (up to {per_call} samples "
          f"x 3 candidates per call)")
    print(f"  calls {len(sizes)}, samples per call {sum(sizes) / len(sizes):.2f} (full: {per_call}), "
          f"distribution {dict(sorted(Counter(sizes).items()))}")
    print(f"  {result.rows / wall:.2f} kept images/s ({wall:.1f} s wall, UNet {result.timings['unet']:.1f} s)")


if __name__ == "__main__":
    main()
