"""Real photos for ``facesynth evaluate --real``: any dataset ``load_dataset`` reads, streamed and embedded.

The dataset is a Hub id (pinned to the commit it resolves to, so the figures say exactly what they
were measured on) or a local folder (Parquet, image folders, or a ``save_to_disk`` folder). Its
label names map to one attribute's values: a name equal to a value (ignoring case, spaces and
hyphens) maps without being listed, ``--map NAME=VALUE`` maps the rest, ``--ignore-label NAME``
drops rows. Images are read and embedded in batches, with the CLIP the dataset was made with.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FacesynthError, first_line, shorten

logger = logging.getLogger(__name__)

BATCH = 64  # real images embedded per CLIP call, at most
BATCH_PIXELS = 16 * 2**20  # and at most this many pixels (each image as reduced by images.open_bounded)
CHECK_ROWS = 8  # stored rows re-embedded to check that the CLIP is the dataset's
SAME_CLIP = 0.98  # the least cosine between a stored embedding and the same image embedded again


class RealDataError(FacesynthError):
    """The real dataset, its columns or its labels cannot be used; the message names the option."""


@dataclass
class RealSpec:
    """What ``--real`` and its options asked for (recorded, so the evaluation can be made again)."""

    name: str
    label_column: str
    split: str | None = None  # None: test, or the only split there is
    image_column: str | None = None
    revision: str | None = None
    attribute: str | None = None  # default: the recipe's primary label
    mapping: dict[str, str] = field(default_factory=dict)
    ignore: list[str] = field(default_factory=list)
    skip_bad_images: bool = False  # leave unreadable images out (counted and named) instead of stopping
    allow_synthetic: bool = False  # compare with a facesynth folder all the same

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "label_column": self.label_column, "split": self.split,
                "image_column": self.image_column, "revision": self.revision, "attribute": self.attribute,
                "mapping": dict(self.mapping), "ignore": list(self.ignore), "skip_bad_images": self.skip_bad_images,
                "allow_synthetic": self.allow_synthetic}


def parse_map(items: tuple[str, ...] | list[str], form: str = "REAL_NAME=VALUE") -> dict[str, str]:
    """``--map NAME=VALUE`` options as a dict (one line naming the bad one)."""
    mapping = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise RealDataError(f"--map: '{shorten(item, 80)}' is not {form}")
        mapping[name] = value
    return mapping


def _key(name: str) -> str:
    return re.sub(r"[\s_-]+", "", str(name).lower())


def label_map(names: list[str], values: list[str], spec: RealSpec, attribute: str) -> dict[str, int | None]:
    """Each real label name's value index (None: ignored). Raises naming every name that maps to no value."""
    for target in spec.mapping.values():
        if target not in values:
            raise RealDataError(f"--map: '{shorten(target, 60)}' is not a value of {attribute} ({', '.join(values)})")
    by_key = {_key(v): i for i, v in enumerate(values)}
    out, unmapped = {}, []
    for name in names:
        if name in spec.ignore:
            out[name] = None
        elif name in spec.mapping:
            out[name] = values.index(spec.mapping[name])
        elif _key(name) in by_key:
            out[name] = by_key[_key(name)]
        else:
            unmapped.append(name)
    if unmapped:
        shown = ", ".join(f"'{shorten(n, 40)}'" for n in unmapped[:8]) + (", ..." if len(unmapped) > 8 else "")
        raise RealDataError(f"--real: label(s) {shown} of column '{spec.label_column}' map to no value of "
                            f"{attribute} ({', '.join(values)}); add --map NAME=VALUE or --ignore-label NAME")
    return out


