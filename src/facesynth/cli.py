"""The ``facesynth`` command line. Thin: parse options, call the library, map errors to one line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from .errors import FacesynthError, visible
from .recipe import PRESETS, SCHEDULER_NAMES

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what Slurm and Kubernetes send


class Terminated(BaseException):
    """SIGTERM, handled like Ctrl-C: the shard in progress is dropped, finished ones are kept.

    Not a KeyboardInterrupt, which click would turn into a plain ``Abort``.
    """


class _State:
    """Global flags, which may stand before or after the subcommand."""

    debug = False
    verbose = 0


def _message(exc: BaseException) -> tuple[str, int]:
    """The central map from exception to (one-line message, exit status)."""
    if isinstance(exc, FacesynthError):
        return str(exc), exc.exit_code
    if isinstance(exc, click.ClickException):
        return exc.format_message().replace("\n", " "), EXIT_USAGE
    if isinstance(exc, Terminated):
        return "terminated (SIGTERM): finished shards are kept; run the same command again to resume", EXIT_TERMINATED
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted: finished shards are kept; run the same command again to resume", EXIT_INTERRUPTED
    if isinstance(exc, PermissionError):
        return f"cannot write '{exc.filename}': permission denied", EXIT_USAGE
    if isinstance(exc, OSError) and exc.filename:
        return f"'{exc.filename}': {exc.strerror or exc}", EXIT_FAILURE
    from .errors import first_line

    return f"unexpected {type(exc).__name__}: {first_line(exc)} (run with --debug for the traceback)", EXIT_FAILURE


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


class FacesynthGroup(click.Group):
    """A group that reports every error as one line, with a traceback only under --debug."""

    def main(self, args=None, prog_name=None, **kwargs):  # type: ignore[override]
        import signal

        args = list(sys.argv[1:] if args is None else args)
        _State.debug, _State.verbose = False, 0
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:  # click's form of KeyboardInterrupt (Ctrl-C, SIGINT)
            self._fail(KeyboardInterrupt())
        except click.UsageError as exc:  # one line, then click's pointer to the help
            click.echo(f"Error: {visible(_message(exc)[0])}", err=True)
            if exc.ctx is not None:
                click.echo(f"Try '{exc.ctx.command_path} {exc.ctx.help_option_names[0]}' for help.", err=True)
            sys.exit(EXIT_USAGE)
        except BaseException as exc:  # noqa: BLE001 - this is the one place errors become messages
            if isinstance(exc, SystemExit):
                raise
            if _State.debug:
                raise
            self._fail(exc)
        finally:
            signal.signal(signal.SIGTERM, previous)
        sys.exit(rv if isinstance(rv, int) else 0)

    @staticmethod
    def _fail(exc: BaseException) -> None:
        message, code = _message(exc)
        click.echo(f"Error: {visible(message)}", err=True)  # a folder name's escape codes stay text
        sys.exit(code)


def _setup_logging(verbose: int, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    if not debug:
        import os

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        for name in ("transformers", "diffusers", "datasets", "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _quiet(value: bool) -> bool:
    """``-q``: nothing but errors and the command's own result, from facesynth and the libraries under it."""
    if value and not _State.debug:
        import os
        import warnings

        warnings.filterwarnings("ignore")  # libraries' FutureWarnings and the like; errors still raise
        for name, setting in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                              ("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error")):
            os.environ[name] = setting  # read by each library when it is imported (they load lazily)
        logging.getLogger().setLevel(logging.ERROR)
        for module, call in (("huggingface_hub.utils", "disable_progress_bars"), ("datasets", "disable_progress_bars"),
                             ("transformers.utils.logging", "disable_progress_bar"),
                             ("diffusers.utils.logging", "disable_progress_bar")):
            if module in sys.modules:  # already imported: tell it now
                getattr(sys.modules[module], call)()
    return value


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        _State.debug = True
        _setup_logging(_State.verbose, True)


def _set_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:
        _State.verbose += value
        _setup_logging(_State.verbose, _State.debug)


def global_options() -> list[click.Option]:
    """``--debug`` and ``-v``: accepted before the subcommand and after it."""
    return [
        click.Option(["--debug"], is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                     help="Show tracebacks and debug logs."),
        click.Option(["-v", "--verbose"], count=True, expose_value=False, is_eager=True, callback=_set_verbose,
                     help="More logging."),
    ]


