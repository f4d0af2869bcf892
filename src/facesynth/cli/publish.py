"""``facesynth push``: publish a folder to the Hub."""

from __future__ import annotations

from pathlib import Path

import click

from .core import Location, main


def _size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


@main.command("push")
@click.argument("directory", type=Location(exists=True))
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
    """Validate DIRECTORY (a folder, or a store's URL) and publish it to the Hub as one commit; optionally tag it.

    Shards that the previous version had and this one lacks are deleted in the same
    commit; unchanged files are not sent again. Re-run the same command after a failure.

    \b
    Examples:
      facesynth push demo --repo-id me/faces-demo --dry-run
      facesynth push demo --repo-id me/faces-demo --tag v1.0.0
      facesynth push demo --repo-id org/faces --branch dev --create-pr -m "grow to 20k"
      facesynth push s3://my-bucket/agfd --repo-id me/agfd   # shard by shard, no full local copy
    """
    from ..publish import push

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
