"""``generate``: recipe -> plan -> candidates -> CLIP rerank -> shards + manifest -> card.

The shard is the unit of work and of resume. Shards are laid out from the plan
alone (split, then plan order, a fixed number of rows each), so a re-run knows
which shards exist, skips the finished ones and regenerates the rest exactly.
Small shards share pipeline calls in groups laid out the same way, and workers
share those groups.
Inside a shard, rows are ordered by primary label, so each row group holds one
label and filtering by it reads only matching row groups.

This module orchestrates a run; :mod:`.config` holds what a run is given and the parameters a resume must
match, :mod:`.sink` writes the shards, and :mod:`.review_pass` writes reviewed shards again.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import FacesynthError, OutputError, PlanError, WriteError
from ..review import rounds
from ..folder.state import (Worker, cell_counts, check_owner, clear_listed, merge, open_folder, remove_stale_temp_files,
                      tidy, worker_from)
from ..plan.layout import ShardTask, call_contexts
from ..folder.lock import WORK_DIR, FolderLock
from ..plan import Plan
from ..checks.quality import QualityOptions, quality_report, shard_embeddings
from ..recipe import Recipe, load_recipe, resolve, with_identities
from ..recipe.identities import parse_option as identity_option
from ..review.verdicts import Verdict, set_aside_verdicts
from ..folder.store import is_remote
from ..folder.writer import FORMAT_VERSION, GENERATOR, MANIFEST, Manifest, rows_per_shard
from .adapters import Adapter, apply as apply_adapters, check as check_adapters, chosen as chosen_adapters
from .adapters import fetch as fetch_adapters
from .config import (DEFAULT_DEDUPE, GenerateConfig, GenerateResult, check_speedups, fingerprint, library_versions,
                     local_inputs, models, quality_options, run_parameters, settings_overrides, verifier_specs,
                     verify_origins)
from .engine import Engine, EngineOptions, NonFiniteError
from .reference import check_settings as check_reference
from ..folder.pins import local_record
from .review_pass import open_round, remake, review_cells, rewrite
from .shards import shard_groups, shard_rows
from .sink import ShardSink

__all__ = ["DEFAULT_DEDUPE", "GenerateConfig", "GenerateResult", "ShardSink", "generate"]

logger = logging.getLogger(__name__)

DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)

def generate(cfg: GenerateConfig, mirror=None) -> GenerateResult:
    """Generate (or resume, repair or grow) a dataset folder, or this worker's part of it.

    Everything that can be checked without the model is checked first; then the folder
    is locked for the whole run, so a second run on it is refused with the holder's pid.
    An fsspec URL as ``out`` runs through a local staging folder (:mod:`.remote`); ``mirror`` is that.
    """
    if mirror is None and is_remote(cfg.out):
        from .remote import generate_remote

        return generate_remote(cfg, generate)
    recipe = load_recipe(cfg.recipe)
    if cfg.identities:
        try:
            vary = identity_option(cfg.identities)
        except ValueError as exc:
            raise PlanError(f"--identities: {exc}") from None
        recipe = with_identities(recipe, {**(recipe.identities.content() if recipe.identities else {}), "vary": vary})
    model, clip_model = models(cfg, recipe)
    if cfg.min_label_confidence is not None and not 0 <= cfg.min_label_confidence <= 1:
        raise PlanError("--min-label-confidence: must be between 0 and 1")
    if cfg.max_attempts < 1:
        raise PlanError("--max-attempts: must be at least 1")
    if cfg.batch_size < 1:
        raise PlanError("--batch-size: must be at least 1")
    worker = worker_from(cfg.worker_index, cfg.num_workers)
    if cfg.overwrite and not worker.alone:
        raise OutputError("--overwrite: not with several workers (one would delete the others' shards)")
    quality = quality_options(cfg, model)
    verify = verifier_specs(cfg, recipe)
    adapters = check_adapters(chosen_adapters(cfg.lora, recipe, cfg.recipe))
    plan = Plan(recipe, cfg.num_samples, cfg.seed, cfg.candidates)
    overrides = settings_overrides(cfg, model)
    sizes = [{**s.settings, **overrides} for s in plan.samples]
    check_speedups(cfg, sizes)
    for settings in sizes[:1] if recipe.identities is not None else ():
        check_reference(recipe.identities, settings)
    keep = max((k for k in (s.get("keep") for s in sizes) if k is not None), default=None)
    if keep is not None and keep >= cfg.candidates:  # a recipe's keep, checked against this run's candidates
        raise PlanError(f"keep: the recipe keeps {keep} candidates past prune_at, which must be below --candidates "
                        f"({cfg.candidates})")
    per_shard = shard_rows(cfg, plan, rows_per_shard(max(s["width"] for s in sizes), max(s["height"] for s in sizes)))
    inputs = local_inputs(cfg, recipe, model, clip_model, verify)
    params = run_parameters(cfg, recipe, plan, model, clip_model, overrides, per_shard, quality, verify, adapters,
                            inputs)
    tasks, groups = shard_groups(cfg, plan, per_shard, worker)
    source, text = resolve(cfg.recipe)
    header = {
        "generator": GENERATOR,
        "format": FORMAT_VERSION,
        "fingerprint": fingerprint(params),
        "parameters": params,
        "recipe": {"name": recipe.name, "source": source, "yaml": text, "fingerprint": recipe.fingerprint()},
        "plan": {"num_samples": plan.num_samples, "seed": plan.seed, "candidates": cfg.candidates,
                 "splits": plan.split_sizes(), "rows_per_shard": per_shard,
                 **({"identities": recipe.identities.content()} if recipe.identities else {})},
        "layout": [t.name for t in tasks],
        "cells": cell_counts(plan.samples),
        "complete": False,
    }
    out = Path(cfg.out)
    check_owner(out)  # before anything is created in a folder that is not ours
    created = not out.exists()
    try:
        lock = FolderLock(out, "--out", worker.index, worker.count, header["fingerprint"]).acquire()
    except PermissionError:
        raise OutputError(f"--out: cannot write to '{out}': permission denied") from None
    except OSError as exc:
        raise OutputError(f"--out: cannot create '{out}': {exc.strerror or exc}") from None
    try:
        if mirror is not None:  # the store's committed state, down to the stage, before the stage is read
            mirror.begin(header, [MANIFEST, *(() if worker.alone else (worker.manifest_file,))])
        return _generate_locked(cfg, recipe, model, clip_model, overrides, quality, header, tasks, groups, out,
                                worker, adapters, mirror)
    finally:
        lock.release()
        tidy(out, worker, created)


def _generate_locked(cfg: GenerateConfig, recipe: Recipe, model: str, clip_model: str, overrides: dict[str, Any],
                     quality: QualityOptions, header: dict[str, Any], tasks: list[ShardTask],
                     groups: list[list[ShardTask]], out: Path, worker: Worker,
                     adapters: list[Adapter], mirror=None) -> GenerateResult:
    """The run, holding the folder: resume, grow, repair or replace, then the review round, then the card.

    Shards missing from the folder are built first (every sample from its floor attempt); then the rows that
    the review snapshot rejects are made again, also those a rebuilt shard brought back (see review_round).
    """
    from tqdm.auto import tqdm

    my_groups = worker.share(groups)
    mine = [t for group in my_groups for t in group]
    calls = call_contexts(groups)
    fresh = not (out / worker.manifest_file).exists()
    manifest, replaced = open_folder(out, header, {t.name: t.ids for t in tasks}, worker, [t.name for t in mine],
                                     overwrite=cfg.overwrite, repair=cfg.repair, version=cfg.dataset_version,
                                     calls=calls)
    remove_stale_temp_files(out)
    tmp_dir = out / worker.tmp_dir
    cells = None if cfg.overwrite else review_cells(out, tasks)  # --overwrite: the old rows' verdicts go aside
    limit = rounds.snapshot(out, manifest) if cells is not None else 0
    redo = open_round(out, manifest, cells, worker, cfg.dataset_version, limit, list(manifest.shards))
    todo = [t for t in mine if t.name not in manifest.shards]
    done_rows = sum(len(t.samples) for t in mine if t not in todo)
    engine = None
    if todo or redo:  # load the model before changing anything: a model that fails to load changes nothing
        engine = _build_engine(cfg, recipe, model, clip_model, overrides, manifest, quality, adapters)
        engine.check([s for t in mine for s in t.samples])
    if mirror is not None:
        mirror.claim()  # the run record, before anything is written to the store
    try:
        clear_listed(out, replaced)
        if cfg.overwrite:
            set_aside_verdicts(out)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir(parents=True)
        manifest.save(out)
    except PermissionError:
        raise OutputError(f"--out: cannot write to '{out}': permission denied") from None
    timings: dict[str, float] = {}
    written = {t.name for t in todo} | set(redo)
    if engine is not None:
        start = time.perf_counter()
        try:
            sink_seconds = _run(engine, my_groups, calls, out, tmp_dir, recipe, manifest, done_rows, cfg.quiet, tqdm,
                                redo, mirror)
        except NonFiniteError:
            if fresh and not manifest.shards:  # nothing was made: a new folder is left as if never started
                (out / worker.manifest_file).unlink(missing_ok=True)
            raise
        built = [t.name for t in todo]
        again = open_round(out, manifest, cells, worker, cfg.dataset_version, limit, built) if built else {}
        if again:  # a rebuilt shard (repair, grow) holds rows the snapshot rejects: one more pass makes them again
            manifest.save(out)
            engine.gates.reset()
            rewritten = [t for t in mine if t.name in again]
            more = _run(engine, my_groups, calls, out, tmp_dir, recipe, manifest, sum(len(t.samples) for t in mine if
                        t not in rewritten), cfg.quiet, tqdm, again, mirror)
            sink_seconds = {k: sink_seconds.get(k, 0) + more.get(k, 0) for k in {*sink_seconds, *more}}
            written |= set(again)
        timings = {**engine.timings.seconds, **sink_seconds, "wall": time.perf_counter() - start,
                   "unet_images": engine.unet_images}
    shutil.rmtree(tmp_dir, ignore_errors=True)
    made_again = rounds.finish(out, manifest, cells)
    manifest.data["complete"] = True
    manifest.data["quality"] = quality_report(manifest.shards)
    manifest.save(out)
    if mirror is not None and not worker.alone:  # this worker's part, complete, then the others' where all are
        mirror.commit_part(manifest.file)
    merged = worker.alone or ((mirror is None or mirror.gather(worker.count)) and _merge_if_last(out, worker))
    if merged:
        _refresh_evaluation(out)
    if merged and cfg.write_card:
        from ..dataset_card.card import foreign_readme, write_card

        if foreign_readme(out):  # someone's own README: never replaced behind their back
            logger.warning("'%s' has no facesynth markers and is not the card facesynth wrote: left as it is; "
                           "`facesynth card %s --overwrite-card` replaces it", out / "README.md", out)
        else:
            write_card(out, name=mirror.name if mirror is not None else None)
    if mirror is not None and merged:
        mirror.publish()
    return GenerateResult(out, sum(len(t.samples) for t in mine), len(written), len(mine) - len(written), timings,
                          worker, merged, manifest.data["quality"]["total"], made_again, manifest.get("version"))


def _refresh_evaluation(out: Path) -> None:
    """Measure the data again when it changed under an ``evaluation.json`` (with the settings it records)."""
    from ..evaluate.measure import refresh

    try:
        if refresh(out, locked=True, card=False):
            logger.info("%s: evaluation.json made again for the changed data", out)
    except FacesynthError as exc:  # e.g. its real dataset is not reachable now: validate and the card say so
        logger.warning("%s: evaluation.json describes the data before this run and was not made again (%s); "
                       "run `facesynth evaluate %s`", out, exc, out)


def _merge_if_last(out: Path, worker: Worker) -> bool:
    """The last worker to finish merges (idempotent, under a lock); the others leave it."""
    from filelock import FileLock

    with FileLock(str(out / WORK_DIR / "merge.lock")):
        done = merge(out, worker.count, strict=False) is not None
    if not done:
        logger.info("worker %d of %d finished; the last worker to finish merges", worker.index, worker.count)
    return done


def _device(name: str) -> str:
    """``auto`` under torchrun or accelerate means this process's own GPU."""
    import torch

    local = os.environ.get("LOCAL_RANK")
    if name == "auto" and local is not None and torch.cuda.is_available():
        return f"cuda:{int(local) % torch.cuda.device_count()}"
    return name


