"""What the card says of identity sets, computed from the shards: identities and rows per identity, the
mechanism and its settings, how alike a set's members are to their reference (genuine) against how alike a
member is to the reference of another identity with the same fixed attributes (impostor), the threshold at equal
error, the gate's rejections, the fixed attributes' leakage, and a picture of a few sets."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from ..checks.quality import quality_report
from ..folder.files import atomic_write
from ..folder.reading import shard_paths
from ..recipe import Recipe
from ..recipe.identities import combinations
from .confusion import font

PICTURE = "assets/identities.png"
SETS_SHOWN = 6
CELL = 112
IMPOSTORS = 3  # impostor references per member: the next identities of its fixed cell


def identity_report(root: Path, manifest, recipe: Recipe, write_picture: bool = True) -> dict[str, Any] | None:
    """The card's Identity section (None for a dataset without identity sets)."""
    spec = recipe.identities
    if spec is None:
        return None
    fixed = [a for a in recipe.attributes if a not in spec.vary]
    column = "clip_embedding" if spec.embedder == "clip" else "identity_embedding"
    names = {a: list(attr.values) for a, attr in recipe.attributes.items()}
    refs: dict[str, tuple[tuple, np.ndarray]] = {}
    members: list[tuple[str, tuple, np.ndarray, float]] = []
    leaks: dict[str, int] = defaultdict(int)
    rows = 0
    for path in shard_paths(root, manifest).values():
        parquet = pq.ParquetFile(path)
        present = parquet.schema_arrow.names
        columns = ["sample_id", "identity", "reference", "identity_similarity", column, *fixed,
                   *(["identity_leaks"] if "identity_leaks" in present else [])]
        for g in range(parquet.num_row_groups):
            table = parquet.read_row_group(g, columns=columns).to_pydict()
            for r, sid in enumerate(table["sample_id"]):
                rows += 1
                cell = tuple(names[a][table[a][r]] for a in fixed)
                embedding = np.asarray(table[column][r], dtype=np.float32)
                if sid == table["reference"][r]:
                    refs[table["identity"][r]] = (cell, embedding)
                else:
                    members.append((table["identity"][r], cell, embedding, table["identity_similarity"][r]))
                for attr in (table.get("identity_leaks") or [""] * len(table["sample_id"]))[r].split():
                    leaks[attr] += 1
    genuine = [s for *_, s in members if s is not None]
    by_cell: dict[tuple, list[str]] = defaultdict(list)
    for identity, (cell, _) in sorted(refs.items()):
        by_cell[cell].append(identity)
    impostor = []
    for identity, cell, embedding, _ in members:
        ids = by_cell.get(cell, [])
        if identity in ids:  # the next identities of the same fixed cell, in id order, as impostors
            at = ids.index(identity)
            impostor += [float(embedding @ refs[ids[(at + k) % len(ids)]][1])
                         for k in range(1, min(IMPOSTORS, len(ids) - 1) + 1)]
    quality = quality_report(manifest.shards)["total"] or {}
    report = {
        "spec": spec.content(), "identities": len(refs), "rows": rows, "per_identity": len(combinations(recipe, spec)),
        "varied": spec.vary, "fixed": fixed, "members": [" / ".join(c.values()) for c in combinations(recipe, spec)],
        "genuine": _stats(genuine), "impostor": _stats(impostor), "eer": _eer(genuine, impostor),
        "rejected": (quality.get("by_reason") or {}).get("identity", 0),
        "leaks": {a: {"rows": n, "rate": n / rows if rows else 0.0} for a, n in sorted(leaks.items())},
        "embedder": (manifest.get("identity_embedder") or {}).get("name") or spec.embedder, "picture": PICTURE,
    }
    if write_picture:
        sets_picture(root, manifest, recipe, sorted(refs)[:SETS_SHOWN])
    return report


def _stats(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    x = np.asarray(values, dtype=np.float64)
    return {"n": int(len(x)), "mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
            "max": float(x.max())}


def _eer(genuine: list[float], impostor: list[float]) -> dict[str, float] | None:
    """The threshold where as many genuine pairs fall below it as impostor pairs reach it (scikit-learn's ROC)."""
    if not genuine or not impostor:
        return None
    from sklearn.metrics import roc_curve

    labels = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]
    fpr, tpr, thresholds = roc_curve(labels, np.r_[genuine, impostor])
    k = int(np.argmin(np.abs(fpr - (1 - tpr))))
    return {"threshold": float(min(thresholds[k], 1.0)), "rate": float((fpr[k] + 1 - tpr[k]) / 2)}


def sets_picture(root: Path, manifest, recipe: Recipe, identities: list[str]) -> Path:
    """``assets/identities.png``: one identity per row, one member (varied value) per column."""
    spec = recipe.identities
    columns = [" / ".join(c.values()) for c in combinations(recipe, spec)]
    wanted = set(identities)
    tiles: dict[tuple[str, int], Image.Image] = {}
    for path in shard_paths(root, manifest).values():
        parquet = pq.ParquetFile(path)
        for g in range(parquet.num_row_groups):  # images only from the row groups that hold a chosen set
            if wanted.isdisjoint(parquet.read_row_group(g, columns=["identity"])["identity"].to_pylist()):
                continue
            table = parquet.read_row_group(g, columns=["identity", "sample_id", "reference", "image"]).to_pydict()
            for identity, sid, ref, image in zip(*table.values()):
                if identity in wanted:
                    member = int(sid.rsplit("-", 1)[1]) - int(ref.rsplit("-", 1)[1])
                    tiles[identity, member] = Image.open(io.BytesIO(image["bytes"])).convert("RGB").resize(
                        (CELL, CELL), Image.Resampling.LANCZOS)
    label = 150
    grid = Image.new("RGB", (label + len(columns) * CELL, 24 + len(identities) * CELL), "white")
    draw = ImageDraw.Draw(grid)
    small = font(14)
    for j, name in enumerate(columns):
        draw.text((label + j * CELL + 4, 4), name[:16], fill="black", font=small)
    for i, identity in enumerate(identities):
        draw.text((6, 24 + i * CELL + CELL // 2 - 8), identity.rsplit("-", 1)[-1], fill="black", font=small)
        for j in range(len(columns)):
            tile = tiles.get((identity, j))
            if tile is not None:
                grid.paste(tile, (label + j * CELL, 24 + i * CELL))
    target = Path(root) / PICTURE
    with atomic_write(target, "wb") as f:
        grid.save(f, format="PNG")
    return target
