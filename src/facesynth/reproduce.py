"""Regenerate one row from its own columns and the folder's manifest.

A row keeps its prompt, seed, settings and ``attempt``, and the pipeline batch it
was made in (``batch``: the sample ids; ``unet_calls``: images per UNet call).
The manifest keeps the recipe, plan, model commit, CLIP model, device and dtype.
The row's ``candidate_index`` names the kept candidate (the quality gates may have
passed over a better-scoring one). Batched GPU and CPU kernels may round differently for another batch shape, so
the row's whole batch is run again exactly as it first ran: with the same device,
dtype and library versions the pixels come out identical, and so do the scores.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
from PIL import Image

from .folder.reading import read_manifest, shard_paths
from .errors import OutputError
from .folder.pins import recorded as recorded_input
from .plan import Plan
from .recipe import recipe_of
from .folder.schema import read_provenance, verified_columns
from .folder.writer import Manifest

logger = logging.getLogger(__name__)

DTYPE_NAMES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
PROBABILITY_TOLERANCE = 1e-4  # a verifier's batched kernels may round a little differently


@dataclass
class Reproduction:
    """A regenerated row next to the stored one."""

    sample_id: str
    pixels: np.ndarray
    stored: np.ndarray
    seed: int
    stored_seed: int
    clip_score: float
    stored_score: float
    verified: dict[str, tuple[str, float]] = field(default_factory=dict)  # attribute -> (verdict, p(row's value))
    stored_verified: dict[str, tuple[str, float]] = field(default_factory=dict)

    @property
    def verifier_differs(self) -> list[str]:
        """The verified attributes whose verdict or probability (beyond 1e-4) differs from the stored one."""
        return [a for a, (verdict, p) in self.verified.items()
                if (stored := self.stored_verified.get(a)) is None or stored[0] != verdict
                or abs(stored[1] - p) > PROBABILITY_TOLERANCE]

    @property
    def max_diff(self) -> int:
        if self.pixels.shape != self.stored.shape:
            return 255
        return int(np.abs(self.pixels.astype(np.int16) - self.stored.astype(np.int16)).max())

    @property
    def identical(self) -> bool:
        return (self.seed == self.stored_seed and self.pixels.shape == self.stored.shape
                and bool(np.array_equal(self.pixels, self.stored)))


def read_rows(root: Path, manifest: Manifest, sample_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The rows with these sample ids, read through a Parquet filter."""
    paths = [str(p) for p in shard_paths(root, manifest).values()]
    if not paths:
        return {}
    dataset = pads.dataset(paths, format="parquet")
    table = dataset.to_table(filter=pads.field("sample_id").isin(sample_ids))
    return {row["sample_id"]: row for row in table.to_pylist()}


def decode_image(cell: dict[str, Any]) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB"))