def _threads(device) -> int | None:
    """CPU threads: on CPU, kernels may round differently with another thread count."""
    import torch

    return torch.get_num_threads() if device.type == "cpu" else None


def _build_engine(cfg, recipe, model, clip_model, overrides, manifest: Manifest,
                  quality: QualityOptions, adapters: list[Adapter]) -> Engine:
    from ..checks.scoring import ClipScorer
    from .loading import load_pipeline, optimize_pipeline, resolve_device, resolve_dtype

    device = resolve_device(_device(cfg.device))
    dtype = resolve_dtype(cfg.dtype, device)
    recorded = manifest.get("model") or {}
    pinned = recorded.get("commit") if recorded.get("kind") == "hub" else None  # resume at the same commit
    from ..checks.verifiers import load_verifiers

    verifiers = load_verifiers(verifier_specs(cfg, recipe), recipe, clip_model, device, dtype,  # before the
                               manifest.get("verifiers") or (), verify_origins(cfg, recipe))  # generator: fail fast
    fetch_adapters(adapters, manifest.get("loras") or ())  # each Hub adapter at the commit a resumed run recorded
    embedder = _identity_embedder(recipe, manifest, device)  # like the verifiers: before the generator
    pipe, info = load_pipeline(model, revision=pinned or cfg.revision, dtype=dtype, device=device,
                               config=cfg.model_config, progress=not cfg.quiet)
    if pinned:
        info.revision = cfg.revision
    apply_adapters(pipe, adapters, model)
    if recipe.identities is not None and recipe.identities.mechanism == "reference":
        from .families import family_of
        from .reference import load as load_reference

        recorded = manifest.get("identity_adapter") or {}  # a resumed run: the Hub adapter at its recorded commit
        manifest.data["identity_adapter"] = load_reference(pipe, recipe.identities, family_of(pipe),
                                                           recorded.get("commit"))
    optimize_pipeline(pipe, compile=cfg.compile, channels_last=cfg.channels_last)
    scorer = ClipScorer.load(clip_model, device=device, dtype=dtype)
    manifest.data["model"] = {k: v for k, v in asdict(info).items() if k != "preset_settings"}
    manifest.data["clip_model"] = {**asdict(scorer.info), **local_record(clip_model)}
    manifest.data["runtime"] = {"device": str(device), "dtype": str(dtype).replace("torch.", ""),
                                "batch_size": cfg.batch_size, "compile": cfg.compile, "threads": _threads(device),
                                "channels_last": cfg.channels_last}
    manifest.data["versions"] = library_versions()
    if adapters:
        manifest.data["loras"] = [a.record() for a in adapters]
    if verifiers:
        manifest.data["verifiers"] = [v.record(cfg.verify_mode, cfg.crop_margin) for v in verifiers]
    manifest.data["generation"] = {"rerank": cfg.rerank, "overrides": overrides,
                                   "min_label_confidence": cfg.min_label_confidence,
                                   "max_attempts": cfg.max_attempts, "quality": quality.content(),
                                   **({"preset": cfg.preset} if cfg.preset else {}),
                                   "max_refills": quality.max_refills}
    options = EngineOptions(candidates=cfg.candidates, batch_size=cfg.batch_size, rerank=cfg.rerank,
                            min_label_confidence=cfg.min_label_confidence, max_attempts=cfg.max_attempts,
                            overrides=overrides, verify_mode=cfg.verify_mode, crop_margin=cfg.crop_margin)
    engine = Engine(pipe, scorer, recipe, options, quality, verifiers)
    if embedder is not None:
        engine.embedder = embedder
        manifest.data["identity_embedder"] = embedder.record()
    if cfg.compile:  # one batch shape for the compiled UNet: smaller calls are padded to a full one
        engine.pad_to = max(1, cfg.batch_size // cfg.candidates) * cfg.candidates
    return engine


def _identity_embedder(recipe: Recipe, manifest: Manifest, device):
    """The identity sets' embedder, where it is not CLIP (a resumed run loads a Hub one at its recorded commit)."""
    spec = recipe.identities
    if spec is None or spec.embedder == "clip":
        return None
    from ..checks.identity import load_embedder

    recorded = manifest.get("identity_embedder") or {}
    return load_embedder(spec.embedder, recorded.get("commit") or spec.embedder_revision, device)


def _run(engine: Engine, groups: list[list[ShardTask]], calls: dict[str, str], out: Path, tmp_dir: Path,
         recipe: Recipe, manifest: Manifest, done_rows: int, quiet: bool, tqdm,
         redo: dict[str, dict[str, Verdict]] | None = None, mirror=None) -> dict[str, float]:
    """Generate this worker's unfinished shards, in layout order; return the writer thread's seconds.
    ``calls`` is each shard's group digest (:func:`~facesynth.layout.call_contexts`), recorded with it.

    A group of small shards (:func:`~facesynth.layout.batch_groups`) goes through its calls together, every
    sample of the group in them, so a resumed run makes the same calls as an uninterrupted one; the rows of
    shards already written are made again and dropped. With deduplication, a row is compared with the rows of
    this worker's earlier shards: finished ones are read back (their ``clip_embedding`` column) as the loop
    reaches them, so a resumed or repaired run sees exactly what an uninterrupted one saw.
    """
    sink = ShardSink(out, recipe, manifest, tmp_dir)
    if mirror is not None:  # each finished shard goes up, then the manifest that lists it
        sink.on_commit = lambda name: mirror.commit(name, manifest.file)
    bar = tqdm(total=sum(len(t.samples) for g in groups for t in g), initial=done_rows, unit="img",
               desc="generating", disable=quiet, dynamic_ncols=True)
    attributes = {a: list(attr.values) for a, attr in recipe.attributes.items()}
    floors = rounds.floors(manifest)  # samples a review round moved on start at their next attempt
    totals = {"score": 0.0, "kept": 0, "rejected": 0}
    redo = redo or {}

    def made(winner) -> None:
        totals["score"] += winner.clip_score
        totals["kept"] += 1
        totals["rejected"] += sum(winner.tally.rejected.values())
        bar.update(1)
        bar.set_postfix(clip=f"{totals['score'] / totals['kept']:.2f}", rejected=totals["rejected"], refresh=False)

    try:
        for group in groups:
            build = [t for t in group if t.name not in manifest.shards and t.name not in redo]
            pooled = _pooled(engine, group, build, floors, made) if len(group) > 1 and build else None
            again = [t for t in group if t.name in redo]
            sets = remake(engine, again, {sid: v for t in again for sid, v in redo[t.name].items()}, manifest) \
                if recipe.identities is not None and again else None  # a set's members share their call
            for task in group:
                if task.name in redo:
                    rewrite(engine, sink, task, out / task.name, redo[task.name], manifest, attributes, sets)
                    bar.update(len(task.samples))
                    continue
                if task.name in manifest.shards:
                    if engine.gates.index is not None and pooled is None:
                        for cell, embedding in shard_embeddings(out / task.name, attributes):
                            engine.gates.accept(cell, embedding)
                    continue
                sink.start(task, calls=calls.get(task.name))
                if pooled is not None:
                    for sample in task.samples:
                        sink.add(pooled.pop(sample.sample_id))
                else:
                    for winner in engine.run(task.samples, first_attempt=floors):
                        sink.add(winner)
                        made(winner)
                sink.finish()
        sink.drain()
        return dict(sink.seconds)
    except BaseException as exc:
        sink.abort()
        if mirror is not None:  # what reached the store stays committed
            mirror.flush(manifest.file)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise WriteError(f"--out: cannot write to '{out}': {os.strerror(exc.errno)}; the unfinished shard "
                             "was removed and finished shards are kept: free space, then run the same command "
                             "to resume") from exc
        if isinstance(exc, PermissionError):
            raise WriteError(f"--out: cannot write to '{out}': permission denied") from exc
        raise
    finally:
        sink.close()
        bar.close()


def _pooled(engine: Engine, group: list[ShardTask], build: list[ShardTask], floors: dict[str, int],
            made) -> dict[str, Any]:
    """The winners of ``build``'s samples, from the calls of the whole group (held until they are written)."""
    wanted = {s.sample_id for t in build for s in t.samples}
    winners = {}
    for batch, attempt in engine.batches([s for t in group for s in t.samples], first_attempt=floors, pooled=True):
        for winner in engine.run_batch(batch, attempt):
            if winner.sample.sample_id in wanted:
                winners[winner.sample.sample_id] = winner
                made(winner)
    return winners
