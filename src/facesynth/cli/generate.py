"""``facesynth generate``, ``merge`` and ``benchmark``: make a dataset folder (alone or as one of many workers)."""

from __future__ import annotations

from pathlib import Path

import click

from .core import FiniteFloat, Location, device_options, main, model_options, multiple_of_8, quiet_option, speed_options

@main.command("generate")
@click.argument("recipe")
@click.option("--out", "-o", required=True, type=Location(),
              help="Dataset folder, or an fsspec URL (s3://bucket/prefix, gs://, az://, hf://buckets/...).")
@click.option("--stage", type=click.Path(file_okay=False),
              help="With a URL as --out: the local staging folder (default: one in facesynth's cache).")
@click.option("--num-samples", "-n", type=int, help="Rows to make (default: all strata of a strata recipe).")
@click.option("--seed", type=int, help="Master seed (default: the recipe's).")
@model_options
@click.option("--identities", metavar="ATTR[,ATTR]",
              help="Identity sets: one synthetic person per set, one row per value of these attributes (the others "
                   "fixed per person); replaces the vary of the recipe's identities section.")
@click.option("--candidates", type=int, default=3, show_default=True, help="Candidates per sample (best-of-N).")
@click.option("--batch-size", type=int, default=12, show_default=True, help="Images per pipeline call.")
@device_options
@click.option("--guidance", type=FiniteFloat(0, 50), help="Override the recipe's guidance scale.")
@click.option("--width", type=click.IntRange(8, 4096), callback=multiple_of_8,
              help="Override the recipe's width (a multiple of 8).")
@click.option("--height", type=click.IntRange(8, 4096), callback=multiple_of_8,
              help="Override the recipe's height (a multiple of 8).")
@speed_options
@click.option("--rerank", type=click.Choice(["caption", "prompt"]), default="caption", show_default=True,
              help="Score candidates against the attribute caption or the full prompt.")
@click.option("--min-label-confidence", type=FiniteFloat(0, 1),
              help="Retry a sample with fresh seeds while CLIP's zero-shot probability of its label is lower.")
