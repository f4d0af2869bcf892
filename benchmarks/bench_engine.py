"""The seed notebook's loop against facesynth's engine, on the same plan and models, in one process.

    python benchmarks/bench_engine.py --config tiny            # CPU, about a minute (also tiny-sd3, tiny-flux)
    python benchmarks/bench_engine.py --config sd15 --samples 48   # a GPU: SD 1.5 architecture, 512², 25 steps
    python benchmarks/bench_engine.py --config sdxl --dtype fp16   # SDXL base, 1024², 25 steps
    python benchmarks/bench_engine.py --config sd35-medium --dtype bf16   # SD 3.5 Medium, 1024², 28 steps, CFG 4.5
    python benchmarks/bench_engine.py --config flux-schnell --dtype bf16  # FLUX.1 [schnell], 1024², 4 steps
    python benchmarks/bench_engine.py --config tiny --prune-at 0.25 --keep 1 --cfg-until 0.5   # + pruned runs
    python benchmarks/bench_engine.py --measure filtering      # bytes read to load one label
    python benchmarks/bench_engine.py --measure memory         # peak RSS, 1,000 vs 10,000 tiny samples

(a) the seed's approach: one pipeline call per candidate with text prompts, CLIP on each
image through the PIL processor, every kept PNG saved to a folder;
(b) ``facesynth.generation.generate``: batched candidates, CLIP on the device from tensors,
PNG encoding and Parquet writing on a background thread.

The real configs (``sd15``, ``sdxl``, ``sd35-medium``, ``flux-schnell``) build each model's denoiser,
VAE and text encoders, and a ViT-B/32 CLIP, from ``benchmarks/configs/<name>`` with random weights
(``random_models.py``): nothing is downloaded and the compute is the real model's. The SD 3.5 and
FLUX configs run the ``emotions_flux`` recipe (plain prompts, no negative prompt). Results print as
a table and as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import random_models  # noqa: E402  (the benchmarks' own module, beside this script)

TINY = {"tiny": "emotions", "tiny-sd3": "emotions_flux", "tiny-flux": "emotions_flux"}  # preset -> recipe


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed_loop(pipe, clip, processor, plan, settings: dict, out: Path, device) -> dict:
    """(a) One call per candidate, CLIP per image through the PIL processor, a PNG per kept image."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for sample in plan.samples:
        best, best_score = None, None
        for seed in sample.candidate_seeds(plan.num_candidates):
            negative = {"negative_prompt": sample.negative_prompt} if sample.negative_prompt else {}
            image = pipe(prompt=sample.prompt, **negative, num_inference_steps=settings["steps"], guidance_scale=settings["guidance"],
                         width=settings["width"], height=settings["height"],
                         generator=torch.Generator("cpu").manual_seed(seed)).images[0]
            inputs = processor(text=[sample.caption], images=image, return_tensors="pt", padding="max_length",
                               truncation=True).to(device)
            with torch.inference_mode():
                score = float(clip(**inputs).logits_per_image[0, 0])
            if best_score is None or score > best_score:
                best, best_score = image, score
        best.save(out / f"{sample.sample_id}.png")
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return {"wall": wall, "kept_per_s": len(plan) / wall}


def engine_run(recipe: str, model: str, clip_model: str, n: int, overrides: dict, out: Path, device: str, dtype: str | None,
               batch_size: int, compile: bool, channels_last: bool) -> dict:
    """(b) facesynth's generate, timed inside (model loading excluded, as for the loop)."""
    from facesynth.generation import GenerateConfig, generate

    result = generate(GenerateConfig(recipe=recipe, out=out, num_samples=n, model=model, clip_model=clip_model,
                                     device=device, dtype=dtype, batch_size=batch_size, quiet=True, write_card=False,
                                     compile=compile, channels_last=channels_last, **overrides))
    t = result.timings
    stages = {k: t.get(k, 0.0) for k in ("text", "unet", "preview", "vae", "clip")}
    busy = sum(stages.values())
    return {"wall": t["wall"], "kept_per_s": n / t["wall"], "unet_per_image": t["unet_images"] / n,
            "per_image_ms": {**{k: 1000 * v / n for k, v in stages.items()},
                             "encode+write (background thread)": 1000 * (t.get("encode", 0) + t.get("write", 0)) / n,
                             "idle (main thread)": 1000 * max(0.0, t["wall"] - busy) / n},
            "accelerator_busy": busy / t["wall"]}


