"""``generate`` with an fsspec URL as ``--out`` (``s3://``, ``gs://``, ``az://``, ``hf://buckets/...``,
``memory://``): the run writes a local staging folder exactly as it writes any folder, and
:class:`~facesynth.folder.mirror.Mirror` commits each finished shard to the store, then the manifest that lists
it. A restarted worker, on this machine or another, brings the committed state down and makes only the rest.
The stage is removed once this process's part is committed; an interrupted run keeps it, to resume faster."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..folder.mirror import Mirror, clear_stage, stage_folder
from ..folder.state import worker_from
from ..folder.store import open_store
from .config import GenerateConfig, GenerateResult

logger = logging.getLogger(__name__)


def generate_remote(cfg: GenerateConfig, generate: Callable[..., GenerateResult]) -> GenerateResult:
    """Generate into the store at ``cfg.out`` (see the module docstring) with ``generate``, the local run."""
    if cfg.overwrite:
        from ..errors import OutputError

        raise OutputError("--overwrite: not with an object-store --out; use a new prefix (facesynth deletes "
                          "nothing in a store)")
    store = open_store(str(cfg.out), cfg.storage_options)  # reachable, before the plan or any model
    store.check_writable()
    worker = worker_from(cfg.worker_index, cfg.num_workers)  # each worker its own stage: it removes it when done
    stage = Path(cfg.stage) if cfg.stage else stage_folder(f"{store.url}#{worker.index}-of-{worker.count}")
    logger.info("%s: staging in %s", store.url, stage)
    result = generate(replace(cfg, out=stage), mirror=Mirror(store, stage))
    if cfg.stage is None:
        clear_stage(stage)
    return replace(result, out=store.url)


def merge_remote(url: str, num_workers: int | None = None, card: bool = True,
                 storage_options: dict | None = None) -> dict:
    """``facesynth merge`` on a store: every worker's part and shard brought to a staging folder, merged, the
    card written, and the files, then ``manifest.json``, committed to the store."""
    from ..errors import OutputError
    from ..folder.lock import WORKERS_DIR, FolderLock
    from ..folder.state import merge

    store = open_store(url, storage_options, where="DIRECTORY")
    counts = sorted({int(n.rsplit("-of-", 1)[1].split(".")[0]) for n in store.listing()
                     if n.startswith(f"{WORKERS_DIR}/") and "-of-" in n})
    if not counts:
        raise OutputError(f"'{store.url}': no worker manifests in {WORKERS_DIR}/; was it generated with --num-workers?")
    if num_workers is None and len(counts) > 1:
        raise OutputError(f"'{store.url}': workers of several runs ({', '.join(map(str, counts))}); give --num-workers")
    count = num_workers or counts[0]
    stage = stage_folder(f"{store.url}#merge")
    mirror = Mirror(store, stage)
    mirror.prepare_stage()
    with FolderLock(stage, "DIRECTORY"):
        if not mirror.gather(count, shards=card):
            raise OutputError(f"'{store.url}': not every worker of {count} has finished; run them again (each "
                              "resumes its own shards), then merge")
        merged = merge(stage, count)
        if card:
            from ..dataset_card.card import write_card

            write_card(stage, name=mirror.name)
        mirror.publish()
    clear_stage(stage)
    return {"workers": merged["workers"], "shards": len(merged.shards)}


def merge_location(location: str | Path, num_workers: int | None = None, card: bool = True,
                   storage_options: dict | None = None) -> dict:
    """``facesynth merge`` on a folder or a store's URL: the workers' manifests joined (and the card written);
    returns the number of workers and of shards."""
    from ..folder.store import is_remote

    if is_remote(location):
        return merge_remote(str(location), num_workers, card, storage_options)
    from ..folder.lock import FolderLock
    from ..folder.state import merge

    with FolderLock(Path(location), "DIRECTORY"):
        merged = merge(Path(location), num_workers)
        if card:
            from ..dataset_card.card import write_card

            write_card(Path(location))
    return {"workers": merged["workers"], "shards": len(merged.shards)}