def open_real(spec: RealSpec, dataset: Path | None = None):
    """The split as an iterable dataset, its recorded identity, and its row count when known. A local path that
    is not there is one line (never a Hub id), and so is a facesynth folder, the dataset itself above all, unless
    ``spec.allow_synthetic`` says it is meant (its images are not real photos)."""
    import datasets

    from ..folder.state import is_dataset
    from ..folder.pins import looks_local

    path = Path(spec.name).expanduser()
    if looks_local(spec.name) and not path.is_dir():
        raise RealDataError(f"--real: no such folder '{shorten(spec.name, 80)}'")
    if path.is_dir() and is_dataset(path) and not spec.allow_synthetic:
        same = dataset is not None and path.resolve() == Path(dataset).resolve()
        what = "is the dataset itself" if same else "is a facesynth dataset"
        raise RealDataError(f"--real: '{shorten(spec.name, 80)}' {what}: synthetic images, not real photos; give "
                            "--allow-synthetic-real if that is what you mean to compare with")
    record: dict[str, Any] = {"name": path.name if path.is_dir() else spec.name}
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = _split(loaded, spec)
            record["split"] = spec.split = spec.split or "test"
            return loaded.to_iterable_dataset(), record, len(loaded)
        if not path.is_dir():
            record["commit"] = _hub_commit(spec)
        stream = datasets.load_dataset(str(path) if path.is_dir() else spec.name, revision=record.get("commit"),
                                       streaming=True)
    except FacesynthError:
        raise
    except Exception as exc:  # datasets raises many kinds for "not a dataset": name the folder, one line
        raise RealDataError(f"--real: '{shorten(spec.name, 80)}' is not a dataset load_dataset can read "
                            f"({shorten(first_line(exc), 160)})") from None
    split = _split(stream, spec)
    record["split"] = spec.split
    info = split.info.splits.get(spec.split) if split.info and split.info.splits else None
    return split, record, (info.num_examples if info and info.num_examples else None)


def _split(loaded, spec: RealSpec):
    """The split asked for; without ``--split``, ``test``, or the only split there is (said in the log)."""
    names = list(loaded)
    if spec.split is None:
        if "test" in names or len(names) != 1:
            spec.split = "test"
        else:
            spec.split = names[0]
            logger.warning("--split: '%s' has no test split; using its only split, '%s'", shorten(spec.name, 80),
                           spec.split)
    if spec.split not in loaded:
        raise RealDataError(f"--split: '{shorten(spec.split, 40)}' is not a split of '{shorten(spec.name, 80)}' "
                            f"({', '.join(names)})")
    return loaded[spec.split]


def _hub_commit(spec: RealSpec) -> str:
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(spec.name, revision=spec.revision).sha
    except Exception as exc:  # offline, not found, gated: one line
        raise RealDataError(f"--real: cannot resolve '{shorten(spec.name, 80)}' on the Hub "
                            f"({shorten(first_line(exc), 160)}); give a local folder or check the name") from None


def columns(split, spec: RealSpec) -> tuple[str, list[str] | None]:
    """The image column, and the label column's class names when it is a ClassLabel (else None)."""
    import datasets

    features = split.features
    if features is None:
        raise RealDataError(f"--real: '{shorten(spec.name, 80)}' declares no columns")
    for option, name in (("--label-column", spec.label_column), ("--image-column", spec.image_column)):
        if name is not None and name not in features:
            raise RealDataError(f"{option}: '{shorten(name, 40)}' is not a column of '{shorten(spec.name, 80)}' "
                                f"({', '.join(features)})")
    image = spec.image_column or next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    if image is None:
        raise RealDataError(f"--real: '{shorten(spec.name, 80)}' has no image column ({', '.join(features)}); "
                            "name one with --image-column")
    if not isinstance(features[image], datasets.Image):
        raise RealDataError(f"--image-column: '{shorten(image, 40)}' is not an image column (it holds "
                            f"{_kind(features[image])})")
    label = features[spec.label_column]
    if isinstance(label, datasets.Image) or not isinstance(label, (datasets.ClassLabel, datasets.Value)):
        raise RealDataError(f"--label-column: '{shorten(spec.label_column, 40)}' holds {_kind(label)}, not labels; "
                            "give the column of class names or ids")
    return image, (list(label.names) if isinstance(label, datasets.ClassLabel) else None)


def _kind(feature) -> str:
    import datasets

    if isinstance(feature, datasets.Value):
        return f"{feature.dtype} values"
    if isinstance(feature, dict):
        return "struct values"
    if isinstance(feature, (list, datasets.Sequence, datasets.List)):
        return "lists"
    return {"Image": "images", "ClassLabel": "class labels"}.get(type(feature).__name__,
                                                                 f"{type(feature).__name__.lower()} values")