class FacesynthCommand(click.Command):
    """Every subcommand also takes the global flags."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.extend(global_options())


FacesynthGroup.command_class = FacesynthCommand


class FiniteFloat(click.FloatRange):
    """A float range that also refuses NaN and infinity (which compare false with any bound)."""

    def convert(self, value, param, ctx):
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def _multiple_of_8(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value % 8:
        raise click.BadParameter(f"{value} is not a multiple of 8 (the VAE works on 8x8 pixel blocks).",
                                 ctx, param)
    return value


@click.group(cls=FacesynthGroup, context_settings={"help_option_names": ["-h", "--help"]},
             params=global_options())
@click.version_option(package_name="facesynth")
def main() -> None:
    """Build balanced, labelled, reproducible synthetic face datasets.

    \b
    Examples:
      facesynth plan emotions --num-samples 1000
      facesynth generate emotions --model tiny --num-samples 32 --out demo
      facesynth card demo
    """
    _setup_logging(_State.verbose, _State.debug)


@main.command("recipes")
def recipes_cmd() -> None:
    """List the shipped recipes."""
    from .recipe import load_recipe, shipped_recipes

    names = shipped_recipes()
    width = max(map(len, names))
    for name in names:
        click.echo(f"{name:{width}s}  {load_recipe(name).description}")


@main.command("plan")
@click.argument("recipe")
@click.option("--num-samples", "-n", type=int, help="Samples to plan (default: all strata of a strata recipe).")
@click.option("--seed", type=int, help="Master seed (default: the recipe's).")
@click.option("--candidates", type=int, default=3, show_default=True, help="Candidates per sample.")
@click.option("--by", help="Attribute to break counts down by (default: gender if there is one, else the primary).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write the plan as JSONL.")
def plan_cmd(recipe: str, num_samples: int | None, seed: int | None, candidates: int, by: str | None,
             output: Path | None) -> None:
    """Print the counts a recipe plans, per attribute value and split.

    \b
    Examples:
      facesynth plan agfd
      facesynth plan emotions --num-samples 1000 --seed 7 -o plan.jsonl
      facesynth plan my_recipe.yaml -n 200
    """
    from .plan import Plan, balance_report, format_balance, format_counts
    from .recipe import load_recipe

    r = load_recipe(recipe)
    if by is None:
        by = "gender" if "gender" in r.attributes and r.primary != "gender" else r.primary
    plan = Plan(r, num_samples, seed, candidates)
    if by not in r.attributes:
        raise click.BadParameter(f"'{by}' is not an attribute ({', '.join(r.attributes)})", param_hint="--by")
    click.echo(format_counts(plan, by))
    click.echo("\n" + format_balance(balance_report(plan)))
    if output:
        plan.write_jsonl(output)
        click.echo(f"wrote {len(plan)} samples to {output}")


def _options(*options):
    """One decorator for options that several commands share, so their names and help stay one."""
    def apply(f):
        for option in reversed(options):
            f = option(f)
        return f
    return apply


model_options = _options(
    click.option("--model", help="A Hub repo id, a local diffusers folder or a .safetensors file; tiny, tiny-sd3 "
                                 "and tiny-flux are random-weight test models."),
    click.option("--model-config", type=click.Path(exists=True, file_okay=False),
                 help="A local diffusers folder of configs for a single .safetensors --model, so it loads offline."),
    click.option("--revision", help="Hub branch, tag or commit of --model."),
    click.option("--clip-model",
                 help="CLIP for reranking (default: openai/clip-vit-base-patch32; tiny with --model tiny)."),
    click.option("--preset", type=click.Choice(list(PRESETS)),
                 help="A few-step model's scheduler, steps and guidance, as its card recommends (lcm: LCM-LoRA 4 "
                      "steps; tcd 4; lightning 4; turbo 1; hyper 8; schnell: FLUX.1 [schnell] 4); --scheduler, "
                      "--steps and --guidance override it."),
    click.option("--lora", multiple=True, metavar="SOURCE[@WEIGHT]",
                 help="A LoRA adapter fused into the model: a Hub repo (owner/name[/file.safetensors]) or a local "
                      ".safetensors file or folder, at WEIGHT (default 1); replaces the recipe's loras. Repeatable."),
)
device_options = _options(
    click.option("--device", default="auto", show_default=True, help="auto, cuda, cuda:N, mps or cpu."),
    click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), help="Default: fp16 on CUDA, fp32 elsewhere."),
    click.option("--scheduler", type=click.Choice(SCHEDULER_NAMES), help="Override the recipe's scheduler."),
    click.option("--steps", type=click.IntRange(1, 1000), help="Override the recipe's steps."),
)
speed_options = _options(
    click.option("--prune-at", type=FiniteFloat(0, 1, min_open=True, max_open=True),
                 help="Opt-in: after this fraction of the steps, score every candidate's predicted image and "
                      "finish only the best --keep (fewer UNet evaluations; see the README)."),
    click.option("--keep", type=click.IntRange(1), help="Candidates per sample kept past --prune-at."),
    click.option("--cfg-until", type=FiniteFloat(0, 1, min_open=True, max_open=True),
                 help="Opt-in: after this fraction of the steps, run only the conditional branch "
                      "(half the UNet batch)."),
)


@main.command("generate")
@click.argument("recipe")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path), help="Dataset folder.")
@click.option("--num-samples", "-n", type=int, help="Rows to make (default: all strata of a strata recipe).")
@click.option("--seed", type=int, help="Master seed (default: the recipe's).")
@model_options
@click.option("--candidates", type=int, default=3, show_default=True, help="Candidates per sample (best-of-N).")
@click.option("--batch-size", type=int, default=12, show_default=True, help="Images per pipeline call.")
@device_options
@click.option("--guidance", type=FiniteFloat(0, 50), help="Override the recipe's guidance scale.")
@click.option("--width", type=click.IntRange(8, 4096), callback=_multiple_of_8,
              help="Override the recipe's width (a multiple of 8).")
@click.option("--height", type=click.IntRange(8, 4096), callback=_multiple_of_8,
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
@click.option("--compile", is_flag=True, help="torch.compile the UNet (pays off on long GPU runs).")
@click.option("--channels-last", is_flag=True, help="channels_last memory format for the UNet and VAE.")
@click.option("--quiet", "-q", is_flag=True, is_eager=True, callback=lambda ctx, param, value: _quiet(value),
              help="Print nothing but errors and the result: no progress bars, no library warnings.")
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
      torchrun --nproc_per_node 8 -m facesynth.cli generate agfd --out agfd
      facesynth generate agfd --out agfd --worker-index 3 --num-workers 16
    """
    from .escape import py
    from .generation import GenerateConfig, generate

    config = GenerateConfig(recipe=recipe, out=out, **options)
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
        click.echo(f"Load it with datasets.load_dataset({py(result.out)})")
    else:
        click.echo("Other workers are still running; the last to finish merges (or run `facesynth merge`).")


