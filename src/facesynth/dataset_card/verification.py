"""What the card shows of the verifiers (see :mod:`facesynth.verifiers`): per verified attribute, how often the
verifier's verdict is the row's value, per value and per label cell, and the confusion matrix (requested x
verified), as a table and as a picture in ``assets/verification/``. Computed from the shards' columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..folder.reading import shard_paths
from .confusion import confusion_png
from ..folder.files import atomic_write
from ..plan import cell_key
from ..recipe import Recipe
from ..folder.schema import verified_attributes, verified_columns
from ..checks.verifiers import OTHER
from ..folder.writer import Manifest

PICTURES = "assets/verification"
MAX_CELLS = 64  # beyond this many label cells the card lists the least verified ones
LOWEST = 20


def picture_name(attribute: str) -> str:
    return f"{PICTURES}/{attribute}.png"


def _rate(agree: int, rows: int) -> dict[str, Any]:
    return {"rows": rows, "agree": agree, "rate": agree / rows if rows else None}


def verification(root: Path, manifest: Manifest, recipe: Recipe) -> dict[str, Any] | None:
    """Per verified attribute: the verifier, agreement overall, per value and per label cell, and the
    confusion matrix; None for a dataset made without verifiers."""
    attrs = verified_attributes(manifest)
    if not attrs:
        return None
    values = {a: list(attr.values) for a, attr in recipe.attributes.items()}
    matrix = {a: [[0] * (len(values[a]) + 1) for _ in values[a]] for a in attrs}
    cells: dict[str, dict[str, list[int]]] = {a: {} for a in attrs}
    columns = [*values, *(c for a in attrs for c in verified_columns(a))]
    for path in shard_paths(root, manifest).values():
        parquet = pq.ParquetFile(path)
        for g in range(parquet.num_row_groups):
            table = parquet.read_row_group(g, columns=columns).to_pydict()
            for r in range(len(table[columns[0]])):
                cell = cell_key({a: values[a][table[a][r]] for a in values})
                for a in attrs:
                    verdict = table[verified_columns(a)[0]][r]
                    if verdict is None:
                        continue
                    matrix[a][table[a][r]][verdict] += 1
                    counts = cells[a].setdefault(cell, [0, 0])
                    counts[0] += verdict == table[a][r]
                    counts[1] += 1
    records = {r["attribute"]: r for r in manifest.get("verifiers") or []}
    params = manifest.get("parameters") or {}
    out = {}
    for a in attrs:
        m = matrix[a]
        by_cell = {c: _rate(*n) for c, n in sorted(cells[a].items())}
        lowest = len(by_cell) > MAX_CELLS
        if lowest:
            by_cell = dict(sorted(by_cell.items(), key=lambda kv: (kv[1]["rate"], kv[0]))[:LOWEST])
        out[a] = {
            "verifier": records.get(a, {"model": params["verify"][a].get("model") or params["verify"][a].get(
                "zero_shot")}),
            "classes": [*values[a], OTHER],
            "matrix": m,
            "total": _rate(sum(m[i][i] for i in range(len(m))), sum(map(sum, m))),
            "values": {v: _rate(m[i][i], sum(m[i])) for i, v in enumerate(values[a])},
            "cells": by_cell,
            "lowest_cells": lowest,
            "cell_count": len(cells[a]),
            "picture": picture_name(a),
        }
    return {"attributes": out, "mode": params.get("verify_mode"), "margin": params.get("crop_margin"),
            "faces": bool((params.get("quality") or {}).get("faces"))}


def write_pictures(root: Path, report: dict[str, Any] | None) -> None:
    """Each verified attribute's confusion matrix as a PNG at :func:`picture_name` (written atomically)."""
    for a, data in ((report or {}).get("attributes") or {}).items():
        with atomic_write(root / data["picture"], "wb") as f:
            f.write(confusion_png(data["matrix"], data["classes"][:-1], f"{a}: requested x verified "
                                  f"({data['verifier'].get('model')})", rows="requested", columns="verified",
                                  column_values=data["classes"]))
