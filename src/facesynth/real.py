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
from typing import Any, Iterator

import numpy as np

from .errors import FacesynthError, first_line, shorten

logger = logging.getLogger(__name__)

BATCH = 64  # real images embedded per CLIP call
CHECK_ROWS = 8  # stored rows re-embedded to check that the CLIP is the dataset's
SAME_CLIP = 0.98  # the least cosine between a stored embedding and the same image embedded again


class RealDataError(FacesynthError):
    """The real dataset, its columns or its labels cannot be used; the message names the option."""


@dataclass
class RealSpec:
    """What ``--real`` and its options asked for (recorded, so the evaluation can be made again)."""

    name: str
    label_column: str
    split: str = "test"
    image_column: str | None = None
    revision: str | None = None
    attribute: str | None = None  # default: the recipe's primary label
    mapping: dict[str, str] = field(default_factory=dict)
    ignore: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "label_column": self.label_column, "split": self.split,
                "image_column": self.image_column, "revision": self.revision, "attribute": self.attribute,
                "mapping": dict(self.mapping), "ignore": list(self.ignore)}


def parse_map(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``--map real_name=value`` options as a dict (one line naming the bad one)."""
    mapping = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise RealDataError(f"--map: '{shorten(item, 80)}' is not REAL_NAME=VALUE")
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


def open_real(spec: RealSpec):
    """The split as an iterable dataset, its recorded identity, and its row count when known."""
    import datasets

    path = Path(spec.name)
    record: dict[str, Any] = {"name": path.name if path.is_dir() else spec.name, "split": spec.split}
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = _split(loaded, spec)
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
    info = split.info.splits.get(spec.split) if split.info and split.info.splits else None
    return split, record, (info.num_examples if info and info.num_examples else None)


def _split(loaded, spec: RealSpec):
    if spec.split not in loaded:
        raise RealDataError(f"--split: '{shorten(spec.split, 40)}' is not a split of '{shorten(spec.name, 80)}' "
                            f"({', '.join(loaded)})")
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
    label = features[spec.label_column]
    return image, (list(label.names) if isinstance(label, datasets.ClassLabel) else None)


def embed(split, spec: RealSpec, scorer, values: list[str], attribute: str, total: int | None = None,
          progress: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """The real split's embeddings and value indices (ignored rows left out), read in batches of ``BATCH``;
    and how many rows were read. Every label name is mapped before any image is read."""
    from tqdm.auto import tqdm

    image_col, class_names = columns(split, spec)
    if class_names is None:  # plain labels: one pass over the label column alone finds every name first
        class_names = sorted({str(row[spec.label_column]) for row in split.select_columns([spec.label_column])})
        to_name = str
    else:
        to_name = class_names.__getitem__
    mapping = label_map(class_names, values, spec, attribute)
    xs, ys, read = [], [], 0
    bar = tqdm(total=total, unit="img", desc="embedding real images", disable=not progress)
    for batch in _batches(split.select_columns([image_col, spec.label_column]), image_col, spec.label_column):
        read += len(batch)
        names = [to_name(v) for _, v in batch]
        keep = [(img, mapping[n]) for (img, _), n in zip(batch, names) if mapping[n] is not None]
        if keep:
            xs.append(scorer.pil_embeddings([img for img, _ in keep]).cpu().numpy())
            ys.extend(v for _, v in keep)
        bar.update(len(batch))
    bar.close()
    if not ys:
        raise RealDataError(f"--real: '{shorten(spec.name, 80)}' split '{spec.split}' has no rows to compare "
                            "(every label was ignored, or it is empty)")
    return np.concatenate(xs).astype(np.float32), np.asarray(ys), read


def _batches(rows, image_col: str, label_col: str) -> Iterator[list[tuple[Any, Any]]]:
    batch = []
    for row in rows:
        if row[image_col] is None or row[label_col] is None:
            raise RealDataError(f"--real: a row has no {'image' if row[image_col] is None else 'label'}")
        batch.append((row[image_col], row[label_col]))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


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
