"""``facesynth evaluate``: measure a dataset, alone and against real photos."""

from __future__ import annotations

from pathlib import Path

import click

from .core import Location, in_store, main, quiet_option

@main.command("evaluate")
@click.argument("directory", type=Location(exists=True))
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
@quiet_option
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
      facesynth evaluate s3://my-bucket/faces     # evaluation.json and the card go back to the store
    """
    from ..evaluate.measure import evaluate
    from ..dataset_card.evaluation import summary_lines
    from ..evaluate.real import RealSpec, parse_map

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
    with in_store(directory, write=True) as (root, _):
        result = evaluate(root, spec, folds, seed, clip_model, device, progress=not quiet)
    for line in summary_lines(result):
        click.echo(line)
    click.echo(f"wrote {directory}/evaluation.json")
