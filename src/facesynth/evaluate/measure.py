"""``facesynth evaluate``: is the dataset any good? Diversity, label separability and, against real photos,
train-on-synthetic-test-on-real, all on the CLIP image embeddings the rows already hold.

The result is ``evaluation.json`` in the dataset folder, with confusion matrices as pictures in
``assets/evaluation/``; all are listed in the manifest (so ``push`` publishes them and ``--overwrite``
may remove them), stamped with the data's content fingerprint (so ``validate`` notices an evaluation
older than the data, and ``generate`` makes it again when it changes the data), and shown in the card.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from .. import __version__
from . import metrics
from ..folder.reading import content_fingerprint, read_manifest, shard_paths
from ..dataset_card.confusion import confusion_png
from ..errors import OutputError
from ..dataset_card.evaluation import ASSETS, EVALUATION, FORMAT, is_evaluation_file, load_evaluation, stale
from ..folder.files import atomic_write, dumps_json
from ..plan import cell_key
from .real import CHECK_ROWS, RealSpec, check_same_clip, embed, open_real
from ..recipe import Recipe, recipe_of
from ..folder.writer import Manifest, sha256_file

logger = logging.getLogger(__name__)

MIN_REVERSE = 5  # real rows per value needed to train on the real set (the reverse direction)
SKIPPED_NAMED = 20  # unreadable real images named in evaluation.json (all are counted)


@dataclass
class Embeddings:
    """Every row's sample id, value index per attribute and stored CLIP embedding, in shard order."""

    ids: list[str]
    labels: dict[str, np.ndarray]
    x: np.ndarray


def read_embeddings(root: Path, manifest: Manifest, recipe: Recipe) -> Embeddings:
    """The label and embedding columns of every shard, one row group at a time (no image is read)."""
    ids, labels, blocks = [], defaultdict(list), []
    for path in shard_paths(root, manifest).values():
        pf = pq.ParquetFile(path)
        for i in range(pf.num_row_groups):
            table = pf.read_row_group(i, columns=["sample_id", *recipe.attributes, "clip_embedding"])
            if not table.num_rows:
                continue
            ids += table["sample_id"].to_pylist()
            for a in recipe.attributes:
                labels[a].append(table[a].to_numpy())
            blocks.append(table["clip_embedding"].combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1))
    x = np.concatenate(blocks).astype(np.float32, copy=False)
    return Embeddings(ids, {a: np.concatenate(v) for a, v in labels.items()}, x)


def diversity_report(emb: Embeddings, recipe: Recipe) -> dict[str, Any]:
    """Diversity of every label cell and of every value of each attribute."""
    names = {a: list(attr.values) for a, attr in recipe.attributes.items()}
    cells = defaultdict(list)
    for r in range(len(emb.ids)):
        cells[cell_key({a: names[a][emb.labels[a][r]] for a in names})].append(r)
    def group(rows) -> dict[str, Any]:
        rows = np.asarray(rows)
        return metrics.diversity(emb.x[rows], [emb.ids[r] for r in rows])
    return {
        "cells": {cell: group(rows) for cell, rows in sorted(cells.items())},
        "attributes": {a: {v: group(np.flatnonzero(emb.labels[a] == i)) for i, v in enumerate(values)
                           if (emb.labels[a] == i).any()} for a, values in names.items()},
    }


