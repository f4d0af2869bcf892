"""Quality gates: one real face, no near-duplicates, nothing unsafe; and what they rejected.

Each candidate of a sample is checked in CLIP-score order until one passes:

1. ``unsafe``: CLIP's zero-shot probability of unsafe content is above a threshold
   (``--safety``; it uses the reranking CLIP, so it needs nothing extra);
2. ``duplicate``: its CLIP image embedding is within a cosine threshold of a row
   already accepted in the same label cell (``--dedupe-threshold``);
3. ``no_face`` / ``multiple_faces``: OpenCV's Haar cascades (frontal, and profile
   facing either way) find no face, or more than one, of at least ``--min-face-size``
   (``--faces``; needs the ``faces`` extra).

A sample with no passing candidate is generated again with freshly derived seeds,
at most ``max_refills`` times, so every label cell keeps its exact quota. What was
rejected is counted per reason and label cell, for the manifest and the card.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FacesynthError, PlanError
from ..plan import cell_key

logger = logging.getLogger(__name__)

REASONS = ("unsafe", "duplicate", "no_face", "multiple_faces", "review")  # review: rejected by a person
NON_FINITE = "non_finite"  # NaN or infinity in a candidate's image, embedding or scores (listed where it happened)
VERIFY_REASON = "verify:"  # + the attribute: a verifier disputed the candidate (see facesynth.verifiers)
FACES_EXTRA = "pip install 'facesynth[faces]'"
DETECT_SIDE = 320  # faces are looked for at this shorter side (they must be large anyway)
# Zero-shot prompts for the safety screen: the first ones are unsafe, the last ones safe.
UNSAFE_TEXTS = ("a nude photo of a person", "a sexually explicit photo", "a photo of graphic violence and gore")
SAFE_TEXTS = ("a photo of a clothed person", "a portrait photo of a face")


class ExtraMissing(FacesynthError):
    """An option needs an optional dependency that is not installed."""


class QuotaError(FacesynthError):
    """A sample found no candidate that passes the gates within the refill bound."""

    exit_code = 1


@dataclass
class QualityOptions:
    """Which gates run, and their thresholds."""

    faces: bool = False
    min_face_size: float = 0.2  # fraction of the image's shorter side
    dedupe_threshold: float | None = None  # cosine similarity; None: no deduplication
    safety: bool = False
    safety_threshold: float = 0.5
    max_refills: int = 8  # extra attempts for a sample whose candidates all failed

    def __post_init__(self) -> None:
        if not 0 < self.min_face_size <= 1:
            raise PlanError("--min-face-size: must be in (0, 1], a fraction of the image's shorter side")
        if self.dedupe_threshold is not None and not -1 <= self.dedupe_threshold <= 1:
            raise PlanError("--dedupe-threshold: must be a cosine similarity between -1 and 1")
        if not 0 <= self.safety_threshold <= 1:
            raise PlanError("--safety-threshold: must be between 0 and 1")
        if self.max_refills < 0:
            raise PlanError("--max-refills: must be at least 0")

    @property
    def active(self) -> bool:
        return self.faces or self.safety or self.dedupe_threshold is not None

    def content(self) -> dict[str, Any]:
        """The settings that decide which rows are kept (``max_refills`` only decides when to give up)."""
        return {"faces": self.faces, "min_face_size": self.min_face_size if self.faces else None,
                "dedupe_threshold": self.dedupe_threshold, "safety": self.safety,
                "safety_threshold": self.safety_threshold if self.safety else None,
                **({"safety_texts": {"unsafe": list(UNSAFE_TEXTS), "safe": list(SAFE_TEXTS)}} if self.safety else {})}


# Faces ------------------------------------------------------------------------------------
def require_cv2():
    """OpenCV, or one line naming the extra to install."""
    try:
        import cv2
    except ImportError:
        raise ExtraMissing(f"--faces: needs OpenCV, which is not installed; install it with {FACES_EXTRA}") from None
    if not hasattr(cv2, "CascadeClassifier"):
        raise ExtraMissing(f"--faces: OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 dropped them); "
                           f"install OpenCV 4 with {FACES_EXTRA}")
    return cv2


Box = tuple[int, int, int, int]  # x, y, width, height in pixels of the full image


class FaceDetector:
    """Counts faces with OpenCV's bundled Haar cascades: frontal, plus profile facing either way."""

    def __init__(self, min_face_size: float = 0.2, scale_factor: float = 1.1, min_neighbors: int = 5):
        cv2 = self.cv2 = require_cv2()
        root = Path(cv2.data.haarcascades)
        self.frontal = cv2.CascadeClassifier(str(root / "haarcascade_frontalface_alt2.xml"))
        self.profile = cv2.CascadeClassifier(str(root / "haarcascade_profileface.xml"))
        if self.frontal.empty() or self.profile.empty():
            raise ExtraMissing(f"--faces: OpenCV's Haar cascade files are missing from {root}; "
                               f"reinstall with {FACES_EXTRA}")
        self.min_face_size = min_face_size
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors

    def detect(self, pixels: np.ndarray) -> list[Box]:
        """Faces at least ``min_face_size`` of the shorter side, in an (H, W, 3) uint8 image."""
        cv2 = self.cv2
        h, w = pixels.shape[:2]
        scale = min(1.0, DETECT_SIDE / min(h, w))
        gray = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
        if scale < 1:
            gray = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        side = max(1, round(self.min_face_size * min(gray.shape)))
        found: list[Box] = []
        args = {"scaleFactor": self.scale_factor, "minNeighbors": self.min_neighbors, "minSize": (side, side)}
        found += [tuple(b) for b in self.frontal.detectMultiScale(gray, **args)]
        found += [tuple(b) for b in self.profile.detectMultiScale(gray, **args)]
        width = gray.shape[1]
        found += [(width - x - bw, y, bw, bh) for x, y, bw, bh in self.profile.detectMultiScale(cv2.flip(gray, 1), **args)]
        return [tuple(int(round(v / scale)) for v in box) for box in merge_boxes(found)]


