"""The review round inside a run: which finished shards hold rows a reviewer rejected, and each such shard
written again with those rows made anew (see :mod:`facesynth.review_round` for the round's records)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..review import rounds
from ..folder.state import Worker, cell_key
from ..plan.layout import ShardTask
from ..checks.quality import shard_embeddings
from ..review.verdicts import Verdict, verdicts_path
from ..folder.writer import Manifest
from .engine import Engine
from .sink import ShardSink

logger = logging.getLogger(__name__)

class Cells(dict):
    """sample_id -> label cell, and for identity sets ``sets``: sample_id -> every member of its set."""

    sets: dict[str, list[str]] = {}


def review_cells(out: Path, tasks: list[ShardTask]) -> Cells | None:
    """Each planned sample's label cell, for matching verdicts; None (nothing to do) without a verdict file."""
    if not verdicts_path(out).is_file():
        return None
    cells = Cells((s.sample_id, cell_key(s.labels)) for t in tasks for s in t.samples)
    members: dict[str, list[str]] = {}
    for task in tasks:
        for s in task.samples:
            if s.identity is not None:
                members.setdefault(s.identity, []).append(s.sample_id)
    cells.sets = {sid: ids for ids in members.values() for sid in ids}
    return cells


def open_round(out: Path, manifest: Manifest, cells: dict[str, str] | None, worker: Worker, version: str | None,
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


def remake(engine: Engine, tasks: list[ShardTask], rejected: dict[str, Verdict], manifest: Manifest) -> dict:
    """The new winners of these tasks' rejected samples, made together (a set's members share a call), each at
    its next attempt."""
    samples = [s for t in tasks for s in t.samples if s.sample_id in rejected]
    floor = rounds.floors(manifest)
    first = {sid: floor.get(sid, v.attempt + 1) for sid, v in rejected.items()}
    return {w.sample.sample_id: w for w in engine.run(samples, first_attempt=first)}


def rewrite(engine: Engine, sink: ShardSink, task: ShardTask, path: Path, rejected: dict[str, Verdict],
             manifest: Manifest, attributes: dict[str, list[str]], made: dict | None = None) -> None:
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
    winners = made if made is not None else remake(engine, [task], rejected, manifest)
    winners = {sid: w for sid, w in winners.items() if sid in rejected}
    record = manifest.shards[task.name]
    sink.start(task, record.get("quality"), record.get("calls"))  # its kept rows' calls stay its calls
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
