"""What ``facesynth evaluate`` costs.

    python benchmarks/bench_evaluate.py            # both parts
    python benchmarks/bench_evaluate.py --rows 30000 --skip-real
    python benchmarks/bench_evaluate.py --oversized 6 --side 12000   # peak memory on huge real photos

1. **Embeddings only, at scale**: the diversity and separability measures on a shipped recipe's plan of
   ``--rows`` rows (labels exactly as the plan balances them) with 512-d unit embeddings (CLIP ViT-B/32's
   size) that carry a little label signal. Reading the embeddings from Parquet is not included: it is one
   column of a few MB. Prints seconds per stage and the peak memory the process reached.
2. **With --real**, on the tiny preset: a generated dataset and an image folder of real photos, through
   the real ``evaluate`` (CLIP loading, streaming, embedding, TSTR, FID/KID, card).
3. **--oversized N**: ``facesynth evaluate --real`` in a child process on a folder of N huge PNGs
   (``--side`` pixels square, solid colours, so each file is small), with the child's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from facesynth.evaluate import metrics as metrics
from facesynth.evaluate import Embeddings, diversity_report
from facesynth.plan import Plan
from facesynth.recipe import load_recipe


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def at_scale(recipe_name: str, rows: int, dim: int = 512) -> None:
    recipe = load_recipe(recipe_name)
    full = Plan(recipe, None, None, 1) if recipe.balance.strata else None  # a strata recipe has its own size
    plan = full if full is not None and len(full) <= rows else Plan(recipe, rows, None, 1)
    rows = len(plan)
    names = {a: list(attr.values) for a, attr in recipe.attributes.items()}
    labels = {a: np.array([names[a].index(s.labels[a]) for s in plan.samples]) for a in names}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    for k, a in enumerate(names):  # each attribute's value nudges its own few dimensions
        x[np.arange(rows), (8 * k + labels[a]) % dim] += 2.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    emb = Embeddings([s.sample_id for s in plan.samples], labels, x)
    before = peak_mb()
    start = time.perf_counter()
    div = diversity_report(emb, recipe)
    t_div = time.perf_counter() - start
    start = time.perf_counter()
    sep = {a: metrics.separability(x, labels[a], v) for a, v in names.items() if len(v) > 1}
    t_sep = time.perf_counter() - start
    print(f"{recipe_name}: {rows} rows x {dim}, {len(names)} attributes, {len(div['cells'])} label cells")
    print(f"  diversity (cells and values): {t_div:6.2f} s")
    print(f"  separability (5-fold, {len(sep)} attributes): {t_sep:6.2f} s")
    print(f"  total {t_div + t_sep:6.2f} s; peak RSS {peak_mb():.0f} MB (before the measures {before:.0f} MB; "
          f"the embeddings are {x.nbytes / 1e6:.0f} MB)")


def with_real(samples: int, real_rows: int) -> None:
    from PIL import Image

    from facesynth.evaluate import evaluate
    from facesynth.generation import GenerateConfig, generate
    from facesynth.evaluate.real import RealSpec

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "data"
        generate(GenerateConfig(recipe="emotions", out=out, num_samples=samples, model="tiny", quiet=True))
        rng = np.random.default_rng(0)
        values = list(load_recipe("emotions").attributes["emotion"].values)
        for i in range(real_rows):
            folder = Path(tmp) / "real" / "test" / values[i % len(values)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        start = time.perf_counter()
        evaluate(out, progress=False)
        alone = time.perf_counter() - start
        start = time.perf_counter()
        evaluate(out, RealSpec(str(Path(tmp) / "real"), "label"), progress=False)
        real = time.perf_counter() - start
    print(f"tiny preset, {samples} rows: evaluate {alone:.2f} s; with --real ({real_rows} real 96x96 images) "
          f"{real:.2f} s ({real_rows / max(real - alone, 1e-9):.0f} real images/s beyond the rest)")


def oversized(count: int, side: int) -> None:
    import subprocess
    import sys

    from PIL import Image

    values = list(load_recipe("emotions").attributes["emotion"].values)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "data"
        subprocess.run([sys.executable, "-m", "facesynth.cli", "generate", "emotions", "--model", "tiny", "-n", "16",
                        "--out", str(out), "-q"], check=True, capture_output=True)
        for i in range(count):
            folder = Path(tmp) / "real" / "test" / values[i % len(values)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (side, side), (40 * i % 255, 90, 160)).save(folder / f"{i}.png")
            size = (folder / f"{i}.png").stat().st_size
        start = time.perf_counter()
        got = subprocess.run([sys.executable, "-m", "facesynth.cli", "evaluate", str(out), "--real",
                              str(Path(tmp) / "real"), "--label-column", "label", "-q"], capture_output=True, text=True)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"evaluate --real on {count} PNGs of {side}x{side} ({size / 1e3:.0f} kB each): exit {got.returncode}, "
          f"{seconds:.1f} s, peak RSS of the child {peak:.0f} MB")
    if got.returncode:
        print("  " + got.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--recipes", nargs="+", default=["emotions", "agfd"])
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--oversized", type=int, help="only: evaluate --real on this many huge PNGs")
    parser.add_argument("--side", type=int, default=12000, help="their side in pixels (with --oversized)")
    args = parser.parse_args()
    if args.oversized:
        return oversized(args.oversized, args.side)
    for name in args.recipes:
        at_scale(name, args.rows)
    if not args.skip_real:
        with_real(48, 1000)


if __name__ == "__main__":
    main()
