"""``facesynth review``: the gallery on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import click

from .core import Location, Terminated, in_store, main

@main.command("review")
@click.argument("directory", type=Location())
@click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True,
              help="Port on 127.0.0.1 (0 picks a free one).")
def review_cmd(directory: Path, port: int) -> None:
    """Look at a dataset in the browser and reject rows before publishing.

    Serves a gallery on 127.0.0.1 only: one section per primary label, filters by every
    attribute and split, sorting by score, the full image and columns on click. Rejections
    (click, x, or many selected at once, with an optional reason) are saved at once to
    DIRECTORY/verdicts.jsonl; the shards are not touched. Then the same generate command
    makes the rejected samples again at their next attempt, so every quota stays exact.
    A store's URL is shown read-only (its shards are staged here first): review a local copy to
    record verdicts.

    \b
    Examples:
      facesynth review demo                  # then open the printed URL
      facesynth review demo --port 8080
      ssh -L 7860:127.0.0.1:7860 gpu-box     # review a remote folder from your laptop
      facesynth review s3://my-bucket/agfd   # read-only
    """
    from ..review.server import ReviewServer, read_only_store

    remote = isinstance(directory, str)
    with in_store(directory) as (folder, _):
        server = ReviewServer(folder, port, read_only=read_only_store(directory) if remote else None)
        n, rejected = len(server.gallery), int(server.gallery.rejected.sum())
        mode = ", read-only" if remote else ""
        click.echo(f"Reviewing {directory} ({n} rows, {rejected} rejected{mode}) at {server.url}  (Ctrl-C to stop)")
        try:
            server.run()
        except (KeyboardInterrupt, Terminated):  # uvicorn stops cleanly, then passes the signal on
            pass
    if not remote:
        click.echo(f"Verdicts are in {Path(directory) / 'verdicts.jsonl'}; run the same generate command to make "
                   "the rejected rows again.")
