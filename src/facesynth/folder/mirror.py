"""A dataset in object storage, made through a local staging folder.

The store is the truth; the staging folder (facesynth's own cache, one per URL) is where a run writes, exactly
as it writes a local folder, so resume, repair, workers and the card work unchanged. The protocol:

- **begin**: the prefix must be empty, or hold this run's record. ``.facesynth/run.json`` (the parameters'
  fingerprint) is created with an exclusive create (``If-None-Match: *``), so a second run with other
  parameters on the same prefix is refused even when both start at once. Then the committed state flows down:
  the store's manifests, and every shard they list that the stage lacks.
- **commit**: each finished shard is uploaded under its final name, then the manifest (the worker's part, or
  ``manifest.json`` for a single process) that lists it, at most every ``FACESYNTH_COMMIT_SECONDS`` (default
  10; 0 after every shard): a shard counts only once a manifest in the store lists it, so one killed
  mid-upload, or uploaded in the last seconds before a kill, is simply made again (the same bytes: rows are
  reproducible).
- **finish**: a worker's complete part (:meth:`Mirror.commit_part`); the process that merges then uploads the
  card and the files the manifest lists, then ``manifest.json`` last (:meth:`Mirror.publish`; ``load`` refuses a
  dataset whose manifest is not complete).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import OutputError
from .files import dumps_json, loads_json
from .lock import WORK_DIR, WORKERS_DIR
from .store import Store
from .writer import MANIFEST, Manifest, is_facesynth_manifest, sha256_file

logger = logging.getLogger(__name__)

COMMIT_SECONDS = 10.0
RUN_RECORD = f"{WORK_DIR}/run.json"
STAGE_MARK = f"{WORK_DIR}/stage.json"
OURS = ("data/", "assets/", "audit/", f"{WORK_DIR}/")  # what a facesynth run writes under a prefix
OUR_FILES = (MANIFEST, "README.md", "evaluation.json")


def stage_folder(url: str) -> Path:
    """The staging folder of ``url``: under ``FACESYNTH_STAGE`` or ``~/.cache/facesynth/stage``, named by the
    URL's digest (the URL itself, which may name a bucket, stays out of the path)."""
    base = os.environ.get("FACESYNTH_STAGE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
        / "facesynth" / "stage"
    return Path(base) / hashlib.sha256(url.encode()).hexdigest()[:20]


class Mirror:
    """A store and the local staging folder a run writes through (see the module docstring)."""

    def __init__(self, store: Store, stage: Path):
        self.store = store
        self.stage = Path(stage)
        self.every = float(os.environ.get("FACESYNTH_COMMIT_SECONDS") or COMMIT_SECONDS)
        self._committed = -float("inf")  # when the manifest last went up
        self.stored: set[str] = set()  # shards known to be in the store (committed before, or uploaded now)
        self.name = store.url.rstrip("/").rsplit("/", 1)[-1]  # what the card calls the dataset

    # begin ---------------------------------------------------------------------------------------------
    def begin(self, header: dict[str, Any], manifest_files: list[str]) -> None:
        """Check the prefix and its run record (nothing is written to the store yet), then bring the committed
        state down to the stage: the manifests, the shards they list, and the card's files."""
        listing = self.store.listing()
        self._check_prefix(listing)
        self.record = {"generator": header["generator"], "fingerprint": header["fingerprint"],
                       "parameters": header["parameters"]}
        self._check_record(listing)
        self.prepare_stage()
        for name in manifest_files:
            data = self.store.read_bytes(name) if name in listing else None
            local = self.stage / name
            if data is None:
                local.unlink(missing_ok=True)  # the store is the truth: no manifest there, none here
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            manifest = Manifest(loads_json(data.decode("utf-8")), name)
            for shard, record in manifest.shards.items():
                self._fetch(shard, record, listing)
                self.stored.add(shard)
            for file, digest in (manifest.get("files") or {}).items() if name == MANIFEST else ():
                local = self.stage / file
                if file in listing and not (local.is_file() and sha256_file(local) == digest):
                    self.store.download(file, local)
        self._drop_unlisted()

    def _check_prefix(self, listing: dict[str, int]) -> None:
        if not listing or RUN_RECORD in listing or self._holds_manifest(listing):
            return
        foreign = sorted(n for n in listing if not n.startswith(OURS) and n not in OUR_FILES)
        shown = ", ".join(foreign[:3] or sorted(listing)[:3])
        raise OutputError(f"--out: '{self.store.url}' is not empty ({shown}) and holds no facesynth run; use an "
                          "empty prefix (nothing was changed)")

    def _holds_manifest(self, listing: dict[str, int]) -> bool:
        if MANIFEST not in listing:
            return False
        try:
            return is_facesynth_manifest(loads_json((self.store.read_bytes(MANIFEST) or b"").decode("utf-8")))
        except (ValueError, UnicodeDecodeError):
            return False

    def claim(self) -> None:
        """Create the run record with an exclusive create, before the first write to the store (after the model
        loaded: a run that cannot start leaves the store as it was). A run record another run created in the
        meantime refuses this one."""
        if self.store.write_bytes(RUN_RECORD, dumps_json(self.record).encode(), create=True):
            return
        if self._check_record(self.store.listing()):
            self.store.write_bytes(RUN_RECORD, dumps_json(self.record).encode())  # growing a finished dataset

    def _check_record(self, listing: dict[str, int]) -> bool:
        """Refuse a prefix whose run record has other parameters; True where this run grows its finished dataset
        (its record is then replaced)."""
        if RUN_RECORD not in listing:
            return False
        try:
            held = loads_json((self.store.read_bytes(RUN_RECORD) or b"{}").decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            held = {}
        if held.get("fingerprint") == self.record["fingerprint"]:
            return False
        old, new = held.get("parameters") or {}, self.record["parameters"]
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        merged = self._merged()
        if (changed == ["num_samples"] and merged is not None and merged.get("complete")
                and merged.get("fingerprint") == held.get("fingerprint")
                and new["num_samples"] > old.get("num_samples", 0)):
            return True
        raise OutputError(f"--out: '{self.store.url}' holds a run with different {', '.join(changed) or 'parameters'}"
                          "; run that command to resume it, or use another prefix (nothing was changed)")

    def _merged(self) -> Manifest | None:
        data = self.store.read_bytes(MANIFEST)
        return Manifest(loads_json(data.decode("utf-8"))) if data else None

    def prepare_stage(self) -> None:
        """The stage is facesynth's cache for this URL: made if new, and refused if it is someone's folder."""
        mark = self.stage / STAGE_MARK
        if self.stage.exists() and any(p.name != WORK_DIR for p in self.stage.iterdir()) and not mark.is_file():
            raise OutputError(f"--stage: '{self.stage}' is not empty and is not a facesynth staging folder")
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.write_text(dumps_json({"store": "a facesynth staging folder"}))  # the URL is not written here

    def _fetch(self, name: str, record: dict[str, Any], listing: dict[str, int]) -> None:
        local = self.stage / name
        if local.is_file() and local.stat().st_size == record["bytes"] and sha256_file(local) == record["sha256"]:
            return
        if listing.get(name) != record["bytes"]:
            raise OutputError(f"--out: '{self.store.url_of(name)}' is listed in the store's manifest but "
                              f"{'missing' if name not in listing else 'of another size'}; run with --repair")
        self.store.download(name, local)

    def _drop_unlisted(self) -> None:
        """Shards in the stage that no manifest here lists (a killed run's, or another version's): the cache
        must not pass them off as made."""
        listed = set()
        parts = sorted((self.stage / WORKERS_DIR).glob("*-of-*.json")) if (self.stage / WORKERS_DIR).is_dir() else []
        for name in [MANIFEST, *(p.relative_to(self.stage).as_posix() for p in parts)]:
            manifest = Manifest.load(self.stage, name)
            listed |= set(manifest.shards) if manifest is not None else set()
        for path in (self.stage / "data").rglob("*.parquet") if (self.stage / "data").is_dir() else []:
            if path.relative_to(self.stage).as_posix() not in listed:
                path.unlink()

    # commit --------------------------------------------------------------------------------------------
    def commit(self, shard: str, manifest_file: str) -> None:
        """A finished shard, then (at most every ``self.every`` seconds) the manifest that lists it: the commit."""
        self.store.upload(self.stage / shard, shard)
        self.stored.add(shard)
        if time.monotonic() - self._committed >= self.every:
            self.store.upload(self.stage / manifest_file, manifest_file)
            self._committed = time.monotonic()

    def flush(self, manifest_file: str) -> None:
        """Commit what is finished (a run that stops early: Ctrl-C, an error): a shard the staged manifest lists
        whose upload was cut short goes up again, then the manifest. A store error here is logged, not raised over
        the first one (the shards not committed are made again on resume)."""
        try:
            manifest = Manifest.load(self.stage, manifest_file)
            if manifest is None:
                return
            for shard in sorted(set(manifest.shards) - self.stored):
                self.store.upload(self.stage / shard, shard)
                self.stored.add(shard)
            self.store.upload(self.stage / manifest_file, manifest_file)
        except OutputError as exc:
            logger.warning("%s", exc)

    def gather(self, count: int, shards: bool = True) -> bool:
        """Every worker's part, once all are complete in the store, brought down with the shards they list (the
        card reads them; ``shards=False`` for a merge without a card). False while a worker is unfinished."""
        listing = self.store.listing()
        names = [f"{WORKERS_DIR}/{i:05d}-of-{count:05d}.json" for i in range(count)]
        parts = {}
        for name in names:
            data = self.store.read_bytes(name) if name in listing else None
            part = Manifest(loads_json(data.decode("utf-8")), name) if data else None
            if part is None or not part.get("complete"):
                return False
            parts[name] = (data, part)
        for name, (data, part) in parts.items():
            (self.stage / name).parent.mkdir(parents=True, exist_ok=True)
            (self.stage / name).write_bytes(data)
            for shard, record in part.shards.items() if shards else ():
                self._fetch(shard, record, listing)
        return True

    def commit_part(self, manifest_file: str) -> None:
        """A worker's complete part, whatever the commit interval."""
        self.store.upload(self.stage / manifest_file, manifest_file)

    def publish(self) -> None:
        """After a merge (or a single process's run): the files the manifest lists, then ``manifest.json``."""
        manifest = Manifest.load(self.stage)
        for name in sorted((manifest.get("files") or {}) if manifest else {}):
            if (self.stage / name).is_file():
                self.store.upload(self.stage / name, name)
        self.store.upload(self.stage / MANIFEST, MANIFEST)
        logger.info("%s: committed %d shards and the card", self.store.url, len(manifest.shards) if manifest else 0)


    # a whole dataset, for the commands that read every row ------------------------------------------------
    def pull(self, write: bool, shards: bool = True) -> tuple[Manifest, dict[str, int]]:
        """The dataset down to the stage, shard by shard to disk (memory stays flat): its manifest, the files
        it lists, the review log and every shard (``shards=False``: none, for :mod:`.lazy`), each checked
        against the manifest's size. With ``write`` (a command that will write back) the dataset must be
        finished: a run still writing it owns its manifest. Returns the manifest and the store's listing."""
        listing = self.store.listing()
        data = self.store.read_bytes(MANIFEST) if MANIFEST in listing else None
        if data is None:
            raise OutputError(f"'{self.store.url}': no manifest.json; is this a facesynth dataset?")
        manifest = Manifest(loads_json(data.decode("utf-8")))
        if write and not manifest.get("complete"):
            raise OutputError(f"'{self.store.url}': not finished; run the same generate command to finish it first")
        self.prepare_stage()
        (self.stage / MANIFEST).write_bytes(data)
        for name, record in manifest.shards.items() if shards else ():
            if name in listing:  # a missing one is validate's to report
                self._fetch(name, record, listing)
        from ..review.verdicts import VERDICTS

        for name in [*(manifest.get("files") or {}), VERDICTS]:  # the card's files and the review log
            if name in listing:
                self.store.download(name, self.stage / name)
        self._drop_unlisted()
        return manifest, listing


def staged(url: str, write: bool = False, where: str = "DIRECTORY", lazy: bool = False):
    """A context manager: the dataset at ``url`` in a fresh staging folder (yielded with its mirror); with
    ``write``, the files the manifest lists and then the manifest go back up on success; with ``lazy``, the
    shards are fetched as they are read (:mod:`.lazy`). The stage is removed either way."""
    from contextlib import contextmanager

    from .store import open_store

    @contextmanager
    def run():
        store = open_store(url, where=where, must_exist=True)
        mirror = Mirror(store, stage_folder(f"{store.url}#pull"))
        clear_stage(mirror.stage)
        try:
            manifest, listing = mirror.pull(write, shards=not lazy)
            if lazy:
                from .lazy import LazyShards

                with LazyShards(store, mirror.stage, manifest, listing):
                    yield mirror.stage, mirror
            else:
                yield mirror.stage, mirror
            if write:
                mirror.publish()
        finally:
            clear_stage(mirror.stage)

    return run()


def clear_stage(stage: Path) -> None:
    """Remove a staging folder (facesynth's cache: only one it marked)."""
    if (stage / STAGE_MARK).is_file():
        shutil.rmtree(stage, ignore_errors=True)
