"""A dataset in a store, read through a staging folder that holds only the shards being read.

``push`` of a store's dataset reads every shard (to check it, to describe it, to upload it) without a full local
copy: the staging folder holds the manifest and the card's files, and each shard is brought down when a reader
asks for it (:func:`shard_file`), the least recently used others being dropped once the shards there pass a byte
budget (``FACESYNTH_STAGE_BYTES``, default 2 GiB; the shard being read always stays). A small dataset is then
fetched once; a large one costs the budget on disk and some shards read more than once.

Readers of a folder's shards ask :func:`shard_file` (one shard, just before reading it) and :func:`has_shard`;
for a plain folder both are the path and its existence, as ever.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

from .files import inside

logger = logging.getLogger(__name__)

BUDGET = 2 * 1024 ** 3
_LAZY: dict[Path, "LazyShards"] = {}


class LazyShards:
    """The shards of a store's dataset, on demand in ``stage`` (see the module docstring)."""

    def __init__(self, store, stage: Path, manifest, listing: dict[str, int], budget: int | None = None):
        self.store, self.stage, self.manifest, self.listing = store, Path(stage), manifest, listing
        self.budget = budget if budget is not None else int(os.environ.get("FACESYNTH_STAGE_BYTES") or BUDGET)
        self.present: OrderedDict[str, int] = OrderedDict()
        self.fetched = 0  # downloads, for the log

    def __enter__(self) -> "LazyShards":
        _LAZY[self.stage.resolve()] = self
        return self

    def __exit__(self, *exc) -> None:
        _LAZY.pop(self.stage.resolve(), None)
        logger.info("%s: %d shard downloads for %d shards", self.store.url, self.fetched, len(self.manifest.shards))

    def has(self, name: str) -> bool:
        return name in self.listing

    def fetch(self, name: str, path: Path) -> None:
        """Bring shard ``name`` to ``path`` unless it is there; drop others past the budget. A shard the store
        lacks, or holds at another size than the manifest says, is left for the reader to find missing or
        damaged."""
        if name in self.present:
            self.present.move_to_end(name)
            return
        size = self.listing.get(name)
        if size is None:
            return
        self.store.download(name, path)  # one of another size than the manifest's is validate's to report
        self.fetched += 1
        self.present[name] = size
        while len(self.present) > 1 and sum(self.present.values()) > self.budget:
            old, _ = self.present.popitem(last=False)
            (self.stage / old).unlink(missing_ok=True)


def lazy_of(root: Any) -> LazyShards | None:
    return _LAZY.get(Path(root).resolve()) if _LAZY else None


def shard_file(root: Path | str, name: str, what: str = "manifest.json") -> Path:
    """The local path of shard ``name`` of the dataset at ``root``, brought down now where ``root`` stages a
    store's dataset lazily."""
    path = inside(Path(root), name, what)
    lazy = lazy_of(root)
    if lazy is not None:
        lazy.fetch(name, path)
    return path


def has_shard(root: Path | str, name: str) -> bool:
    """Whether shard ``name`` is there (in the store, for a lazily staged dataset: nothing is downloaded)."""
    lazy = lazy_of(root)
    return lazy.has(name) if lazy is not None else inside(Path(root), name).is_file()




class LazyPaths(Mapping):
    """Shard name -> path, each shard brought down when its path is taken (iterating ``values()`` or ``items()``
    fetches one at a time); what :func:`~facesynth.folder.reading.shard_paths` gives for a lazily staged dataset."""

    def __init__(self, root: Path | str, names: list[str]):
        self.root, self.names = Path(root), names

    def __getitem__(self, name: str) -> Path:
        if name not in self.names:
            raise KeyError(name)
        return shard_file(self.root, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)
