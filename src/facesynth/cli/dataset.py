"""``facesynth validate``, ``reproduce`` and ``card``: check a folder, make a row again, write its card."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .core import EXIT_FAILURE, Location, in_store, main, quiet_option

@main.command("validate")
@click.argument("directory", type=Location(exists=True))
@click.option("--reproduce", "reproduce_k", type=click.IntRange(0), default=0, show_default=True,
              help="Regenerate this many random rows and compare their pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Picks the rows for --reproduce.")
@click.option("--no-images", is_flag=True, help="Skip decoding every image.")
@click.option("--device", default="auto", show_default=True, help="Device for --reproduce.")
@click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), help="Dtype for --reproduce (default: the dataset's).")
@quiet_option
def validate_cmd(directory: Path, reproduce_k: int, seed: int, no_images: bool, device: str, dtype: str | None,
                 quiet: bool) -> None:
    """Check shards, schema, checksums, plan counts, ids, images and card; list every problem.

    Exits 0 when the folder is valid, 1 when a problem was found.

    \b
    Examples:
      facesynth validate demo
      facesynth validate demo --reproduce 5
      facesynth validate s3://my-bucket/faces      # read into a staging folder, shard by shard
    """
    from ..validate import validate

    with in_store(directory) as (root, _):
        report = validate(root, reproduce=reproduce_k, seed=seed, images=not no_images, device=device,
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
    from ..reproduce import reproduce

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
@click.argument("directory", type=Location(exists=True))
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
      facesynth card s3://my-bucket/faces
    """
    from ..folder.reading import read_manifest
    from ..dataset_card.card import write_card
    from ..folder.lock import FolderLock

    from ..hub_names import check_ref, check_repo_id

    if repo_id is not None:
        check_repo_id(repo_id)
    if tag is not None:
        check_ref(tag, "--tag")
    with in_store(directory, write=True) as (root, mirror):
        read_manifest(root, current=True)  # a folder that is not a current dataset stays untouched
        with FolderLock(root, "DIRECTORY"):
            path = write_card(root, repo_id, tag, gated, overwrite_card, name=mirror and mirror.name)
    click.echo(f"wrote {path if mirror is None else directory + '/README.md'}")