def _tiny_preset_line(config) -> str | None:
    """One line when the tiny preset replaces the recipe's size and steps (the card says it too)."""
    from .recipe import load_recipe
    from .tiny import TINY_SETTINGS, is_tiny

    from .recipe import PRESETS

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
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--num-workers", type=int, help="Which run's workers to merge, if several left manifests.")
@click.option("--no-card", is_flag=True, help="Do not write the card.")
def merge_cmd(directory: Path, num_workers: int | None, no_card: bool) -> None:
    """Join the manifests of finished workers into manifest.json, and write the card.

    \b
    Example:
      facesynth merge agfd
    """
    from .folder import merge
    from .lock import FolderLock

    with FolderLock(directory, "DIRECTORY"):
        merged = merge(directory, num_workers)
        if not no_card:
            from .dataset_card import write_card

            write_card(directory)
    click.echo(f"{directory}: merged {merged['workers']} workers, {len(merged.shards)} shards")


@main.command("validate")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--reproduce", "reproduce_k", type=click.IntRange(0), default=0, show_default=True,
              help="Regenerate this many random rows and compare their pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Picks the rows for --reproduce.")
@click.option("--no-images", is_flag=True, help="Skip decoding every image.")
@click.option("--device", default="auto", show_default=True, help="Device for --reproduce.")
@click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), help="Dtype for --reproduce (default: the dataset's).")
@click.option("--quiet", "-q", is_flag=True, is_eager=True, callback=lambda ctx, param, value: _quiet(value),
              help="Print nothing but errors and the result: no progress bars, no library warnings.")
