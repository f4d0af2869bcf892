"""The classifier under audit, loaded and run over a split's stored pixels.

The classifier is an image classifier (``AutoModelForImageClassification`` with its processor config; a Hub
id pinned to its commit, or a local folder pinned by content; safetensors only, never its own code) or a
zero-shot CLIP-family model over the attribute's ``label_prompt`` (``zero-shot:MODEL``). Its classes map to the
attribute's values as a verifier's do (by name, or ``--map CLASS=VALUE``; the rest are ``other``): it is loaded
by :func:`facesynth.checks.verifiers.load_verifier`. It sees the stored pixels, cropped to the face box padded
by the run's margin where the data has face boxes, a row group at a time, so memory stays flat for any size.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from ..checks.verifiers import ZERO_SHOT, Verifier, crop_box, load_verifier
from ..errors import FacesynthError, shorten
from ..folder.reading import shard_paths
from ..recipe import Recipe, Verify

logger = logging.getLogger(__name__)

OTHER = "other"
WHERE = "--model"


class AuditError(FacesynthError):
    """The audit cannot run as asked: the line names the option."""


def load_classifier(model: str, revision: str | None, mapping: dict[str, str], recipe: Recipe, attribute: str,
                    device: torch.device) -> tuple[Verifier, dict[str, Any]]:
    """The classifier, loaded as a verifier of ``attribute``, and what the report records of it (name, kind,
    commit or content digest, class map)."""
    from ..folder.pins import local_record, looks_local, pin

    zero_shot = model.startswith(ZERO_SHOT)
    name = model.removeprefix(ZERO_SHOT)
    if not name:
        raise AuditError(f"{WHERE}: '{model}' names no model after '{ZERO_SHOT}'")
    if zero_shot and mapping:
        raise AuditError("--map: a zero-shot classifier scores the attribute's own values; --map maps the classes "
                         "of an image classifier")
    spec = Verify(zero_shot=name, revision=revision) if zero_shot else Verify(model=name, revision=revision,
                                                                             labels=mapping)
    classifier = load_verifier(attribute, spec, recipe, None, device, torch.float32, where=WHERE)
    local = looks_local(name)
    record = {"model": Path(name).resolve().name if local else name, "kind": classifier.kind,
              "commit": classifier.commit, "sha256": pin(local_record(name)["path"])["sha256"] if local else None,
              "labels": classifier.labels}
    return classifier, record


def predict(root: Path, manifest, recipe: Recipe, classifier: Verifier, attribute: str, split: str, out: Path,
            progress: bool = True) -> int:
    """Write ``predictions.parquet``: one row per row of ``split`` (sample id, identity and reference where the
    data has sets, every attribute's value, the predicted value, every value's and ``other``'s probability),
    streamed a row group at a time. Returns the rows written."""
    from tqdm.auto import tqdm

    names = {a: list(attr.values) for a, attr in recipe.attributes.items()}
    classes = classifier.classes
    margin = float((manifest.get("parameters") or {}).get("crop_margin", 0.25))
    shards = {n: p for n, p in shard_paths(root, manifest).items() if manifest.shards[n]["split"] == split}
    total = sum(manifest.shards[n]["rows"] for n in shards)
    sets = recipe.identities is not None
    schema = pa.schema([("sample_id", pa.string()), *([("identity", pa.string()), ("reference", pa.string())]
                                                      if sets else []),
                        *((a, pa.string()) for a in names), ("predicted", pa.string()),
                        *((f"p_{c}", pa.float32()) for c in classes)])
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    bar = tqdm(total=total, unit="img", desc=f"auditing {split}", disable=not progress)
    with pq.ParquetWriter(out, schema, compression="zstd", write_statistics=False) as writer:
        for path in shards.values():
            parquet = pq.ParquetFile(path)
            present = parquet.schema_arrow.names
            columns = ["sample_id", "image", *names, *(c for c in ("face_box", "identity", "reference")
                                                      if c in present)]
            for g in range(parquet.num_row_groups):
                table = parquet.read_row_group(g, columns=columns).to_pydict()
                probs = classifier.probabilities(_crops(table, margin)).numpy()
                data: dict[str, list] = {"sample_id": table["sample_id"]}
                if sets:
                    data.update(identity=table["identity"], reference=table["reference"])
                data.update({a: [names[a][i] for i in table[a]] for a in names})
                data["predicted"] = [classes[int(k)] for k in probs.argmax(1)]  # the first maximum wins ties
                data.update({f"p_{c}": probs[:, k].astype(np.float32) for k, c in enumerate(classes)})
                writer.write_table(pa.table(data, schema=schema))
                written += len(table["sample_id"])
                bar.update(len(table["sample_id"]))
    bar.close()
    if not written:
        raise AuditError(f"--split: '{shorten(split, 40)}' holds no row in '{root}'")
    return written


def _crops(table: dict[str, list], margin: float) -> list[torch.Tensor]:
    crops = []
    for k, cell in enumerate(table["image"]):
        pixels = np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB"))
        height, width = pixels.shape[:2]
        box = (table.get("face_box") or [None] * len(table["image"]))[k]
        left, top, right, bottom = crop_box(box, width, height, margin)
        crops.append(torch.from_numpy(np.array(pixels[top:bottom, left:right])).permute(2, 0, 1).float()
                     / 255)
    return crops
