"""What identity sets cost, on the tiny preset, in one process.

    python benchmarks/bench_identities.py               # 96 rows of emotions, best-of-3
    python benchmarks/bench_identities.py --rows 192 --repeat 3

Runs the engine on the same plan three ways: independent rows (no identities), identity sets without sharing
(strength 0: the set machinery, no extra attention), and identity sets with shared attention (strength 1); each
twice, in alternation, and reports the faster. Prints kept images/s, the UNet's seconds per kept image, and the
ratio of each to independent rows.
"""

from __future__ import annotations

import argparse
import time

from facesynth.checks.scoring import ClipScorer
from facesynth.generation import Engine, EngineOptions
from facesynth.generation.loading import load_pipeline
from facesynth.plan import Plan
from facesynth.recipe import load_recipe, with_identities
from facesynth.tiny import TINY_SETTINGS


def run(pipe, scorer, recipe, rows: int) -> tuple[float, float]:
    engine = Engine(pipe, scorer, recipe, EngineOptions(overrides=dict(TINY_SETTINGS)))
    samples = Plan(recipe, rows).samples
    start = time.perf_counter()
    winners = list(engine.run(samples))
    wall = time.perf_counter() - start
    return len(winners) / wall, engine.timings.seconds["unet"] / len(winners)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    pipe, _ = load_pipeline("tiny")
    scorer = ClipScorer.load("tiny")
    base = load_recipe("emotions")
    cases = {"independent rows": base,
             "sets, strength 0": with_identities(base, {"vary": ["emotion"], "strength": 0.0}),
             "sets, shared attention": with_identities(base, {"vary": ["emotion"], "strength": 1.0})}
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.repeat):
        for name, recipe in cases.items():
            speed, unet = run(pipe, scorer, recipe, args.rows)
            if name not in best or speed > best[name][0]:
                best[name] = (speed, unet)
    plain = best["independent rows"]
    print("| run | kept img/s | UNet s per kept image | vs independent rows (UNet time) |\n|---|---:|---:|---:|")
    for name, (speed, unet) in best.items():
        print(f"| {name} | {speed:.2f} | {unet:.4f} | {unet / plain[1]:.2f}x |")


if __name__ == "__main__":
    main()