def validate_cmd(directory: Path, reproduce_k: int, seed: int, no_images: bool, device: str, dtype: str | None,
                 quiet: bool) -> None:
    """Check shards, schema, checksums, plan counts, ids, images and card; list every problem.

    Exits 0 when the folder is valid, 1 when a problem was found.

    \b
    Examples:
      facesynth validate demo
      facesynth validate demo --reproduce 5
    """
    from .validate import validate

    report = validate(directory, reproduce=reproduce_k, seed=seed, images=not no_images, device=device,
                      dtype=dtype, progress=not quiet)
    for problem in report.problems:
        click.echo(f"problem: {problem}")
    checked = f"{report.rows} rows in {report.shards} shards, {report.images} images decoded"
    if reproduce_k:
        checked += f", {report.reproduced} rows regenerated"
    if report.ok:
        click.echo(f"{directory}: valid ({checked})")
        return
    click.echo(f"{directory}: {len(report.problems)} problem(s) ({checked})", err=True)
    sys.exit(EXIT_FAILURE)


@main.command("evaluate")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--real", help="A dataset of real photos load_dataset reads (Hub id or local folder), to test on.")
@click.option("--label-column", help="Its label column (needed with --real).")
@click.option("--image-column", help="Its image column (default: the first Image column).")
@click.option("--split", help="Its split (default: test, or its only split).")
@click.option("--revision", help="Its Hub branch, tag or commit (default: main, pinned to the commit it resolves to).")
@click.option("--attribute", help="The attribute its labels are values of (default: the recipe's primary label).")
@click.option("--map", "mapping", multiple=True, metavar="REAL_NAME=VALUE",
              help="Map a real label name to a value (names equal to a value, ignoring case, map by themselves).")
@click.option("--ignore-label", multiple=True, metavar="NAME", help="Leave out real rows with this label.")
@click.option("--skip-bad-images", is_flag=True,
              help="Leave out --real images that cannot be read (empty, truncated, not images, over the pixel limit); "
                   "they are counted and named in the report.")
@click.option("--allow-synthetic-real", is_flag=True,
              help="Compare with a facesynth folder given as --real (refused otherwise: its images are not real).")
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True, help="Cross-validation folds.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Folds, and KID subsets.")
@click.option("--clip-model", help="A local copy of the CLIP the dataset was made with (default: the manifest's).")
@click.option("--device", default="auto", show_default=True, help="Device for embedding --real images.")
@click.option("--quiet", "-q", is_flag=True, is_eager=True, callback=lambda ctx, param, value: _quiet(value),
              help="Print nothing but errors and the result: no progress bars, no library warnings.")
def evaluate_cmd(directory: Path, real: str | None, label_column: str | None, image_column: str | None,
                 split: str | None, revision: str | None, attribute: str | None, mapping: tuple[str, ...],
                 ignore_label: tuple[str, ...], skip_bad_images: bool, allow_synthetic_real: bool, folds: int,
                 seed: int, clip_model: str | None, device: str, quiet: bool) -> None:
    """Measure a dataset: diversity per label cell, label separability, and (with --real) train on
    synthetic, test on real photos. Writes DIRECTORY/evaluation.json and the card's Evaluation section.

    Everything but --real works on the stored CLIP embeddings, with no model.

    \b
    Examples:
      facesynth evaluate demo
      facesynth evaluate faces --real ./real-test --label-column label --map happiness=happy --ignore-label fear
      facesynth evaluate faces --real some-org/real-faces --label-column emotion --split test
    """
    from .evaluate import evaluate
    from .evaluation_report import summary_lines
    from .real import RealSpec, parse_map

    spec = None
    if real is not None:
        if label_column is None:
            raise click.UsageError("--real needs --label-column (the column that holds its labels)")
        spec = RealSpec(real, label_column, split, image_column, revision, attribute, parse_map(mapping),
                        list(ignore_label), skip_bad_images, allow_synthetic_real)
    else:
        given = [n for n, v in (("--label-column", label_column), ("--image-column", image_column),
                                ("--map", mapping), ("--ignore-label", ignore_label), ("--attribute", attribute),
                                ("--revision", revision), ("--split", split), ("--skip-bad-images", skip_bad_images),
                                ("--allow-synthetic-real", allow_synthetic_real)) if v]
        if given:
            raise click.UsageError(f"{given[0]} applies only with --real")
    result = evaluate(directory, spec, folds, seed, clip_model, device, progress=not quiet)
    for line in summary_lines(result):
        click.echo(line)
    click.echo(f"wrote {directory / 'evaluation.json'}")


@main.command("review")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True,
              help="Port on 127.0.0.1 (0 picks a free one).")