def evaluate(root: str | Path, real: RealSpec | None = None, folds: int = 5, seed: int = 0,
             clip_model: str | None = None, device: str = "auto", progress: bool = True,
             locked: bool = False, card: bool = True) -> dict[str, Any]:
    """Measure the folder, write ``evaluation.json`` (and the card, when it is facesynth's); return the result.

    The folder is locked only to write (``locked``: the caller holds it already), and the data must not have
    changed since it was read."""
    root = Path(root)
    manifest = read_manifest(root, current=True)
    if not manifest.get("complete") or not manifest.shards:
        raise OutputError(f"'{root}': generation has not finished; run the same generate command to finish it, "
                          "then evaluate")
    recipe = recipe_of(manifest)
    if real is not None:
        attribute = real.attribute or recipe.primary
        if attribute not in recipe.attributes:
            raise OutputError(f"--attribute: '{attribute}' is not an attribute of the dataset "
                              f"({', '.join(recipe.attributes)})")
        real.attribute = attribute
    start = time.perf_counter()
    emb = read_embeddings(root, manifest, recipe)
    values = {a: list(attr.values) for a, attr in recipe.attributes.items()}
    result: dict[str, Any] = {
        "format": FORMAT,
        "facesynth": __version__,
        "data": {"fingerprint": content_fingerprint(manifest), "rows": len(emb.ids),
                 "version": manifest.get("version")},
        "embedding": {"clip_model": (manifest.get("clip_model") or {}).get("name"),
                      "commit": (manifest.get("clip_model") or {}).get("commit"), "dim": int(emb.x.shape[1])},
        "settings": {"folds": folds, "seed": seed, "real": real.to_json() if real else None},
        "diversity": diversity_report(emb, recipe),
        "separability": {a: metrics.separability(emb.x, emb.labels[a], v, folds, seed) for a, v in values.items()
                         if len(v) > 1},
    }
    if real is not None:
        result["real"] = against_real(root, manifest, emb, values, real, clip_model, device, seed, progress)
        result["settings"]["real"] = real.to_json()  # with the split it resolved to
    write_evaluation(root, result, recipe, locked, card)
    return {**result, "seconds": round(time.perf_counter() - start, 3)}  # not in the file: same data, same bytes


def against_real(root: Path, manifest: Manifest, emb: Embeddings, values: dict[str, list[str]], spec: RealSpec,
                 clip_model: str | None, device: str, seed: int, progress: bool) -> dict[str, Any]:
    """TSTR and its reverse, and FID/KID per value, between the dataset and a real one."""
    from ..generation.loading import resolve_device
    from ..checks.scoring import ClipScorer

    split, record, total = open_real(spec, root)  # bad input is found before the CLIP loads
    made_with = manifest.get("clip_model") or {}
    name = clip_model or made_with.get("name")
    scorer = ClipScorer.load(name, device=resolve_device(device),
                             revision=None if clip_model else made_with.get("commit"))
    check_same_clip(scorer, stored_rows(root, manifest, CHECK_ROWS), made_with.get("name"))
    attribute = spec.attribute
    names = values[attribute]
    found = embed(split, spec, scorer, names, attribute, total, progress)
    x_real, y_real = found.x, found.y
    y_syn = emb.labels[attribute]
    counts = np.bincount(y_real, minlength=len(names))
    present = [i for i in range(len(names)) if counts[i]]
    reverse = (metrics.transfer(x_real, y_real, emb.x, y_syn, names, seed)
               if len(present) > 1 and counts[present].min() >= MIN_REVERSE else
               {"skipped": f"the real set needs at least {MIN_REVERSE} rows of each value it has"
                           + (f", and two values at least (it has only {names[present[0]]})" if len(present) == 1
                              else "")})
    tstr = metrics.transfer(emb.x, y_syn, x_real, y_real, names, seed)
    if len(present) == 1:  # accuracy on one value is that value's recall alone: say so, not a bare figure
        tstr["note"] = (f"the real set holds only {names[present[0]]}: this accuracy is the recall of that value "
                        "alone, not how well the values are told apart")
    distance = {}
    for i, value in enumerate(names):
        a, b = emb.x[y_syn == i], x_real[y_real == i]
        if len(a) >= 2 and len(b) >= 2:
            distance[value] = {"synthetic_rows": len(a), "real_rows": len(b), "fid": metrics.rounded(metrics.fid(a, b)),
                               "kid": metrics.rounded(metrics.kid(a, b, seed))}
    return {
        **record, "rows_read": found.read, "rows_used": int(len(y_real)), "rows_unlabelled": found.unlabelled,
        "images_skipped": len(found.skipped),
        "skipped": [{"image": name, "why": why} for name, why in found.skipped[:SKIPPED_NAMED]],
        "attribute": attribute, "label_column": spec.label_column,
        "counts": {names[i]: int(counts[i]) for i in present},
        "tstr": tstr,
        "trts": reverse,
        "distance": {"all": {"fid": metrics.rounded(metrics.fid(emb.x, x_real)) if len(x_real) >= 2 else None,
                             "kid": metrics.rounded(metrics.kid(emb.x, x_real, seed)) if len(x_real) >= 2 else None},
                     "per_value": distance},
    }


