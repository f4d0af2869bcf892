"""``facesynth review``: the rows a local gallery shows, and the verdicts it records.

The rows' columns, without images, are held in memory as NumPy arrays, so filtering and
sorting 30,000 rows takes milliseconds; images are read from the shards only when the
browser asks for them (thumbnails lazily, as they scroll into view), and nothing is
copied to disk. Verdicts go to ``verdicts.jsonl`` (see :mod:`.verdicts`); the shards are
never written here. :mod:`.server` serves this over HTTP.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from ..folder.reading import read_manifest, shard_paths
from ..errors import OutputError, shorten, visible
from ..recipe import recipe_of
from ..folder.schema import verified_attributes, verified_columns
from .verdicts import Verdict, append_verdicts, clean_reason, image_digest, review_state

logger = logging.getLogger(__name__)

SORTS = ("clip_score", "label_confidence", "safety_score")  # and each verified attribute's probability
VERIFIER_FILTERS = ("disagrees", "agrees")  # a verifier's verdict is not / is the row's value (every one)
THUMB = 192  # thumbnail side, px
PAGE = 240  # rows per request
MAX_PAGE = 2000
MAX_ROWS = 10_000  # rows one verdict request may name
_META = ["sample_id", "prompt", "seed", "attempt", *SORTS]


@dataclass(frozen=True)
class Where:
    """A row's place: shard, row group, index in the group."""

    shard: str
    group: int
    offset: int


class Rows:
    """One reading of the folder: every row's labels and scores as arrays, and where each row is.

    A reload builds a new one and swaps it in whole, so a request that took one sees it consistent to
    the end (no index rebuilt under its feet); only ``rejected`` and ``reasons`` change in place, under
    the gallery's write lock, as verdicts are saved.
    """

    def __init__(self, root: Path, manifest, attributes: dict[str, list[str]], splits: list[str],
                 verified: list[str] = ()):
        self.root = root
        self.manifest = manifest
        paths = shard_paths(root, manifest)
        checked = [c for a in verified for c in verified_columns(a)]
        meta = [*_META, *checked]
        columns: dict[str, list] = {c: [] for c in [*meta, *attributes, "split"]}
        self.where: list[Where] = []
        for name, path in paths.items():
            parquet = pq.ParquetFile(path)
            present = [c for c in [*meta, *attributes] if c in parquet.schema_arrow.names]
            split = manifest.shards[name]["split"]
            for g in range(parquet.num_row_groups):
                table = parquet.read_row_group(g, columns=present)
                for c in columns:
                    if c == "split":
                        columns[c] += [split] * table.num_rows
                    elif c in present:
                        columns[c] += table[c].to_pylist()
                    else:  # a column an older format lacks
                        columns[c] += [None] * table.num_rows
                self.where += [Where(name, g, i) for i in range(table.num_rows)]
        self.shards = len(paths)
        self.sample_ids: list[str] = columns["sample_id"]
        self.index = {sid: i for i, sid in enumerate(self.sample_ids)}
        self.prompts: list[str] = columns["prompt"]
        self.seeds: list[int] = columns["seed"]
        self.attempts = np.array(columns["attempt"], dtype=np.int64)
        self.labels = {a: np.array(columns[a], dtype=np.int16) for a in attributes}
        split_ids = {s: i for i, s in enumerate(splits)}
        self.split = np.array([split_ids.get(s, -1) for s in columns["split"]], dtype=np.int16)
        self.scores = {k: np.array([np.nan if v is None else v for v in columns[k]], dtype=np.float64)
                       for k in [*SORTS, *(verified_columns(a)[1] for a in verified)]}
        # each verified attribute's verdict (an index into its values, then "other"; -1 where none is recorded)
        self.verdicts = {a: np.array([-1 if v is None else v for v in columns[verified_columns(a)[0]]], dtype=np.int16)
                         for a in verified}
        self.rejected = np.zeros(len(self.sample_ids), dtype=bool)
        self.reasons: dict[int, str] = {}
        self.images: OrderedDict[tuple[str, int], list[bytes]] = OrderedDict()  # row groups' PNGs, LRU
        waiting, _ = review_state(root, list(manifest.shards), self.index)
        for sid, verdict in waiting.items():
            self.mark(self.index[sid], verdict)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def mark(self, i: int, verdict: Verdict) -> None:
        self.rejected[i] = verdict.verdict == "reject"
        if self.rejected[i]:
            self.reasons[i] = verdict.reason
        else:
            self.reasons.pop(i, None)