class Reproducer:
    """Loads the folder's model and CLIP once, then regenerates rows."""

    def __init__(self, root: str | Path, device: str = "auto", dtype: str | None = None):
        from .generation.engine import Engine, EngineOptions
        from .generation.adapters import apply as apply_adapters, from_manifest as adapters_of
        from .generation.loading import load_pipeline, resolve_device, resolve_dtype
        from .checks.scoring import ClipScorer

        self.root = Path(root)
        self.manifest = read_manifest(self.root, generated=True)
        self.recipe = recipe_of(self.manifest)
        model = self.manifest["model"]
        runtime = self.manifest.get("runtime", {})
        dev = resolve_device(device)
        recorded = DTYPE_NAMES.get(runtime.get("dtype", ""))
        torch_dtype = resolve_dtype(dtype or (recorded if dev.type != "cpu" or recorded != "fp16" else None), dev)
        if str(dev) != runtime.get("device") or str(torch_dtype).replace("torch.", "") != runtime.get("dtype"):
            logger.warning("regenerating on %s/%s; the dataset was made on %s/%s, so pixels may differ slightly",
                           dev, torch_dtype, runtime.get("device"), runtime.get("dtype"))
        if dev.type == "cpu" and runtime.get("threads"):
            import torch

            torch.set_num_threads(runtime["threads"])  # CPU kernels round by thread count
        revision = model.get("commit") or model.get("revision")
        adapters = adapters_of(self.manifest)  # the same bytes as when the folder was made, before the model loads
        inputs = (self.manifest.get("parameters") or {}).get("inputs")
        clip = self.manifest["clip_model"]
        local = {role: recorded_input(path, inputs, role, f"manifest.json: {role}") for role, path in
                 (("model", model.get("path")), ("model_config", model.get("config")), ("clip_model", clip.get("path")))}
        pipe, _ = load_pipeline(local["model"] or model["name"], revision=revision, dtype=torch_dtype, device=dev,
                                config=local["model_config"])
        apply_adapters(pipe, adapters, model["name"])  # the same adapters, fused the same way
        if self.recipe.identities is not None and self.recipe.identities.mechanism == "reference":
            from .generation.families import family_of
            from .generation.reference import load as load_reference

            record = self.manifest.get("identity_adapter") or {}
            spec = self.recipe.identities
            path = recorded_input(record.get("path"), inputs, "identities.adapter", "manifest.json: identity_adapter")
            load_reference(pipe, spec.model_copy(update={"adapter": path or spec.adapter}), family_of(pipe),
                           record.get("commit"))
        scorer = ClipScorer.load(local["clip_model"] or clip["name"], device=dev, dtype=torch_dtype,
                                 revision=clip.get("commit"))
        generation = self.manifest.get("generation", {})
        plan = self.manifest["plan"]
        self.samples = {s.sample_id: s for s in Plan(self.recipe, plan["num_samples"], plan["seed"],
                                                     plan["candidates"]).samples}
        from .checks.verifiers import from_manifest

        params = self.manifest.get("parameters") or {}
        verifiers = from_manifest(self.manifest, self.recipe, dev, torch_dtype)
        options = EngineOptions(candidates=plan["candidates"], rerank=generation.get("rerank", "caption"),
                                overrides=generation.get("overrides", {}),
                                verify_mode=params.get("verify_mode", "gate"),
                                crop_margin=params.get("crop_margin", 0.25))
        self.engine = Engine(pipe, scorer, self.recipe, options, verifiers=verifiers)
        self.engine.crop_faces = bool((params.get("quality") or {}).get("faces"))  # verified on face crops

    def rows(self, sample_ids: list[str]) -> dict[str, dict[str, Any]]:
        found = read_rows(self.root, self.manifest, sample_ids)
        missing = [s for s in sample_ids if s not in found]
        if missing:
            raise OutputError(f"sample_id: '{missing[0]}' is not in '{self.root}'")
        return found

    def reproduce(self, row: dict[str, Any]) -> Reproduction:
        """Run the row's batch again, at the row's attempt, and take the row's sample."""
        provenance = read_provenance(row)
        batch = provenance["batch"] or [row["sample_id"]]
        unknown = [sid for sid in batch if sid not in self.samples]
        if unknown:
            raise OutputError(f"{row['sample_id']}: batch names '{unknown[0]}', which is not in the plan")
        scored = self.engine.candidates([self.samples[sid] for sid in batch], row["attempt"], provenance["unet_calls"])
        mine = scored[batch.index(row["sample_id"])]
        if row["candidate_index"] not in mine.indices:
            raise OutputError(f"{row['sample_id']}: candidate_index {row['candidate_index']} is not one of the "
                              f"{len(mine.indices)} candidates that ran to the end")
        # the gates may have passed over the best score
        win = self.engine.pick(mine, mine.indices.index(row["candidate_index"]), row.get("face_box"))
        verified, stored = {}, {}
        for v in self.engine.verifiers:
            verdict, probability = win.verified[v.attribute]
            verified[v.attribute] = (v.classes[verdict], probability)
            column, prob_column = verified_columns(v.attribute)
            if row.get(column) is not None:
                stored[v.attribute] = (v.classes[row[column]], row[prob_column])
        return Reproduction(row["sample_id"], win.pixels, decode_image(row["image"]), win.seed, row["seed"],
                            win.clip_score, row["clip_score"], verified, stored)


def reproduce(root: str | Path, sample_id: str, out: str | Path | None = None, device: str = "auto",
              dtype: str | None = None) -> Reproduction:
    """Regenerate one row; write it to ``out`` (PNG) if given."""
    reproducer = Reproducer(root, device, dtype)
    result = reproducer.reproduce(reproducer.rows([sample_id])[sample_id])
    if out is not None:
        Image.fromarray(result.pixels).save(out, format="PNG")
    return result
