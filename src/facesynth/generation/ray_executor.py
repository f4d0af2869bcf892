"""``generate --ray``: the workers of a run as Ray tasks.

One task per worker (``--num-workers``, default one per GPU in the cluster), each with ``num_gpus=1`` where the
cluster has GPUs. A worker is exactly ``generate --worker-index I --num-workers N``: it owns its shards by index,
so a task that Ray retries after its node or process died resumes its own shards from the store (or the shared
folder) and makes the same bytes. When every task is done, the dataset is merged (the last worker usually did).
Ray is an optional extra, ``pip install 'facesynth[ray]'``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

from ..errors import FacesynthError, OutputError
from .config import GenerateConfig, GenerateResult

logger = logging.getLogger(__name__)

RETRIES = 3  # attempts after the first, for a task whose process or node died
DIED = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError")  # Ray's words for a task that died every time


def import_ray():
    try:
        import ray
    except ImportError:
        raise OutputError("--ray: Ray is not installed; pip install 'facesynth[ray]'") from None
    return ray


def run_worker(cfg: GenerateConfig, index: int, count: int) -> dict[str, Any]:
    """One worker's share of the run (what each Ray task calls): a small summary, the process id included."""
    from . import generate

    result = generate(replace(cfg, worker_index=index, num_workers=count))
    return {"worker": index, "rows": result.rows, "shards_written": result.shards_written,
            "shards_skipped": result.shards_skipped, "merged": result.merged, "pid": os.getpid()}


def generate_on_ray(cfg: GenerateConfig, address: str | None = None) -> tuple[GenerateResult, list[dict]]:
    """Run every worker of ``cfg`` as a Ray task on the cluster at ``address`` (None or "": the one Ray finds,
    else a new local one; a cluster already initialised in this process is used as it is). Returns the merged
    result and each task's summary."""
    if cfg.worker_index is not None:
        raise OutputError("--worker-index: not with --ray (Ray runs every worker; give --num-workers)")
    if cfg.overwrite:
        raise OutputError("--overwrite: not with --ray (one worker would delete the others' shards)")
    if cfg.num_workers is not None and cfg.num_workers < 1:
        raise OutputError("--num-workers: must be at least 1")
    _check_before_ray(cfg)
    cfg = _anywhere(cfg)
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address or None, logging_level=logging.WARNING, log_to_driver=not cfg.quiet)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    count = cfg.num_workers or max(gpus, 1)
    task = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1, max_retries=RETRIES,
                      retry_exceptions=False)(run_worker)
    logger.info("running %d workers on Ray (%d GPUs in the cluster)", count, gpus)
    refs = [task.remote(cfg, i, count) for i in range(count)]
    try:
        done = ray.get(refs)
    except ray.exceptions.RayTaskError as exc:  # a worker's own error: its one line, not Ray's traceback
        cause = getattr(exc, "cause", None)
        if isinstance(cause, FacesynthError):
            raise cause from None
        raise OutputError(f"--ray: a worker failed: {str(cause or exc).strip().splitlines()[-1]}") from None
    except tuple(getattr(ray.exceptions, n) for n in DIED if hasattr(ray.exceptions, n)) as exc:
        raise OutputError(f"--ray: a worker died {RETRIES + 1} times ({type(exc).__name__}); run the same "
                          "command again (each worker resumes its own shards)") from None
    if not any(d["merged"] for d in done):
        from .remote import merge_location

        merge_location(cfg.out, count, storage_options=cfg.storage_options)
    rows = sum(d["rows"] for d in done)
    result = GenerateResult(out=str(cfg.out), rows=rows, shards_written=sum(d["shards_written"] for d in done),
                            shards_skipped=sum(d["shards_skipped"] for d in done), timings={}, merged=True)
    return result, done


def _check_before_ray(cfg: GenerateConfig) -> None:
    """What can be checked without a model or a cluster: the recipe, the plan's size and the location."""
    from ..folder.store import is_remote, open_store
    from ..plan import Plan
    from ..recipe import load_recipe

    recipe = load_recipe(cfg.recipe)
    if not cfg.identities:
        Plan(recipe, cfg.num_samples, cfg.seed, cfg.candidates)
    if is_remote(cfg.out):
        open_store(str(cfg.out), cfg.storage_options)


def _anywhere(cfg: GenerateConfig) -> GenerateConfig:
    """Local paths made absolute, so a task resolves them from whatever folder Ray runs it in (on other machines
    they must be where every node sees them: a shared folder, or a store's URL)."""
    from pathlib import Path

    from ..folder.store import is_remote

    out = cfg.out if is_remote(cfg.out) else Path(cfg.out).resolve()
    recipe = str(Path(cfg.recipe).resolve()) if Path(str(cfg.recipe)).is_file() else cfg.recipe
    return replace(cfg, out=out, recipe=recipe)