def review_cmd(directory: Path, port: int) -> None:
    """Look at a dataset in the browser and reject rows before publishing.

    Serves a gallery on 127.0.0.1 only: one section per primary label, filters by every
    attribute and split, sorting by score, the full image and columns on click. Rejections
    (click, x, or many selected at once, with an optional reason) are saved at once to
    DIRECTORY/verdicts.jsonl; the shards are not touched. Then the same generate command
    makes the rejected samples again at their next attempt, so every quota stays exact.

    \b
    Examples:
      facesynth review demo                  # then open the printed URL
      facesynth review demo --port 8080
      ssh -L 7860:127.0.0.1:7860 gpu-box     # review a remote folder from your laptop
    """
    from .review import ReviewServer

    server = ReviewServer(directory, port)
    n, rejected = len(server.gallery), int(server.gallery.rejected.sum())
    click.echo(f"Reviewing {directory} ({n} rows, {rejected} rejected) at {server.url}  (Ctrl-C to stop)")
    try:
        server.run()
    except (KeyboardInterrupt, Terminated):  # uvicorn stops cleanly, then passes the signal on
        pass
    click.echo(f"Verdicts are in {directory / 'verdicts.jsonl'}; run the same generate command to make the "
               "rejected rows again.")


@main.command("benchmark")
@click.argument("recipe")
@click.option("--num-samples", "-n", type=click.IntRange(1), default=24, show_default=True, help="Samples to run.")
@model_options
@click.option("--candidates", type=click.IntRange(2, 64), default=3, show_default=True, help="Candidates per sample.")
@click.option("--batch-size", type=click.IntRange(1), default=12, show_default=True, help="Images per pipeline call.")
@click.option("--seed", type=int, help="Master seed (default: the recipe's).")
@device_options
@speed_options
@click.option("--quiet", "-q", is_flag=True, is_eager=True, callback=lambda ctx, param, value: _quiet(value),
              help="Print nothing but errors and the result: no progress bars, no library warnings.")
def benchmark_cmd(recipe: str, quiet: bool, **options) -> None:
    """Measure pruning on your model: exact best-of-N and the pruned run on the same plan.

    Reports UNet evaluations per kept image, kept images/s, the mean clip_score of both, and how
    often the pruned run keeps the same winner as exact best-of-N. Nothing is written.

    \b
    Examples:
      facesynth benchmark emotions --model tiny --prune-at 0.5 --keep 1
      facesynth benchmark emotions --model runwayml/stable-diffusion-v1-5 -n 48 --prune-at 0.3 --keep 1 --cfg-until 0.6
    """
    from .agreement import benchmark
    from .generation import GenerateConfig

    result = benchmark(GenerateConfig(recipe=recipe, out=Path("."), **options), quiet=quiet)
    click.echo(result.table())


@main.command("reproduce")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("sample_id")
@click.option("--out", "-o", "out_png", type=click.Path(dir_okay=False, path_type=Path), help="Write the PNG here.")
@click.option("--device", default="auto", show_default=True, help="auto, cuda, cuda:N, mps or cpu.")
@click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), help="Default: the dataset's.")
def reproduce_cmd(directory: Path, sample_id: str, out_png: Path | None, device: str, dtype: str | None) -> None:
    """Regenerate one row from its columns and the manifest, and compare it with the stored image.

    \b
    Example:
      facesynth reproduce demo emotions-0000007 --out row7.png
    """
    from .reproduce import reproduce

    result = reproduce(directory, sample_id, out_png, device=device, dtype=dtype)
    where = f"; wrote {out_png}" if out_png else ""
    for attr in result.verifier_differs:
        verdict, probability = result.verified[attr]
        click.echo(f"{sample_id}: verified_{attr} differs: the verifier now says {verdict} ({probability:.4f}), "
                   f"the row records {result.stored_verified.get(attr)}")
    if result.identical and not result.verifier_differs:
        checked = "".join(f", verified_{a} {v} ({p:.3f})" for a, (v, p) in result.verified.items())
        click.echo(f"{sample_id}: identical to the stored image (clip {result.clip_score:.3f}, "
                   f"stored {result.stored_score:.3f}{checked}){where}")
        return
    if not result.identical:
        click.echo(f"{sample_id}: differs from the stored image (max difference {result.max_diff}/255){where}")
    sys.exit(EXIT_FAILURE)


