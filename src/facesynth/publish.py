"""``facesynth push``: publish a validated dataset folder to the Hub as one commit, optionally tagged.

In order: validate the folder; create the dataset repo (and branch) if needed; list
what the Hub holds, at which commit; build the card for the repo and tag (merged into
the Hub's README, so what people wrote there stays); upload the card, a manifest
without local paths, the sample grid and the new or changed shards in one commit
that also deletes shards the new version no longer has, based on the commit that was
compared (so two pushes cannot overwrite each other); tag that commit. A dataset in a store
(``s3://...``) is read through a staging folder that holds only the shards being read
(:mod:`.folder.lazy`): each new shard is pre-uploaded as it comes down, and the commit follows.
Every Hub failure becomes one line that says what to do; re-running finishes the job.
The token is passed to ``HfApi`` only: never printed, logged or written.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .folder.reading import read_manifest
from .errors import FacesynthError
from .folder.files import dumps_json, inside
from .folder.lazy import has_shard, lazy_of, shard_file
from .hub_names import check_ref, check_repo_id
from .folder.public import public_manifest
from .folder.state import FIRST_VERSION
from .review.verdicts import VERDICTS, verdicts_path
from .folder.writer import MANIFEST, Manifest, sha256_file

logger = logging.getLogger(__name__)

GRID = "assets/samples.png"


class PublishError(FacesynthError):
    """The Hub refused or could not be reached; nothing is left half-done without saying so."""

    exit_code = 1


@dataclass
class FileChange:
    path: str
    size: int
    reason: str  # new | changed | unchanged | stale | unknown (the remote could not be compared)


@dataclass
class PushReport:
    repo_id: str
    revision: str | None
    changes: list[FileChange] = field(default_factory=list)
    commit: str | None = None
    commit_url: str | None = None
    pr_url: str | None = None
    tag: str | None = None
    dry_run: bool = False
    remote_error: str | None = None  # why a dry run could not compare with the Hub

    @property
    def uploads(self) -> list[FileChange]:
        return [c for c in self.changes if c.reason in ("new", "changed", "unknown")]

    @property
    def deletes(self) -> list[FileChange]:
        return [c for c in self.changes if c.reason == "stale"]

    @property
    def url(self) -> str:
        base = f"https://huggingface.co/datasets/{self.repo_id}"
        return f"{base}/tree/{self.revision}" if self.revision else base

    @property
    def snippet(self) -> str:
        from .dataset_card.escape import py

        ref = self.tag or self.revision or self.commit
        pin = f", revision={py(ref)}" if ref else ""
        return f"load_dataset({py(self.repo_id)}{pin})"


def check_hub_resolves(step: str) -> None:
    """Fail at once, in one line, when the Hub's host name does not resolve (no network), instead of after
    huggingface_hub's retries (about 25 s)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, 443)
    except (socket.gaierror, UnicodeError):
        raise PublishError(f"{step}: cannot reach the Hub ({host} does not resolve); check the network") from None


def make_api(token: str | None):
    """The Hub client (the one boundary the tests replace)."""
    from huggingface_hub import HfApi

    return HfApi(token=token, library_name="facesynth", library_version=__version__)


def resolve_token(token: str | None) -> str | None:
    """``--token``, then ``HF_TOKEN``, then the token saved by ``hf auth login``."""
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    from huggingface_hub import get_token

    return get_token()


def transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures: the HTTP client's transport errors (whichever client this huggingface_hub uses)."""
    import importlib

    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for client in ("httpx2", "httpx", "requests"):
        try:
            module = importlib.import_module(client)
        except ImportError:
            continue
        errors.append(getattr(module, "TransportError", None) or module.exceptions.ConnectionError)
    return tuple(errors)


