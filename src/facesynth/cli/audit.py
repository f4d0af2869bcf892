"""``facesynth audit``: a classifier's figures on each group of a dataset, and its counterfactual flips."""

from __future__ import annotations

from pathlib import Path

import click

from .core import main, quiet_option


@main.command("audit")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", required=True, metavar="CLASSIFIER",
              help="The classifier under audit: an image classifier (Hub id or local folder, safetensors) or "
                   "zero-shot:CLIP_MODEL over the attribute's label prompts.")
@click.option("--attribute", help="The attribute it predicts (default: the recipe's primary label).")
@click.option("--split", default="test", show_default=True, help="The split to audit.")
@click.option("--map", "mapping", multiple=True, metavar="CLASS=VALUE",
              help="Map a class of the model to a value (classes named like a value map by themselves; the rest "
                   "are 'other').")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="The report folder (default: DIRECTORY/audit).")
@click.option("--revision", help="The model's Hub branch, tag or commit (pinned to the commit it resolves to).")
@click.option("--device", default="auto", show_default=True, help="Device for the classifier.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seed of the bootstrap intervals.")
@click.option("--rounds", type=click.IntRange(100, 100_000), default=1000, show_default=True,
              help="Bootstrap resamples per interval.")
@click.option("--min-group", type=click.IntRange(1), default=20, show_default=True,
              help="Groups with fewer rows are shown as small, never ranked.")
@click.option("--card", is_flag=True, help="Write the report into DIRECTORY/audit and add it to the dataset card.")
@click.option("--counterfactual/--no-counterfactual", default=None,
              help="Counterfactual figures on identity sets (default: on where the data has sets).")
@quiet_option
def audit_cmd(directory: Path, model: str, attribute: str | None, split: str, mapping: tuple[str, ...],
              out: Path | None, revision: str | None, device: str, seed: int, rounds: int, min_group: int,
              card: bool, counterfactual: bool | None, quiet: bool) -> None:
    """Audit a classifier on a dataset: accuracy, recall and confusion for every group of every other attribute
    and pair of attributes (fairlearn's MetricFrame), gaps between groups with bootstrap intervals, and, on
    identity sets, how often its prediction flips when only one attribute changes.

    Writes predictions.parquet, audit.json, audit.md and pictures to the report folder.

    \b
    Examples:
      facesynth audit faces --model ./my-emotion-classifier
      facesynth audit faces --model some-org/emotion-vit --map joy=happy --map anger=angry --revision v1.0
      facesynth audit pairs --model zero-shot:openai/clip-vit-base-patch32 --attribute gender --card
    """
    from ..audit import audit
    from ..audit.report import summary_lines
    from ..evaluate.real import parse_map

    result = audit(directory, model, attribute, split, parse_map(mapping, "CLASS=VALUE"), out, revision, device, seed, rounds,
                   min_group, card, counterfactual, progress=not quiet)
    for line in summary_lines(result):
        click.echo(line)
    click.echo(f"wrote {Path(result['out']) / 'audit.md'}")