def winners(folder: Path) -> dict[str, tuple[int, float]]:
    """Each sample's kept candidate index and clip_score, from a generated folder's shards."""
    import pyarrow.parquet as pq

    out = {}
    for shard in folder.rglob("*.parquet"):
        for row in pq.read_table(shard, columns=["sample_id", "candidate_index", "clip_score"]).to_pylist():
            out[row["sample_id"]] = (row["candidate_index"], row["clip_score"])
    return out


def compare(args) -> dict:
    from transformers import CLIPImageProcessor, CLIPProcessor

    from facesynth.generation.loading import load_pipeline, resolve_device, resolve_dtype
    from facesynth.plan import Plan
    from facesynth.recipe import load_recipe
    from facesynth.checks.scoring import ClipScorer
    from facesynth.tiny import TINY_SETTINGS

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    work = Path(tempfile.mkdtemp(prefix="facesynth-bench-"))
    if args.config in TINY:
        recipe, model, clip_name, overrides = TINY[args.config], args.config, "tiny", dict(TINY_SETTINGS)
    else:
        spec = random_models.spec(args.config)
        recipe = spec["recipe"]
        model = random_models.build(args.config, work, dtype, device)
        clip_name = random_models.build_clip(work)
        size = args.size or spec["size"]
        overrides = {"width": size, "height": size, "steps": args.steps or spec["steps"]}
        if "guidance" in spec:
            overrides["guidance"] = spec["guidance"]
    plan = Plan(load_recipe(recipe), args.samples, None, 3)
    settings = {**plan.samples[0].settings, **overrides}
    pipe, _ = load_pipeline(model, dtype=dtype, device=device)
    scorer = ClipScorer.load(clip_name, device=device, dtype=dtype)
    pre = {"size": scorer.size, "crop": scorer.crop}
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": pre["size"]},
                                           crop_size={"height": pre["crop"], "width": pre["crop"]}),
        tokenizer=scorer.tokenizer)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loop = seed_loop(pipe, scorer.model, processor, plan, settings, work / "loop", device)
    loop["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    modes = {"exact": {}}
    if args.prune_at is not None:
        modes["pruned"] = {"prune_at": args.prune_at, "keep": args.keep}
        if args.cfg_until is not None:
            modes["pruned+truncated"] = {**modes["pruned"], "cfg_until": args.cfg_until}
    runs = {}
    for name, fast in modes.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        runs[name] = engine_run(recipe, model, clip_name, args.samples, {**overrides, **fast}, work / name, args.device,
                                args.engine_dtype or args.dtype, args.batch_size, args.compile, args.channels_last)
        runs[name]["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
        runs[name]["speedup"] = runs[name]["kept_per_s"] / loop["kept_per_s"]
        runs[name]["settings"] = fast
    eng = runs["exact"]
    chosen = {name: winners(work / name) for name in runs}
    for name, run in runs.items():  # how often the faster run keeps exact best-of-N's winner
        same = sum(chosen[name][sid][0] == chosen["exact"][sid][0] for sid in chosen["exact"])
        run["same_winner"] = same / len(chosen["exact"])
        run["mean_clip_score"] = sum(v[1] for v in chosen[name].values()) / len(chosen[name])
    engine_dtype = resolve_dtype(args.engine_dtype or args.dtype, device)
    return {"config": args.config, "recipe": recipe, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
            "engine_dtype": str(engine_dtype).replace("torch.", ""),
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, "samples": args.samples,
            "candidates": 3, "steps": settings["steps"], "size": settings["width"], "batch_size": args.batch_size,
            "compile": args.compile, "channels_last": args.channels_last, "seed_loop": loop, "engine": eng,
            "modes": runs,
            "speedup": eng["kept_per_s"] / loop["kept_per_s"], "peak_rss_mb": peak_rss_mb(), "work": str(work)}


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no /proc/self/io")


def filtering(args) -> dict:
    """Bytes read (rchar) to load one primary label, against the compressed bytes of its row groups."""
    import datasets
    import pyarrow.parquet as pq

    from facesynth.builder import Facesynth
    from facesynth.generation import GenerateConfig, generate

    out = Path(tempfile.mkdtemp(prefix="facesynth-filter-")) / "ds"
    generate(GenerateConfig(recipe="emotions", out=out, num_samples=args.samples, model="tiny", candidates=1,
                            steps=1, quiet=True, rows_per_shard=200))
    matching = 0
    for path in sorted((out / "data").glob("*.parquet")):
        meta = pq.ParquetFile(path).metadata
        ids = pq.read_table(path, columns=["emotion"])["emotion"].to_pylist()
        start = 0
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            if ids[start] == 0:
                matching += sum(group.column(c).total_compressed_size for c in range(group.num_columns))
            start += group.num_rows
    results = {"samples": args.samples, "matching_bytes": matching,
               "total_bytes": sum(p.stat().st_size for p in (out / "data").glob("*.parquet"))}
    cache = Path(tempfile.mkdtemp(prefix="facesynth-cache-"))
    # warm up with another label, so module imports and first-use reads are not counted
    datasets.load_dataset(str(out), "sad", cache_dir=str(cache / "warm-a"))
    Facesynth(data_dir=str(out), filters={"emotion": "sad"}, cache_dir=str(cache / "warm-b")).download_and_prepare()
    before = rchar()
    ds = datasets.load_dataset(str(out), "happy", cache_dir=str(cache / "a"))
    results["load_dataset_config_bytes"] = rchar() - before
    results["load_dataset_config_rows"] = sum(len(d) for d in ds.values())
    before = rchar()
    builder = Facesynth(data_dir=str(out), filters={"emotion": "happy"}, cache_dir=str(cache / "b"))
    builder.download_and_prepare()
    results["builder_filter_bytes"] = rchar() - before
    results["builder_filter_rows"] = sum(len(builder.as_dataset(split=s)) for s in builder.info.splits)
    for key in ("load_dataset_config", "builder_filter"):
        results[f"{key}_ratio"] = results[f"{key}_bytes"] / matching
    return results


def memory(args) -> dict:
    """Peak RSS of ``facesynth generate`` (tiny, 1 candidate, 1 step) at two sizes, each in its own process."""
    out = {}
    for n in (args.small, args.large):
        folder = Path(tempfile.mkdtemp(prefix="facesynth-mem-")) / "ds"
        code = ("import resource, sys; from facesynth.cli import main\n"
                "try:\n    main.main(args=sys.argv[1:], prog_name='facesynth')\nexcept SystemExit as e:\n"
                "    assert not e.code, e.code\n"
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code, "generate", "emotions", "--model", "tiny", "-n", str(n),
                               "--candidates", "1", "--steps", "1", "-o", str(folder), "-q"],
                              capture_output=True, text=True, check=True)
        out[n] = {"peak_rss_mb": int(proc.stdout.split()[-1]) / 1024, "wall_s": time.perf_counter() - start}
    out["growth"] = out[args.large]["peak_rss_mb"] / out[args.small]["peak_rss_mb"] - 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=[*TINY, *random_models.NAMES], default="tiny",
                        help="a tiny preset (CPU, seconds), or a real model's architecture with random weights")
    parser.add_argument("--measure", choices=["speed", "filtering", "memory"], default="speed")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--engine-dtype", choices=["fp16", "bf16", "fp32"],
                        help="the engine's dtype, if not --dtype (e.g. bf16 on a CPU with AMX)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--size", type=int, help="real configs: image size (default the model's own; a CPU "
                        "manages 128 or 256 for sd15)")
    parser.add_argument("--steps", type=int, help="real configs: denoising steps (default the model card's)")
    parser.add_argument("--prune-at", type=float, help="also run with candidate pruning at this fraction")
    parser.add_argument("--keep", type=int, default=1, help="candidates kept past --prune-at")
    parser.add_argument("--cfg-until", type=float, help="also run pruned with guidance truncated at this fraction")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10000)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.measure == "filtering":
        args.samples = args.samples or 800
        result = filtering(args)
    elif args.measure == "memory":
        result = memory(args)
    else:
        args.samples = args.samples or (24 if args.config in TINY else 48)
        args.batch_size = args.batch_size or (12 if args.config in TINY else 24)
        result = compare(args)
        print(f"{args.config} on {result['gpu'] or result['device']} ({result['dtype']}), {args.samples} samples, "
              f"best-of-3, {result['steps']} steps, {result['size']}x{result['size']}")
        print(f"  seed loop : {result['seed_loop']['kept_per_s']:.3f} kept images/s")
        for name, run in result["modes"].items():
            print(f"  facesynth {name} {run['settings'] or ''}: {run['kept_per_s']:.3f} kept images/s "
                  f"({result['engine_dtype']}), {run['unet_per_image']:.1f} UNet or transformer evaluations per kept image "
                  f"({run['speedup']:.1f}x the seed loop); same winner as exact {100 * run['same_winner']:.0f}%, "
                  f"mean clip_score {run['mean_clip_score']:.2f}")
            for stage, ms in run["per_image_ms"].items():
                print(f"    {stage:34s} {ms:8.1f} ms per kept image")
            print(f"    accelerator busy {100 * run['accelerator_busy']:.0f}% of wall time")
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