class Gallery:
    """A dataset folder's rows, for the review page: columns in memory, images read on demand.

    Attribute reads (``sample_ids``, ``rejected``, ``scores``, ...) go to the current :class:`Rows`.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise OutputError(f"'{self.root}': not a folder")
        from ..folder.reading import check_complete, wait_for_writer

        wait_for_writer(self.root, False, "review it")  # a grow in progress would show only what it kept so far
        manifest = read_manifest(self.root)
        check_complete(self.root, manifest, partial=False)
        self.recipe = recipe_of(manifest)
        self.attributes = {a: list(attr.values) for a, attr in self.recipe.attributes.items()}
        self.primary = self.recipe.primary
        self.splits = list(self.recipe.splits)
        self.verified = verified_attributes(manifest)
        self.sorts = [*SORTS, *(verified_columns(a)[1] for a in self.verified)]
        self._write = threading.Lock()  # reloads and verdicts take turns; readers never wait
        self._cache = threading.Lock()
        self.stamp = self._stamp()
        self.snapshot = self._read()

    def __getattr__(self, name: str):
        if name == "snapshot":
            raise AttributeError(name)
        return getattr(self.snapshot, name)

    # Loading ------------------------------------------------------------------------------
    def _stamp(self) -> tuple[int, int, int]:
        stat = (self.root / "manifest.json").stat()
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def _read(self) -> Rows:
        """Read every shard's label and score columns (no images) into a new :class:`Rows`."""
        rows = Rows(self.root, read_manifest(self.root), self.attributes, self.splits, self.verified)
        logger.info("review: %d rows in %d shards, %d rejected", len(rows), rows.shards, int(rows.rejected.sum()))
        return rows

    def refresh(self) -> bool:
        """Reload if ``generate`` changed the folder since and has finished; returns whether it did. While a run
        writes the folder (a grow, a review round) the gallery keeps showing the rows it had."""
        from ..folder.lock import folder_held

        if self._stamp() == self.stamp or folder_held(self.root):
            return False
        with self._write:
            stamp = self._stamp()
            if stamp == self.stamp or not read_manifest(self.root).get("complete"):
                return False
            self.snapshot, self.stamp = self._read(), stamp
        return True

    def __len__(self) -> int:
        return len(self.snapshot)

    # Queries ------------------------------------------------------------------------------
    def select(self, filters: dict[str, str], sort: str = "clip_score", descending: bool = True,
               status: str = "all", rows: Rows | None = None) -> np.ndarray:
        """Row indices that pass the filters, grouped by primary label (in recipe order), sorted within."""
        rows = rows or self.snapshot
        mask = np.ones(len(rows), dtype=bool)
        for attr, value in filters.items():
            if attr == "split":
                if value not in self.splits:
                    raise ValueError(f"split: unknown value '{shorten(value, 60)}'")
                mask &= rows.split == self.splits.index(value)
            elif attr == "verifier":
                if value not in VERIFIER_FILTERS or not self.verified:
                    raise ValueError(f"verifier: must be {' or '.join(VERIFIER_FILTERS)}, for a verified dataset "
                                     f"(got '{shorten(value, 60)}')")
                disputed = np.zeros(len(rows), dtype=bool)
                for a in self.verified:
                    disputed |= rows.verdicts[a] != rows.labels[a]
                mask &= disputed if value == "disagrees" else ~disputed
            elif attr in self.attributes:
                if value not in self.attributes[attr]:
                    raise ValueError(f"{attr}: unknown value '{shorten(value, 60)}'")
                mask &= rows.labels[attr] == self.attributes[attr].index(value)
            else:
                raise ValueError(f"unknown filter '{shorten(attr, 60)}'")
        if status == "rejected":
            mask &= rows.rejected
        elif status == "kept":
            mask &= ~rows.rejected
        elif status != "all":
            raise ValueError(f"status: must be all, kept or rejected (got '{shorten(status, 60)}')")
        if sort not in self.sorts:
            raise ValueError(f"sort: must be one of {', '.join(self.sorts)} (got '{shorten(sort, 60)}')")
        found = np.flatnonzero(mask)
        key = rows.scores[sort][found]
        key = np.where(np.isnan(key), np.inf, -key if descending else key)  # missing scores last
        order = np.lexsort((found, key, rows.labels[self.primary][found]))
        return found[order]

    def summary(self, i: int, rows: Rows | None = None) -> dict[str, Any]:
        """What a gallery tile shows."""
        rows = rows or self.snapshot
        return {
            "i": int(i), "sample_id": rows.sample_ids[i], "attempt": int(rows.attempts[i]),
            **{a: self.attributes[a][rows.labels[a][i]] for a in self.attributes},
            "split": self.splits[rows.split[i]] if rows.split[i] >= 0 else None,
            **{k: _finite(rows.scores[k][i]) for k in self.sorts},
            **{verified_columns(a)[0]: ([*self.attributes[a], "other"][rows.verdicts[a][i]]
                                        if rows.verdicts[a][i] >= 0 else None) for a in self.verified},
            "rejected": bool(rows.rejected[i]), "reason": rows.reasons.get(int(i), ""),
        }

    def row(self, i: int, rows: Rows | None = None) -> dict[str, Any]:
        """A row's columns (no image, no embedding), for the detail view."""
        rows = rows or self.snapshot
        where = rows.where[i]
        table = pq.ParquetFile(self.root / where.shard).read_row_group(where.group)
        row = {k: v for k, v in table.slice(where.offset, 1).to_pylist()[0].items()
               if k not in ("image", "clip_embedding")}
        for attr, values in self.attributes.items():
            row[attr] = values[row[attr]]
        for key, value in row.items():
            if isinstance(value, float):
                row[key] = _finite(value)
            elif isinstance(value, list):
                row[key] = [_finite(v) if isinstance(v, float) else v for v in value]
            elif isinstance(value, str):
                row[key] = visible(value)  # a prompt's bidi or control characters are shown, never obeyed
        return {**self.summary(i, rows), "columns": row, "shard": where.shard}

    # Images -------------------------------------------------------------------------------
    def _group_images(self, rows: Rows, where: Where) -> list[bytes]:
        """The PNG bytes of one row group, from a small LRU cache (a page of thumbnails reads each group once)."""
        key = (where.shard, where.group)
        with self._cache:
            if key in rows.images:
                rows.images.move_to_end(key)
                return rows.images[key]
        table = pq.ParquetFile(self.root / where.shard).read_row_group(where.group, columns=["image"])
        images = [cell["bytes"] for cell in table["image"].to_pylist()]
        with self._cache:
            rows.images[key] = images
            while len(rows.images) > 8:
                rows.images.popitem(last=False)
        return images

    def image(self, i: int, rows: Rows | None = None) -> bytes:
        rows = rows or self.snapshot
        where = rows.where[i]
        return self._group_images(rows, where)[where.offset]

    def thumbnail(self, i: int, rows: Rows | None = None) -> bytes:
        image = Image.open(io.BytesIO(self.image(i, rows))).convert("RGB")
        image.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)  # never upscales
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85)
        return buf.getvalue()

    # Verdicts -----------------------------------------------------------------------------
    def judge(self, items: list[dict[str, Any]], verdict: str, reason: Any = "") -> list[dict[str, Any]]:
        """Save a verdict on rows named by ``{"sample_id", "attempt"}``; the rows as they are now.

        Each row is judged once however often the request names it; nothing is saved unless every row is valid.
        """
        if verdict not in ("reject", "restore"):
            raise ValueError("verdict: must be reject or restore")
        reason = clean_reason(reason) if verdict == "reject" else ""
        with self._write:
            rows = self.snapshot
            entries, chosen, seen = [], [], set()
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("sample_id"), str):
                    raise ValueError("each row must be an object with sample_id (text) and attempt")
                i = rows.index.get(item["sample_id"])
                if i is None:
                    raise ValueError(f"sample_id: '{shorten(item['sample_id'], 60)}' is not in this dataset")
                if item.get("attempt") != int(rows.attempts[i]):
                    raise LookupError(f"{rows.sample_ids[i]}: the dataset now holds attempt {int(rows.attempts[i])}; "
                                      "reload the page")
                if i in seen:
                    continue
                seen.add(i)
                entries.append(Verdict(rows.sample_ids[i], int(rows.attempts[i]), image_digest(self.image(i, rows)),
                                       verdict, reason))
                chosen.append(i)
            saved = append_verdicts(self.root, entries)
            for i, entry in zip(chosen, saved):
                rows.mark(i, entry)
            return [self.summary(i, rows) for i in chosen]

    def config(self) -> dict[str, Any]:
        """What the page needs to draw its filters."""
        return {"name": self.recipe.name, "root": visible(self.root.name), "primary": self.primary,
                "attributes": self.attributes, "splits": self.splits, "sorts": self.sorts, "rows": len(self),
                "verified": self.verified,
                "version": self.snapshot.manifest.get("version"), "page": PAGE, "max_rows": MAX_ROWS}


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None