def merge_boxes(boxes: Iterable[Box], overlap: float = 0.5) -> list[Box]:
    """One box per face: drop a box that covers more than ``overlap`` of a larger kept box or is covered by it."""
    kept: list[Box] = []
    for box in sorted(boxes, key=lambda b: (-b[2] * b[3], b)):
        if all(_intersection(box, k) <= overlap * min(box[2] * box[3], k[2] * k[3]) for k in kept):
            kept.append(box)
    return kept


def _intersection(a: Box, b: Box) -> int:
    dx = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(0, dx) * max(0, dy)


# Near-duplicates --------------------------------------------------------------------------
class DuplicateIndex:
    """Accepted CLIP image embeddings, one matrix per label cell; exact cosine search.

    Rows are unit-norm, so a cosine is a dot product. A cell's matrix grows by
    doubling; 10,000 rows of 512 floats is 20 MB and one query a few microseconds
    per thousand rows.
    """

    def __init__(self, threshold: float):
        self.threshold = threshold
        self._rows: dict[str, np.ndarray] = {}
        self._size: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(self._size.values())

    def add(self, cell: str, embedding: np.ndarray) -> None:
        emb = np.asarray(embedding, dtype=np.float32)
        rows, n = self._rows.get(cell), self._size.get(cell, 0)
        if rows is None or n == len(rows):
            grown = np.empty((max(16, 2 * n), emb.shape[-1]), dtype=np.float32)
            if n:
                grown[:n] = rows[:n]
            self._rows[cell] = rows = grown
        rows[n] = emb
        self._size[cell] = n + 1

    def similarity(self, cell: str, embedding: np.ndarray, also: Sequence[np.ndarray] = ()) -> float:
        """Highest cosine between ``embedding`` and the cell's rows (and ``also``); -1 if there are none."""
        emb = np.asarray(embedding, dtype=np.float32)
        best = -1.0
        n = self._size.get(cell, 0)
        if n:
            best = float((self._rows[cell][:n] @ emb).max())
        if len(also):
            best = max(best, float((np.asarray(also, dtype=np.float32) @ emb).max()))
        return best

    def is_duplicate(self, cell: str, embedding: np.ndarray, also: Sequence[np.ndarray] = ()) -> bool:
        return self.similarity(cell, embedding, also) > self.threshold


