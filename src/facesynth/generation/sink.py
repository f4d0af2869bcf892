"""The shard sink: winners encoded to PNG and written as row groups on one background thread."""

from __future__ import annotations

import ctypes
import io
import logging
import sys
import time
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from ..folder.state import cell_key
from ..plan.layout import ShardTask
from ..checks.quality import CellStats
from ..recipe import Recipe
from ..folder.schema import SETTING_COLUMNS, features_of, row_provenance, verified_columns
from ..folder.writer import ROW_GROUP_ROWS, Manifest, ShardWriter
from .engine import Winner

logger = logging.getLogger(__name__)

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
        self.calls: str | None = None
        self.stats = CellStats()
        self.label_ids = {a: {v: i for i, v in enumerate(attr.values)} for a, attr in recipe.attributes.items()}
        self.on_commit = None  # called with each finished shard's name, after the manifest lists it

    def _submit(self, fn, *args) -> None:
        self.pending.append(self.pool.submit(self._guarded, fn, *args))
        while len(self.pending) > self.max_pending:
            self.pending.popleft().result()
        while self.pending and self.pending[0].done():
            self.pending.popleft().result()

    def drain(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def start(self, task: ShardTask, quality: dict[str, Any] | None = None, calls: str | None = None) -> None:
        """Open ``task``'s shard; ``calls``, its group's digest (``layout.call_contexts``), is recorded with it."""
        self._submit(self._start, task, quality, calls)

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

    def _start(self, task: ShardTask, quality: dict[str, Any] | None, calls: str | None) -> None:
        self.writer = ShardWriter(self.root, task.name, task.split, self.features, self.tmp_dir)
        self.calls = calls
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
        if s.identity is not None:
            row.update(identity=s.identity, reference=s.reference, identity_similarity=w.identity_similarity,
                       identity_leaks=" ".join(w.leaks),
                       identity_embedding=None if w.identity_embedding is None else w.identity_embedding.tolist())
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
        if self.calls is not None:
            self.manifest.shards[self.writer.name]["calls"] = self.calls
        self.manifest.save(self.root)
        logger.info("wrote %s (%d rows)", self.writer.name, record.rows)
        name, self.writer = self.writer.name, None
        if self.on_commit is not None:
            start = time.perf_counter()
            self.on_commit(name)
            self.seconds["upload"] += time.perf_counter() - start

    def _abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
        self.rows = []
