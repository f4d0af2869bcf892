"""``generate``: recipe -> plan -> candidates -> CLIP rerank -> shards + manifest -> card.

The shard is the unit of work and of resume. Shards are laid out from the plan
alone (split, then plan order, a fixed number of rows each), so a re-run knows
which shards exist, skips the finished ones and regenerates the rest exactly.
Inside a shard, rows are ordered by primary label, so each row group holds one
label and filtering by it reads only matching row groups.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import time
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from .. import __version__
from ..errors import FacesynthError, OutputError, PlanError, WriteError
from .. import review_round as rounds
from ..folder import (Worker, cell_counts, cell_key, check_owner, clear_listed, merge, open_folder,
                      remove_stale_temp_files, tidy, worker_from)
from ..lock import WORK_DIR, FolderLock
from ..plan import Plan
from ..recipe import Recipe, load_recipe, resolve
from ..schema import SETTING_COLUMNS, features_of, row_provenance, verified_columns
from ..layout import ShardTask, layout
from ..writer import FORMAT_VERSION, GENERATOR, ROW_GROUP_ROWS, Manifest, ShardWriter, rows_per_shard
from ..quality import CellStats, QualityOptions, quality_report, require_cv2, shard_embeddings
from ..verdicts import Verdict, verdicts_path
from .adapters import Adapter, apply as apply_adapters, check as check_adapters, chosen as chosen_adapters
from .adapters import fetch as fetch_adapters
from .engine import Engine, EngineOptions, Winner

logger = logging.getLogger(__name__)

DEFAULT_DEDUPE = 0.95
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@dataclass
class GenerateConfig:
    """Everything ``facesynth generate`` takes."""

    recipe: str
    out: Path
    num_samples: int | None = None
    seed: int | None = None
    model: str | None = None
    model_config: str | None = None
    revision: str | None = None
    clip_model: str | None = None
    candidates: int = 3
    batch_size: int = 12
    device: str = "auto"
    dtype: str | None = None
    scheduler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    prune_at: float | None = None
    keep: int | None = None
    cfg_until: float | None = None
    rerank: str = "caption"
    min_label_confidence: float | None = None
    max_attempts: int = 3
    rows_per_shard: int | None = None
    overwrite: bool = False
    repair: bool = False
    dataset_version: str | None = None
    worker_index: int | None = None
    num_workers: int | None = None
    compile: bool = False
    channels_last: bool = False
    faces: bool = False
    min_face_size: float = 0.2
    dedupe_threshold: float | None = None  # None: 0.95, or off for the tiny preset
    no_dedupe: bool = False
    safety: bool = False
    safety_threshold: float = 0.5
    max_refills: int = 8
    preset: str | None = None  # a few-step preset (recipe.PRESETS): scheduler, steps and guidance
    verify: tuple[str, ...] = ()  # ATTR=MODEL or ATTR=zero-shot:MODEL, replacing the recipe's verifier
    verify_mode: str = "gate"
    lora: tuple[str, ...] = ()  # SOURCE[@WEIGHT] adapters, replacing the recipe's loras
    crop_margin: float = 0.25
    quiet: bool = False
    write_card: bool = True


@dataclass
class GenerateResult:
    out: Path
    rows: int
    shards_written: int
    shards_skipped: int
    timings: dict[str, float]
    worker: Worker = field(default_factory=Worker)
    merged: bool = True
    quality: dict[str, Any] | None = None  # totals of this worker's shards (see quality.quality_report)
    replaced: int = 0  # rows rejected in review and made again by this run
    version: str | None = None


def settings_overrides(cfg: GenerateConfig, model: str) -> dict[str, Any]:
    """Preset settings (the tiny model's size and steps), then the command line's, checked like a recipe's."""
    from pydantic import ValidationError

    from ..recipe import Settings

    out: dict[str, Any] = {}
    if model == "tiny":
        from ..tiny import TINY_SETTINGS

        out.update(TINY_SETTINGS)
    if cfg.preset is not None:
        from ..recipe import PRESETS

        if cfg.preset not in PRESETS:
            raise PlanError(f"--preset: '{cfg.preset}' is not one of {', '.join(PRESETS)}")
        out.update(PRESETS[cfg.preset])
    partner = {"prune_at": {"keep": 1}, "keep": {"prune_at": 0.5}}  # checked alone, then as a pair below
    for key in SETTING_COLUMNS:
        value = getattr(cfg, key)
        if value is not None:
            try:
                Settings.model_validate({key: value, **partner.get(key, {})})
            except ValidationError as exc:
                err = exc.errors()[0]
                why = "must be a finite number" if err["type"] == "finite_number" else err["msg"].removeprefix(
                    "Value error, ")
                raise PlanError(f"--{key.replace('_', '-')}: {why} (got {value})") from None
            out[key] = value
    if (cfg.prune_at is None) != (cfg.keep is None):
        raise PlanError("--prune-at and --keep go together: give both or neither")
    _check_preset_family(cfg.preset, model, cfg.revision)
    if cfg.keep is not None and cfg.keep >= cfg.candidates:
        raise PlanError(f"--keep: must be below --candidates ({cfg.candidates}) to prune anything (got {cfg.keep})")
    return out


def _check_preset_family(preset: str | None, model: str, revision: str | None) -> None:
    """A preset made for one family (SDXL-Lightning) is refused for another, before the model loads."""
    from ..recipe import PRESET_FAMILIES

    if preset not in PRESET_FAMILIES:
        return
    from .loading import FAMILY_NAMES, peek_architecture

    family = peek_architecture(model, revision)
    if family is not None and family not in PRESET_FAMILIES[preset]:
        wanted = " or ".join(FAMILY_NAMES[f].split(" ", 1)[1] for f in PRESET_FAMILIES[preset])
        raise PlanError(f"--preset {preset}: made for {wanted} models; '{model}' is {FAMILY_NAMES[family]} model")


def run_parameters(cfg: GenerateConfig, recipe: Recipe, plan: Plan, model: str, clip_model: str,
                   overrides: dict[str, Any], per_shard: int, quality: QualityOptions,
                   verify: dict[str, Any] | None = None, adapters: list[Adapter] = ()) -> dict[str, Any]:
    """What decides the dataset's content; resuming requires it unchanged (a run without verifiers or adapters
    has the keys it had before they existed)."""
    checked = {"verify": {a: spec.model_dump() for a, spec in verify.items()}, "verify_mode": cfg.verify_mode,
               "crop_margin": cfg.crop_margin} if verify else {}
    if adapters:
        checked["loras"] = [a.parameter() for a in adapters]
    return {**checked,
        "recipe": recipe.fingerprint(),
        "num_samples": plan.num_samples,
        "seed": plan.seed,
        "candidates": cfg.candidates,
        "model": model,
        "revision": cfg.revision,
        "clip_model": clip_model,
        "rerank": cfg.rerank,
        "min_label_confidence": cfg.min_label_confidence,
        "max_attempts": cfg.max_attempts,
        "dtype": cfg.dtype,
        "overrides": overrides,
        "rows_per_shard": per_shard,
        "quality": quality.content(),
    }


def quality_options(cfg: GenerateConfig, model: str) -> QualityOptions:
    """The gates: deduplication at 0.95 unless turned off; faces and safety when asked.

    The tiny preset's random CLIP puts every image within cosine 0.99 of every other,
    so it deduplicates only when given an explicit ``--dedupe-threshold``.
    """
    threshold = cfg.dedupe_threshold
    if threshold is None and not cfg.no_dedupe and model != "tiny":
        threshold = DEFAULT_DEDUPE
    if cfg.no_dedupe and cfg.dedupe_threshold is not None:
        raise PlanError("--no-dedupe and --dedupe-threshold: give one or the other")
    options = QualityOptions(faces=cfg.faces, min_face_size=cfg.min_face_size, dedupe_threshold=threshold,
                             safety=cfg.safety, safety_threshold=cfg.safety_threshold, max_refills=cfg.max_refills)
    if options.faces:
        require_cv2()
    return options


def verifier_specs(cfg: GenerateConfig, recipe: Recipe) -> dict[str, Any]:
    """The verifiers this run uses (the recipe's, with ``--verify`` replacing an attribute's), checked."""
    from ..verifiers import MODES, specs

    if cfg.verify_mode not in MODES:
        raise PlanError(f"--verify-mode: '{cfg.verify_mode}' is not one of {', '.join(MODES)}")
    if not 0 <= cfg.crop_margin <= 2 or cfg.crop_margin != cfg.crop_margin:
        raise PlanError(f"--crop-margin: must be between 0 and 2, a fraction of the face box (got {cfg.crop_margin})")
    return specs(recipe, cfg.verify)


def fingerprint(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "facesynth": __version__}
    for pkg in ("torch", "diffusers", "transformers", "datasets", "compel", "huggingface_hub", "pyarrow", "pillow",
                "opencv-python-headless"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None elsewhere."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim if sys.platform.startswith("linux") else None
    except (OSError, AttributeError):  # not glibc
        return None


def release_memory() -> None:
    """Hand freed memory back to the OS (Arrow's pool, glibc's heap), so RSS follows what is live."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def encode_png(pixels) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


class ShardSink:
    """Encodes winners to PNG and writes row groups on one background thread.

    At most ``max_pending`` rows wait in memory; the generator blocks past that,
    so memory stays flat however large the dataset grows.
    """

    def __init__(self, root: Path, recipe: Recipe, manifest: Manifest, tmp_dir: Path, max_pending: int = 64):
        self.root = root
        self.tmp_dir = tmp_dir
        self.recipe = recipe
        self.manifest = manifest
        self.features = features_of(recipe, manifest)
        self.candidates = manifest["plan"]["candidates"]
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facesynth-writer")
        self.pending: deque[Future] = deque()
        self.max_pending = max_pending
        self.writer: ShardWriter | None = None
        self.failed = False
        self.seconds: dict[str, float] = defaultdict(float)  # encode, write: on the writer thread
        self.rows: list[dict[str, Any]] = []
        self.stats = CellStats()
        self.label_ids = {a: {v: i for i, v in enumerate(attr.values)} for a, attr in recipe.attributes.items()}

    def _submit(self, fn, *args) -> None:
        self.pending.append(self.pool.submit(self._guarded, fn, *args))
        while len(self.pending) > self.max_pending:
            self.pending.popleft().result()
        while self.pending and self.pending[0].done():
            self.pending.popleft().result()

    def drain(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def start(self, task: ShardTask, quality: dict[str, Any] | None = None) -> None:
        self._submit(self._start, task, quality)

    def add(self, winner: Winner) -> None:
        self._submit(self._add, winner)

    def keep(self, row: dict[str, Any]) -> None:
        """A row of the shard being rewritten, kept as it was."""
        self._submit(self._append, row)

    def replace(self, old: dict[str, Any], winner: Winner) -> None:
        """A row rejected in review, replaced by the sample's new winner."""
        self._submit(self._replace, old, winner)

    def finish(self) -> None:
        self._submit(self._finish)

    def abort(self) -> None:
        """Drop the shard in progress; finished shards stay."""
        for fut in self.pending:
            fut.cancel()
        self.pending.clear()
        self.pool.submit(self._abort).result()

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    # Run on the writer thread ---------------------------------------------------------
    def _guarded(self, fn, *args) -> None:
        """After one step fails, the queued steps do nothing, so abort finds the failed shard."""
        if self.failed:
            return
        try:
            fn(*args)
        except BaseException:
            self.failed = True
            raise

    def _start(self, task: ShardTask, quality: dict[str, Any] | None) -> None:
        self.writer = ShardWriter(self.root, task.name, task.split, self.features, self.tmp_dir)
        self.rows = []
        self.stats = CellStats()
        for cell, stats in (quality or {}).items():
            self.stats.add(cell, stats)

    def _add(self, winner: Winner) -> None:
        start = time.perf_counter()
        row = self._row(winner)
        self.seconds["encode"] += time.perf_counter() - start
        self.stats.add_row(cell_key(winner.sample.labels), winner.tally, winner.label_confidence)
        self._append(row)

    def _replace(self, old: dict[str, Any], winner: Winner) -> None:
        """The old row counts as rejected in review (reason ``review``) and no longer as kept."""
        self.stats.add(cell_key(winner.sample.labels), {"rows": -1, "label_confidence_sum": -old["label_confidence"],
                                                        "rejected": {"review": 1}})
        self._add(winner)

    def _append(self, row: dict[str, Any]) -> None:
        primary = self.recipe.primary
        if self.rows and (len(self.rows) >= ROW_GROUP_ROWS or self.rows[-1][primary] != row[primary]):
            self._flush()  # a row group holds one primary label
        self.rows.append(row)

    def _row(self, w: Winner) -> dict[str, Any]:
        s = w.sample
        row = {"sample_id": s.sample_id, "image": {"bytes": encode_png(w.pixels), "path": None}}
        row.update({a: self.label_ids[a][v] for a, v in s.labels.items()})
        row.update(
            prompt=s.prompt, negative_prompt=s.negative_prompt, caption=s.caption, seed=w.seed,
            clip_score=w.clip_score, candidate_scores=w.candidate_scores, candidate_index=w.candidate_index,
            label_confidence=w.label_confidence, attempt=w.attempt, clip_embedding=w.embedding.tolist(),
            face_box=w.face_box, safety_score=w.safety_score, **{name: w.settings.get(name) for name in SETTING_COLUMNS},
        )
        row.update(row_provenance(w.batch, w.unet_calls, w.settings, self.candidates))
        for attr, (verdict, probability) in w.verified.items():
            row.update(zip(verified_columns(attr), (verdict, probability)))
        return {k: row[k] for k in self.features}

    def _flush(self) -> None:
        if self.rows:
            start = time.perf_counter()
            self.writer.write_row_group({k: [r[k] for r in self.rows] for k in self.rows[0]})
            self.rows = []
            release_memory()
            self.seconds["write"] += time.perf_counter() - start

    def _finish(self) -> None:
        self._flush()
        start = time.perf_counter()
        record = self.writer.commit()
        self.seconds["write"] += time.perf_counter() - start
        self.manifest.add_shard(self.writer.name, record)
        self.manifest.shards[self.writer.name]["quality"] = self.stats.to_json()
        self.manifest.save(self.root)
        logger.info("wrote %s (%d rows)", self.writer.name, record.rows)
        self.writer = None

    def _abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
        self.rows = []


def models(cfg: GenerateConfig, recipe: Recipe) -> tuple[str, str]:
    """The diffusion model and the CLIP model a run uses: the command line's, else the recipe's and defaults."""
    model = cfg.model or recipe.model
    if not model:
        raise PlanError(f"recipe '{recipe.name}' names no model: give --model")
    clip_model = cfg.clip_model or ("tiny" if model == "tiny" else None)
    if clip_model is None:
        from ..scoring import DEFAULT_CLIP

        clip_model = DEFAULT_CLIP
    return model, clip_model


def generate(cfg: GenerateConfig) -> GenerateResult:
    """Generate (or resume, repair or grow) a dataset folder, or this worker's part of it.

    Everything that can be checked without the model is checked first; then the folder
    is locked for the whole run, so a second run on it is refused with the holder's pid.
    """
    recipe = load_recipe(cfg.recipe)
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
    unguided = sum(1 for s, settings in zip(plan.samples, sizes) if settings["guidance"] <= 1 and s.negative_prompt)
    if unguided:  # diffusers runs classifier-free guidance only above 1: no unconditional branch, no negative
        logger.warning("guidance at or below 1 for %d of %d samples: no unconditional branch runs for them, so "
                       "their negative prompt is unused (it stays in the negative_prompt column)", unguided,
                       len(plan.samples))
    keep = max((k for k in (s.get("keep") for s in sizes) if k is not None), default=None)
    if keep is not None and keep >= cfg.candidates:  # a recipe's keep, checked against this run's candidates
        raise PlanError(f"keep: the recipe keeps {keep} candidates past prune_at, which must be below --candidates "
                        f"({cfg.candidates})")
    per_shard = cfg.rows_per_shard or rows_per_shard(max(s["width"] for s in sizes), max(s["height"] for s in sizes))
    params = run_parameters(cfg, recipe, plan, model, clip_model, overrides, per_shard, quality, verify, adapters)
    tasks = layout(plan, per_shard)
    source, text = resolve(cfg.recipe)
    header = {
        "generator": GENERATOR,
        "format": FORMAT_VERSION,
        "fingerprint": fingerprint(params),
        "parameters": params,
        "recipe": {"name": recipe.name, "source": source, "yaml": text, "fingerprint": recipe.fingerprint()},
        "plan": {"num_samples": plan.num_samples, "seed": plan.seed, "candidates": cfg.candidates,
                 "splits": plan.split_sizes(), "rows_per_shard": per_shard},
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
        return _generate_locked(cfg, recipe, model, clip_model, overrides, quality, header, tasks, out, worker,
                                adapters)
    finally:
        lock.release()
        tidy(out, worker, created)


def _generate_locked(cfg: GenerateConfig, recipe: Recipe, model: str, clip_model: str, overrides: dict[str, Any],
                     quality: QualityOptions, header: dict[str, Any], tasks: list[ShardTask], out: Path,
                     worker: Worker, adapters: list[Adapter]) -> GenerateResult:
    """The run, holding the folder: resume, grow, repair or replace, then the review round, then the card.

    Shards missing from the folder are built first (every sample from its floor attempt); then the rows that
    the review snapshot rejects are made again, also those a rebuilt shard brought back (see review_round).
    """
    from tqdm.auto import tqdm

    manifest, replaced = open_folder(out, header, {t.name: t.ids for t in tasks}, worker, overwrite=cfg.overwrite,
                                     repair=cfg.repair, version=cfg.dataset_version)
    remove_stale_temp_files(out)
    tmp_dir = out / worker.tmp_dir
    mine = worker.share(tasks)
    cells = review_cells(out, tasks)
    limit = rounds.snapshot(out, manifest) if cells is not None else 0
    redo = _review(out, manifest, cells, worker, cfg.dataset_version, limit, list(manifest.shards))
    todo = [t for t in mine if t.name not in manifest.shards]
    done_rows = sum(len(t.samples) for t in mine if t not in todo)
    engine = None
    if todo or redo:  # load the model before changing anything: a model that fails to load changes nothing
        engine = _build_engine(cfg, recipe, model, clip_model, overrides, manifest, quality, adapters)
    try:
        clear_listed(out, replaced)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir(parents=True)
        manifest.save(out)
    except PermissionError:
        raise OutputError(f"--out: cannot write to '{out}': permission denied") from None
    timings: dict[str, float] = {}
    written = {t.name for t in todo} | set(redo)
    if engine is not None:
        start = time.perf_counter()
        sink_seconds = _run(engine, mine, out, tmp_dir, recipe, manifest, done_rows, cfg.quiet, tqdm, redo)
        built = [t.name for t in todo]
        again = _review(out, manifest, cells, worker, cfg.dataset_version, limit, built) if built else {}
        if again:  # a rebuilt shard (repair, grow) holds rows the snapshot rejects: one more pass makes them again
            manifest.save(out)
            engine.gates.reset()
            rewritten = [t for t in mine if t.name in again]
            more = _run(engine, mine, out, tmp_dir, recipe, manifest, sum(len(t.samples) for t in mine if
                        t not in rewritten), cfg.quiet, tqdm, again)
            sink_seconds = {k: sink_seconds.get(k, 0) + more.get(k, 0) for k in {*sink_seconds, *more}}
            written |= set(again)
        timings = {**engine.timings.seconds, **sink_seconds, "wall": time.perf_counter() - start,
                   "unet_images": engine.unet_images}
    shutil.rmtree(tmp_dir, ignore_errors=True)
    made_again = rounds.finish(out, manifest, cells)
    manifest.data["complete"] = True
    manifest.data["quality"] = quality_report(manifest.shards)
    manifest.save(out)
    merged = worker.alone or _merge_if_last(out, worker)
    if merged:
        _refresh_evaluation(out)
    if merged and cfg.write_card:
        from ..dataset_card import foreign_readme, write_card

        if foreign_readme(out):  # someone's own README: never replaced behind their back
            logger.warning("'%s' has no facesynth markers and is not the card facesynth wrote: left as it is; "
                           "`facesynth card %s --overwrite-card` replaces it", out / "README.md", out)
        else:
            write_card(out)
    return GenerateResult(out, sum(len(t.samples) for t in mine), len(written), len(mine) - len(written), timings,
                          worker, merged, manifest.data["quality"]["total"], made_again, manifest.get("version"))


def _refresh_evaluation(out: Path) -> None:
    """Measure the data again when it changed under an ``evaluation.json`` (with the settings it records)."""
    from ..evaluate import refresh

    try:
        if refresh(out, locked=True, card=False):
            logger.info("%s: evaluation.json made again for the changed data", out)
    except FacesynthError as exc:  # e.g. its real dataset is not reachable now: validate and the card say so
        logger.warning("%s: evaluation.json describes the data before this run and was not made again (%s); "
                       "run `facesynth evaluate %s`", out, exc, out)


def review_cells(out: Path, tasks: list[ShardTask]) -> dict[str, str] | None:
    """Each planned sample's label cell, for matching verdicts; None (nothing to do) without a verdict file."""
    if not verdicts_path(out).is_file():
        return None
    return {s.sample_id: cell_key(s.labels) for t in tasks for s in t.samples}


def _review(out: Path, manifest: Manifest, cells: dict[str, str] | None, worker: Worker, version: str | None,
            limit: int, names: list[str]) -> dict[str, dict[str, Verdict]]:
    """Shards among ``names`` holding rows the snapshot rejects (shard -> sample_id -> verdict); opens the
    review round (or adds to it) if there are any."""
    if cells is None:
        return {}
    found = rounds.find_rejected(out, manifest, cells, names, limit)
    if found:
        if not worker.alone:
            rounds.refuse_for_workers(found)
        rounds.start(manifest, found, cells, limit, version)
    return found


def _rewrite(engine: Engine, sink: ShardSink, task: ShardTask, path: Path, rejected: dict[str, Verdict],
             manifest: Manifest, attributes: dict[str, list[str]]) -> None:
    """Write a finished shard again with its rejected rows made anew (next attempt, fresh seeds, same gates).

    The other rows are copied as they are, in their places; the new shard replaces the old one only
    when it is complete, so a crash leaves the old shard and the rejections still pending.
    """
    import pyarrow.parquet as pq

    if engine.gates.index is not None:  # the shard's kept rows count for deduplication, the rejected ones not
        ids = pq.read_table(path, columns=["sample_id"])["sample_id"].to_pylist()
        for sid, (cell, embedding) in zip(ids, shard_embeddings(path, attributes)):
            if sid not in rejected:
                engine.gates.accept(cell, embedding)
    samples = [s for s in task.samples if s.sample_id in rejected]
    floor = rounds.floors(manifest)
    first = {sid: floor.get(sid, v.attempt + 1) for sid, v in rejected.items()}
    winners = {w.sample.sample_id: w for w in engine.run(samples, first_attempt=first)}
    sink.start(task, manifest.shards[task.name].get("quality"))
    parquet = pq.ParquetFile(path)
    for i in range(parquet.num_row_groups):
        for row in parquet.read_row_group(i).to_pylist():
            win = winners.get(row["sample_id"])
            if win is None:
                sink.keep(row)
            else:
                sink.replace(row, win)
    sink.finish()
    logger.info("%s: %d row(s) rejected in review made again", task.name, len(winners))


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
    from ..scoring import ClipScorer
    from .loading import load_pipeline, optimize_pipeline, resolve_device, resolve_dtype

    device = resolve_device(_device(cfg.device))
    dtype = resolve_dtype(cfg.dtype, device)
    recorded = manifest.get("model") or {}
    pinned = recorded.get("commit") if recorded.get("kind") == "hub" else None  # resume at the same commit
    from ..verifiers import from_manifest

    given = {t.partition("=")[0] for t in cfg.verify}
    origins = {a: f"--verify {a}" if a in given else f"{cfg.recipe}: verify.{a}" for a in recipe.attributes}
    verifiers = from_manifest(manifest, recipe, device, dtype, origins)  # before the generator: bad ones fail fast
    fetch_adapters(adapters, manifest.get("loras") or ())  # each Hub adapter at the commit a resumed run recorded
    pipe, info = load_pipeline(model, revision=pinned or cfg.revision, dtype=dtype, device=device,
                               config=cfg.model_config)
    if pinned:
        info.revision = cfg.revision
    apply_adapters(pipe, adapters, model)
    optimize_pipeline(pipe, compile=cfg.compile, channels_last=cfg.channels_last)
    scorer = ClipScorer.load(clip_model, device=device, dtype=dtype)
    manifest.data["model"] = {k: v for k, v in asdict(info).items() if k != "preset_settings"}
    manifest.data["clip_model"] = asdict(scorer.info)
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
    if cfg.compile:  # one batch shape for the compiled UNet: smaller calls are padded to a full one
        engine.pad_to = max(1, cfg.batch_size // cfg.candidates) * cfg.candidates
    return engine


def _run(engine: Engine, mine: list[ShardTask], out: Path, tmp_dir: Path, recipe: Recipe, manifest: Manifest,
         done_rows: int, quiet: bool, tqdm, redo: dict[str, dict[str, Verdict]] | None = None) -> dict[str, float]:
    """Generate this worker's unfinished shards, in layout order; return the writer thread's seconds.

    With deduplication, a row is compared with the rows of this worker's earlier shards:
    finished ones are read back (their ``clip_embedding`` column) as the loop reaches
    them, so a resumed or repaired run sees exactly what an uninterrupted one saw.
    """
    sink = ShardSink(out, recipe, manifest, tmp_dir)
    bar = tqdm(total=sum(len(t.samples) for t in mine), initial=done_rows, unit="img", desc="generating",
               disable=quiet, dynamic_ncols=True)
    attributes = {a: list(attr.values) for a, attr in recipe.attributes.items()}
    floors = rounds.floors(manifest)  # samples a review round moved on start at their next attempt
    total_score, kept, rejected = 0.0, 0, 0
    redo = redo or {}
    try:
        for task in mine:
            if task.name in redo:
                _rewrite(engine, sink, task, out / task.name, redo[task.name], manifest, attributes)
                bar.update(len(task.samples))
                continue
            if task.name in manifest.shards:
                if engine.gates.index is not None:
                    for cell, embedding in shard_embeddings(out / task.name, attributes):
                        engine.gates.accept(cell, embedding)
                continue
            sink.start(task)
            for winner in engine.run(task.samples, first_attempt=floors):
                sink.add(winner)
                total_score += winner.clip_score
                kept += 1
                rejected += sum(winner.tally.rejected.values())
                bar.update(1)
                bar.set_postfix(clip=f"{total_score / kept:.2f}", rejected=rejected, refresh=False)
            sink.finish()
        sink.drain()
        return dict(sink.seconds)
    except BaseException as exc:
        sink.abort()
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