@contextmanager
def hub_errors(repo_id: str, step: str, dry_run: bool = False):
    """Turn Hub and network failures into one line that says what to do next."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    again = ("run the dry run again" if dry_run else
             "run the same command again to finish (files already uploaded are not sent twice)")
    try:
        yield
    except OfflineModeIsEnabled:
        raise PublishError(f"{step}: HF_HUB_OFFLINE is set; unset it to push") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            msg = "not logged in, or the token is invalid: give --token, set HF_TOKEN, or run `hf auth login`"
        elif status == 403:
            msg = f"no write access to '{repo_id}': use a token with write permission for that namespace"
        elif status == 429:
            msg = f"rate limited by the Hub: wait a few minutes, then {again}"
        elif status == 412:
            msg = f"'{repo_id}' changed since this push compared with it (someone else pushed); {again}"
        elif status is not None and status >= 500:
            msg = f"the Hub answered {status}: {again}"
        else:
            msg = f"the Hub refused it ({status}: {exc.server_message or str(exc).splitlines()[0]})"
        raise PublishError(f"{step}: {msg}") from None
    except transport_errors() as exc:
        raise PublishError(f"{step}: cannot reach the Hub ({type(exc).__name__}); check the network, then "
                           f"{again}") from None


def local_files(root: Path, manifest: Manifest, generated: dict[str, bytes]) -> dict[str, Path | bytes]:
    """What a push sends, and nothing else: the card and manifest made for the repo, the files the manifest
    lists (the sample grid), its shards and the reviewers' verdicts. Every one is a regular file inside the
    folder: a name with ``..`` or a link out of the folder is refused, and other files (``assets/.env``) stay."""
    files: dict[str, Path | bytes] = dict(generated)
    names = [*sorted(manifest.get("files") or {}), GRID, *sorted(manifest.shards)]
    if verdicts_path(root).exists():  # the review log, versioned with the rows it judged
        names.append(VERDICTS)
    for name in names:
        if name in files:
            continue
        path = inside(root, name)
        if name == GRID and not path.exists():
            continue
        if not (has_shard(root, name) if name in manifest.shards else path.is_file()):
            raise FacesynthError(f"'{root}': {name} is not a regular file; refused (nothing was sent)")
        files[name] = path
    return files


def remote_files(api, repo_id: str, revision: str | None) -> dict[str, Any] | None:
    """The repo's files by path (None when the repo does not exist); a missing branch lists main."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return {e.path: e for e in api.list_repo_tree(repo_id, repo_type="dataset", revision=revision,
                                                       recursive=True) if hasattr(e, "size")}
    except RevisionNotFoundError:  # a new branch starts from main
        return remote_files(api, repo_id, None) if revision else None
    except RepositoryNotFoundError:
        return None


def plan_changes(root: Path, manifest: Manifest, files: dict[str, Path | bytes],
                 remote: dict[str, Any] | None) -> list[FileChange]:
    """Compare the folder with the repo: new, changed, unchanged and stale (to delete) files."""
    remote = remote or {}
    changes = []
    for path, local in files.items():
        entry = remote.get(path)
        size = (len(local) if isinstance(local, bytes) else manifest.shards[path]["bytes"]
                if path in manifest.shards else local.stat().st_size)
        if entry is None:
            changes.append(FileChange(path, size, "new"))
            continue
        if isinstance(local, bytes):
            same = entry.lfs is None and entry.size == size and entry.blob_id == _git_blob_id(local)
        else:
            known = manifest.shards.get(path, {}).get("sha256") if path.startswith("data/") else None
            same = entry.lfs is not None and entry.lfs.sha256 == (known or sha256_file(local))
        changes.append(FileChange(path, size, "unchanged" if same else "changed"))
    for path, entry in sorted(remote.items()):
        if path.startswith("data/") and path.endswith(".parquet") and path not in files:
            changes.append(FileChange(path, entry.size, "stale"))
    return changes


def _git_blob_id(data: bytes) -> str:
    import hashlib

    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def push(root: str | Path, repo_id: str, *, private: bool = False, branch: str | None = None,
         tag: str | None = None, create_pr: bool = False, message: str | None = None, token: str | None = None,
         dry_run: bool = False, gated: bool = False, overwrite_card: bool = False, api=None,
         shown: str | None = None) -> PushReport:
    """Publish ``root`` (a folder, or a store's URL) to the dataset repo ``repo_id``; see the module docstring."""
    from .folder.store import is_remote

    if isinstance(root, str) and is_remote(root):
        from .folder.mirror import staged

        with staged(root, lazy=True) as (stage, _):
            return push(stage, repo_id, private=private, branch=branch, tag=tag, create_pr=create_pr, message=message,
                        token=token, dry_run=dry_run, gated=gated, overwrite_card=overwrite_card, api=api, shown=root)
    root = Path(root)
    check_repo_id(repo_id)
    for value, what in ((tag, "--tag"), (branch, "--branch")):
        if value is not None:
            check_ref(value, what)
    if tag and create_pr:
        raise FacesynthError("--tag: not with --create-pr; tag the commit once the pull request is merged")
    _check_folder(root, shown or str(root))
    token = resolve_token(token)
    if token is None and not dry_run:
        raise PublishError("not logged in: give --token, set HF_TOKEN, or run `hf auth login`")
    manifest = read_manifest(root)
    report = PushReport(repo_id, branch, tag=tag, dry_run=dry_run)
    if dry_run:
        return _dry_run(root, manifest, report, api or make_api(token), gated)
    api = api or make_api(token)
    check_hub_resolves("reaching the Hub")
    if tag:
        with hub_errors(repo_id, "checking tags"):
            _refuse_existing_tag(api, repo_id, tag)
    with hub_errors(repo_id, "creating the repo"):
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if branch:
            api.create_branch(repo_id, repo_type="dataset", branch=branch, exist_ok=True)
    with hub_errors(repo_id, "listing the repo"):
        head = api.repo_info(repo_id, repo_type="dataset", revision=branch).sha
        remote = remote_files(api, repo_id, branch)
        existing = None
        if remote and "README.md" in remote:
            existing = Path(api.hf_hub_download(repo_id, "README.md", repo_type="dataset",
                                                revision=head)).read_text(encoding="utf-8")
    generated = _generated(root, manifest, repo_id, tag, gated, existing, overwrite_card)
    files = local_files(root, manifest, generated)
    report.changes = plan_changes(root, manifest, files, remote)
    version = manifest.get("version", FIRST_VERSION)
    rows = sum(r["rows"] for r in manifest.shards.values())
    with hub_errors(repo_id, "uploading"):
        operations = _operations(files, report.changes, root, api, dict(repo_id=repo_id, repo_type="dataset",
                                                                        revision=branch, create_pr=create_pr))
        info = api.create_commit(
            repo_id=repo_id, repo_type="dataset", revision=branch, operations=operations,
            commit_message=message or f"facesynth {manifest['recipe'].get('name', '')} {version}: {rows} rows",
            create_pr=create_pr, parent_commit=head,
        )
    report.commit, report.commit_url, report.pr_url = info.oid, info.commit_url, info.pr_url
    if tag:
        with hub_errors(repo_id, f"tagging {tag} (the upload is done)"):
            api.create_tag(repo_id, tag=tag, tag_message=message or f"version {version}", revision=info.oid,
                           repo_type="dataset")
    logger.info("pushed %s to %s at %s", shown or root, repo_id, info.oid)
    return report


