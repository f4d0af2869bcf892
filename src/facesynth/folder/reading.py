"""Reading a dataset folder (or a URL of one): its manifest, checked for what every reader relies on, its
shards, whether a run is writing it or stopped before it finished. No torch, no ``datasets`` builder here."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import OutputError
from .files import inside, safe_name
from .writer import FORMAT_VERSION, Manifest, is_facesynth_manifest

logger = logging.getLogger(__name__)


def content_fingerprint(manifest: Manifest) -> str:
    """A hash of every shard's name and sha256: changes whenever the data does."""
    blob = "\n".join(f"{name} {rec['sha256']}" for name, rec in sorted(manifest.shards.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _RecipeRef(_Open):
    yaml: str
    source: str


class _PlanRef(_Open):
    num_samples: int
    seed: int
    candidates: int


class _Shard(_Open):
    split: str
    rows: int
    bytes: int
    sha256: str


class _Named(_Open):
    name: str


class _Manifest(_Open):
    """What readers of manifest.json rely on; anything else is kept as it is."""

    recipe: _RecipeRef
    plan: _PlanRef
    shards: dict[str, _Shard]
    layout: list[str]
    complete: bool = False
    format: int = 0
    parameters: dict = {}
    files: dict[str, str] = {}


class _Generated(_Manifest):
    model: _Named
    clip_model: _Named
    runtime: dict = {}
    generation: dict = {}


def read_manifest(root: str | Path, generated: bool = False, current: bool = False) -> Manifest:
    """The folder's manifest, checked for the keys and types every reader relies on.

    ``generated`` also requires what regenerating rows needs: the model and CLIP records;
    ``current``, a folder made by this version's plan and layout (loading needs neither).
    """
    manifest = Manifest.load(Path(root))
    if manifest is None:
        raise OutputError(f"'{root}': no manifest.json; is this a facesynth dataset folder?")
    return checked(manifest, root, generated, current)


def checked(manifest: Manifest, root: str | Path, generated: bool = False, current: bool = False) -> Manifest:
    """``manifest`` if it has the keys and types readers rely on (see :func:`read_manifest`)."""
    if not is_facesynth_manifest(manifest.data):
        raise OutputError(f"'{Manifest.path(root)}': not a facesynth manifest (another program's file?); "
                          "is this a facesynth dataset folder?")
    try:
        (_Generated if generated else _Manifest).model_validate(manifest.data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise OutputError(f"'{Manifest.path(root)}': not a valid facesynth manifest ({where}: {err['msg']})") from None
    where = f"'{Manifest.path(root)}'"
    for name in [*manifest.shards, *manifest["layout"], *(manifest.get("files") or {})]:
        safe_name(name, where)  # every file it names lies inside the folder
    if (current or generated) and manifest.get("format", 0) != FORMAT_VERSION:
        raise OutputError(outdated(root, manifest))
    return manifest


def outdated(root: str | Path, manifest: Manifest) -> str:
    """One line for a folder made by another facesynth version's plan and layout."""
    return (f"'{root}': made by another facesynth version (manifest format {manifest.get('format', 0)}; this "
            f"version's is {FORMAT_VERSION}), whose plan, layout or columns differ; it still loads with load_dataset, and "
            "the same generate command with --overwrite remakes it in this version's layout")


def is_url(path: str) -> bool:
    return "://" in str(path)


def remote_manifest(url: str) -> Manifest:
    """The manifest of a dataset behind an fsspec URL (``hf://datasets/ORG/NAME@REV``): one small read."""
    import fsspec

    from .files import loads_json

    try:
        with fsspec.open(f"{url}/manifest.json", "r", encoding="utf-8") as f:
            data = loads_json(f.read())
    except FileNotFoundError:
        raise OutputError(f"'{url}': no manifest.json; is this a facesynth dataset?") from None
    except (OSError, ValueError) as exc:
        raise OutputError(f"'{url}': cannot read manifest.json ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise OutputError(f"'{url}/manifest.json': not a valid manifest (not a JSON object)")
    return checked(Manifest(data), url)


def hub_url(repo_id: str, revision: str | None = None) -> str:
    """The ``hf://`` URL of a dataset repo at a revision (branch, tag or commit)."""
    from urllib.parse import quote

    return f"hf://datasets/{repo_id}@{quote(revision or 'main', safe='')}"


def shard_paths(root: str | Path, manifest: Manifest) -> Mapping[str, Path]:
    """Each recorded shard's path, in name order; a missing one is an error that says what to do."""
    from .lazy import LazyPaths, has_shard, lazy_of

    names = sorted(manifest.shards)
    for name in names:
        if not has_shard(root, name):
            raise OutputError(f"'{root}': shard {name} is missing; run `facesynth validate {root}`")
    return LazyPaths(root, names) if lazy_of(root) is not None else {name: inside(Path(root), name) for name in names}


def wait_for_writer(root: Path, wait: bool | float, then: str = "load it") -> None:
    """One line if a facesynth process is writing ``root`` (or, with ``wait``, wait up to that many seconds,
    ``True`` for as long as it takes): a split read then could hold only the shards finished so far."""
    import time

    from .lock import FolderBusy, folder_held, holders

    deadline = None if wait is True else time.monotonic() + float(wait or 0)
    while folder_held(root):
        if deadline is not None and time.monotonic() >= deadline:
            waited = f" after waiting {float(wait):g} s" if wait else ""
            pids = ", ".join(holders(root)) or "unknown"
            hint = ", or pass wait=True to wait for it" if then == "load it" else ""
            raise FolderBusy(f"'{root}': a facesynth process (pid {pids}) is writing it{waited}; {then} when that "
                             f"finishes{hint}")
        time.sleep(0.2)


def check_complete(root, manifest: Manifest, partial: bool) -> None:
    """One line for a folder whose last run stopped before it finished (killed, or out of disk), unless
    ``partial`` asks for the shards finished so far."""
    if manifest.get("complete"):
        return
    done, planned = len(manifest.shards), len(manifest.get("layout") or [])
    if partial and done:
        logger.warning("%s is not complete (%d of %d shards); loading the shards finished so far", root, done,
                       planned)
        return
    grow = (manifest.get("previous") or {}).get("version")
    what = f"growing from version {grow} to {manifest.get('version')}" if grow else "its run"
    raise OutputError(f"'{root}': not complete: {what} stopped after {done} of {planned} shards; run the same "
                      "generate command to finish it" + (", or pass partial=True to load the finished shards" if done
                                                         else ""))


