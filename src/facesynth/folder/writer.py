"""Shards and manifest.

A shard is written to ``.facesynth/tmp/`` and renamed into ``data/`` only when it
is complete, so ``data/`` never holds a partial file. The files are written with
``datasets.arrow_writer.ParquetWriter`` and the dataset's Features, which gives the
same schema metadata, per-column compression and encodings, page index and
content-defined chunking as ``Dataset.push_to_hub``. The manifest records each
finished shard's row count and sha256, and is itself replaced atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Features
from datasets.arrow_writer import ParquetWriter

from ..errors import OutputError
from .files import load_json, write_json_atomic
from ..plan.layout import ids_digest
from .lock import WORK_DIR

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# The manifest's format: it changes whenever an older folder's plan or layout would no longer be this
# version's (4: the plan's near-linear cross-product order, splits balanced per primary label, and one
# shard folder per primary label, data/<label>/<split>-NNNNN.parquet; 5: the prune_at, keep and cfg_until
# columns; 6: the plan's order balancing every axis at every prefix, splits chosen sample by sample, and rows
# that collate with torch's default collate, see schema.COLLATE_SAFE_FORMAT; 7: the cross-product order's
# shifts chosen from a structured family by the pair balance they measure, see cross_order; 8: the splits of
# a small cross product searched per shape, see split_order; 9: rounds of up to 2,048 cells searched for a
# smaller pair bound, taking each axis's values in order of first use, see order_search, and free attributes
# assigned a block at a time at the least total cost, see balance.FreeValues; 10: splits chosen by the deficit rule
# cover values first, see balance.Splits: a label's first rows visit the splits lacking their values first, and a
# split that is due takes a row whose value it lacks).
FORMAT_VERSION = 10
MAX_SHARD_BYTES = 500 * 10**6  # like push_to_hub's default max_shard_size
ROW_GROUP_ROWS = 100


def rows_per_shard(width: int, height: int) -> int:
    """Rows that surely fit in 500 MB: an RGB PNG is at most its raw size plus a little."""
    worst_row = width * height * 3 + height + 4096
    return max(1, MAX_SHARD_BYTES // worst_row)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def arrow_bytes(path: Path) -> int:
    """The shard's rows as Arrow tables, read back one row group at a time: the size ``load_dataset`` holds
    (the card's ``dataset_size``; the file's own size is its ``download_size``)."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    return sum(parquet.read_row_group(i).nbytes for i in range(parquet.num_row_groups))


@dataclass
class ShardRecord:
    """What the manifest keeps about one finished shard."""

    split: str
    rows: int
    bytes: int
    sha256: str
    row_groups: int
    ids: str  # ids_digest of the shard's sample ids
    arrow_bytes: int = 0  # see arrow_bytes()

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ShardWriter:
    """Writes one shard, one row group per ``write_row_group`` call."""

    def __init__(self, root: Path, name: str, split: str, features: Features, tmp_dir: Path | None = None):
        self.root = root
        self.name = name
        self.split = split
        tmp_dir = tmp_dir or root / WORK_DIR / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp_dir / name.replace("/", "__")  # unique per shard: labels share split file names
        self.tmp.unlink(missing_ok=True)
        self._writer = ParquetWriter(path=str(self.tmp), features=features)
        self.rows = 0
        self.row_groups = 0
        self.sample_ids: list[str] = []

    def write_row_group(self, columns: dict[str, list]) -> None:
        n = len(next(iter(columns.values())))
        if n:
            self._writer.write_batch(columns, writer_batch_size=n)
            self.sample_ids.extend(columns["sample_id"])
            self.rows += n
            self.row_groups += 1

    def commit(self) -> ShardRecord:
        """Finish the file, fsync it and move it into ``data/``."""
        self._writer.finalize()
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        final = self.root / self.name
        final.parent.mkdir(parents=True, exist_ok=True)
        record = ShardRecord(self.split, self.rows, self.tmp.stat().st_size, sha256_file(self.tmp), self.row_groups,
                             ids_digest(self.sample_ids), arrow_bytes(self.tmp))
        os.replace(self.tmp, final)
        return record

    def abort(self) -> None:
        """Drop the partial file (closing it may fail too, e.g. on a full disk: that is ignored)."""
        try:
            self._writer.close()
        except OSError as exc:
            logger.debug("closing %s while aborting: %s", self.tmp, exc)
        finally:
            self.tmp.unlink(missing_ok=True)


GENERATOR = "facesynth"  # manifest.json's "generator": what makes a folder unmistakably a facesynth dataset


def is_facesynth_manifest(data: Any) -> bool:
    """Whether parsed JSON is a facesynth manifest: it says so (``"generator": "facesynth"``), or, for folders
    made before that key, it has every part of one (recipe YAML, plan, layout, shards, format)."""
    if not isinstance(data, dict):
        return False
    if data.get("generator") == GENERATOR:
        return True
    recipe, plan = data.get("recipe"), data.get("plan")
    return (isinstance(recipe, dict) and isinstance(recipe.get("yaml"), str) and isinstance(plan, dict)
            and "num_samples" in plan and isinstance(data.get("layout"), list)
            and isinstance(data.get("shards"), dict) and isinstance(data.get("format"), int)
            and isinstance(data.get("fingerprint"), str))


class Manifest:
    """The dataset folder's manifest.json: run parameters plus finished shards."""

    def __init__(self, data: dict[str, Any], file: str = MANIFEST):
        self.data = data
        self.data.setdefault("shards", {})
        self.file = file  # relative to the dataset folder; workers keep their own

    @staticmethod
    def path(root: Path, file: str = MANIFEST) -> Path:
        return Path(root) / file

    @classmethod
    def load(cls, root: Path, file: str = MANIFEST) -> "Manifest | None":
        path = cls.path(root, file)
        if not path.exists():
            return None
        try:
            data = load_json(path)
        except (ValueError, UnicodeDecodeError) as exc:
            raise OutputError(f"'{path}': not a valid manifest ({exc})") from None
        if not isinstance(data, dict):
            raise OutputError(f"'{path}': not a valid manifest (not a JSON object)")
        return cls(data, file)

    @classmethod
    def peek(cls, path: Path) -> bool:
        """Whether ``path`` holds a facesynth manifest (a file that does not parse is someone else's)."""
        try:
            return path.is_file() and is_facesynth_manifest(load_json(path))
        except (OSError, ValueError, UnicodeDecodeError):
            return False

    def save(self, root: Path) -> None:
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        path = self.path(root, self.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.data)

    @property
    def shards(self) -> dict[str, dict[str, Any]]:
        return self.data["shards"]

    def add_shard(self, name: str, record: ShardRecord) -> None:
        self.shards[name] = record.to_json()

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)