def stored_rows(root: Path, manifest: Manifest, k: int) -> list[tuple[Any, list[float]]]:
    """The first ``k`` rows' images (PIL) and stored embeddings, to check that a CLIP is the dataset's."""
    import io

    from PIL import Image

    rows = []
    for path in shard_paths(root, manifest).values():
        pf = pq.ParquetFile(path)
        for i in range(pf.num_row_groups):
            table = pf.read_row_group(i, columns=["image", "clip_embedding"]).slice(0, k - len(rows)).to_pydict()
            rows += [(Image.open(io.BytesIO(img["bytes"])), e) for img, e in zip(table["image"], table["clip_embedding"])]
            if len(rows) == k:
                return rows
    return rows


def pictures(result: dict[str, Any], recipe: Recipe) -> dict[str, bytes]:
    """The confusion matrices as PNGs, by their path in the folder."""
    out = {}
    for a, sep in result["separability"].items():
        if "confusion" in sep:
            out[f"{ASSETS}/separability-{a}.png"] = confusion_png(
                sep["confusion"], list(recipe.attributes[a].values),
                f"{a}: linear probe, {sep['folds']}-fold (accuracy {sep['accuracy']:.3f})")
    real = result.get("real")
    if real and "confusion" in real["tstr"]:
        a = real["attribute"]
        out[f"{ASSETS}/tstr-{a}.png"] = confusion_png(
            real["tstr"]["confusion"], list(recipe.attributes[a].values),
            f"{a}: trained on synthetic, tested on real (accuracy {real['tstr']['accuracy']:.3f})", rows="real")
    return out


def write_evaluation(root: Path, result: dict[str, Any], recipe: Recipe, locked: bool = False,
                     card: bool = True) -> None:
    """Write the pictures, then ``evaluation.json``; list them in the manifest; refresh the card if it is ours."""
    from contextlib import nullcontext

    from ..dataset_card.card import foreign_readme, write_card
    from ..folder.lock import FolderLock

    with nullcontext() if locked else FolderLock(root, "DIRECTORY"):
        manifest = read_manifest(root, current=True)
        if content_fingerprint(manifest) != result["data"]["fingerprint"]:
            raise OutputError(f"'{root}': the data changed while it was evaluated; run evaluate again")
        files = {k: v for k, v in (manifest.get("files") or {}).items() if not is_evaluation_file(k)}
        for name, data in pictures(result, recipe).items():
            with atomic_write(root / name, "wb") as f:
                f.write(data)
            files[name] = sha256_file(root / name)
        with atomic_write(root / EVALUATION) as f:
            f.write(dumps_json(result))
        files[EVALUATION] = sha256_file(root / EVALUATION)
        for old in (manifest.get("files") or {}):  # pictures of an attribute the new result does not draw
            if is_evaluation_file(old) and old not in files and (root / old).is_file():
                (root / old).unlink()
        manifest.data["files"] = files
        manifest.save(root)
        if card and (root / "README.md").is_file() and not foreign_readme(root):
            made = manifest.get("card") or {}
            write_card(root, made.get("repo_id"), made.get("revision"), bool(made.get("gated")), name=made.get("name"))


def refresh(root: Path, progress: bool = False, locked: bool = False, card: bool = True) -> bool:
    """Evaluate again, with the recorded settings, when the data changed since; True when it did."""
    manifest = read_manifest(root)
    if stale(root, manifest) is None:
        return False
    settings = load_evaluation(root).get("settings") or {}
    real = RealSpec(**settings["real"]) if settings.get("real") else None
    evaluate(root, real, settings.get("folds", 5), settings.get("seed", 0), progress=progress, locked=locked,
             card=card)
    return True