@click.option("--max-attempts", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Attempts per sample under --min-label-confidence.")
@click.option("--faces", is_flag=True,
              help="Keep only candidates with exactly one face (OpenCV Haar cascades; pip install 'facesynth[faces]').")
@click.option("--min-face-size", type=FiniteFloat(0, 1, min_open=True), default=0.2, show_default=True,
              help="Smallest face counted by --faces, as a fraction of the image's shorter side.")
@click.option("--dedupe-threshold", type=FiniteFloat(-1, 1),
              help="Reject a candidate whose CLIP image cosine to a kept row of its label cell is higher "
                   "[default: 0.95; off with --model tiny].")
@click.option("--no-dedupe", is_flag=True, help="Keep near-duplicates.")
@click.option("--safety", is_flag=True, help="Reject candidates that CLIP finds likely unsafe (zero-shot screen).")
@click.option("--safety-threshold", type=FiniteFloat(0, 1), default=0.5, show_default=True,
              help="Unsafe probability above which --safety rejects.")
@click.option("--max-refills", type=click.IntRange(0, 1000), default=8, show_default=True,
              help="Extra attempts, with fresh seeds, for a sample whose candidates all failed the gates.")
@click.option("--verify", multiple=True, metavar="ATTR=MODEL",
              help="Check ATTR with an independent model: an image classifier (Hub id or local folder), or "
                   "zero-shot:CLIP_MODEL; replaces the recipe's verifier of ATTR. Repeatable.")
@click.option("--verify-mode", type=click.Choice(["gate", "record"]), default="gate", show_default=True,
              help="gate: reject a candidate the verifier disputes (refills keep every quota); record: only record.")
@click.option("--crop-margin", type=FiniteFloat(0, 2), default=0.25, show_default=True,
              help="With --faces, verifiers see the face box padded by this fraction of its size each side.")
@click.option("--rows-per-shard", type=click.IntRange(1), help="Rows per Parquet shard (default: what fits 500 MB).")
@click.option("--overwrite", is_flag=True, help="Replace a dataset made with other parameters.")
@click.option("--repair", is_flag=True, help="Regenerate damaged shards (the ones validate reports) and resume.")
@click.option("--dataset-version", help="Version to record (default 1.0.0; growing a dataset bumps the minor).")
@click.option("--worker-index", type=int, help="This worker's index, 0..N-1 (e.g. $SLURM_ARRAY_TASK_ID).")
@click.option("--num-workers", type=int, help="Number of independent workers sharing --out.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Run the workers as Ray tasks (one per --num-workers, default one per GPU), retried when a node "
                   "dies; ADDRESS is the cluster's (default: the one Ray finds). Needs facesynth[ray].")
@click.option("--compile", is_flag=True, help="torch.compile the UNet (pays off on long GPU runs).")
@click.option("--channels-last", is_flag=True, help="channels_last memory format for the UNet and VAE.")
@quiet_option
def generate_cmd(recipe: str, out: Path, **options) -> None:
    """Generate a dataset folder (re-run the same command to resume).

    Under torchrun or accelerate launch every process takes its share of the
    shards, and the last one to finish merges the manifests and writes the card.

    \b
    Examples:
      facesynth generate emotions --model tiny --num-samples 32 --out demo
      facesynth generate emotions -n 10000 --out emotions-10k --batch-size 24
      facesynth generate agfd --model ./realisticVisionV20.safetensors --out agfd
      facesynth generate emotions -n 5000 --out faces --faces --safety  # quality gates
      facesynth generate emotions -n 5000 --out checked --verify emotion=trpakov/vit-face-expression
      facesynth generate emotions -n 5000 --out fast --prune-at 0.3 --keep 1 --cfg-until 0.6
      facesynth generate emotions --model ./lcm-dreamshaper --preset lcm --out few-step
      facesynth generate emotions --lora latent-consistency/lcm-lora-sdv1-5 --preset lcm --out lcm
      facesynth generate emotions --lora ./face-detail.safetensors@0.7 --out detailed
      facesynth generate emotions_flux --out flux                  # FLUX.1 [schnell], 4 steps
      facesynth generate emotions_flux --model stabilityai/stable-diffusion-3.5-medium --out sd35
      facesynth generate emotions -n 20000 --out big                 # grow a 10000-row dataset
      facesynth generate emotions -n 4000 --identities emotion --out people   # each person with every emotion
      torchrun --nproc_per_node 8 -m facesynth.cli generate agfd --out agfd
      facesynth generate agfd --out agfd --worker-index 3 --num-workers 16
      facesynth generate agfd --out s3://my-bucket/agfd --worker-index 3 --num-workers 16
      facesynth generate agfd --out s3://my-bucket/agfd --ray --num-workers 16
    """
    from ..dataset_card.escape import py
    from ..generation import GenerateConfig, generate

    ray_address = options.pop("ray_address")
    config = GenerateConfig(recipe=recipe, out=out, **options)
    if ray_address is not None:
        from ..generation.ray_executor import generate_on_ray

        result, done = generate_on_ray(config, ray_address)
        retried = ", ".join(str(d["worker"]) for d in done if d["shards_skipped"])
        click.echo(f"{len(done)} Ray workers{f' (resumed: {retried})' if retried else ''}")
    else:
        result = generate(config)
    preset = _tiny_preset_line(config)  # after the run: bad input stays one line
    if preset:
        click.echo(preset)
    who = "" if result.worker.alone else f"worker {result.worker.index} of {result.worker.count}: "
    click.echo(f"{who}{result.out}: {result.rows} rows ({result.shards_written} shards written, "
               f"{result.shards_skipped} already done).")
    if result.replaced:
        click.echo(f"{result.replaced} row(s) rejected in review were made again; version {result.version}.")
    q = result.quality
    gated = q and q["rejected"] - q["by_reason"].get("review", 0)  # rows rejected in review are counted apart
    if gated:
        reasons = ", ".join(f"{r} {n}" for r, n in q["by_reason"].items() if n and r != "review")
        click.echo(f"Quality gates rejected {gated} of {q['checked']} candidates checked ({reasons}); "
                   f"{q['refills']} refills kept every quota.")
    if result.merged:
        loader = "facesynth.load" if isinstance(result.out, str) and "://" in result.out else "datasets.load_dataset"
        click.echo(f"Load it with {loader}({py(result.out)})")
    else:
        click.echo("Other workers are still running; the last to finish merges (or run `facesynth merge`).")


def _tiny_preset_line(config) -> str | None:
    """One line when the tiny preset replaces the recipe's size and steps (the card says it too)."""
    from ..recipe import load_recipe
    from ..tiny import TINY_SETTINGS, is_tiny

    from ..recipe import PRESETS

    recipe = load_recipe(config.recipe)
    if not is_tiny(config.model or recipe.model):
        return None
    preset = {k: v for k, v in PRESETS.get(config.preset or "", {}).items() if k in TINY_SETTINGS}
    effective = {**TINY_SETTINGS, **preset}  # what the run used: the preset's steps beat the tiny model's
    changed = {k: v for k, v in effective.items() if getattr(config, k) is None and recipe.settings.get(k) != v}
    if not changed:
        return None
    def show(settings):
        parts = [f"{settings['width']}x{settings['height']}" if "width" in changed or "height" in changed else "",
                 f"{settings['steps']} step{'s' * (settings['steps'] != 1)}" if "steps" in changed else ""]
        return " with ".join(p for p in parts if p)

    by = f" (--preset {config.preset})" if preset else ""
    return (f"--model {config.model or recipe.model}: a random-weight test model, run at "
            f"{show({**recipe.settings, **changed})}{by} (the recipe asks for {show(recipe.settings)}); its images "
            "are noise, not faces.")


@main.command("merge")
@click.argument("directory", type=Location())
@click.option("--num-workers", type=int, help="Which run's workers to merge, if several left manifests.")
@click.option("--no-card", is_flag=True, help="Do not write the card.")
def merge_cmd(directory: Path, num_workers: int | None, no_card: bool) -> None:
    """Join the manifests of finished workers into manifest.json, and write the card.

    \b
    Examples:
      facesynth merge agfd
      facesynth merge s3://my-bucket/agfd
    """
    from ..generation.remote import merge_location

    if not isinstance(directory, str) and not directory.is_dir():
        raise click.BadParameter(f"'{directory}' is not a folder", param_hint="'DIRECTORY'")
    done = merge_location(directory, num_workers, card=not no_card)
    click.echo(f"{directory}: merged {done['workers']} workers, {done['shards']} shards")


@main.command("benchmark")
@click.argument("recipe")
@click.option("--num-samples", "-n", type=click.IntRange(1), default=24, show_default=True, help="Samples to run.")
@model_options
@click.option("--candidates", type=click.IntRange(2, 64), default=3, show_default=True, help="Candidates per sample.")
@click.option("--batch-size", type=click.IntRange(1), default=12, show_default=True, help="Images per pipeline call.")
@click.option("--seed", type=int, help="Master seed (default: the recipe's).")
@device_options
@speed_options
@quiet_option
def benchmark_cmd(recipe: str, quiet: bool, **options) -> None:
    """Measure pruning on your model: exact best-of-N and the pruned run on the same plan.

    Reports UNet evaluations per kept image, kept images/s, the mean clip_score of both, and how
    often the pruned run keeps the same winner as exact best-of-N. Nothing is written.

    \b
    Examples:
      facesynth benchmark emotions --model tiny --prune-at 0.5 --keep 1
      facesynth benchmark emotions --model stable-diffusion-v1-5/stable-diffusion-v1-5 -n 48 --prune-at 0.3 --keep 1 --cfg-until 0.6
    """
    from ..generation.agreement import benchmark
    from ..generation import GenerateConfig

    result = benchmark(GenerateConfig(recipe=recipe, out=Path("."), **options), quiet=quiet)
    click.echo(result.table())
