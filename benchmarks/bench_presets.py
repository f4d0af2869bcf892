"""UNet evaluations and kept images/s: 25 guided steps against the few-step presets, with and without pruning.

    python benchmarks/bench_presets.py [-n 24]

Tiny presets on the CPU (``tiny`` with ``emotions``; ``tiny-sd3`` and ``tiny-flux`` with ``emotions_flux``),
best-of-3, all runs in one process (compare the ratios within one model, not the absolute figures). Fewer steps change the images: on a real model, measure the quality with
``facesynth benchmark`` and ``facesynth evaluate`` before choosing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from facesynth.generation import GenerateConfig, generate

RUNS = [
    ("25 steps, guidance 7.5", {"steps": 25, "guidance": 7.5}),
    ("25 steps, pruned at 0.3 to 1", {"steps": 25, "guidance": 7.5, "prune_at": 0.3, "keep": 1}),
    ("lcm: 4 steps, guidance 1", {"preset": "lcm"}),
    ("lcm, pruned at 0.5 to 1", {"preset": "lcm", "prune_at": 0.5, "keep": 1}),
    ("turbo: 1 step, guidance 0", {"preset": "turbo"}),
    # the transformer families on their tiny presets, with the recipe written for T5 (plain, no negative)
    ("sd3: 25 steps, guidance 7.5", {"model": "tiny-sd3", "recipe": "emotions_flux", "steps": 25, "guidance": 7.5}),
    ("sd3, pruned at 0.3 to 1", {"model": "tiny-sd3", "recipe": "emotions_flux", "steps": 25, "guidance": 7.5,
                                 "prune_at": 0.3, "keep": 1}),
    ("flux: schnell, 4 steps", {"model": "tiny-flux", "recipe": "emotions_flux", "preset": "schnell"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=24)
    args = parser.parse_args()
    print(f"{'run':32s} {'UNet evals/kept':>15s} {'kept/s':>7s}")
    with tempfile.TemporaryDirectory() as work:
        for i, (name, extra) in enumerate(RUNS):
            extra = {"recipe": "emotions", "model": "tiny", **extra}
            result = generate(GenerateConfig(out=Path(work) / str(i), num_samples=args.n, quiet=True, **extra))
            t = result.timings
            print(f"{name:32s} {t['unet_images'] / result.rows:15.1f} {result.rows / t['wall']:7.2f}")


if __name__ == "__main__":
    main()