@dataclass
class RealRows:
    """The real split as read: embeddings and value indices of the rows used, and what was left out."""

    x: np.ndarray
    y: np.ndarray
    read: int
    unlabelled: int = 0  # rows with no label (null, or ClassLabel -1, datasets' "no label")
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, why) left out by --skip-bad-images


def embed(split, spec: RealSpec, scorer, values: list[str], attribute: str, total: int | None = None,
          progress: bool = True) -> RealRows:
    """The real split's embeddings and value indices (ignored and unlabelled rows left out), read in batches of
    at most ``BATCH`` images and ``BATCH_PIXELS`` pixels, each image decoded alone and reduced (see
    :func:`facesynth.images.open_bounded`). Every label name is mapped before any image is read."""
    import datasets
    from tqdm.auto import tqdm

    from .images import BadImage, open_bounded

    image_col, class_names = columns(split, spec)
    if class_names is None:  # plain labels: one pass over the label column alone finds every name first
        class_names = sorted({str(row[spec.label_column]) for row in split.select_columns([spec.label_column])
                              if row[spec.label_column] is not None})
        to_name = str
    else:
        to_name = class_names.__getitem__
    mapping = label_map(class_names, values, spec, attribute)
    rows = split.select_columns([image_col, spec.label_column]).cast_column(image_col, datasets.Image(decode=False))
    xs, ys, batch, pixels = [], [], [], 0
    found = RealRows(np.zeros((0, 0), np.float32), np.zeros(0, int), 0)
    bar = tqdm(total=total, unit="img", desc="embedding real images", disable=not progress)

    def flush():
        nonlocal batch, pixels
        if batch:
            xs.append(scorer.pil_embeddings([img for img, _ in batch]).cpu().numpy())
            ys.extend(v for _, v in batch)
        batch, pixels = [], 0

    for row in rows:
        found.read += 1
        bar.update(1)
        label = row[spec.label_column]
        if label is None or (to_name is not str and not 0 <= label < len(class_names)):  # ClassLabel -1: no label
            found.unlabelled += 1
            continue
        value = mapping[to_name(label)]
        if value is None:
            continue
        cell = row[image_col]
        name = (cell or {}).get("path") or f"row {found.read - 1}"
        try:
            image = open_bounded(cell, name)
        except BadImage as exc:
            if not spec.skip_bad_images:
                raise RealDataError(f"--real: {exc}; --skip-bad-images leaves such images out") from None
            found.skipped.append((shorten(Path(name).name if "/" in name else name, 80), exc.why))
            continue
        batch.append((image, value))
        pixels += image.width * image.height
        if len(batch) == BATCH or pixels >= BATCH_PIXELS:
            flush()
    flush()
    bar.close()
    if not ys:
        raise RealDataError(f"--real: '{shorten(spec.name, 80)}' split '{spec.split}' has no rows to compare "
                            "(every label was ignored or missing, every image unreadable, or it is empty)")
    found.x, found.y = np.concatenate(xs).astype(np.float32), np.asarray(ys)
    return found


def check_same_clip(scorer, stored: list[tuple[Any, list[float]]], made_with: str) -> None:
    """Re-embed a few stored images: the CLIP loaded must give their stored embeddings back."""
    if not stored:
        return
    again = scorer.pil_embeddings([img for img, _ in stored]).cpu().numpy()
    kept = np.asarray([emb for _, emb in stored], dtype=np.float32)
    if again.shape != kept.shape:
        raise RealDataError(f"--clip-model: the dataset was made with CLIP '{made_with}' ({kept.shape[1]}-d "
                            f"embeddings); the one loaded gives {again.shape[1]}-d ones")
    cos = float((again * kept).sum(axis=1).min())
    if cos < SAME_CLIP:
        raise RealDataError(f"--clip-model: the dataset was made with CLIP '{made_with}'; the one loaded gives other "
                            f"embeddings of its images (cosine {cos:.3f}); give --clip-model that model")
