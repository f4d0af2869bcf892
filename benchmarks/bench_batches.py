"""How full the pipeline calls are on a recipe whose values set their own settings.

    python benchmarks/bench_batches.py [--num-samples 210] [--recipe benchmarks/recipes/grid.yaml]

Generates the recipe on the tiny preset (CPU), then reads the shards: samples per pipeline batch (the
``batch`` column: the samples generated together), and kept images per second of the whole run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def batch_fill(out: Path) -> tuple[float, int]:
    """Mean samples per batch, and the number of batches, over every shard of ``out``."""
    batches = set()
    for path in sorted(out.glob("data/*/*.parquet")):
        for value in pq.read_table(path, columns=["batch"]).column(0).to_pylist():
            batches.add(value if isinstance(value, str) else " ".join(value))  # format 6 string, or an older list
    sizes = [len(b.split()) for b in batches]
    return sum(sizes) / len(sizes), len(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(Path(__file__).with_name("recipes") / "grid.yaml"))
    parser.add_argument("--num-samples", type=int, default=210)
    parser.add_argument("--batch-size", type=int, default=12)
    args = parser.parse_args()
    from facesynth.generation import GenerateConfig, generate

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "grid"
        start = time.perf_counter()
        generate(GenerateConfig(recipe=args.recipe, out=out, num_samples=args.num_samples, model="tiny", quiet=True,
                                batch_size=args.batch_size))
        seconds = time.perf_counter() - start
        fill, batches = batch_fill(out)
    print(f"| {args.num_samples} samples | {batches} batches | {fill:.2f} samples per batch "
          f"(at most {args.batch_size // 3}) | {args.num_samples / seconds:.2f} kept images/s |")


if __name__ == "__main__":
    main()