def _generated(root: Path, manifest: Manifest, repo_id: str, tag: str | None, gated: bool, existing: str | None,
               overwrite_card: bool) -> dict[str, bytes]:
    """The card for the repo and tag (merged into the Hub's README) and the published manifest, as bytes."""
    from .dataset_card.card import build_card, merge_card

    card = build_card(root, repo_id, tag, gated, write_grid=False)  # a push changes nothing in the folder
    text = merge_card(card, existing)
    if text is None:
        if not overwrite_card:
            raise FacesynthError(f"--repo-id: the README.md of '{repo_id}' was not written by facesynth (or its "
                                 "facesynth markers were removed), so it cannot be merged; give --overwrite-card to "
                                 "replace it")
        text = str(card)
    return {"README.md": text.encode(), MANIFEST: dumps_json(public_manifest(manifest)).encode()}


def _operations(files: dict[str, Path | bytes], changes: list[FileChange], root: Path, api, repo: dict) -> list:
    """The commit's operations. A lazily staged dataset's shards are brought down and pre-uploaded one by one
    (the commit then refers to them), so the stage never holds the whole dataset."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    lazy = lazy_of(root) is not None
    ops: list = []
    for change in changes:
        if change.reason in ("new", "changed"):
            streamed = lazy and change.path.startswith("data/")
            local = shard_file(root, change.path) if streamed else files[change.path]
            ops.append(CommitOperationAdd(path_in_repo=change.path,
                                          path_or_fileobj=local if isinstance(local, bytes) else str(local)))
            if streamed:
                ops[-1].upload_info.sha256  # noqa: B018 - hashed now, while the shard is in the stage
                api.preupload_lfs_files(additions=[ops[-1]], **repo)
        elif change.reason == "stale":
            ops.append(CommitOperationDelete(path_in_repo=change.path))
    return ops


def _dry_run(root: Path, manifest: Manifest, report: PushReport, api, gated: bool) -> PushReport:
    """Compare with the Hub if it answers; offline, list every local file and say the remote was not compared."""
    from huggingface_hub import constants

    try:
        if constants.HF_HUB_OFFLINE:
            raise PublishError("HF_HUB_OFFLINE is set")
        check_hub_resolves("reaching the Hub")
        with _quiet_hub(), hub_errors(report.repo_id, "listing the repo", dry_run=True):
            remote = remote_files(api, report.repo_id, report.revision)
    except PublishError as exc:
        report.remote_error = str(exc).split(": ", 1)[-1]
        remote = None
    files = local_files(root, manifest, _generated(root, manifest, report.repo_id, report.tag, gated, None, True))
    report.changes = plan_changes(root, manifest, files, remote)
    if report.remote_error:
        report.changes = [FileChange(c.path, c.size, "unknown") for c in report.changes]
    return report


@contextmanager
def _quiet_hub():
    """No retries' warnings from huggingface_hub during a dry run: the one-line summary says it all."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


def _check_folder(root: Path, shown: str) -> None:
    from .validate import validate

    report = validate(root)
    if not report.ok:
        first = report.problems[0]
        raise FacesynthError(f"'{shown}' is not ready to publish: {len(report.problems)} problem(s), first: {first}; "
                             f"run `facesynth validate {shown}`")


def _refuse_existing_tag(api, repo_id: str, tag: str) -> None:
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
    except RepositoryNotFoundError:
        return
    if any(t.name == tag for t in refs.tags):
        raise FacesynthError(f"--tag: '{tag}' already exists in '{repo_id}'; tags are releases, choose a new one")