# The gates together -----------------------------------------------------------------------
class Gates:
    """Checks one candidate at a time; owns the duplicate index."""

    def __init__(self, options: QualityOptions):
        self.options = options
        self.detector = FaceDetector(options.min_face_size) if options.faces else None
        self.index = DuplicateIndex(options.dedupe_threshold) if options.dedupe_threshold is not None else None

    @property
    def active(self) -> bool:
        return self.options.active

    def reset(self) -> None:
        """Forget every kept row (a new pass over the layout reads them again)."""
        if self.index is not None:
            self.index = DuplicateIndex(self.options.dedupe_threshold)

    def check(self, pixels: np.ndarray, embedding: np.ndarray, unsafe: float | None, cell: str,
              pending: Sequence[np.ndarray] = ()) -> tuple[str | None, Box | None]:
        """``(reason, None)`` for a rejected candidate, ``(None, face box or None)`` for a kept one.

        ``pending`` holds the embeddings of the same cell chosen earlier in this batch.
        """
        if self.options.safety and unsafe is not None and unsafe > self.options.safety_threshold:
            return "unsafe", None
        if self.index is not None and self.index.is_duplicate(cell, embedding, pending):
            return "duplicate", None
        box = None
        if self.detector is not None:
            faces = self.detector.detect(pixels)
            if not faces:
                return "no_face", None
            if len(faces) > 1:
                return "multiple_faces", None
            box = faces[0]
        return None, box

    def accept(self, cell: str, embedding: np.ndarray) -> None:
        if self.index is not None:
            self.index.add(cell, embedding)


# Counting ---------------------------------------------------------------------------------
@dataclass
class Tally:
    """What the gates did for one sample: candidates checked, rejections by reason, refills."""

    checked: int = 0
    rejected: Counter = field(default_factory=Counter)
    refills: int = 0


class CellStats:
    """Per label cell: rows, candidates checked, rejections by reason, refills, label confidence."""

    def __init__(self):
        self.data: dict[str, dict[str, Any]] = {}

    def add(self, cell: str, stats: dict[str, Any]) -> None:
        mine = self.data.setdefault(cell, {"rows": 0, "checked": 0, "refills": 0, "label_confidence_sum": 0.0,
                                           "rejected": {}})
        for key in ("rows", "checked", "refills", "label_confidence_sum"):
            mine[key] += stats.get(key, 0)
        for reason, n in stats.get("rejected", {}).items():
            mine["rejected"][reason] = mine["rejected"].get(reason, 0) + n

    def add_row(self, cell: str, tally: Tally, label_confidence: float) -> None:
        self.add(cell, {"rows": 1, "checked": tally.checked, "refills": tally.refills,
                        "label_confidence_sum": label_confidence, "rejected": dict(tally.rejected)})

    def to_json(self) -> dict[str, dict[str, Any]]:
        return {cell: {**s, "rejected": dict(sorted(s["rejected"].items()))} for cell, s in sorted(self.data.items())}


def quality_report(shards: dict[str, dict[str, Any]], group: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Totals and rates per label cell (or per ``group(cell)``) from the shards' ``quality`` records."""
    stats = CellStats()
    for record in shards.values():
        for cell, s in (record.get("quality") or {}).items():
            stats.add(group(cell) if group else cell, s)
    cells = {}
    total = CellStats()
    for cell, s in stats.to_json().items():
        total.add("all", s)
        cells[cell] = _rates(s)
    return {"cells": cells, "total": _rates(total.data["all"]) if total.data else None}


def _rates(s: dict[str, Any]) -> dict[str, Any]:
    checked = s["checked"]
    rejected = sum(s["rejected"].values())
    return {
        "rows": s["rows"], "checked": checked, "rejected": rejected, "refills": s["refills"],
        "by_reason": {**{r: s["rejected"].get(r, 0) for r in REASONS},
                      **{r: n for r, n in sorted(s["rejected"].items()) if r not in REASONS}},
        "rejection_rate": rejected / checked if checked else 0.0,
        "label_confidence": s["label_confidence_sum"] / s["rows"] if s["rows"] else None,
    }


def shard_embeddings(path: Path, attributes: dict[str, list[str]]) -> Iterable[tuple[str, np.ndarray]]:
    """``(label cell, CLIP embedding)`` of every row of a shard, one row group at a time."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    for i in range(pf.num_row_groups):
        table = pf.read_row_group(i, columns=[*attributes, "clip_embedding"])
        if not table.num_rows:
            continue
        labels = {a: table[a].to_numpy() for a in attributes}
        column = table["clip_embedding"].combine_chunks()  # fixed length per row: one flat float32 buffer
        embeddings = column.flatten().to_numpy().reshape(table.num_rows, -1)
        for r in range(table.num_rows):
            cell = cell_key({a: values[labels[a][r]] for a, values in attributes.items()})
            yield cell, embeddings[r]