@main.command("card")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo-id", help="Write the card for this Hub repo, ORG/NAME (its load snippets and citation).")
@click.option("--tag", help="The tag the snippets pin, e.g. v1.0.0.")
@click.option("--gated", is_flag=True, help="Ask for gated access on the Hub (extra_gated_* fields).")
@click.option("--overwrite-card", is_flag=True, help="Replace a README.md that facesynth did not write, instead of "
              "refusing.")
def card_cmd(directory: Path, repo_id: str | None, tag: str | None, gated: bool, overwrite_card: bool) -> None:
    """Regenerate a dataset folder's README.md card and sample grid from its data.

    Text you add outside the card's facesynth markers is kept; a README.md without the
    markers that facesynth did not write is refused unless --overwrite-card is given.

    \b
    Examples:
      facesynth card demo
      facesynth card demo --repo-id me/faces-demo --tag v1.0.0
    """
    from .builder import read_manifest
    from .dataset_card import write_card
    from .lock import FolderLock

    from .publish import check_ref, check_repo_id

    read_manifest(directory, current=True)  # a folder that is not a current dataset stays untouched
    if repo_id is not None:
        check_repo_id(repo_id)
    if tag is not None:
        check_ref(tag, "--tag")
    with FolderLock(directory, "DIRECTORY"):
        path = write_card(directory, repo_id, tag, gated, overwrite_card)
    click.echo(f"wrote {path}")


def _size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


@main.command("push")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo-id", required=True, help="Dataset repo, ORG/NAME (created if missing).")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option("--branch", help="Push to this branch (created from main if missing).")
@click.option("--tag", help="Tag the pushed commit, e.g. v1.0.0.")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option("--message", "-m", help="Commit message (default: recipe, version and row count).")
@click.option("--token", help="Hub token (default: $HF_TOKEN, then `hf auth login`). Never printed or saved.")
@click.option("--dry-run", is_flag=True, help="List what would be uploaded and deleted, with sizes; change nothing.")
@click.option("--gated", is_flag=True, help="Ask visitors for their intended use before they can download.")
@click.option("--overwrite-card", is_flag=True,
              help="Replace a Hub README.md that facesynth did not write, instead of refusing.")
def push_cmd(directory: Path, repo_id: str, private: bool, branch: str | None, tag: str | None, create_pr: bool,
             message: str | None, token: str | None, dry_run: bool, gated: bool, overwrite_card: bool) -> None:
    """Validate DIRECTORY and publish it to the Hub as one commit; optionally tag it.

    Shards that the previous version had and this one lacks are deleted in the same
    commit; unchanged files are not sent again. Re-run the same command after a failure.

    \b
    Examples:
      facesynth push demo --repo-id me/faces-demo --dry-run
      facesynth push demo --repo-id me/faces-demo --tag v1.0.0
      facesynth push demo --repo-id org/faces --branch dev --create-pr -m "grow to 20k"
    """
    from .publish import push

    report = push(directory, repo_id, private=private, branch=branch, tag=tag, create_pr=create_pr,
                  message=message, token=token, dry_run=dry_run, gated=gated, overwrite_card=overwrite_card)
    verbs = {"new": "upload", "changed": "upload", "unchanged": "keep", "stale": "delete", "unknown": "upload"}
    if dry_run:
        for change in report.changes:
            why = "not compared" if change.reason == "unknown" else change.reason
            click.echo(f"{verbs[change.reason]:7s} {change.path}  {_size(change.size)} ({why})")
        up, gone = report.uploads, report.deletes
        if report.remote_error:
            click.echo(f"dry run: the Hub could not be reached ({report.remote_error}), so '{repo_id}' was not "
                       f"compared: all {len(up)} files ({_size(sum(c.size for c in up))}) are listed as uploads; "
                       "nothing was changed")
            return
        click.echo(f"dry run: would upload {len(up)} files ({_size(sum(c.size for c in up))}) and delete "
                   f"{len(gone)} ({_size(sum(c.size for c in gone))}) in {repo_id}; nothing was changed")
        return
    click.echo(f"pushed {len(report.uploads)} changed files, deleted {len(report.deletes)} stale shards: "
               f"{report.pr_url or report.commit_url}")
    if report.tag:
        click.echo(f"tagged {report.commit[:10]} as {report.tag}")
    click.echo(f"{report.url}\nfrom datasets import load_dataset; ds = {report.snippet}")


if __name__ == "__main__":  # pragma: no cover
    main()
