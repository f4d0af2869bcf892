"""``facesynth push``: publish a validated dataset folder to the Hub as one commit, optionally tagged.

In order: validate the folder; create the dataset repo (and branch) if needed; list
what the Hub holds; upload the card, manifest, sample grid and shards in one
``upload_folder`` commit that also deletes shards the new version no longer has
(resumable with hf_xet; unchanged files are not sent again); tag that commit.
Every Hub failure becomes one line that says what to do; re-running finishes the job.
The token is passed to ``HfApi`` only: never printed, logged or written.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .builder import read_manifest
from .errors import FacesynthError
from .folder import FIRST_VERSION
from .writer import MANIFEST, Manifest, sha256_file

logger = logging.getLogger(__name__)

UPLOAD_PATTERNS = [MANIFEST, "README.md", "assets/*", "data/**/*.parquet"]
STALE_PATTERNS = ["data/**/*.parquet"]


class PublishError(FacesynthError):
    """The Hub refused or could not be reached; nothing is left half-done without saying so."""

    exit_code = 1


@dataclass
class FileChange:
    path: str
    size: int
    reason: str  # new | changed | unchanged | stale


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

    @property
    def uploads(self) -> list[FileChange]:
        return [c for c in self.changes if c.reason in ("new", "changed")]

    @property
    def deletes(self) -> list[FileChange]:
        return [c for c in self.changes if c.reason == "stale"]

    @property
    def url(self) -> str:
        base = f"https://huggingface.co/datasets/{self.repo_id}"
        return f"{base}/tree/{self.revision}" if self.revision else base

    @property
    def snippet(self) -> str:
        ref = self.tag or self.revision or self.commit
        pin = f', revision="{ref}"' if ref else ""
        return f'load_dataset("{self.repo_id}"{pin})'


def make_api(token: str | None):
    """The Hub client (the one boundary the tests replace)."""
    from huggingface_hub import HfApi

    return HfApi(token=token)


def resolve_token(token: str | None) -> str | None:
    """``--token``, then ``HF_TOKEN``, then the token saved by ``hf auth login``."""
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    from huggingface_hub import get_token

    return get_token()


@contextmanager
def hub_errors(repo_id: str, step: str):
    """Turn Hub and network failures into one line that says what to do next."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    again = "run the same command again to finish (files already uploaded are not sent twice)"
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
        elif status is not None and status >= 500:
            msg = f"the Hub answered {status}: {again}"
        else:
            msg = f"the Hub refused it ({status}: {exc.server_message or str(exc).splitlines()[0]})"
        raise PublishError(f"{step}: {msg}") from None
    except (httpx2.TransportError, ConnectionError, TimeoutError) as exc:
        raise PublishError(f"{step}: cannot reach the Hub ({type(exc).__name__}); check the network, then "
                           f"{again}") from None


def local_files(root: Path, manifest: Manifest) -> dict[str, Path]:
    """What a push sends: card, manifest, sample grid and the manifest's shards."""
    files = {MANIFEST: root / MANIFEST, "README.md": root / "README.md"}
    files.update({p.relative_to(root).as_posix(): p for p in sorted((root / "assets").glob("*")) if p.is_file()})
    files.update({name: root / name for name in sorted(manifest.shards)})
    return files


def plan_changes(root: Path, manifest: Manifest, api, repo_id: str, revision: str | None) -> list[FileChange]:
    """Compare the folder with the repo: new, changed, unchanged and stale (to delete) files."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    remote = {}
    try:
        for entry in api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True):
            if hasattr(entry, "size"):
                remote[entry.path] = entry
    except RevisionNotFoundError:  # a new branch starts from main
        return plan_changes(root, manifest, api, repo_id, None) if revision else []
    except RepositoryNotFoundError:
        remote = {}
    changes = []
    for path, local in local_files(root, manifest).items():
        entry = remote.get(path)
        size = local.stat().st_size
        if entry is None:
            changes.append(FileChange(path, size, "new"))
            continue
        known = manifest.shards.get(path, {}).get("sha256") if path.startswith("data/") else None
        same = entry.lfs is not None and entry.lfs.sha256 == (known or sha256_file(local))
        changes.append(FileChange(path, size, "unchanged" if same else "changed"))
    local = {c.path for c in changes}
    for path, entry in sorted(remote.items()):
        if path.startswith("data/") and path.endswith(".parquet") and path not in local:
            changes.append(FileChange(path, entry.size, "stale"))
    return changes


def push(root: str | Path, repo_id: str, *, private: bool = False, branch: str | None = None,
         tag: str | None = None, create_pr: bool = False, message: str | None = None, token: str | None = None,
         dry_run: bool = False, api=None) -> PushReport:
    """Publish ``root`` to the dataset repo ``repo_id``; see the module docstring for the steps."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    root = Path(root)
    try:
        validate_repo_id(repo_id)
        if "/" not in repo_id:
            raise HFValidationError("no namespace")
    except HFValidationError:
        raise FacesynthError(f"--repo-id: '{repo_id}' is not a dataset repo id of the form ORG/NAME") from None
    if tag and create_pr:
        raise FacesynthError("--tag: not with --create-pr; tag the commit once the pull request is merged")
    _check_folder(root)
    token = resolve_token(token)
    if token is None and not dry_run:
        raise PublishError("not logged in: give --token, set HF_TOKEN, or run `hf auth login`")
    api = api or make_api(token)
    manifest = read_manifest(root)
    report = PushReport(repo_id, branch, tag=tag, dry_run=dry_run)
    if tag and not dry_run:
        with hub_errors(repo_id, "checking tags"):
            _refuse_existing_tag(api, repo_id, tag)
    if not dry_run:
        with hub_errors(repo_id, "creating the repo"):
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            if branch:
                api.create_branch(repo_id, repo_type="dataset", branch=branch, exist_ok=True)
    with hub_errors(repo_id, "listing the repo"):
        report.changes = plan_changes(root, manifest, api, repo_id, branch)
    if dry_run:
        return report
    version = manifest.get("version", FIRST_VERSION)
    rows = sum(r["rows"] for r in manifest.shards.values())
    with hub_errors(repo_id, "uploading"):
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(root), repo_type="dataset", revision=branch,
            commit_message=message or f"facesynth {manifest['recipe'].get('name', '')} {version}: {rows} rows",
            allow_patterns=UPLOAD_PATTERNS, delete_patterns=STALE_PATTERNS, create_pr=create_pr,
        )
    report.commit, report.commit_url, report.pr_url = info.oid, info.commit_url, info.pr_url
    if tag:
        with hub_errors(repo_id, f"tagging {tag} (the upload is done)"):
            api.create_tag(repo_id, tag=tag, tag_message=message or f"version {version}", revision=info.oid,
                           repo_type="dataset")
    logger.info("pushed %s to %s at %s", root, repo_id, info.oid)
    return report


def _check_folder(root: Path) -> None:
    from .validate import validate

    report = validate(root)
    if not report.ok:
        first = report.problems[0]
        raise FacesynthError(f"'{root}' is not ready to publish: {len(report.problems)} problem(s), first: {first}; "
                             f"run `facesynth validate {root}`")


def _refuse_existing_tag(api, repo_id: str, tag: str) -> None:
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
    except RepositoryNotFoundError:
        return
    if any(t.name == tag for t in refs.tags):
        raise FacesynthError(f"--tag: '{tag}' already exists in '{repo_id}'; tags are releases, choose a new one")
